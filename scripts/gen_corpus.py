#!/usr/bin/env python3
"""Deterministic synthetic DICOM corpus generator.

Writes proper DICOM Part 10 files (128-byte preamble, ``DICM``, file meta
information) into a directory tree and returns (optionally writes) a JSON
manifest describing every valid file and every junk file.

Profiles
--------
``mixed``
    Realistic patient/study/series tree (``PATnnnn/STnn_date/SEnnn_MOD/``)
    with CT, MR, CR, DX, Secondary Capture, US, Basic Text SR and
    Encapsulated PDF instances in Explicit VR Little Endian, Implicit VR
    Little Endian, Explicit VR Big Endian and RLE Lossless (encoded with
    pydicom's own RLE encoder). Files are mostly 1-20 KB; from 50 files on
    there are a few large files (2-4.5 MB) and, from 1000 files on, one of
    about 20 MB. About one series in ten uses extension-less file names
    (``IM000012``) as scanners writing media often do.
``uniform``
    Every file CT Image Storage, Explicit VR Little Endian, about ``size``
    bytes, 100 files per series directory (``Snnnn/IMnnnnnn.dcm``). Built
    from one encoded template whose UIDs/IDs are patched in place, so it
    is fast (5,000 x 1 KB in well under a second of CPU).
``many-classes``
    ``sop_classes`` (default 150) distinct storage SOP Class UIDs taken from
    ``pynetdicom.sop_class``, one or a few small files each, to force more
    than 128 presentation contexts.

Determinism: the output depends only on (count, seed, profile, junk,
sop_classes, size) and on the installed pydicom/pynetdicom versions
(pydicom writes its implementation UID/version into the file meta).

Usage::

    python scripts/gen_corpus.py OUT_DIR --count N [--seed S]
        [--profile mixed|uniform|many-classes] [--size BYTES] [--junk K]
        [--sop-classes N] [--manifest FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

__all__ = [
    "JUNK_KINDS",
    "PROFILES",
    "UID_ROOT",
    "generate",
    "main",
    "make_uid",
    "storage_sop_classes",
]

#: Root of every UID we generate (pydicom's registered root + a private arc).
UID_ROOT = "1.2.826.0.1.3680043.8.498.7733"

PROFILES = ("mixed", "uniform", "many-classes")

#: Junk kinds, cycled in this order when ``junk=K`` is given.
JUNK_KINDS = (
    "empty",  # zero-byte file
    "text",  # plain ASCII text
    "truncated_meta",  # valid file cut inside its file meta group
    "truncated_dataset",  # valid file cut at ~60 % (inside the pixel data)
    "random_bytes",  # random bytes, no DICM marker
    "dicm_garbage",  # 128-byte preamble + DICM + garbage
)

# UID "kinds" (one arc of the UID) so different entity UIDs never collide.
_K_STUDY, _K_SERIES, _K_INSTANCE, _K_FOR, _K_JUNK = 1, 2, 3, 4, 9

_FIXED_DATE = "20240115"
_FIXED_TIME = "101500"

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SR_TEXT = "1.2.840.10008.5.1.4.1.1.88.11"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def make_uid(seed: int, kind: int, n: int) -> str:
    """Deterministic UID; fixed length for a given seed/kind (n < 90,000,000)."""
    return f"{UID_ROOT}.{int(seed)}.{kind}.{10_000_000 + n}"


# --------------------------------------------------------------------------
# SOP class catalogue for the "mixed" profile
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    uid: str
    modality: str
    pixel: str | None  # "mono16", "mono8", "rgb8" or None (no pixel data)
    shapes: tuple[tuple[int, int], ...] = ()
    weight: float = 1.0


_MIXED_SPECS: tuple[_Spec, ...] = (
    _Spec("CT", CT, "CT", "mono16", ((64, 64), (32, 32), (96, 96), (48, 48)), 3.0),
    _Spec("MR", MR, "MR", "mono16", ((64, 64), (48, 48), (96, 80)), 2.5),
    _Spec("CR", CR, "CR", "mono16", ((96, 96), (64, 80)), 1.0),
    _Spec("DX", DX, "DX", "mono16", ((80, 64), (96, 96)), 0.8),
    _Spec("SC", SC, "OT", "mono8", ((64, 64), (128, 96)), 0.8),
    _Spec("US", US, "US", "rgb8", ((48, 64), (64, 64), (32, 48)), 1.0),
    _Spec("SR", SR_TEXT, "SR", None, (), 0.6),
    _Spec("PDF", PDF, "DOC", None, (), 0.3),
)

_TS_WEIGHTS = (
    (ExplicitVRLittleEndian, 0.45),
    (ImplicitVRLittleEndian, 0.25),
    (ExplicitVRBigEndian, 0.12),
    (RLELossless, 0.18),
)

# Newer storage classes (DICOM 2022+) unknown to e.g. DCMTK 3.6.7; the
# many-classes profile uses them last.
_RECENT_STORAGE = frozenset(
    {
        "PhotoacousticImageStorage",
        "General32bitECGWaveformStorage",
        "WaveformPresentationStateStorage",
        "WaveformAcquisitionPresentationStateStorage",
        "VariableModalityLUTSoftcopyPresentationStageStorage",
        "LabelMapSegmentationStorage",
        "HeightMapSegmentationStorage",
        "ConfocalMicroscopyImageStorage",
        "ConfocalMicroscopyTiledPyramidalImageStorage",
        "WaveformAnnotationSRStorage",
        "EnhancedRTImageStorage",
        "EnhancedContinuousRTImageStorage",
        "RTPatientPositionAcquisitionInstructionStorage",
    }
)


def storage_sop_classes() -> list[tuple[str, str]]:
    """(keyword, UID) of pynetdicom's storage SOP classes, long-established ones first."""
    from pynetdicom import sop_class

    items = list(sop_class._STORAGE_CLASSES.items())
    return [kv for kv in items if kv[0] not in _RECENT_STORAGE] + [
        kv for kv in items if kv[0] in _RECENT_STORAGE
    ]


# --------------------------------------------------------------------------
# Dataset construction and encoding
# --------------------------------------------------------------------------


def _file_meta(sop_class: str, sop_instance: str, ts: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_instance
    fm.TransferSyntaxUID = ts
    return fm


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pixels(kind: str, rows: int, cols: int, variant: int) -> np.ndarray:
    """Deterministic, mildly structured (RLE-friendly, not constant) pixels."""
    y = np.arange(rows, dtype=np.int32)[:, None]
    x = np.arange(cols, dtype=np.int32)[None, :]
    if kind == "mono16":
        base = ((x * 7 + y * 13 + variant * 31) // 3) % 4096
        noise = ((x * y + variant) % 17) * (((x // 8 + y // 8) % 2) == 0)
        return ((base + noise) % 4096).astype(np.uint16)
    if kind == "mono8":
        return (((x // 4) * 9 + (y // 4) * 5 + variant * 3) % 256).astype(np.uint8)
    # rgb8
    r = (x * 4 + variant) % 256
    g = (y * 4 + variant * 2) % 256
    b = ((x + y) * 2 + variant * 5) % 256
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)


def _set_image_module(ds: Dataset, kind: str, arr: np.ndarray) -> None:
    rows, cols = arr.shape[:2]
    ds.Rows, ds.Columns = rows, cols
    ds.PixelRepresentation = 0
    if kind == "rgb8":
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    if kind == "mono16":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7


@dataclass
class _Ctx:
    seed: int
    patient_no: int
    study_no: int
    series_no: int
    series_in_study: int
    instance_no: int  # global index
    instance_in_series: int
    study_date: str


def _base_dataset(spec_uid: str, modality: str, c: _Ctx, ts: str) -> Dataset:
    sop_uid = make_uid(c.seed, _K_INSTANCE, c.instance_no)
    ds = Dataset()
    ds.file_meta = _file_meta(spec_uid, sop_uid, ts)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = spec_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = c.study_date
    ds.SeriesDate = c.study_date
    ds.ContentDate = c.study_date
    ds.StudyTime = _FIXED_TIME
    ds.ContentTime = _FIXED_TIME
    ds.AccessionNumber = f"A{c.seed % 1000:03d}{c.study_no:06d}"
    ds.Modality = modality
    ds.Manufacturer = "batchstore-gen"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Synthetic study {c.study_no}"
    ds.SeriesDescription = f"Synthetic {modality} series {c.series_no}"
    ds.PatientName = f"SYNTH^PATIENT{c.patient_no:05d}"
    ds.PatientID = f"S{c.seed % 1000:03d}P{c.patient_no:05d}"
    ds.PatientBirthDate = f"19{50 + c.patient_no % 50:02d}0{1 + c.patient_no % 9}1{c.patient_no % 10}"
    ds.PatientSex = "MFO"[c.patient_no % 3]
    ds.StudyInstanceUID = make_uid(c.seed, _K_STUDY, c.study_no)
    ds.SeriesInstanceUID = make_uid(c.seed, _K_SERIES, c.series_no)
    ds.StudyID = str(c.study_no % 100000)
    ds.SeriesNumber = c.series_in_study + 1
    ds.InstanceNumber = c.instance_in_series + 1
    return ds


def _image_dataset(spec: _Spec, c: _Ctx, ts: str, shape: tuple[int, int]) -> Dataset:
    ds = _base_dataset(spec.uid, spec.modality, c, ts)
    assert spec.pixel is not None
    if spec.modality in ("CT", "MR"):
        ds.FrameOfReferenceUID = make_uid(c.seed, _K_FOR, c.series_no)
        ds.ImagePositionPatient = [0.0, 0.0, float(c.instance_in_series) * 2.5]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.75, 0.75]
        ds.SliceThickness = 2.5
    if spec.modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    elif spec.modality == "MR":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.MagneticFieldStrength = 1.5
        ds.EchoTime = 20
        ds.RepetitionTime = 500
    elif spec.modality == "OT":
        ds.ConversionType = "WSD"
    elif spec.modality in ("DX", "CR"):
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BodyPartExamined = "CHEST"
        if spec.modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
    arr = _pixels(spec.pixel, shape[0], shape[1], c.instance_no)
    _set_image_module(ds, spec.pixel, arr)
    if ts == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, arr, encoding_plugin="pydicom", generate_instance_uid=False)
    elif ts == ExplicitVRBigEndian and arr.dtype.itemsize == 2:
        ds.PixelData = arr.astype(">u2").tobytes()
    else:
        ds.PixelData = arr.tobytes()
    return ds


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sr_dataset(spec: _Spec, c: _Ctx, ts: str) -> Dataset:
    ds = _base_dataset(spec.uid, spec.modality, c, ts)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = Sequence([_code_item("18748-4", "LN", "Diagnostic Imaging Report")])
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code_item("121071", "DCM", "Finding")])
    words = " ".join(f"finding-{(c.instance_no * 7 + k) % 97}" for k in range(40 + c.instance_no % 60))
    text.TextValue = f"Synthetic report {c.instance_no}: {words}"
    ds.ContentSequence = Sequence([text])
    return ds


def _pdf_dataset(spec: _Spec, c: _Ctx, ts: str) -> Dataset:
    ds = _base_dataset(spec.uid, spec.modality, c, ts)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = f"Synthetic document {c.instance_no}"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    body = "\n".join(
        f"% line {k} of synthetic document {c.instance_no}" for k in range(30 + c.instance_no % 50)
    )
    pdf = f"%PDF-1.4\n{body}\n%%EOF\n".encode("ascii")
    if len(pdf) % 2:
        pdf += b"\n"
    ds.EncapsulatedDocument = pdf
    return ds


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


class _Writer:
    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.made: set[Path] = set()

    def write(self, rel: str, data: bytes) -> None:
        path = self.out / rel
        parent = path.parent
        if parent not in self.made:
            parent.mkdir(parents=True, exist_ok=True)
            self.made.add(parent)
        with open(path, "wb") as fh:
            fh.write(data)


def _record(rel: str, sop_class: str, sop_inst: str, ts: str, size: int, **extra: Any) -> dict[str, Any]:
    rec = {
        "path": rel,
        "sop_class_uid": sop_class,
        "sop_instance_uid": sop_inst,
        "transfer_syntax": ts,
        "size": size,
    }
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------


@dataclass
class _SeriesPlan:
    spec: _Spec
    ts: str
    shape: tuple[int, int] = (0, 0)
    n: int = 1
    large: bool = False
    extensionless: bool = False
    files: list[str] = field(default_factory=list)


def _plan_mixed(rng: random.Random, count: int) -> list[_SeriesPlan]:
    n_large = 0 if count < 50 else max(1, count // 400)
    huge = count >= 1000
    regular_total = count - n_large
    weights = [s.weight for s in _MIXED_SPECS]
    all_ts = [t for t, _ in _TS_WEIGHTS]
    # Coverage first: the first series use every SOP class once, with small
    # series and transfer syntaxes cycling through all four, so even a small
    # corpus (~30+ files) has every class and every transfer syntax.
    cover_specs = list(_MIXED_SPECS)
    rng.shuffle(cover_specs)
    cover_ts = list(all_ts)
    rng.shuffle(cover_ts)
    image_k = 0
    plans: list[_SeriesPlan] = []
    total = 0
    while total < regular_total:
        k = len(plans)
        if k < len(cover_specs):
            spec = cover_specs[k]
            if spec.pixel is not None:
                ts = cover_ts[image_k % len(cover_ts)]
                image_k += 1
            else:
                ts = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian][k % 3]
            n_hi = 5
        else:
            spec = rng.choices(_MIXED_SPECS, weights)[0]
            ts = rng.choices(all_ts, [w for _, w in _TS_WEIGHTS])[0]
            n_hi = 12
        shapes = spec.shapes
        if ts == RLELossless:  # RLE only for small images (pydicom's encoder is pure Python)
            shapes = tuple(s for s in shapes if s[0] * s[1] <= 64 * 64)
            if not shapes:
                ts = ExplicitVRLittleEndian if spec.pixel is not None else ImplicitVRLittleEndian
                shapes = spec.shapes
        shape = rng.choice(shapes) if shapes else (0, 0)
        n = min(rng.randint(2, n_hi) if spec.pixel else rng.randint(1, 4), regular_total - total)
        plans.append(_SeriesPlan(spec, ts, shape, n, extensionless=rng.random() < 0.1))
        total += n
    big_specs = [s for s in _MIXED_SPECS if s.name in ("CT", "CR", "DX")]
    for k in range(n_large):
        spec = rng.choice(big_specs)
        ts = rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if huge and k == 0:
            shape = (4096, 2560)  # 20 MiB of 16-bit pixels
        else:
            shape = rng.choice([(1024, 1024), (1536, 1024), (1536, 1536)])
        plan = _SeriesPlan(spec, ts, shape, 1, large=True)
        plans.insert(rng.randint(0, len(plans)), plan)
    return plans


def _gen_mixed(w: _Writer, count: int, seed: int, rng: random.Random) -> list[dict[str, Any]]:
    plans = _plan_mixed(rng, count)
    files: list[dict[str, Any]] = []
    idx = 0
    patient = study = 0
    p = 0
    while p < len(plans):
        patient += 1
        for _ in range(rng.randint(1, 3)):
            if p >= len(plans):
                break
            study += 1
            date = f"2024{1 + study % 12:02d}{1 + study % 28:02d}"
            study_dir = f"PAT{patient:04d}/ST{study:04d}_{date}"
            for s_in_study in range(rng.randint(1, 4)):
                if p >= len(plans):
                    break
                plan = plans[p]
                p += 1
                series_no = p
                series_dir = f"{study_dir}/SE{series_no:04d}_{plan.spec.modality}"
                for i in range(plan.n):
                    c = _Ctx(seed, patient, study, series_no, s_in_study, idx, i, date)
                    if plan.spec.pixel is not None:
                        ds = _image_dataset(plan.spec, c, plan.ts, plan.shape)
                    elif plan.spec.name == "SR":
                        ds = _sr_dataset(plan.spec, c, plan.ts)
                    else:
                        ds = _pdf_dataset(plan.spec, c, plan.ts)
                    data = _encode(ds)
                    name = f"IM{idx:06d}" if plan.extensionless else f"IM{idx:06d}.dcm"
                    rel = f"{series_dir}/{name}"
                    w.write(rel, data)
                    files.append(
                        _record(
                            rel,
                            plan.spec.uid,
                            ds.SOPInstanceUID,
                            str(ds.file_meta.TransferSyntaxUID),
                            len(data),
                            patient_id=ds.PatientID,
                            study_instance_uid=ds.StudyInstanceUID,
                            series_instance_uid=ds.SeriesInstanceUID,
                            modality=plan.spec.modality,
                        )
                    )
                    idx += 1
    return files


class _Template:
    """Encoded file with fixed-length placeholders patched per instance."""

    def __init__(self, data: bytes, placeholders: dict[str, str]) -> None:
        self.data = data
        spots: list[tuple[int, int, str]] = []
        for key, ph in placeholders.items():
            raw = ph.encode("ascii")
            start = 0
            while (pos := data.find(raw, start)) >= 0:
                spots.append((pos, len(raw), key))
                start = pos + len(raw)
        spots.sort()
        self.spots = spots

    def render(self, values: dict[str, str]) -> bytes:
        out: list[bytes] = []
        prev = 0
        data = self.data
        for pos, ln, key in self.spots:
            out.append(data[prev:pos])
            val = values[key].encode("ascii")
            if len(val) != ln:
                raise ValueError(f"value for {key} has length {len(val)}, expected {ln}")
            out.append(val)
            prev = pos + ln
        out.append(data[prev:])
        return b"".join(out)


def _uniform_template(seed: int, size: int) -> tuple[_Template, int]:
    spec = _MIXED_SPECS[0]  # CT
    c = _Ctx(seed, 0, 0, 0, 0, 0, 0, _FIXED_DATE)
    ds = _base_dataset(spec.uid, "CT", c, ExplicitVRLittleEndian)
    ds.StudyDescription = "Uniform benchmark study"
    ds.SeriesDescription = "Uniform benchmark series"
    ds.PatientName = "UNIFORM^P0000000"
    ds.PatientID = "U0000000"
    ds.AccessionNumber = "UA0000000"
    ds.InstanceNumber = "7777777"  # IS placeholder, patched per file
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    _set_image_module(ds, "mono16", np.zeros((1, 1), np.uint16))
    ds.PixelData = b""
    overhead = len(_encode(ds))
    npix = max(1, (size - overhead) // 2)
    cols = max(1, int(math.sqrt(npix)))
    rows = max(1, npix // cols)
    arr = _pixels("mono16", rows, cols, seed)
    _set_image_module(ds, "mono16", arr)
    ds.PixelData = arr.tobytes()
    data = _encode(ds)
    ph = {
        "inst": make_uid(seed, _K_INSTANCE, 0),
        "series": make_uid(seed, _K_SERIES, 0),
        "study": make_uid(seed, _K_STUDY, 0),
        "pname": "UNIFORM^P0000000",
        "pid": "U0000000",
        "acc": "UA0000000",
        "inum": "7777777",
    }
    tpl = _Template(data, ph)
    found = sorted(key for _, _, key in tpl.spots)
    if found != sorted([*ph, "inst"]):  # SOP Instance UID is in the file meta and the data set
        raise RuntimeError(f"uniform template placeholders not unique: {found}")
    return tpl, len(data)


def _gen_uniform(w: _Writer, count: int, seed: int, size: int) -> list[dict[str, Any]]:
    tpl, length = _uniform_template(seed, size)
    per_series, series_per_study = 100, 5
    files = []
    for i in range(count):
        series = i // per_series
        study = series // series_per_study
        inst = make_uid(seed, _K_INSTANCE, i)
        vals = {
            "inst": inst,
            "series": make_uid(seed, _K_SERIES, series),
            "study": make_uid(seed, _K_STUDY, study),
            "pname": f"UNIFORM^P{study:07d}",
            "pid": f"U{study:07d}",
            "acc": f"UA{study:07d}",
            "inum": f"{i % per_series + 1:07d}",
        }
        rel = f"S{series:04d}/IM{i:06d}.dcm"
        w.write(rel, tpl.render(vals))
        files.append(_record(rel, CT, inst, ExplicitVRLittleEndian, length))
    return files


def _gen_many_classes(w: _Writer, count: int, seed: int, n_classes: int) -> list[dict[str, Any]]:
    classes = storage_sop_classes()
    if not 1 <= n_classes <= len(classes):
        raise ValueError(f"sop_classes must be in 1..{len(classes)}")
    classes = classes[:n_classes]
    total = max(count, n_classes)
    files = []
    for i in range(total):
        j = i % n_classes
        keyword, uid = classes[j]
        c = _Ctx(seed, 1, 1, j, j, i, i // n_classes, _FIXED_DATE)
        ds = _base_dataset(uid, "OT", c, ExplicitVRLittleEndian)
        ds.SeriesDescription = keyword[:64]
        data = _encode(ds)
        rel = f"C{j:03d}_{keyword[:40]}/IM{i:06d}.dcm"
        w.write(rel, data)
        files.append(
            _record(rel, uid, ds.SOPInstanceUID, ExplicitVRLittleEndian, len(data), sop_class_name=keyword)
        )
    return files


# --------------------------------------------------------------------------
# Junk
# --------------------------------------------------------------------------


def _junk_source(seed: int, k: int) -> bytes:
    """A valid small CT file (not part of the corpus) used to derive truncations."""
    c = _Ctx(seed, 99999, 99999, 99999, 0, 0, 0, _FIXED_DATE)
    ds = _image_dataset(_MIXED_SPECS[0], c, ExplicitVRLittleEndian, (64, 64))
    uid = make_uid(seed, _K_JUNK, k)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return _encode(ds)


def _junk_bytes(kind: str, seed: int, k: int, rng: random.Random) -> bytes:
    if kind == "empty":
        return b""
    if kind == "text":
        return ("This is not a DICOM file.\n" * (3 + k % 5) + f"junk #{k}\n").encode("ascii")
    if kind == "truncated_meta":
        data = _junk_source(seed, k)
        meta_len = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
        return data[: 144 + meta_len // 2]
    if kind == "truncated_dataset":
        data = _junk_source(seed, k)
        return data[: int(len(data) * 0.6)]
    if kind == "random_bytes":
        raw = bytearray(rng.randbytes(2048 + 16 * k))
        raw[128:132] = b"JUNK"  # never a DICM marker
        return bytes(raw)
    if kind == "dicm_garbage":
        # A group-2 element header claiming far more data than the file holds, then noise.
        head = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + (0xFFF0).to_bytes(2, "little")
        return head + rng.randbytes(256 + 16 * k)
    raise ValueError(kind)


def _add_junk(
    w: _Writer, junk: int, seed: int, rng: random.Random, files: list[dict[str, Any]]
) -> list[dict]:
    dirs = sorted({str(Path(f["path"]).parent) for f in files}) or ["."]
    out = []
    for k in range(junk):
        kind = JUNK_KINDS[k % len(JUNK_KINDS)]
        d = rng.choice(dirs)
        ext = ".txt" if kind == "text" else ".dcm"
        name = f"junk_{kind}_{k:03d}{ext}"
        rel = name if d == "." else f"{d}/{name}"
        data = _junk_bytes(kind, seed, k, rng)
        w.write(rel, data)
        out.append({"path": rel, "kind": kind, "size": len(data)})
    return out


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def generate(
    out_dir: str | os.PathLike[str],
    count: int,
    seed: int = 0,
    profile: str = "mixed",
    junk: int = 0,
    sop_classes: int | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """Generate a corpus in ``out_dir`` and return its manifest.

    Manifest keys: ``profile``, ``seed``, ``count``, ``total_bytes``,
    ``files`` (list of {path, sop_class_uid, sop_instance_uid,
    transfer_syntax, size, ...}; paths relative, POSIX) and ``junk`` (list
    of {path, kind, size}).
    """
    if sop_classes is not None and profile == "mixed":
        profile = "many-classes"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if count < 0 or junk < 0:
        raise ValueError("count and junk must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    rng = random.Random(f"batchstore-corpus:{profile}:{seed}")
    if profile == "mixed":
        files = _gen_mixed(w, count, seed, rng)
    elif profile == "uniform":
        files = _gen_uniform(w, count, seed, 1024 if size is None else int(size))
    else:
        files = _gen_many_classes(w, count, seed, 150 if sop_classes is None else int(sop_classes))
    junk_list = _add_junk(w, junk, seed, rng, files)
    return {
        "profile": profile,
        "seed": seed,
        "count": len(files),
        "total_bytes": sum(f["size"] for f in files),
        "files": files,
        "junk": junk_list,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate a deterministic synthetic DICOM corpus.")
    ap.add_argument("out_dir", help="output directory (created if missing)")
    ap.add_argument("--count", "-n", type=int, required=True, help="number of valid DICOM files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", choices=PROFILES, default="mixed")
    ap.add_argument("--size", type=int, default=None, help="approximate file size in bytes (uniform)")
    ap.add_argument("--junk", type=int, default=0, help="number of junk (non-/broken DICOM) files to add")
    ap.add_argument("--sop-classes", type=int, default=None, help="distinct SOP classes (many-classes)")
    ap.add_argument("--manifest", default=None, help="write the manifest as JSON to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    manifest = generate(
        args.out_dir,
        args.count,
        seed=args.seed,
        profile=args.profile,
        junk=args.junk,
        sop_classes=args.sop_classes,
        size=args.size,
    )
    dt = time.perf_counter() - t0
    if args.manifest:
        Path(args.manifest).write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"{manifest['count']} files ({manifest['total_bytes'] / 1e6:.1f} MB) + "
        f"{len(manifest['junk'])} junk in {args.out_dir} [{manifest['profile']}, seed {args.seed}] "
        f"in {dt:.2f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
