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

import os
import struct
from typing import Any

from ..dicom.meta import file_meta_parts
from ..dicom.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
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


def plans(
    store: Any, accepted: dict[int, str], abstract: dict[int, str], source_ae: str, write_meta: bool
) -> dict[int, dict[str, tuple]]:
    """What the compiled `serve` needs to store a data set on each accepted context itself: for each
    Explicit or Implicit VR Little Endian context whose SOP class `store` (a `receiver.store.Store`) keeps
    in the plain way (`Store.plain_names`), {SOP class: (name prefix, extension, file meta before the
    (0002,0003) element or None, file meta after it, explicit VR)}. Anything else it leaves to the Python
    path."""
    result: dict[int, dict[str, tuple]] = {}
    for context, transfer_syntax in accepted.items():
        sop_class = abstract[context]
        plain = transfer_syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        names = store.plain_names(sop_class) if plain else None
        if names is None or not (names[0] + names[1]).isascii():
            continue
        before: bytes | None = None
        after: bytes | None = None
        if write_meta:  # preamble, DICM, group length (12 bytes), before, (0002,0003)'s header (8 bytes)
            head, _instance, after = file_meta_parts(sop_class, "", transfer_syntax, source_ae)
            before = head[144:-8]
        explicit = transfer_syntax == EXPLICIT_VR_LE
        result[context] = {sop_class: (names[0].encode(), names[1].encode(), before, after, explicit)}
    return result


def _load_compiled() -> Any:
    if os.environ.get("BATCHSTORE_PURE_PYTHON"):
        return None
    try:
        from . import _onemessage  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _onemessage


compiled = _load_compiled()
