"""The scan's compiled header parse (`_walkfast.scan_part10`, used by `part10._parse`) against the
pure-Python parser: for every file, `read_instance` gives the same `Instance` or `ScanFailure` with and
without it. Generated files cover the usual file the compiled parse answers and the unusual ones it must
leave to Python (implicit or deflated meta, private and contradicting syntaxes, sequences before the SOP
UIDs, odd characters in UIDs, values past the first read, truncation). Fails rather than skips when the
extension should be built and is not; ``BATCHSTORE_PURE_PYTHON=1`` turns the compiled parse off."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from peers import batchstore_env, make_corpus

from batchstore.dicom import part10
from batchstore.dicom.part10 import Instance, read_instance
from batchstore.dicom.walk import LONG_VRS

pytestmark = pytest.mark.skipif(
    os.environ.get("BATCHSTORE_PURE_PYTHON") == "1", reason="the pure-Python parser was asked for"
)

_IMPLICIT, _EXPLICIT, _BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
_CT = "1.2.840.10008.5.1.4.1.1.2"


def _both(path: str | Path) -> tuple[object, object, bool]:
    """`read_instance` with the compiled parse and with Python alone, and whether the compiled one answered."""
    compiled = part10._SCAN_COMPILED
    assert compiled is not None, (
        "batchstore/dicom/_walkfast.c is not built: run make setup (pip install -e .)"
    )
    with open(path, "rb") as fh:
        head = fh.read(8192)
    answered = compiled(head, os.path.getsize(path)) is not None
    fast = read_instance(str(path))
    part10._SCAN_COMPILED = None
    try:
        slow = read_instance(str(path))
    finally:
        part10._SCAN_COMPILED = compiled
    return fast, slow, answered


def _el(tag: int, vr: bytes | None, value: bytes, little: bool = True, length: int | None = None) -> bytes:
    """One element: explicit when `vr` is given, implicit otherwise; `length` overrides the value's."""
    order = "<" if little else ">"
    n = len(value) if length is None else length
    group, elem = tag >> 16, tag & 0xFFFF
    if vr is None:
        return struct.pack(order + "HHI", group, elem, n) + value
    if vr in LONG_VRS:
        return struct.pack(order + "HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack(order + "HH2sH", group, elem, vr, n & 0xFFFF) + value


_UID_CHARS = hs.sampled_from(
    ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", " 1.2 ", "1.2\0", "1.2\t", "1.\x1c2", "1.\xe92", ""]
)
_TS = hs.sampled_from([_IMPLICIT, _EXPLICIT, _BIG, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                       "1.2.840.10008.1.2.5", "1.2.3.4.5", _EXPLICIT + " ", _EXPLICIT + "\0", " " + _IMPLICIT, ""])  # fmt: skip


def _text(value: str, pad: bytes = b"\0") -> bytes:
    raw = value.encode("latin-1")
    return raw + pad if len(raw) % 2 else raw


@hs.composite
def part10_files(draw: hs.DrawFn) -> bytes:
    """A preamble and "DICM", file meta information (usually explicit), and a data set in some encoding."""
    meta_vr = draw(hs.sampled_from([True, True, True, False]))  # False: implicit VR meta information
    ts = draw(_TS)
    meta = [
        (0x00020001, b"OB", b"\0\1"),
        (0x00020002, b"UI", _text(draw(_UID_CHARS) or _CT)),
        (0x00020003, b"UI", _text(draw(_UID_CHARS))),
        (0x00020010, b"UI", _text(ts)),
    ]
    if draw(hs.booleans()):
        meta.append((0x00020013, draw(hs.sampled_from([b"SH", b"ZZ", b"UN", b"OB"])), b"BATCHSTORE01"))
    if draw(hs.booleans()):
        meta = draw(hs.permutations(meta))
    body = b"".join(_el(t, v if meta_vr else None, val) for t, v, val in meta)
    if draw(hs.booleans()):
        body = _el(0x00020000, b"UL", struct.pack("<I", len(body))) + body
    explicit = draw(hs.booleans())
    little = draw(hs.booleans())
    vr = (lambda v: v) if explicit else (lambda v: None)
    elements = [(0x00080005, vr(b"CS"), b"ISO_IR 100")]
    if draw(hs.booleans()):  # a large value before the UIDs: they lie beyond the first read
        elements.append((0x00080001, vr(b"OB"), bytes(draw(hs.sampled_from([10, 9000])))))
    if draw(hs.booleans()):  # a sequence before the UIDs
        item = struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE000, 0)
        end = struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE0DD, 0)
        elements.append((0x00080006, vr(b"SQ"), item + end))
    if draw(hs.booleans()):
        elements.append((0x00080016, vr(b"UI"), _text(draw(_UID_CHARS))))
    if draw(hs.booleans()):
        elements.append((0x00080018, vr(b"UI"), _text(draw(_UID_CHARS))))
    elements.append((0x00100010, vr(b"PN"), b"DOE^J "))
    data = b""
    for tag, v, value in elements:
        undefined = tag == 0x00080006
        data += _el(tag, v, value, little, 0xFFFFFFFF if undefined else None)
    if draw(hs.booleans()):  # a length that overruns the file
        data += _el(0x00080017, vr(b"UI"), b"1.2", little, length=draw(hs.sampled_from([40, 70000])))
        data = data + b""
    out = bytes(128) + b"DICM" + body + data
    cut = draw(hs.integers(0, 40))
    return out[: len(out) - cut] if draw(hs.booleans()) else out


@settings(max_examples=300, deadline=None)
@given(part10_files())
def test_same_answer_on_generated_files(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("f") / "f.dcm"
    path.write_bytes(content)
    fast, slow, _answered = _both(path)
    assert fast == slow


def test_same_answer_on_pydicom_test_files_and_a_generated_corpus(tmp_path: Path) -> None:
    answered = 0
    # pydicom's own test files, read from where pydicom keeps them (get_testdata_files goes to the network)
    files = sorted(
        str(p) for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file()
    )
    corpus = tmp_path / "c"
    make_corpus(corpus, 40, seed=3)
    files += sorted(str(p) for p in corpus.rglob("*") if p.is_file())
    for path in files:
        fast, slow, hit = _both(path)
        assert fast == slow, path
        answered += hit
    assert answered > 100, answered  # the compiled parse answers the usual file, not only declines


def test_the_usual_file_is_parsed_in_c_with_the_same_fields(tmp_path: Path) -> None:
    meta = b"".join(
        _el(t, v, val)
        for t, v, val in [
            (0x00020001, b"OB", b"\0\1"),
            (0x00020002, b"UI", _text(_CT)),
            (0x00020003, b"UI", _text("1.2.3.4")),
            (0x00020010, b"UI", _text(_EXPLICIT)),
        ]
    )
    data = (
        _el(0x00080016, b"UI", _text(_CT))
        + _el(0x00080018, b"UI", _text("1.2.3.4.5"))
        + _el(0x7FE00010, b"OB", bytes(100))
    )
    path = tmp_path / "ct.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta + data)
    fast, slow, answered = _both(path)
    assert answered and fast == slow
    assert isinstance(fast, Instance)
    assert (fast.sop_class_uid, fast.sop_instance_uid, fast.transfer_syntax) == (_CT, "1.2.3.4.5", _EXPLICIT)
    assert fast.data_offset == 132 + len(meta) and fast.size == path.stat().st_size


def test_a_data_set_encoded_against_its_header_is_recorded_as_it_is(tmp_path: Path) -> None:
    """The writer bug `_parse` mends (meta says explicit, data set is implicit), in C too."""
    meta = _el(0x00020010, b"UI", _text(_EXPLICIT))
    data = _el(0x00080016, None, _text(_CT)) + _el(0x00080018, None, _text("1.2.3"))
    path = tmp_path / "bug.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta + data)
    fast, slow, answered = _both(path)
    assert answered and fast == slow
    assert isinstance(fast, Instance) and fast.transfer_syntax == _IMPLICIT


def test_pure_python_turns_the_compiled_parse_off() -> None:
    code = "from batchstore.dicom import part10; print(part10._SCAN_COMPILED is None)"
    env = {**batchstore_env(), "BATCHSTORE_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_listed_file_swapped_for_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """`scan` reads listed files without a second stat (``regular=True``): a FIFO that took a file's place
    since it was listed is opened without blocking and refused after its fstat, as before."""
    fifo = tmp_path / "x.dcm"
    os.mkfifo(fifo)
    for regular in (True, False):
        failure = read_instance(str(fifo), regular=regular)
        assert not isinstance(failure, Instance) and failure.reason == "not a regular file: FIFO (named pipe)"
    missing = read_instance(str(tmp_path / "gone.dcm"), regular=True)
    assert not isinstance(missing, Instance) and missing.reason == "no such file or directory"
