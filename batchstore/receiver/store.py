"""The store policy: where and how the Storage SCP places what it receives (checking the data set
against the C-STORE-RQ, naming, sorting into study directories, end of study), built from the pieces in
`receiver.check`, `receiver.naming`, `receiver.files`, `dicom.meta` and `dicom.reencode`.

The fast path (no format option given) writes the data set's bytes, exactly as received, behind a file meta
group built from the C-STORE-RQ and the presentation context. A data set of up to `FLUSH_BYTES` that arrived
whole is checked in memory and written with one vectored write into an unnamed file (``O_TMPFILE``) in its
destination directory, then linked under its final name; a larger one is streamed into a temporary file in
the output directory, then ``os.replace``d to its final name. Either way memory stays flat whatever the data
set size and a partially received data set never appears under a final name. Options that change the
encoding (``+te +tb +ti +td``, ``+g -g``, ``-e``, ``+p``, ``-u``, ``+uc``, ``+cl``) decode the received file
with pydicom and re-encode it (`dicom.reencode`, always through a named temporary file).

Temporary files are named ``.batchstore-<pid>-<n>.part``; `receiver.files.remove_temp_files` deletes those of a process
that died, so nothing half-written is left behind (an unnamed file vanishes with its process by itself).
Where unnamed files are not available (file system, no ``/proc``) named temporary files are used for all.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import time
import uuid
import zlib
from collections.abc import Callable
from typing import NamedTuple

from ..dicom.meta import file_meta_parts
from ..dicom.reencode import dataset_encoding, reencode_file
from ..dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE, modality_prefix
from ..net.status import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES, SUCCESS
from .check import (
    _EXPLICIT_LE_HEADER,
    _LONG_VRS,
    TAG_PATIENT_NAME,
    TAG_SOP_CLASS_UID,
    TAG_SOP_INSTANCE_UID,
    TAG_SPECIFIC_CHARACTER_SET,
    TAG_STUDY_INSTANCE_UID,
    _decode_text,
    _known_encoding,
    compare_uids,
    read_elements,
)
from .events import Peer, Study
from .files import (
    _CANNOT_LINK,
    _CLOSED,
    _GONE,
    _NO_TMPFILE,
    _NOT_CREATED,
    _OPEN_FLAGS,
    _TMPFILE_FLAGS,
    TEMP_SUFFIX,
    Discard,
    Incoming,
    Refused,
    _unlink_quietly,
    _write_all,
    fsync_directory,
    fsync_path,
    temp_name,
)
from .naming import _UID_CHARACTERS, _UNUSUAL_IN_NAME, _timestamp, ascii_name, sanitize_name, shorten
from .options import StorageOptions

log = logging.getLogger("batchstore.storage")


class StoredFile(NamedTuple):
    """The outcome of one C-STORE as the storage layer sees it (a named tuple: one is built per file, in
    half the time a frozen dataclass takes, 0.4 us instead of 0.8 us).

    Attributes
    ----------
    status : int
        The C-STORE-RSP status: 0x0000, 0xA700 (could not write), 0xA900 (data set does not match the
        request), 0xC000 (cannot understand the data set).
    path : str or None
        The final file, or None if nothing was kept.
    comment : str
        Error comment for a failure status.
    """

    status: int
    path: str | None = None
    comment: str = ""


#: errno values of a write that may succeed later (the disk fills, descriptors run out, the output
#: directory is being fixed): answered 0xA700, which senders retry. Any other error cannot succeed
#: however often it is retried and is answered 0xC000 (docs/design.md, "Hostile peers").
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC", "EDQUOT", "EMFILE", "ENFILE", "ENOMEM", "EAGAIN", "EINTR", "EIO", "EBUSY",
        "ENOENT", "EACCES", "EPERM", "EROFS", "ESTALE", "ETIMEDOUT",
    )
    if hasattr(errno, name)
)

#: The error comment of a data set refused by the check against its C-STORE-RQ.
_CHECK_COMMENTS = {
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "data set does not match the request",
    CANNOT_UNDERSTAND: "no SOP Class/Instance UID in the data set",
}


class StorageError(Exception):
    """A received data set could not be stored; `status` is the C-STORE-RSP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Store:
    """Stores received data sets under ``-od`` according to `StorageOptions`.

    One `Store` lives as long as the process that receives: with ``--single-process`` the server's, with
    ``--fork`` each child's copy. It holds what must survive from one object to the next: the current study
    (for sorting and end-of-study events) and the ``-tn`` name counter.

    Parameters
    ----------
    options : StorageOptions
    track_studies : bool
        Detect the end of a study (``-xcs``, ``-rns``) even when not sorting.
    on_end_of_study : callable, optional
        Called with the `Study` that ended, before the first object of the next one is placed.
    """

    def __init__(
        self,
        options: StorageOptions,
        track_studies: bool = False,
        on_end_of_study: Callable[[Study], None] | None = None,
    ) -> None:
        self.options = options
        self.root = os.path.abspath(options.output_dir)
        self.track_studies = track_studies or options.sort is not None
        self.on_end_of_study = on_end_of_study
        self.study: Study | None = None
        #: a study that a new one ended, whose events wait until the new study's first object was answered
        #: and its ``-xcr`` command run (storescp's order); see `fire_ended`
        self.ended: Study | None = None
        self._counter = itertools.count(1)
        self._pid = os.getpid()
        self._made: set[str] = {self.root}
        self._last_time_name = ""
        self._time_serial = -1
        self._wanted = [TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID]
        if options.sort is not None:
            self._wanted += [TAG_STUDY_INSTANCE_UID]
            if options.sort == "patient-name":
                self._wanted += [TAG_SPECIFIC_CHARACTER_SET, TAG_PATIENT_NAME]
        elif self.track_studies:
            self._wanted.append(TAG_STUDY_INSTANCE_UID)
        self._want = frozenset(self._wanted)
        self._fast_check = self._want == {TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID} and not options.uid_padding
        self._uid_tags = tuple(
            tag
            for tag in (TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID, TAG_STUDY_INSTANCE_UID)
            if tag in self._want
        )
        # A data set received whole, in memory, is checked first and then written straight into an unnamed
        # file that is linked under its final name (open, write, link, close) instead of a named temporary
        # file that is renamed (open, write, close, lstat, rename): one system call less, the "already
        # exists" check comes with the link, and a killed process leaves no temporary file at all. Measured
        # on tmpfs, 1 KB files, median of 9 x 5,000: ~16 us per file instead of ~22 us. Not for the options
        # that re-encode (pydicom reads the file by name).
        self._direct = not options.reencodes and options.compression_level is None
        self._tmpfile = self._direct and bool(getattr(os, "O_TMPFILE", 0))
        self._proc_fd = -1  # /proc/self/fd of this process, to link an unnamed file by its descriptor
        self._prefixes: dict[str, str] = {}
        self._extension = _UNUSUAL_IN_NAME.sub("_", options.extension)
        self._unique = options.filenames == "unique"
        self._time_names = options.filenames == "time"
        self._fsync = options.fsync

    def after_fork(self) -> None:
        """Call in a forked child: temporary names carry the child's pid, and /proc/self is the child's."""
        self._pid = os.getpid()
        if self._proc_fd >= 0:
            try:
                os.close(self._proc_fd)
            except OSError:
                pass
            self._proc_fd = -1

    def plain_names(self, sop_class: str) -> tuple[str, str] | None:
        """(prefix, extension): a data set of `sop_class` received whole is checked for its two UIDs only,
        written unchanged into an unnamed file in ``-od`` and linked as ``<prefix><SOP Instance
        UID><extension>``, what the compiled one-message path does itself (`receiver.onemessage`); None
        when the options (or the file system) have it go another way."""
        if not self._tmpfile or not self._fast_check or self.track_studies or self._fsync:
            return None
        if self.options.ignore or self._unique or self._time_names:
            return None
        name = self._file_name(sop_class, "", self.root)
        return name[: len(name) - len(self._extension)], self._extension

    def _temp_path(self) -> str:
        """A new temporary file name in the output directory."""
        return f"{self.root}/{temp_name(self._pid, next(self._counter))}"

    # ---- receiving

    def begin(
        self,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        source_ae: str = "",
        eager: bool = False,
    ) -> Incoming | Discard:
        """Start receiving a data set; `eager` writes every fragment at once (``--sleep-during``)."""
        options = self.options
        if options.ignore:
            return Discard(sop_class, sop_instance, transfer_syntax)
        header: tuple[bytes, ...] = ()
        if options.write_meta or options.reencodes:
            header = file_meta_parts(sop_class, sop_instance, transfer_syntax, source_ae)
        return Incoming(self._temp_path, header, sop_class, sop_instance, transfer_syntax, eager)

    def complete(self, incoming: Incoming | Discard | Refused, peer: Peer | None = None) -> StoredFile:
        """Finish a data set whose last fragment arrived: check it, name it, move it into place.

        Returns
        -------
        StoredFile
            Never raises for a problem with the data set or the disk; the status says what happened and
            no temporary file is left behind.
        """
        if isinstance(incoming, Discard):
            return StoredFile(SUCCESS)
        if isinstance(incoming, Refused):
            return StoredFile(incoming.status, None, incoming.comment)
        try:
            if incoming.fd == _NOT_CREATED and self._direct:  # still all in memory
                parts = incoming.parts
                incoming.parts = []
                return self._store_whole(
                    incoming.sop_class,
                    incoming.sop_instance,
                    incoming.transfer_syntax,
                    b"".join(parts[incoming.header_parts :]),
                    parts[: incoming.header_parts],
                    peer or Peer(),
                )
            return self._complete(incoming, peer or Peer())
        except Exception as exc:
            incoming.discard()
            return self._failed(incoming.sop_instance, exc)

    def store(
        self,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        source_ae: str,
        dataset: bytes | memoryview,
        peer: Peer,
    ) -> StoredFile:
        """Store a data set that arrived whole, in one fragment (`begin`, `Incoming.write` and `complete` in
        one call, without the `Incoming`): what every small data set takes.

        Returns
        -------
        StoredFile
            As `complete`: never raises for a problem with the data set or the disk.
        """
        options = self.options
        if options.ignore:
            return StoredFile(SUCCESS)
        if not self._direct:  # re-encoded: through a named temporary file that pydicom reads
            incoming = self.begin(sop_class, sop_instance, transfer_syntax, source_ae)
            incoming.write(dataset)
            return self.complete(incoming, peer)
        try:
            header: tuple[bytes, ...] | list = ()
            if options.write_meta:
                header = file_meta_parts(sop_class, sop_instance, transfer_syntax, source_ae)
            return self._store_whole(sop_class, sop_instance, transfer_syntax, dataset, header, peer)
        except Exception as exc:
            return self._failed(sop_instance, exc)

    @staticmethod
    def _failed(sop_instance: str, exc: Exception) -> StoredFile:
        """The outcome of a data set that could not be stored, and its log line."""
        if isinstance(exc, StorageError):
            log.error("cannot store SOP instance %s: %s", sop_instance, exc)
            return StoredFile(exc.status, None, str(exc))
        if isinstance(exc, OSError):
            log.error("cannot write DICOM file for %s: %s", sop_instance, exc)
            status = OUT_OF_RESOURCES if exc.errno in _TRANSIENT_ERRNOS else CANNOT_UNDERSTAND
            return StoredFile(status, None, exc.strerror or str(exc))
        # a data set pydicom cannot re-encode, for instance
        log.error("cannot store SOP instance %s: %s: %s", sop_instance, type(exc).__name__, exc)
        return StoredFile(CANNOT_UNDERSTAND, None, f"{type(exc).__name__}: {exc}")

    def _complete(self, inc: Incoming, peer: Peer) -> StoredFile:
        """A data set that went through a named temporary file: streamed, or to be re-encoded."""
        options = self.options
        explicit, little, deflated = dataset_encoding(inc.transfer_syntax)
        # 1. the bytes on disk (one write for a data set that stayed in memory)
        if inc.fd == _NOT_CREATED:
            data = b"".join(inc.parts)
            inc.parts = []
            inc.tmp = self._temp_path()
            inc.fd = os.open(inc.tmp, _OPEN_FLAGS, 0o666)
            if data:
                _write_all(inc.fd, [data])
            dataset: bytes | memoryview | mmap.mmap = memoryview(data)[inc.header_len :]
            mapped = None
        else:
            inc.flush()
            mapped = mmap.mmap(inc.fd, 0, access=mmap.ACCESS_READ) if inc.size else None
            dataset = memoryview(mapped)[inc.header_len :] if mapped is not None else b""
        os.close(inc.fd)
        inc.fd = _CLOSED
        try:
            if options.reencodes or (
                options.compression_level is not None and inc.transfer_syntax == DEFLATED_EXPLICIT_VR_LE
            ):
                status, values = self._reencode(inc, peer.calling_ae)
            else:
                status, values = self._check(
                    inc.sop_class, inc.sop_instance, inc.transfer_syntax, dataset, explicit, little, deflated
                )
        finally:
            if isinstance(dataset, memoryview):
                dataset.release()
            if mapped is not None:
                mapped.close()
        if status != SUCCESS:  # answered with a failure: nothing under a final name
            inc.discard()
            return StoredFile(status, None, _CHECK_COMMENTS.get(status, "cannot store the data set"))
        # 2. where it goes
        directory = self._study_directory(values, peer) if self.track_studies else self.root
        final = f"{directory}/{self._file_name(inc.sop_class, inc.sop_instance, directory)}"
        if self._fsync:
            fsync_path(inc.tmp)
        if self._time_names:
            final = self._link_exclusive(inc.tmp, final, inc.sop_class, directory)
            os.unlink(inc.tmp)
        else:
            try:
                os.lstat(final)
                log.warning("DICOM file already exists, overwriting: %s", final)
            except FileNotFoundError:
                pass
            os.replace(inc.tmp, final)
        inc.fd = _GONE
        if self._fsync:
            fsync_directory(directory)
        return self._stored(inc.sop_class, status, values, final)

    def _store_whole(
        self,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        dataset: bytes | memoryview,
        header: tuple[bytes, ...] | list,
        peer: Peer,
    ) -> StoredFile:
        """A data set wholly in memory: check it there, then write the file with one vectored write; it
        appears under its final name complete or not at all."""
        if transfer_syntax == EXPLICIT_VR_LE and self._fast_check:
            status, values = self._check_explicit_le(sop_class, sop_instance, dataset)
        else:
            status, values = self._check(
                sop_class, sop_instance, transfer_syntax, dataset, *dataset_encoding(transfer_syntax)
            )
        if status:  # answered with a failure: nothing under a final name
            return StoredFile(status, None, _CHECK_COMMENTS.get(status, "cannot store the data set"))
        directory = self._study_directory(values, peer) if self.track_studies else self.root
        final = f"{directory}/{self._file_name(sop_class, sop_instance, directory)}"
        parts = [*header, dataset]
        placed = self._write_unnamed(directory, final, parts, sop_class) if self._tmpfile else None
        if placed is None:
            placed = self._write_named(final, parts, sop_class, directory)
        if self._fsync:
            fsync_directory(directory)
        return self._stored(sop_class, status, values, placed)

    def _link_exclusive(
        self, source: str, final: str, sop_class: str, directory: str, src_dir_fd: int | None = None
    ) -> str:
        """``-tn``: link `source` under `final`, or under the next free time-based name if `final` exists
        (two children naming files in the same millisecond); an existing file is never replaced. Returns
        the name used."""
        while True:
            try:
                os.link(source, final, src_dir_fd=src_dir_fd)
                return final
            except FileExistsError:
                final = f"{directory}/{self._file_name(sop_class, '', directory)}"

    def _write_named(self, final: str, parts: list, sop_class: str, directory: str) -> str:
        """Write `parts` to a named temporary file and rename it to `final` (deleted again on failure);
        return the final name (another one with ``-tn`` when `final` was taken meanwhile)."""
        tmp = self._temp_path()
        fd = os.open(tmp, _OPEN_FLAGS, 0o666)
        try:
            try:
                _write_all(fd, parts)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self._time_names:
                final = self._link_exclusive(tmp, final, sop_class, directory)
                os.unlink(tmp)
                return final
            try:
                os.lstat(final)
                log.warning("DICOM file already exists, overwriting: %s", final)
            except FileNotFoundError:
                pass
            os.replace(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return final

    def _write_unnamed(self, directory: str, final: str, parts: list, sop_class: str) -> str | None:
        """Write `parts` into an unnamed file in `directory` and link it as `final` (replacing an existing
        file; with ``-tn`` taking the next free name instead), and return the name. None, having written
        nothing, when unnamed files cannot be used here: the caller falls back to a named temporary file,
        and so does every later call."""
        if self._proc_fd < 0:
            try:
                self._proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                self._named_from_now_on(f"no /proc/self/fd ({exc})")
                return None
        try:
            fd = os.open(directory, _TMPFILE_FLAGS, 0o666)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            self._named_from_now_on(f"unnamed temporary files unavailable in {directory} ({exc})")
            return None
        try:
            _write_all(fd, parts)
            if self._fsync:
                os.fsync(fd)
            name = str(fd)
            try:
                os.link(name, final, src_dir_fd=self._proc_fd)  # linkat(AT_SYMLINK_FOLLOW)
            except FileExistsError:
                if self._time_names:
                    return self._link_exclusive(name, final, sop_class, directory, self._proc_fd)
                log.warning("DICOM file already exists, overwriting: %s", final)
                tmp = self._temp_path()
                os.link(name, tmp, src_dir_fd=self._proc_fd)
                try:
                    os.replace(tmp, final)
                except OSError:
                    _unlink_quietly(tmp)
                    raise
            except OSError as exc:
                if exc.errno not in _CANNOT_LINK:
                    raise
                self._named_from_now_on(f"cannot link an unnamed file into {directory} ({exc})")
                return None
        finally:
            os.close(fd)
        return final

    def _named_from_now_on(self, why: str) -> None:
        """Stop trying unnamed files in this process; None, for `_write_unnamed` to return."""
        log.debug("%s: named temporary files from now on", why)
        self._tmpfile = False

    def _stored(self, sop_class: str, status: int, values: dict[int, str], final: str) -> StoredFile:
        if self.study is not None and values.get(TAG_STUDY_INSTANCE_UID) is not None:
            self.study.files.append((final, modality_prefix(sop_class)))
        return StoredFile(status, final, "" if status == SUCCESS else "data set does not match the request")

    def _check(
        self,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        dataset: bytes | memoryview | mmap.mmap,
        explicit: bool,
        little: bool,
        deflated: bool,
    ) -> tuple[int, dict[int, str]]:
        """Read SOP Class/Instance UID (and the sorting keys) from the raw data set; compare with the request."""
        if not _known_encoding(transfer_syntax):
            log.debug("transfer syntax %s: data set not checked against the request", transfer_syntax)
            return SUCCESS, {}
        if deflated:
            try:
                dataset = zlib.decompressobj(-15).decompress(bytes(dataset[: 4 << 20]), 16 << 20)
            except zlib.error as exc:
                raise StorageError(CANNOT_UNDERSTAND, f"cannot inflate data set: {exc}") from None
        raw = read_elements(dataset, explicit, little, self._want)
        tolerate = self.options.uid_padding
        values: dict[int, str] = {}
        for tag in self._uid_tags:
            if tag in raw:
                value = raw[tag].rstrip(b"\0").decode("ascii", "replace")
                values[tag] = value.rstrip(" ") if tolerate else value
        if TAG_PATIENT_NAME in raw:
            values[TAG_PATIENT_NAME] = _decode_text(
                raw[TAG_PATIENT_NAME], raw.get(TAG_SPECIFIC_CHARACTER_SET)
            )
        return compare_uids(sop_class, sop_instance, values), values

    def _check_explicit_le(
        self, sop_class: str, sop_instance: str, dataset: bytes | memoryview
    ) -> tuple[int, dict[int, str]]:
        """`_check` for the most common case (Explicit VR Little Endian, only the two UIDs wanted, no
        ``-up``), in one loop over the first top-level elements; anything unusual before the UIDs goes to
        the general reader. Two thirds of its time per file (2.8 us instead of 4.1 us, measured)."""
        header = _EXPLICIT_LE_HEADER
        end = len(dataset)
        pos = 0
        values: dict[int, str] = {}
        while pos + 8 <= end:
            group, element, vr, length = header(dataset, pos)
            if group == 0xFFFE or vr in _LONG_VRS:
                # an item tag, or a sequence or other long element before the UIDs: the general reader
                return self._check(sop_class, sop_instance, EXPLICIT_VR_LE, dataset, True, True, False)
            tag = group << 16 | element
            if tag > TAG_SOP_INSTANCE_UID:
                break
            pos += 8
            if tag == TAG_SOP_CLASS_UID or tag == TAG_SOP_INSTANCE_UID:
                if pos + length > end:
                    break  # truncated value
                values[tag] = bytes(dataset[pos : pos + length]).rstrip(b"\0").decode("ascii", "replace")
                if len(values) == 2:
                    if (
                        values[TAG_SOP_CLASS_UID] == sop_class
                        and values[TAG_SOP_INSTANCE_UID] == sop_instance
                    ):
                        return SUCCESS, values
                    break
            pos += length
        return compare_uids(sop_class, sop_instance, values), values

    # ---- naming

    def _file_name(self, sop_class: str, sop_instance: str, directory: str) -> str:
        options = self.options
        prefix = self._prefixes.get(sop_class)
        if prefix is None:
            prefix = self._prefixes[sop_class] = sanitize_name(modality_prefix(sop_class))
        if not (self._unique or self._time_names):
            if not sop_instance.strip(_UID_CHARACTERS):  # digits and dots: nothing to sanitise
                return f"{prefix}.{sop_instance}{self._extension}"
            return sanitize_name(f"{prefix}.{sop_instance}") + self._extension
        if self._unique:
            return f"{prefix}.X.2.25.{uuid.uuid4().int}{options.extension}"
        day, clock = _timestamp(time.time())
        base = f"{day}{clock}"
        if base == self._last_time_name:
            self._time_serial += 1
        else:
            self._last_time_name = base
            self._time_serial = -1
        while True:
            serial = "" if self._time_serial < 0 else f"_{self._time_serial:04d}"
            name = f"{base}{serial}.{prefix}{options.extension}"
            if not os.path.lexists(os.path.join(directory, name)):
                return name
            self._time_serial += 1

    def _study_directory(self, values: dict[int, str], peer: Peer) -> str:
        options = self.options
        study_uid = values.get(TAG_STUDY_INSTANCE_UID)
        if study_uid is None:
            if options.sort is not None:
                raise StorageError(CANNOT_UNDERSTAND, "no Study Instance UID in the data set: cannot sort")
            return self.root
        if self.study is not None and self.study.uid == study_uid:
            self.study = Study(study_uid, self.study.directory, peer, self.study.files)
            return self.study.directory
        if self.study is not None:
            if self.ended is not None:  # the previous one never got its turn (a failed store in between)
                self.fire_ended()
            self.ended = self.study
            self.study = None
        directory = self.root
        if options.sort is not None:
            if options.sort == "study-uid":
                sub = f"{options.sort_prefix}_{study_uid}" if options.sort_prefix else study_uid
                sub = sanitize_name(sub)
            else:
                day, clock = _timestamp(time.time())
                if options.sort == "conc":
                    first = options.sort_prefix
                else:
                    first = shorten(ascii_name(values.get(TAG_PATIENT_NAME, "")), 64) or "ANONYMOUS"
                sub = sanitize_name(f"{first}_{day}_{clock}" if first else f"{day}_{clock}")
            directory = os.path.join(self.root, sub)
            if directory not in self._made:
                os.makedirs(directory, exist_ok=True)
                if self._fsync:
                    fsync_directory(self.root)
                self._made.add(directory)
        self.study = Study(study_uid, directory, peer)
        return directory

    def end_study(self) -> None:
        """The current study is complete (``-tos`` expired): fire the events, a pending ended study first."""
        if self.ended is not None:
            self.fire_ended()
        study, self.study = self.study, None
        self._end_of_study(study)

    def fire_ended(self) -> None:
        """Fire the events of the study a new one ended.

        A new Study Instance UID ends the current study, but as in storescp its ``-rns``/``-xcs`` events run
        only after the new study's first object was stored and its ``-xcr`` command run.
        """
        study, self.ended = self.ended, None
        self._end_of_study(study)

    def _end_of_study(self, study: Study | None) -> None:
        if study is not None and self.on_end_of_study is not None:
            try:
                self.on_end_of_study(study)
            except Exception:  # an event must never stop reception
                log.exception("end-of-study handling failed for study %s", study.uid)

    # ---- re-encoding

    def _reencode(self, inc: Incoming, source_ae: str) -> tuple[int, dict[int, str]]:
        tmp2 = inc.tmp[: -len(TEMP_SUFFIX)] + "r" + TEMP_SUFFIX
        try:
            values = reencode_file(inc.tmp, tmp2, self.options, inc.sop_class, inc.sop_instance, source_ae)
            os.replace(tmp2, inc.tmp)
        finally:
            try:
                os.unlink(tmp2)
            except FileNotFoundError:
                pass
        return compare_uids(inc.sop_class, inc.sop_instance, values), values
