"""The slow path: decode a file with pydicom, edit it, and encode its data set for another transfer syntax.

Used only when a file cannot go out as its own bytes: the peer accepted a different uncompressed (or
deflated) transfer syntax, or the user asked for edits (``+II``/``+IR``/``+IS``/``+IP`` invented UIDs,
``-up`` UID padding correction, ``-u`` no post-1993 VRs). Compressed pixel data is never decoded here:
a compressed file whose own syntax was rejected fails with "no accepted presentation context".
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom and numpy are imported inside the functions: this module is imported by every send run, and
# most runs never take the slow path.

#: Word size of the binary VRs whose bytes must be swapped when the byte order changes (pydicom keeps
#: their values as raw bytes).
SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_NEW_VRS = {"UN", "UT", "UC", "UR", "OD", "OL", "OV", "SV", "UV"}


@dataclass(frozen=True)
class EditOptions:
    """Edits applied on the slow path (storescu's ``+II +IR +IS +IP -up -u``)."""

    invent_instance: bool = False
    invent_series_after: int = 0  # +IR n (0: off)
    invent_study_after: int = 0  # +IS n
    invent_patient_after: int = 0  # +IP n
    uid_padding: bool = False  # -up
    disable_new_vr: bool = False  # -u
    compression_level: int = 6  # +cl, for deflated output
    run_id: str = ""  # makes invented UIDs unique per run and identical across workers

    @property
    def any(self) -> bool:
        return self.invent_instance or self.uid_padding or self.disable_new_vr


def swap_bytes(value: bytes | bytearray, width: int) -> bytes:
    """`value` with the byte order of every `width`-byte word reversed; a trailing partial word is kept."""
    import numpy as np

    usable = len(value) - len(value) % width
    swapped = np.frombuffer(value, dtype=f"<u{width}", count=usable // width).byteswap().tobytes()
    return swapped + bytes(value[usable:])


def _swap_raw(ds: Dataset) -> None:
    """Byte-swap raw multi-byte values (OW/OF/OL/OD/OV) in place, recursively: pydicom leaves them raw."""
    for elem in ds.iterall():
        width = SWAP_WIDTH.get(elem.VR)
        if width and isinstance(elem.value, (bytes, bytearray)) and len(elem.value) % width == 0:
            elem.value = swap_bytes(elem.value, width)


def _strip_uid_padding(ds: Dataset) -> None:
    for elem in ds.iterall():
        if elem.VR == "UI" and isinstance(elem.value, str):
            elem.value = elem.value.rstrip(" \0")


def _old_vrs(ds: Dataset) -> None:
    for elem in ds.iterall():
        if elem.VR in _NEW_VRS:
            value = elem.value
            if isinstance(value, str):
                value = value.encode("latin-1", "replace")
            elif not isinstance(value, (bytes, bytearray)):
                continue
            elem.VR = "OB"
            elem.value = bytes(value)


def invent_uids(ds: Dataset, index: int, edits: EditOptions) -> None:
    """Give `ds` new UIDs the way storescu's ``+II +IR +IS +IP`` do, for the `index`-th file of the run.

    The `index`-th file gets a new SOP Instance UID; a new series starts every ``invent_series_after``
    files, a new study every ``invent_study_after`` series and a new patient every
    ``invent_patient_after`` studies. UIDs derive from (run_id, number), so every worker invents the
    same series/study/patient UIDs for the same numbers.
    """
    from pydicom.uid import generate_uid

    run = edits.run_id
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[run, "instance", str(index)])
    if edits.invent_series_after:
        series = index // edits.invent_series_after
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[run, "series", str(series)])
        if edits.invent_study_after:
            study = series // edits.invent_study_after
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[run, "study", str(study)])
            if edits.invent_patient_after:
                patient = study // edits.invent_patient_after
                ds.PatientID = f"BS{run[:8]}{patient:06d}"[:64]
                ds.PatientName = f"BATCHSTORE^{run[:8]}{patient:06d}"


def encode_dataset(
    path: str,
    source_ts: str,
    target_ts: str,
    edits: EditOptions | None = None,
    index: int = 0,
    read_dataset_only: bool = False,
) -> tuple[bytes, str]:
    """Read `path` and return (data set bytes encoded in `target_ts`, SOP Instance UID sent).

    Parameters
    ----------
    source_ts : str
        The file's own transfer syntax (as scanned).
    target_ts : str
        An uncompressed or deflated transfer syntax, or `source_ts` itself (edits only).
    read_dataset_only : bool
        The file is a bare data set without file meta information (storescu ``-f``).
    """
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    edits = edits or EditOptions()
    ds = pydicom.dcmread(path, force=True)
    if read_dataset_only or not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(source_ts)
    if edits.uid_padding:
        _strip_uid_padding(ds)
    if edits.invent_instance:
        invent_uids(ds, index, edits)
    if edits.disable_new_vr:
        _old_vrs(ds)
    source_little = source_ts != EXPLICIT_VR_BE
    target_little = target_ts != EXPLICIT_VR_BE
    if source_little != target_little:
        _swap_raw(ds)
    fp = DicomBytesIO()
    fp.is_implicit_VR = target_ts == IMPLICIT_VR_LE
    fp.is_little_endian = target_little
    ds.file_meta = None  # type: ignore[assignment]
    write_dataset(fp, ds)
    data = fp.getvalue()
    if target_ts == DEFLATED_EXPLICIT_VR_LE:
        compressor = zlib.compressobj(edits.compression_level, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data, str(ds.SOPInstanceUID)
