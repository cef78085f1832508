"""Finding a whole small C-STORE in the receive buffer: the command PDU, then the data set PDU (docs/design.md,
"Receiving one small file").

`locate` says, from the bytes buffered so far, whether they start with a C-STORE-RQ in one P-DATA-TF of one
PDV followed by its whole data set in the next: where it is, or how many bytes the peer has committed to
send before that can be told (the rest of a PDU whose header announced its length, or the data set PDU's
header once the command asked for a data set), or None for anything else, which the association's general
path then reads PDU by PDU. Every length is checked against what we advertised before it is waited for.

`batchstore.receiver._onemessage` (C, optional) is the same walk plus the store itself for the common case;
`compiled` is None without it or with ``BATCHSTORE_PURE_PYTHON=1``.
"""

from __future__ import annotations

import importlib
import os
import struct
from typing import Any

from ..dicom.meta import file_meta_parts
from ..dicom.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ..dicom.walk import pure_python
from ..net import dimse
from ..net.pdu import P_DATA_TF, RECV_BUFFER

#: The longest command set accepted (a C-STORE-RQ takes about 200 bytes): a longer one, in one fragment
#: or in many, is answered with A-ABORT instead of being buffered.
MAX_COMMAND_SET = 16 * 1024
MAX_COMMAND_ITEM = MAX_COMMAND_SET + 2  # a PDV item's length counts its context ID and control header

_PDV = struct.Struct(">BxLLBB")  # P-DATA-TF header + one PDV header
_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">LBB")

#: (context ID, message ID, SOP class UID, SOP instance UID, data set start, message end)
Found = tuple[int, int, str, str, int, int]


def locate(buf: Any, start: int, end: int, max_pdu: int, contexts: Any) -> Found | int | None:
    """A whole C-STORE at ``buf[start:end]``: `Found`; an int: the bytes from `start` to have before it
    can be told; None: anything else (nothing is consumed either way).

    Parameters
    ----------
    buf : buffer
        The receive buffer.
    max_pdu : int
        The longest PDU body we advertised.
    contexts : container of int
        The accepted presentation context IDs.
    """
    if end - start < 12:
        return None
    pdu_type, length, item, context, control = _PDV.unpack_from(buf, start)
    if (
        pdu_type != P_DATA_TF
        or control != 3  # a command, its last fragment
        or item != length - 4  # one PDV
        or item < 2
        or item > MAX_COMMAND_ITEM
        or length > max_pdu
        or context not in contexts
    ):
        return None
    command_end = start + 6 + length
    if command_end > end:
        return command_end - start
    request = dimse.store_request(buf, start + 12, command_end)
    if request is None:  # another command, or one the general path has to judge
        return None
    if command_end + 6 > end:
        return command_end + 6 - start  # the data set PDU's header
    pdu_type, data_length = _HEADER.unpack_from(buf, command_end)
    stop = command_end + 6 + data_length
    if pdu_type != P_DATA_TF or data_length < 6 or data_length > max_pdu or stop - start > RECV_BUFFER:
        return None
    if stop > end:
        return stop - start
    item, data_context, control = _ITEM.unpack_from(buf, command_end + 6)
    if control != 2 or item != data_length - 4 or data_context != context:  # the whole data set, one PDV
        return None
    message_id, sop_class, sop_instance = request
    return context, message_id, sop_class, sop_instance, command_end + 12, stop


def plan(
    names: tuple[str, str], sop_class: str, transfer_syntax: str, source_ae: str, write_meta: bool
) -> tuple | None:
    """What the compiled `serve` needs to store a data set of `sop_class` on a context of
    `transfer_syntax` itself: (name prefix, extension, file meta before the (0002,0003) value or None,
    file meta after it, explicit VR); None for a syntax other than Explicit or Implicit VR Little Endian.
    `names` is what `Store.plain_names` gave."""
    if transfer_syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) or not (names[0] + names[1]).isascii():
        return None
    before: bytes | None = None
    after: bytes | None = None
    if write_meta:  # preamble, DICM, group length (12 bytes), before, (0002,0003)'s header (8 bytes)
        head, _instance, after = file_meta_parts(sop_class, "", transfer_syntax, source_ae)
        before = head[144:-8]
    return names[0].encode(), names[1].encode(), before, after, transfer_syntax == EXPLICIT_VR_LE


class Compiled:
    """One association's compiled path: `serve`'s plans, learnt from the Python path, and its descriptors.

    A context and SOP class get a plan once the Python path stored a data set of theirs (`learn`): nothing
    is prepared for the contexts an association accepts and never uses, and the store's own naming (which
    may look a SOP class up in pydicom's tables) runs only for what arrives.
    """

    def __init__(self, store: Any, source_ae: str) -> None:
        self.store = store
        self.source_ae = source_ae
        self.plans: dict[int, dict[str, tuple]] = {}
        self.directory = self.proc = -1  # the output directory, this process's /proc/self/fd
        self.instances = 0  # data sets `serve` stored
        self.serve = compiled.serve

    def learn(self, context: int, sop_class: str, transfer_syntax: str) -> bool:
        """After the Python path stored a data set of `sop_class` on `context`: let `serve` store the next
        ones itself where it can. False when it never can in this association (the store's options, or
        unnamed files given up): the caller stops calling it."""
        if sop_class in self.plans.get(context, ()):
            return True
        names = self.store.plain_names(sop_class)
        if names is None:
            return False
        entry = plan(names, sop_class, transfer_syntax, self.source_ae, self.store.options.write_meta)
        if entry is None:
            return True
        if self.directory < 0:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            try:
                self.directory = os.open(self.store.root, flags)
                self.proc = os.open("/proc/self/fd", flags)
            except OSError:
                return False  # the Python path reports what is wrong with -od
        self.plans.setdefault(context, {})[sop_class] = entry
        return True

    def close(self) -> None:
        for fd in (self.directory, self.proc):
            if fd >= 0:
                os.close(fd)
        self.directory = self.proc = -1


def load_compiled(name: str) -> Any:
    """The receiver's compiled module `name` (``_onemessage``, ``_sibling``); None where it is not built
    or `pure_python` asks for the Python path."""
    if pure_python():
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


compiled = load_compiled("_onemessage")
