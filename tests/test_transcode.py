"""Transfer syntax conversion on the fly (issue 12), against real peers on loopback.

pydicom's own test files (the directory that ships with pydicom; nothing is downloaded) go to DCMTK
storescp with its default (uncompressed-only) acceptance and with ``+xa``: everything dcmsend delivers,
batchstore delivers; every delivered file that was decompressed from a lossless syntax has the original's
decoded pixels; every file not delivered has its reason. Then deflate (odd and even lengths) to storescp
and Orthanc, compression on request (``-xs -xv -xw -xr -xd``), big endian to an explicit-VR-LE-only peer,
the local sanity check and DICOMDIR handling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from peers import DCMTK_DCMSEND, DcmtkStorescp, Orthanc, dcmtk_env

import batchstore
from batchstore.dicom import uids
from batchstore.dicom.transcode import EditOptions, encode_dataset
from batchstore.sender.plan import PlanOptions
from batchstore.sender.report import Report

TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
LOOPBACK = "127.0.0.1"


def _send(paths: list[str] | list[Path], port: int, **kw: object) -> Report:
    kw.setdefault("workers", 2)
    kw.setdefault("halt_on_failure", False)
    kw.setdefault("retries", 0)
    return batchstore.send([str(p) for p in paths], LOOPBACK, port, **kw)  # type: ignore[arg-type]


def _dcmsend_delivered(port: int, work: Path) -> dict[str, str]:
    """Run dcmsend over the test files; path -> DIMSE status line of every file it sent successfully."""
    report = work / "dcmsend.txt"
    subprocess.run(
        [
            DCMTK_DCMSEND,
            "-nh",
            "+sd",
            "+r",
            "--create-report-file",
            str(report),
            LOOPBACK,
            str(port),
            str(TEST_FILES),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dcmtk_env(),
        timeout=120,
        check=False,
    )
    delivered: dict[str, str] = {}
    path = ""
    for line in report.read_text(errors="replace").splitlines():
        if line.startswith("Filename"):
            path = line.split(":", 1)[1].strip()
        elif line.startswith("DIMSE Status") and path:
            status = line.split(":", 1)[1].strip()
            if status.startswith("0x0000") or status.lower().startswith("0xb"):
                delivered[os.path.realpath(path)] = status
            path = ""
    return delivered


def _pixels(path: str | Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


@pytest.fixture(scope="module", params=[[], ["+xa"]], ids=["storescp-default", "storescp-xa"])
def corpus_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """dcmsend, then batchstore, over pydicom's test files to one storescp; (dcmsend's, batchstore's, scp)."""
    work = tmp_path_factory.mktemp("corpus")
    scp = DcmtkStorescp(request.param, out_dir=work / "out", verbose=False)
    with scp:
        dcmsend = _dcmsend_delivered(scp.port, work)
        for child in (work / "out").iterdir():
            child.unlink()
        report = _send([TEST_FILES], scp.port, scan_directories=True, recurse=True)
        received = scp.received()
        yield dcmsend, report, received


@pytest.mark.needs_dcmtk
def test_pydicom_files_batchstore_delivers_what_dcmsend_delivers(corpus_run) -> None:
    dcmsend, report, _ = corpus_run
    assert dcmsend, "dcmsend delivered nothing: the harness is broken"
    outcome = {os.path.realpath(o.path): o for o in report.outcomes}
    missed = {p: outcome[p].error for p in dcmsend if not outcome[p].delivered}
    assert not missed, missed
    for o in report.outcomes:
        if not o.delivered:
            assert o.error, f"{o.path}: not delivered and no reason"
        if o.sop_class_uid == uids.MEDIA_STORAGE_DIRECTORY:
            assert o.category == "skipped" and o.error.startswith("DICOMDIR: ")
        if o.delivered:
            assert o.sent_ts, o.path


@pytest.mark.needs_dcmtk
def test_delivered_lossless_pixels_equal(corpus_run) -> None:
    """Every delivered file from a lossless (or uncompressed) syntax decodes to the original's pixels."""
    _, report, received = corpus_run
    uid_counts = Counter(o.sop_instance_uid for o in report.outcomes)
    compared = decoded = 0
    for o in report.outcomes:
        if not o.delivered:
            continue
        if o.pixels_decoded:
            assert not uids.is_lossy(o.original_ts), f"{o.path}: lossy file decompressed by default"
            assert o.sent_ts in (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)
        if uids.is_lossy(o.original_ts) or uid_counts[o.sop_instance_uid] > 1:
            continue  # several test files share this UID: the received copy may be another file's
        got = received[o.sop_instance_uid]
        assert str(pydicom.dcmread(got, stop_before_pixels=True).file_meta.TransferSyntaxUID) == o.sent_ts
        try:
            original = _pixels(o.path)
        except Exception:
            continue  # no pixel data, or pydicom cannot decode the original either
        assert np.array_equal(original, _pixels(got)), o.path
        compared += 1
        decoded += o.pixels_decoded
    assert compared >= 20
    assert decoded >= 3 or not any(o.pixels_decoded for o in report.outcomes)


@pytest.mark.needs_dcmtk
def test_lossy_files_decompressed_only_when_allowed(tmp_path: Path) -> None:
    lossy = [TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", TEST_FILES / "SC_rgb_jls_lossy_line.dcm"]
    with DcmtkStorescp(out_dir=tmp_path / "out", verbose=False) as scp:
        refused = _send(lossy, scp.port)
        assert [o.category for o in refused.outcomes] == ["permanent", "permanent"]
        assert all("--decompress-lossy" in o.error for o in refused.outcomes)
        allowed = _send(lossy, scp.port, plan=PlanOptions(decompress="lossy"))
        assert [o.delivered for o in allowed.outcomes] == [True, True], [o.error for o in allowed.outcomes]
        received = scp.received()
    for o in allowed.outcomes:
        assert o.pixels_decoded
        ds = pydicom.dcmread(received[o.sop_instance_uid])
        assert ds.LossyImageCompression == "01"
        method = "ISO_10918_1" if o.original_ts == uids.JPEG_BASELINE else "ISO_14495_1"
        assert method in str(ds.get("LossyImageCompressionMethod", method))


# --- deflate ---------------------------------------------------------------------------------------


def _deflate_inputs(work: Path) -> tuple[list[Path], set[int]]:
    """pydicom's deflated file, plus explicit-LE files whose raw deflate stream is odd and even long."""
    picked: dict[int, Path] = {}
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm", "rtplan.dcm", "rtdose.dcm", "JPGExtended.dcm"):
        path = TEST_FILES / name
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID != uids.EXPLICIT_VR_LE:
            continue
        raw = encode_dataset(str(path), uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_LE).payload
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        parity = len(c.compress(raw) + c.flush()) % 2
        picked.setdefault(parity, path)
    return [TEST_FILES / "image_dfl.dcm", *picked.values()], set(picked)


@pytest.mark.needs_dcmtk
def test_deflate_odd_and_even_to_storescp(tmp_path: Path) -> None:
    inputs, parities = _deflate_inputs(tmp_path)
    assert os.path.getsize(TEST_FILES / "image_dfl.dcm") % 2 == 1 or parities
    with DcmtkStorescp(["+xa"], out_dir=tmp_path / "out", verbose=False) as scp:
        as_is = _send(inputs[:1], scp.port)
        report = _send(
            inputs[1:],
            scp.port,
            plan=PlanOptions(proposal="deflated"),
            edits=EditOptions(compression_level=9),
        )
        received = scp.received()
    for o in as_is.outcomes + report.outcomes:
        assert o.delivered, (o.path, o.error)
        assert o.sent_ts == uids.DEFLATED_EXPLICIT_VR_LE  # -xd sends deflated when the peer accepts it
        assert str(pydicom.dcmread(received[o.sop_instance_uid]).file_meta.TransferSyntaxUID) == o.sent_ts
    for o in report.outcomes:
        assert np.array_equal(_pixels(o.path), _pixels(received[o.sop_instance_uid]))


@pytest.mark.needs_orthanc
def test_deflate_odd_and_even_to_orthanc(tmp_path: Path) -> None:
    inputs, _ = _deflate_inputs(tmp_path)
    with Orthanc() as orthanc:
        as_is = _send(inputs[:1], orthanc.dicom_port)
        report = _send(
            inputs[1:],
            orthanc.dicom_port,
            plan=PlanOptions(proposal="deflated"),
            edits=EditOptions(compression_level=9),
        )
        stored = orthanc.instance_uids()
    for o in as_is.outcomes + report.outcomes:
        assert o.delivered, (o.path, o.error)
        assert o.sop_instance_uid in stored
    assert {o.sent_ts for o in report.outcomes} == {uids.DEFLATED_EXPLICIT_VR_LE}


# --- compression on request -------------------------------------------------------------------------

COMPRESS_MODES = {
    "lossless": uids.JPEG_LOSSLESS_SV1,  # -xs
    "j2k-lossless": uids.JPEG_2000_LOSSLESS,  # -xv
    "j2k-lossy": uids.JPEG_2000,  # -xw
    "rle": uids.RLE_LOSSLESS,  # -xr
    "jls-lossless": uids.JPEG_LS_LOSSLESS,  # -xt
}


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("mode", list(COMPRESS_MODES))
def test_compress_uncompressed_input_as_proposed(mode: str, tmp_path: Path) -> None:
    target = COMPRESS_MODES[mode]
    inputs = [TEST_FILES / "CT_small.dcm", TEST_FILES / "examples_rgb_color.dcm", TEST_FILES / "rtplan.dcm"]
    with DcmtkStorescp(["+xa"], out_dir=tmp_path / "out", verbose=False) as scp:
        report = _send(inputs, scp.port, plan=PlanOptions(proposal=mode))
        received = scp.received()
    by_name = {Path(o.path).name: o for o in report.outcomes}
    for o in report.outcomes:
        assert o.delivered, (o.path, o.error)
        assert not o.pixels_decoded
    plan = by_name["rtplan.dcm"]  # no pixel data: falls back to its own syntax, as is
    assert plan.sent_ts == plan.original_ts
    for name in ("CT_small.dcm", "examples_rgb_color.dcm"):
        o = by_name[name]
        assert o.sent_ts == target, (name, o.sent_ts)
        got = pydicom.dcmread(received[o.sop_instance_uid])
        assert got.file_meta.TransferSyntaxUID == target
        if uids.is_lossy(target):
            assert got.LossyImageCompression == "01"
            assert "ISO_15444_1" in str(got.LossyImageCompressionMethod)
        else:
            assert np.array_equal(_pixels(o.path), got.pixel_array), name
            assert got.get("LossyImageCompression", "00") == "00"


@pytest.mark.needs_dcmtk
def test_no_lossy_compression_unless_asked(tmp_path: Path) -> None:
    inputs = [TEST_FILES / "CT_small.dcm", TEST_FILES / "examples_rgb_color.dcm"]
    with DcmtkStorescp(["+xa"], out_dir=tmp_path / "out", verbose=False) as scp:
        for mode in ("uncompr", "lossless", "j2k-lossless", "rle", "deflated"):
            report = _send(inputs, scp.port, plan=PlanOptions(proposal=mode))
            assert all(o.delivered and not uids.is_lossy(o.sent_ts) for o in report.outcomes), mode


# --- big endian, sanity check, DICOMDIR --------------------------------------------------------------

_LITTLE_ONLY = """[[TransferSyntaxes]]
[LittleOnly]
TransferSyntax1 = 1.2.840.10008.1.2.1
TransferSyntax2 = 1.2.840.10008.1.2

[[PresentationContexts]]
[LittleContexts]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.4\\LittleOnly
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.2\\LittleOnly
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.481.2\\LittleOnly

[[Profiles]]
[LittleEndian]
PresentationContexts = LittleContexts
"""


@pytest.mark.needs_dcmtk
def test_big_endian_arrives_explicit_vr_little_endian(tmp_path: Path) -> None:
    cfg = tmp_path / "little.cfg"
    cfg.write_text(_LITTLE_ONLY)
    inputs = [TEST_FILES / "MR_small_bigendian.dcm", TEST_FILES / "CT_small.dcm"]
    big = [p for p in TEST_FILES.glob("*big*endian*.dcm")]
    with DcmtkStorescp(["-xf", str(cfg), "LittleEndian"], out_dir=tmp_path / "out", verbose=False) as scp:
        report = _send(inputs + [p for p in big if p not in inputs], scp.port)
        received = scp.received()
    for o in report.outcomes:
        if o.original_ts != uids.EXPLICIT_VR_BE or o.sop_class_uid not in (
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.481.2",
        ):
            continue
        assert o.delivered and o.sent_ts == uids.EXPLICIT_VR_LE, (o.path, o.error)
        original = pydicom.dcmread(o.path)
        got = pydicom.dcmread(received[o.sop_instance_uid])
        assert got.file_meta.TransferSyntaxUID == uids.EXPLICIT_VR_LE
        assert [(e.tag, e.VR) for e in got.iterall()] == [(e.tag, e.VR) for e in original.iterall()]
        if "PixelData" in original:
            assert np.array_equal(original.pixel_array, got.pixel_array)


@pytest.mark.needs_dcmtk
def test_header_contradicting_data_set_fails_before_sending(tmp_path: Path) -> None:
    with DcmtkStorescp(["+xa"], out_dir=tmp_path / "out", verbose=True) as scp:
        report = _send([TEST_FILES / "SC_rgb_jpeg.dcm"], scp.port)
        stores = scp.log().count("Received Store Request")
    (o,) = report.outcomes
    assert o.category == "permanent" and o.attempts == 0
    assert "contradicts its header" in o.error and "implicit VR" in o.error
    assert stores == 0


@pytest.mark.needs_dcmtk
def test_dicomdir_skipped_or_read(tmp_path: Path) -> None:
    media = tmp_path / "media"
    shutil.copytree(TEST_FILES / "dicomdirtests", media)
    dicomdir = media / "DICOMDIR"
    with DcmtkStorescp(out_dir=tmp_path / "out", verbose=False) as scp:
        skipped = _send([dicomdir], scp.port)
        read = _send([dicomdir], scp.port, read_dicomdir=True)
    (o,) = skipped.outcomes
    assert o.category == "skipped" and o.error.startswith("DICOMDIR: ")
    assert skipped.exit_code() == 3  # nothing to send
    assert len(read.outcomes) > 1
    assert [x.category for x in read.outcomes if x.path == str(dicomdir)] == ["skipped"]
    assert all(x.delivered for x in read.outcomes if x.path != str(dicomdir)), [
        x.error for x in read.outcomes
    ]
    assert read.exit_code() == 0


def test_report_records_pixels_decoded(tmp_path: Path) -> None:
    report = Report()
    from batchstore.sender.report import Outcome

    report.outcomes.append(Outcome(path="x", original_ts="a", sent_ts="b", pixels_decoded=True))
    out = tmp_path / "r.json"
    report.write(str(out))
    (record,) = json.loads(out.read_text())["files"]
    assert record["original_ts"] == "a" and record["sent_ts"] == "b" and record["pixels_decoded"] is True
