"""The prepared data sets of ``batchstore load``: fresh UIDs patched in place decode as the data set they
came from, with storescu's +II/+IR/+IS/+IP structure."""

from __future__ import annotations

import re
from io import BytesIO

import pydicom
import pytest
from peers import make_corpus
from pydicom.filereader import read_dataset

from batchstore.dicom.uids import EXPLICIT_VR_BE, IMPLICIT_VR_LE
from batchstore.loadgen.templates import FreshUids, prepare
from batchstore.sender.plan import make_plan
from batchstore.sender.scan import scan

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _decode(payload: bytes | bytearray, ts: str) -> pydicom.Dataset:
    return read_dataset(BytesIO(bytes(payload)), ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE)


def _prepared(paths: list[str], fresh: bool = True):
    instances, failures = scan(paths)
    assert not failures
    group = make_plan(instances).context_groups[0]
    accepted = {pc.context_id: pc.transfer_syntaxes[0] for pc in group.contexts}
    return instances, prepare(instances, group, accepted, fresh=fresh)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    corpus = make_corpus(tmp_path_factory.mktemp("mixed"), 24, seed=11, profile="mixed")
    return [str(p) for p in corpus.paths() if p.stat().st_size < 2**20]


def test_fresh_uids_follow_storescu_structure_and_keep_the_rest(mixed) -> None:
    instances, templates = _prepared(mixed)
    syntaxes = {t.transfer_syntax for t in templates}
    assert len(syntaxes) >= 2, syntaxes  # several encodings (implicit, explicit, compressed ...)
    fresh = FreshUids(series_after=3, study_after=2, patient_after=2)
    seen_instances: set[str] = set()
    for template in templates:
        original = pydicom.dcmread(template.instance.path, force=True)
        size = template.size
        by_n = {}
        for n in (0, 1, 2, 3, 5, 6, 12, 13):
            uid = fresh.apply(template, n)
            assert template.size == size  # patched in place: the layout never changes
            ds = _decode(template.payload, template.transfer_syntax)
            by_n[n] = ds
            assert ds.SOPInstanceUID == uid and len(uid) == 64 and UID.match(uid), uid
            assert UID.match(ds.SeriesInstanceUID) and UID.match(ds.StudyInstanceUID)
            assert str(ds.PatientName).startswith("BATCHSTORE^LOAD")
            seen_instances.add(uid)
            # everything else is the file's own
            for keyword in ("SOPClassUID", "Modality", "Rows", "Columns"):
                if keyword in original:
                    assert ds[keyword].value == original[keyword].value, keyword
            if "PixelData" in original:
                assert ds.PixelData == original.PixelData
        # +IR 3: images 0-2 one series, 3-5 the next; +IS 2: series 0-1 (images 0-5) one study; +IP 2:
        # studies 0-1 (images 0-11) one patient
        assert by_n[0].SeriesInstanceUID == by_n[2].SeriesInstanceUID != by_n[3].SeriesInstanceUID
        assert by_n[3].StudyInstanceUID == by_n[5].StudyInstanceUID != by_n[6].StudyInstanceUID
        # image 12 is in series 4, study 2: the third study, so a new patient
        assert by_n[0].PatientID == by_n[6].PatientID != by_n[12].PatientID == by_n[13].PatientID
        assert by_n[0].PatientName == by_n[6].PatientName != by_n[12].PatientName
    assert len(seen_instances) == 8  # the same n gives the same UID, whatever the file


def test_missing_elements_are_added_and_keep_uids_sends_the_file_as_is(mixed, tmp_path) -> None:
    ds = pydicom.dcmread(mixed[0])
    for keyword in ("PatientName", "PatientID", "SeriesInstanceUID"):
        if keyword in ds:
            delattr(ds, keyword)
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    _instances, templates = _prepared([str(bare)])
    FreshUids().apply(templates[0], 7)
    out = _decode(templates[0].payload, templates[0].transfer_syntax)
    assert (
        out.PatientID.startswith("BS") and out.SeriesInstanceUID and out.SOPInstanceUID != ds.SOPInstanceUID
    )
    _instances, kept = _prepared([mixed[0]], fresh=False)
    with open(mixed[0], "rb") as fh:
        fh.seek(kept[0].instance.data_offset)
        assert bytes(kept[0].payload) == fh.read()
    assert kept[0].slots == {}


def test_two_associations_never_share_a_uid() -> None:
    a, b = FreshUids(), FreshUids()
    assert {a.uid(1, n) for n in range(100)}.isdisjoint({b.uid(1, n) for n in range(100)})
    assert len({a.uid(k, 0) for k in (1, 2, 3)}) == 3
