"""Helpers for the ``batchstore receive`` tests (no tests here): the receiver as a subprocess, a scripted
Storage SCU that can do what DCMTK will not (invalid UIDs, half a data set then A-ABORT), and test data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peers import BatchstoreReceiver
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence

from batchstore.dicom import uids
from batchstore.net import acse, dimse, sockets
from batchstore.net import pdu as net

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = uids.VERIFICATION_SOP_CLASS
IMPLICIT = uids.IMPLICIT_VR_LE
EXPLICIT_LE = uids.EXPLICIT_VR_LE
DEFLATED = uids.DEFLATED_EXPLICIT_VR_LE
EXPLICIT_BE = uids.EXPLICIT_VR_BE
JPEG_BASELINE = uids.JPEG_BASELINE
ALL_UNCOMPRESSED = (IMPLICIT, EXPLICIT_LE, EXPLICIT_BE)

def temp_files(directory: Path) -> list[str]:
    """batchstore's temporary files in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".batchstore-"))


def stored_files(directory: Path) -> list[Path]:
    """Every regular file below `directory` except temporary ones."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".batchstore-"))


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; return that (or the last falsy value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Receiver(BatchstoreReceiver):
    """`peers.BatchstoreReceiver` as the receive tests start it: ``Receiver(tmp_path, args, out=...)``.

    `args` go before the port; ``-od`` is `out` (a fresh directory by default). Single process unless
    `args` has ``--fork``; ``-v`` is added unless `verbose` is False. The log (stdout and stderr) and the
    port file are kept in `tmp_path`, also the working directory; leaving the ``with`` block kills it.
    """

    def __init__(
        self,
        tmp_path: Path,
        args: list[str] | tuple[str, ...] = (),
        *,
        out: Path | None = None,
        verbose: bool = True,
        port_arg: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            out if out is not None else tmp_path / "out",
            args,
            start_timeout=20,
            fork=False,
            verbose=verbose,
            port_arg=port_arg,
            env=env,
            cwd=tmp_path,
            work_dir=tmp_path,
            graceful=False,
        )
        self.tmp = tmp_path

    @property
    def out(self) -> Path:
        return self.out_dir

    @property
    def args(self) -> list[str]:
        return self.extra_args

    def __enter__(self) -> Receiver:
        self.start()
        return self


def run_receive(tmp_path: Path, args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m batchstore receive ARGS`` to completion (for usage errors)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "batchstore", "receive", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------------------------------------
# a scripted Storage SCU


class RawSCU:
    """A Storage SCU built from batchstore's PDU/DIMSE primitives, one PDU at a time, for edge cases."""

    def __init__(
        self,
        port: int,
        contexts: tuple[tuple[int, str, tuple[str, ...]], ...] = (
            (1, CT, (EXPLICIT_LE,)),
            (3, VERIFICATION, (IMPLICIT,)),
        ),
        *,
        calling_ae: str = "RAWSCU",
        called_ae: str = "STORESCP",
        max_pdu: int = 16384,
        implementation_class_uid: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.sock = sockets.connect(LOOPBACK, port, timeout)
        self.sock.settimeout(timeout)
        self.stream = net.PDUStream(self.sock)
        self.stream.settimeout(timeout)
        request = acse.AssociationRequest(calling_ae, called_ae, contexts, max_pdu)
        if implementation_class_uid is not None:
            request = acse.AssociationRequest(
                calling_ae, called_ae, contexts, max_pdu, implementation_class_uid=implementation_class_uid
            )
        self.accept = acse.request_association(self.stream, request)
        self.max_send = self.accept.max_pdu or 16384
        self.message_id = 0

    def send_command(self, context: int, command: bytes) -> None:
        self.stream.send_parts(net.pdata_parts(context, command, True, self.max_send))

    def send_data(self, context: int, data: bytes, *, last: bool = True, pdu: int | None = None) -> None:
        self.stream.send_parts(net.pdata_fragment_parts(context, data, False, pdu or self.max_send, last))

    def read_response(self) -> dimse.Command:
        command = bytearray()
        while True:
            pdu_type, body = self.stream.read_pdu()
            assert pdu_type == net.P_DATA_TF, f"unexpected PDU {pdu_type}"
            for _context, control, fragment in net.iter_pdvs(body):
                command += fragment
                if control & 3 == 3:
                    return dimse.decode_command(bytes(command))

    def store(
        self, data: bytes, sop_instance: str, *, context: int = 1, sop_class: str = CT
    ) -> dimse.Command:
        self.message_id += 1
        self.send_command(context, dimse.c_store_rq(self.message_id, sop_class, sop_instance))
        self.send_data(context, data)
        return self.read_response()

    def echo(self, context: int = 3) -> int:
        self.message_id += 1
        self.send_command(context, dimse.c_echo_rq(self.message_id))
        status = self.read_response().status
        assert status is not None
        return status

    def release(self) -> None:
        acse.release(self.stream)

    def abort(self) -> None:
        self.stream.abort()

    def close(self) -> None:
        self.stream.close()


# --------------------------------------------------------------------------------------------------------
# test data


def ct_dataset(
    sop_instance: str,
    *,
    study: str = "1.2.826.0.1.3680043.9.7781.1",
    patient: str | None = "Doe^John",
    rows: int = 4,
    sop_class: str = CT,
) -> Dataset:
    """A small CT image with a sequence, a UT element and 16-bit pixel data."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20240102"
    ds.Modality = "CT"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = sop_instance + ".9"
    ds.ReferencedImageSequence = Sequence([ref])
    if patient is not None:
        ds.PatientName = patient
    ds.PatientID = "PID1"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.TextValue = "some unlimited text"  # (0040,A160) UT
    with keep_un():
        ds.add_new(0x00100030, "UN", b"19700101")  # Patient's Birth Date, sent as UN
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256) + bytes(rows * rows * 2 % 256)
    return ds


def encode(ds: Dataset, ts: str = EXPLICIT_LE) -> bytes:
    """The data set encoded in transfer syntax `ts` (uncompressed, no file meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = ts != EXPLICIT_BE
    fp.is_implicit_VR = ts == IMPLICIT
    with keep_un():
        write_dataset(fp, ds)
    return bytes(fp.getvalue())


@contextmanager
def keep_un() -> Iterator[None]:
    """Keep UN elements UN (pydicom replaces them with the dictionary VR by default)."""
    saved = config.replace_un_with_known_vr
    config.replace_un_with_known_vr = False
    try:
        yield
    finally:
        config.replace_un_with_known_vr = saved


def write_part10(path: Path, ds: Dataset, ts: str = EXPLICIT_LE) -> Path:
    """Write `ds` as a Part 10 file in `ts` (the file meta is written by hand: pydicom 3 refuses BE)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7781.99"
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False

    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + encode(ds, ts))
    return path


def free_socket() -> socket.socket:
    return socket.create_server((LOOPBACK, 0))
