"""The sender's per-file shortcuts give the answers of the general code they stand in for.

- `scu._store_response` (the usual C-STORE-RSP, read in C without a `dimse.Command`) against its Python
  twin, `dimse.decode_command`, on generated command sets: well formed, repeated, short or missing
  elements, odd comments, truncated and malformed ones (the same `ValueError`). Fails rather than skips
  when the extension is not built (``BATCHSTORE_PURE_PYTHON=1`` skips this module).
- `part10.verify_bytes`'s shortcut for a plain explicit VR little endian data set against the walker.
- A real send through `StoreSCU` to DCMTK's storescp: statuses and error comments as storescp sends them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from peers import DcmtkStorescp, make_corpus

from batchstore.dicom import part10
from batchstore.dicom.part10 import read_dataset_bytes, read_instance, verify_bytes
from batchstore.dicom.uids import EXPLICIT_VR_LE
from batchstore.dicom.walk import Source
from batchstore.net import dimse
from batchstore.sender import scu as scu_module
from batchstore.sender.scu import AssociationOptions, StoreSCU, _store_response_py

pytestmark = pytest.mark.skipif(
    os.environ.get("BATCHSTORE_PURE_PYTHON") == "1", reason="the pure-Python code was asked for"
)


def compiled():  # type: ignore[no-untyped-def]
    fast = scu_module._store_response
    assert fast is not _store_response_py, "batchstore/dicom/_walkfast.c is not built: run make setup"
    return fast


CT = "1.2.840.10008.5.1.4.1.1.2"

_ELEMENTS = hs.sampled_from(
    [
        dimse.MESSAGE_ID_BEING_RESPONDED_TO,
        dimse.STATUS,
        dimse.ERROR_COMMENT,
        0x0000,
        0x0002,
        0x0100,
        0x0800,
        0x1000,
    ]
)
_VALUES = hs.one_of(
    hs.integers(0, 0xFFFF).map(lambda v: struct.pack("<H", v)),
    hs.binary(max_size=6),
    hs.sampled_from([b"", b"\0", b"bad file \0", b"x\xe9 \0 ", b"1.2.840.10008.5.1.4.1.1.2\0"]),
)


@settings(max_examples=500, deadline=None)
@given(
    hs.lists(hs.tuples(_ELEMENTS, _VALUES), max_size=9),
    hs.integers(0, 12),
    hs.integers(0, 2),
    hs.binary(max_size=3),
)
def test_store_response_reads_what_decode_command_reads(elements, cut: int, bad: int, prefix: bytes) -> None:  # type: ignore[no-untyped-def]
    data = b"".join(struct.pack("<HHL", 0, e, len(v)) + v for e, v in elements)
    if bad == 1 and data:  # an element of another group
        data = struct.pack("<HHL", 8, 0x0900, 2) + b"\0\0" + data
    elif bad == 2:  # a length that runs past the end
        data += struct.pack("<HHL", 0, 0x0902, 99) + b"ab"
    data = data[: max(0, len(data) - cut)] if cut < 4 else data
    fast = compiled()
    try:
        cmd = dimse.decode_command(data)
    except ValueError as exc:
        for read in (fast, _store_response_py):
            with pytest.raises(ValueError) as raised:
                read(prefix + data, len(prefix))
            assert str(raised.value) == str(exc)
        return
    expected = (cmd.message_id_responded, cmd.status, cmd.error_comment)
    assert fast(prefix + data, len(prefix)) == _store_response_py(prefix + data, len(prefix)) == expected


def test_store_response_of_the_responses_batchstore_and_dcmtk_send() -> None:
    for status, comment in ((0, None), (0xB000, None), (0xA700, "out of resources"), (0xC000, "")):
        data = dimse.c_store_rsp(7, CT, "1.2.3.4", status, comment)
        for read in (compiled(), _store_response_py):
            assert read(b"\4\0\0\0\0\0" + data, 6) == (7, status, comment or "")


def test_verify_bytes_shortcut_agrees_with_the_walker(tmp_path: Path) -> None:
    """Plain explicit VR little endian data sets take the shortcut; damaged ones still get the walker's reason."""
    corpus = make_corpus(tmp_path / "c", 12, seed=5)
    checked = 0
    for path in sorted((tmp_path / "c").rglob("*.dcm")):
        inst = read_instance(str(path))
        assert isinstance(inst, part10.Instance)
        data = read_dataset_bytes(inst.path, inst.data_offset, inst.size - inst.data_offset)
        for cut in (0, 1, 7, len(data) // 2):
            piece = data[: len(data) - cut]
            walker = part10._verify(Source(-1, len(piece), piece), 0, inst.transfer_syntax)
            assert verify_bytes(piece, inst.transfer_syntax) == walker, (path, cut)
            checked += inst.transfer_syntax == EXPLICIT_VR_LE
    assert checked and corpus is not None


@pytest.mark.needs_dcmtk
def test_statuses_read_from_storescp_are_the_ones_it_sent(tmp_path: Path) -> None:
    """A real association: storescp's answers, read with the per-file shortcut and with ``-d``'s general
    decoder, and every file stored."""
    make_corpus(tmp_path / "c", 3, seed=9, profile="uniform", size=1024)
    files = [read_instance(str(p)) for p in sorted((tmp_path / "c").rglob("*.dcm"))]
    with DcmtkStorescp(out_dir=tmp_path / "out", verbose=False) as scp:
        for debug in (False, True):
            inst = files[0]
            assert isinstance(inst, part10.Instance)
            scu = StoreSCU(
                AssociationOptions("127.0.0.1", scp.port), ((1, inst.sop_class_uid, (inst.transfer_syntax,)),)
            )
            scu.open()
            scu._debug = debug
            for inst in files:
                assert isinstance(inst, part10.Instance)
                data = read_dataset_bytes(inst.path, inst.data_offset, inst.size - inst.data_offset)
                rsp = scu.store_bytes(1, inst.sop_class_uid, inst.sop_instance_uid, data)
                assert (rsp.status, rsp.error_comment) == (0, "")
            scu.release()
    assert len(list((tmp_path / "out").iterdir())) == 3
