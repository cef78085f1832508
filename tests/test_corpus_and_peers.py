"""The test infrastructure itself: corpus generator and real peers (DCMTK storescp/storescu, Orthanc)."""

from __future__ import annotations

import collections
import contextlib
import os
import time
from pathlib import Path

import pydicom
import pytest
from peers import (
    STORESCU_TS_OPTION,
    dataset_bytes,
    dcmtk_send,
    free_port,
    gen_corpus_module,
    make_corpus,
    received_index,
    sop_instance_uid_of,
)
from pydicom.errors import InvalidDicomError

from batchstore.dicom.uids import EXPLICIT_VR_BE as EXPLICIT_BE
from batchstore.dicom.uids import EXPLICIT_VR_LE as EXPLICIT_LE
from batchstore.dicom.uids import IMPLICIT_VR_LE as IMPLICIT_LE
from batchstore.dicom.uids import RLE_LOSSLESS as RLE

gen_corpus = gen_corpus_module()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------


def test_generator_is_deterministic(tmp_path):
    a = make_corpus(tmp_path / "a", 45, seed=7, junk=6)
    b = make_corpus(tmp_path / "b", 45, seed=7, junk=6)
    assert a.manifest == b.manifest
    tree_a, tree_b = _tree(a.root), _tree(b.root)
    assert len(tree_a) == 45 + 6
    assert tree_a == tree_b  # same names, same bytes

    c = make_corpus(tmp_path / "c", 45, seed=8)
    assert not a.uids() & c.uids()  # another seed: other UIDs

    u1 = make_corpus(tmp_path / "u1", 30, seed=1, profile="uniform", size=2048)
    u2 = make_corpus(tmp_path / "u2", 30, seed=1, profile="uniform", size=2048)
    assert _tree(u1.root) == _tree(u2.root)


def test_manifest_matches_files(corpus_small):
    files = corpus_small.files
    assert len(files) == 60
    on_disk = {
        p.relative_to(corpus_small.root).as_posix() for p in corpus_small.root.rglob("*") if p.is_file()
    }
    assert on_disk == {f["path"] for f in files} | {j["path"] for j in corpus_small.junk}
    assert len(corpus_small.uids()) == len(files)
    for rec in files:
        path = corpus_small.path(rec)
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM" and len(raw) == rec["size"]
        ds = pydicom.dcmread(path)
        meta = ds.file_meta
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == rec["sop_class_uid"]
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == rec["sop_instance_uid"]
        assert meta.TransferSyntaxUID == rec["transfer_syntax"]
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "PatientName", "PatientID", "Modality"):
            assert ds.get(kw), (kw, rec["path"])
        assert ds.StudyInstanceUID == rec["study_instance_uid"]
        assert ds.SeriesInstanceUID == rec["series_instance_uid"]
        if "PixelData" in ds:  # decodes, in every transfer syntax (incl. big endian and RLE)
            arr = ds.pixel_array
            assert arr.shape[:2] == (ds.Rows, ds.Columns) and arr.any()
        assert sop_instance_uid_of(path) == rec["sop_instance_uid"]
        assert len(dataset_bytes(path)) < len(raw) - 132


def test_mixed_corpus_is_varied(corpus_small):
    files = corpus_small.files
    assert len({f["sop_class_uid"] for f in files}) >= 5
    assert {f["transfer_syntax"] for f in files} >= {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, RLE}
    sizes = sorted(f["size"] for f in files)
    assert sum(1024 <= s <= 20 * 1024 for s in sizes) >= 0.9 * len(sizes)
    assert sizes[-1] > 1_000_000  # one large file
    # realistic grouping, nested directories
    series = collections.Counter(f["series_instance_uid"] for f in files)
    assert len({f["patient_id"] for f in files}) >= 2
    assert len({f["study_instance_uid"] for f in files}) >= 3
    assert max(series.values()) >= 3
    assert all(f["path"].count("/") == 3 for f in files)
    # pixel-less classes are there too (Basic Text SR, Encapsulated PDF)
    assert {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.104.1"} <= {
        f["sop_class_uid"] for f in files
    }


def test_junk_files_are_broken_as_announced(corpus_small):
    kinds = {j["kind"]: corpus_small.path(j) for j in corpus_small.junk}
    assert set(kinds) == set(gen_corpus.JUNK_KINDS)
    assert all("junk_" in p.name for p in kinds.values())
    assert kinds["empty"].stat().st_size == 0
    for kind in ("empty", "text", "random_bytes"):
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(kinds[kind])
    # pydicom is lenient with the others: it does not raise, but the result is unusable
    ds = pydicom.dcmread(kinds["truncated_meta"])
    assert "TransferSyntaxUID" not in ds.file_meta and "SOPInstanceUID" not in ds
    ds = pydicom.dcmread(kinds["truncated_dataset"])
    assert ds.SOPInstanceUID and len(ds.PixelData) < ds.Rows * ds.Columns * 2
    with pytest.raises(ValueError):
        _ = ds.pixel_array
    with pytest.warns(UserWarning):
        ds = pydicom.dcmread(kinds["dicm_garbage"])
    assert "SOPInstanceUID" not in ds and "MediaStorageSOPInstanceUID" not in ds.file_meta
    # peers.dataset_bytes() only needs an intact file meta group
    for kind, path in kinds.items():
        with pytest.raises(ValueError) if kind != "truncated_dataset" else contextlib.nullcontext():
            dataset_bytes(path)


def test_uniform_profile_sizes_and_speed(tmp_path):
    t0 = time.perf_counter()
    small = make_corpus(tmp_path / "u1k", 5000, profile="uniform", size=1024)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, elapsed
    assert len(small.files) == 5000 and len(small.uids()) == 5000
    assert {f["sop_class_uid"] for f in small.files} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert {f["transfer_syntax"] for f in small.files} == {EXPLICIT_LE}
    assert all(abs(f["size"] - 1024) <= 64 for f in small.files)
    for rec in (small.files[0], small.files[4321]):
        ds = pydicom.dcmread(small.path(rec))
        assert ds.SOPInstanceUID == rec["sop_instance_uid"] and ds.pixel_array.size > 0
    assert os.path.getsize(small.path(small.files[-1])) == small.files[-1]["size"]

    big = make_corpus(tmp_path / "u512k", 3, profile="uniform", size=524288)
    assert all(abs(f["size"] - 524288) <= 4096 for f in big.files)


def test_many_classes_profile(tmp_path):
    c = make_corpus(tmp_path / "many", 160, sop_classes=150, junk=2)
    assert c.manifest["profile"] == "many-classes"
    classes = {f["sop_class_uid"] for f in c.files}
    storage = {uid for _, uid in gen_corpus.storage_sop_classes()}
    assert len(classes) == 150 and classes <= storage
    assert len(c.files) == 160 and len(c.junk) == 2
    ds = pydicom.dcmread(c.path(c.files[149]))
    assert ds.SOPClassUID == c.files[149]["sop_class_uid"]


# --------------------------------------------------------------------------
# DCMTK storescu -> storescp
# --------------------------------------------------------------------------


def _pick(corpus, per_key: int = 1, max_size: int = 100_000):
    """A few files per (transfer syntax, modality)."""
    seen: collections.Counter = collections.Counter()
    out = []
    for f in corpus.files:
        key = (f["transfer_syntax"], f["modality"])
        if f["size"] <= max_size and seen[key] < per_key:
            seen[key] += 1
            out.append(f)
    return out


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.needs_dcmtk
def test_storescp_bit_preserving_roundtrip(corpus_small, storescp):
    picked = _pick(corpus_small, per_key=2)
    by_ts = collections.defaultdict(list)
    for f in picked:
        by_ts[f["transfer_syntax"]].append(f)
    assert len(by_ts) == 4
    scp = storescp(["+xa", "+B"])
    for ts, recs in sorted(by_ts.items()):
        cp = dcmtk_send(corpus_small.paths(recs), scp.port, [STORESCU_TS_OPTION[ts]])
        assert cp.returncode == 0, cp.stderr
    received = received_index(scp.out_dir)
    assert set(received) == corpus_small.uids(picked)
    assert scp.association_count() == len(by_ts)
    for rec in picked:
        got = received[rec["sop_instance_uid"]]
        # storescp names files <modality-ish abbreviation>.<SOP Instance UID>
        assert os.path.basename(got).endswith("." + rec["sop_instance_uid"])
        assert pydicom.filereader.read_file_meta_info(got).TransferSyntaxUID == rec["transfer_syntax"]
        assert dataset_bytes(got) == dataset_bytes(corpus_small.path(rec)), rec["path"]


@pytest.mark.needs_dcmtk
def test_storescp_fork_receives_directory_and_skips_junk(corpus_small, storescp):
    scp = storescp(["--fork", "+xa"], nodelay=True)
    cp = dcmtk_send([corpus_small.root], scp.port, ["+sd", "+r", "-nh", "-xr"])
    assert cp.returncode == 0, cp.stderr
    for j in corpus_small.junk:
        if j["kind"] != "empty":  # storescu silently skips empty files
            assert j["path"].rsplit("/", 1)[-1] in cp.stderr
    received = scp.wait_files(len(corpus_small.files), timeout=10)
    assert set(received) == corpus_small.uids()
    assert scp.association_count() == 1
    # pixel data survived (transfer syntax may have been changed: implicit -> explicit)
    big = max(corpus_small.files, key=lambda f: f["size"])
    a = pydicom.dcmread(received[big["sop_instance_uid"]]).pixel_array
    b = pydicom.dcmread(corpus_small.path(big)).pixel_array
    assert (a == b).all()


@pytest.mark.needs_dcmtk
def test_storescp_stop_kills_forked_children(storescp):
    import psutil
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    scp = storescp(["--fork"])
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port)
    try:
        assert assoc.is_established
        deadline = time.monotonic() + 5
        while not (children := psutil.Process(scp.proc.pid).children()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children, "storescp --fork did not fork a child for the association"
        scp.stop()
        assert not scp.running
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    finally:
        assoc.abort()


# --------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------


@pytest.mark.needs_dcmtk
@pytest.mark.needs_orthanc
def test_orthanc_receives_from_storescu(corpus_small, orthanc):
    assert orthanc.count_instances() == 0
    recs = corpus_small.files
    cp = dcmtk_send(corpus_small.paths(recs), orthanc.dicom_port, ["-xr"], called_aet=orthanc.aet)
    assert cp.returncode == 0, cp.stderr
    stats = orthanc.statistics()
    assert stats["CountInstances"] == len(recs)
    assert stats["CountSeries"] == len({f["series_instance_uid"] for f in recs})
    assert stats["CountStudies"] == len({f["study_instance_uid"] for f in recs})
    assert stats["CountPatients"] == len({f["patient_id"] for f in recs})
    assert orthanc.instance_uids() == corpus_small.uids(recs)
    assert orthanc.count_instances() == len(recs)


@pytest.mark.needs_dcmtk
@pytest.mark.needs_orthanc
def test_orthanc_accepts_many_classes_and_any_called_aet(tmp_path, orthanc):
    c = make_corpus(tmp_path / "many", 20, sop_classes=20)
    cp = dcmtk_send(c.paths(), orthanc.dicom_port, ["-R"], called_aet="WHATEVER", aet="SOMEONE")
    assert cp.returncode == 0, cp.stderr
    assert orthanc.instance_uids() == c.uids()
