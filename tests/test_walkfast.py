"""The compiled walker (`batchstore.dicom._walkfast`) against its pure-Python twin: the same position for
every input, whatever the bytes. `make test` builds it (the editable install); with
``BATCHSTORE_PURE_PYTHON=1`` batchstore runs without it, and these tests fail rather than skip when it
should be there and is not."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from peers import batchstore_env
from pydicom.filewriter import write_dataset

from batchstore.dicom import walk
from batchstore.dicom.part10 import Instance, read_instance
from batchstore.dicom.walk import ALL_VRS, LONG_VRS, skip_plain_explicit_le_py

pytestmark = pytest.mark.skipif(
    os.environ.get("BATCHSTORE_PURE_PYTHON") == "1", reason="the pure-Python walker was asked for"
)


def compiled():  # type: ignore[no-untyped-def]
    """The compiled loop, as `walk` set it up at import (its VR sets handed over)."""
    assert walk.COMPILED, "batchstore/dicom/_walkfast.c is not built: run make setup (pip install -e .)"
    return walk.skip_plain_explicit_le


def test_the_compiled_walker_is_built_and_used() -> None:
    assert walk.COMPILED, "batchstore/dicom/_walkfast.c is not built: run make setup (pip install -e .)"
    assert walk.skip_plain_explicit_le is not skip_plain_explicit_le_py


def test_pure_python_is_used_when_asked() -> None:
    code = "from batchstore.dicom import walk; print(walk.COMPILED)"
    env = {**batchstore_env(), "BATCHSTORE_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _element(vr: bytes, length: int, value_size: int | None = None) -> bytes:
    size = length if value_size is None else value_size
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", 0x0010, 0x0010, vr, 0, length) + bytes(size)
    return struct.pack("<HH2sH", 0x0010, 0x0010, vr, length) + bytes(size)


_VRS = sorted(ALL_VRS) + [b"ZZ", b"\x00\x00", b"SQ"]


@settings(max_examples=400, deadline=None)
@given(
    hs.lists(hs.tuples(hs.sampled_from(_VRS), hs.integers(0, 40), hs.booleans()), max_size=12),
    hs.integers(0, 20),
    hs.integers(0, 300),
)
def test_same_position_on_element_streams(elements, cut: int, start: int) -> None:  # type: ignore[no-untyped-def]
    """Well-formed runs, unknown VRs, undefined lengths, values that overrun, every truncation."""
    skip = compiled()
    data = b"".join(
        _element(vr, 0xFFFFFFFF if undefined and vr in LONG_VRS else n, n) for vr, n, undefined in elements
    )
    data = data[: max(0, len(data) - cut)]
    for buf in (data, bytearray(data), memoryview(data)):
        for pos in (0, min(start, len(data))):
            assert skip(buf, pos) == skip_plain_explicit_le_py(buf, pos)


@settings(max_examples=400, deadline=None)
@given(hs.binary(max_size=200), hs.integers(0, 200))
def test_same_position_on_any_bytes(data: bytes, pos: int) -> None:
    assert compiled()(data, pos) == skip_plain_explicit_le_py(data, pos)


def test_lengths_near_the_32_bit_limit_never_wrap() -> None:
    skip = compiled()
    for length in (0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000):
        data = _element(b"OB", length, 4) + _element(b"LO", 2)
        assert skip(data, 0) == skip_plain_explicit_le_py(data, 0) == 0


def test_mmap_and_every_pydicom_test_file(tmp_path: Path) -> None:
    """The data sets of pydicom's own test files, as stored (whatever their syntax) and re-encoded in
    explicit VR little endian where pydicom can."""
    skip = compiled()
    stored = reencoded = 0
    # where pydicom keeps them: get_testdata_files("*.dcm") also asks the network for more (15 s offline)
    for path in sorted(str(p) for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm")):
        head = read_instance(path)
        if isinstance(head, Instance):
            data = Path(path).read_bytes()[head.data_offset :]
            assert skip(data, 0) == skip_plain_explicit_le_py(data, 0), path
            stored += 1
        try:
            ds = pydicom.dcmread(path, force=True)
            buf = pydicom.filebase.DicomBytesIO()
            write_dataset(buf, ds, ("<", True))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - files pydicom cannot re-encode say nothing here
            continue
        data = buf.getvalue()
        assert skip(data, 0) == skip_plain_explicit_le_py(data, 0), path
        reencoded += 1
    assert stored > 60 and reencoded > 40, (stored, reencoded)
    f = tmp_path / "m"
    f.write_bytes(_element(b"UL", 4) * 3)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert skip(m, 0) == skip_plain_explicit_le_py(m, 0) == 36
