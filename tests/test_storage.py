"""batchstore.receiver.store in process: how a data set received whole reaches its final name (no network).

`Store.store` writes a small data set into an unnamed file (``O_TMPFILE``) and links it under its final name;
where that is not possible it falls back to a named temporary file and a rename. Both must write the same
bytes, leave nothing else behind, and replace an existing file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest
from test_receive_helpers import CT, EXPLICIT_LE, ct_dataset, encode

from batchstore.dicom.meta import file_meta
from batchstore.net import status
from batchstore.receiver import store as storage
from batchstore.receiver.events import Peer
from batchstore.receiver.options import StorageOptions
from batchstore.receiver.store import Store

UID = "1.2.826.0.1.3680043.8.498.4242"


def _store(tmp_path: Path, data: bytes, uid: str = UID) -> storage.StoredFile:
    store = Store(StorageOptions(output_dir=str(tmp_path)))
    return store.store(CT, uid, EXPLICIT_LE, "SENDER", data, Peer())


def _watch_tmpfile(monkeypatch: pytest.MonkeyPatch, refuse: bool) -> list[int]:
    """Record every open of an unnamed file; with `refuse`, fail them as a file system without
    O_TMPFILE support does."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    seen: list[int] = []
    real_open = os.open

    def watching_open(path, flags, *args, **kw):  # type: ignore[no-untyped-def]
        if tmpfile and flags & tmpfile == tmpfile:
            seen.append(flags)
            if refuse:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", watching_open)
    return seen


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-file", "named-fallback"])
def test_whole_data_set_is_written_exactly_and_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool
) -> None:
    data = encode(ct_dataset(UID))
    tmpfile_opens = _watch_tmpfile(monkeypatch, refuse=not unnamed)
    result = _store(tmp_path, data)
    assert result.status == 0
    final = tmp_path / f"CT.{UID}"
    assert result.path == str(final)
    assert final.read_bytes() == file_meta(CT, UID, EXPLICIT_LE, "SENDER") + data
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # no temporary file left
    assert len(tmpfile_opens) == 1  # tried once; a refusal switches the store to named files for good
    assert pydicom.dcmread(final).SOPInstanceUID == UID


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-file", "named-fallback"])
def test_existing_file_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool) -> None:
    _watch_tmpfile(monkeypatch, refuse=not unnamed)
    assert _store(tmp_path, encode(ct_dataset(UID, patient="First"))).status == 0
    second = encode(ct_dataset(UID, patient="Second"))
    assert _store(tmp_path, second).status == 0
    final = tmp_path / f"CT.{UID}"
    assert final.read_bytes().endswith(second)
    assert pydicom.dcmread(final).PatientName == "Second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_mismatching_data_set_is_reported(tmp_path: Path) -> None:
    """The data set names another instance than its C-STORE-RQ: the status says so (as storescp does)."""
    result = _store(tmp_path, encode(ct_dataset(UID + ".9")))
    assert result.status == status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "does not match" in result.comment


def test_unwritable_directory_is_a_failure_status_not_a_crash(tmp_path: Path) -> None:
    store = Store(StorageOptions(output_dir=str(tmp_path)))
    store.root = str(tmp_path / "gone")  # removed under the receiver
    result = store.store(CT, UID, EXPLICIT_LE, "SENDER", encode(ct_dataset(UID)), Peer())
    assert result.status == status.OUT_OF_RESOURCES
    assert result.path is None


@pytest.mark.parametrize("path", ["unnamed-file", "named-fallback", "streamed"])
def test_time_names_never_replace_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """``-tn``: a name another process took after this one chose it (two children, same millisecond) is
    not overwritten; the object gets the next serial and the earlier file keeps its bytes."""
    monkeypatch.setattr(storage, "_timestamp", lambda now: ("20261203", "101500123"))
    # The race: the other child's file appears after the existence check of the name.
    monkeypatch.setattr(storage.os.path, "lexists", lambda p: False)
    earlier = tmp_path / "20261203101500123.CT"
    earlier.write_bytes(b"acknowledged earlier")
    _watch_tmpfile(monkeypatch, refuse=path == "named-fallback")
    data = encode(ct_dataset(UID))
    store = Store(StorageOptions(output_dir=str(tmp_path), filenames="time"))
    if path == "streamed":
        incoming = store.begin(CT, UID, EXPLICIT_LE, "SENDER")
        incoming.write(data)
        incoming.flush()
        result = store.complete(incoming, Peer())
    else:
        result = store.store(CT, UID, EXPLICIT_LE, "SENDER", data, Peer())
    assert result.status == 0
    assert earlier.read_bytes() == b"acknowledged earlier"
    assert result.path == str(tmp_path / "20261203101500123_0000.CT")
    assert pydicom.dcmread(result.path).SOPInstanceUID == UID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261203101500123.CT", "20261203101500123_0000.CT"]
