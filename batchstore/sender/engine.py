"""What the worker needs of an SCU engine: `StoreEngine`, the protocol both engines implement.

`scu.StoreSCU` (the default, a synchronous loop on the hand-written upper layer) and
`scu_pynetdicom.PynetdicomSCU` (``--engine pynetdicom``) each hold one association with a Storage SCP.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ..net.acse import AssociationAccept

__all__ = ["StoreEngine", "StoreResponse"]


class StoreResponse(NamedTuple):
    """The peer's C-STORE-RSP: its status and optional error comment.

    A named tuple: one is made per file, and a frozen dataclass's ``__init__`` cost ~3,400 instructions
    of the ~45,000 the C-STORE loop spends per 1 KB file (docs/design.md, "The send side, issue 17").
    """

    status: int
    error_comment: str = ""


class StoreEngine(Protocol):
    """One association with a Storage SCP, as the worker drives it.

    Every method but `open` is called on an open association. Network trouble is raised as `OSError` or
    `batchstore.net.errors.NetError`; an `OSError` whose ``filename`` is the file being sent is the file's
    fault, not the network's.
    """

    def open(self) -> AssociationAccept:
        """Connect and negotiate; raise on rejection or network failure."""
        ...

    @property
    def is_open(self) -> bool:
        """True while the association can carry the next message."""
        ...

    def accepted(self) -> dict[int, str]:
        """Accepted presentation context ID -> its transfer syntax."""
        ...

    def store_bytes(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes | memoryview
    ) -> StoreResponse:
        """Send one C-STORE-RQ with `dataset` (encoded in the context's syntax); return the response."""
        ...

    def store_file(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, path: str, data_offset: int
    ) -> StoreResponse:
        """Send one C-STORE-RQ whose data set is the file's own bytes from `data_offset`."""
        ...

    def release(self) -> None:
        """A-RELEASE the association."""
        ...

    def abort(self) -> None:
        """A-ABORT the association."""
        ...

    def close(self) -> None:
        """Drop the connection without a PDU."""
        ...
