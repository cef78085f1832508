"""The Storage SCU's association on pynetdicom's `AE`/`Association`: the reference engine (``--engine pynetdicom``).

`PynetdicomSCU` has `StoreSCU`'s interface and raises the same exceptions, so a worker does not know which
engine it drives. Negotiation, the DUL state machine, DIMSE encoding and P-DATA fragmentation are all
pynetdicom's; only the choice of presentation context (the caller's, as with `StoreSCU`) and the mapping of
pynetdicom's outcomes to batchstore's exceptions are done here. It is slower than `StoreSCU` (a DUL thread
and 1 ms reactor polls per message; docs/design.md, "A hand-written upper layer") and is kept as the
full-featured fallback and the yardstick of the conformance tests (tests/test_conformance.py).

This is the only send-path module that imports pynetdicom.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any, NoReturn, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, MaximumLengthNotification, UserIdentityNegotiation
from pynetdicom.presentation import build_context
from pynetdicom.transport import AssociationSocket

from ..net import acse
from ..net.errors import PeerAborted, ProtocolError
from ..net.sockets import phase_timeout, tune_socket
from .engine import StoreResponse
from .scu import AssociationOptions

#: How long to wait, after pynetdicom reports "no response", for its DUL thread to tell why (abort or close).
_SETTLE_SECONDS = 0.5


class _ConnectProbe:
    """Stands in for the socket while pynetdicom connects, to keep the `OSError` that pynetdicom only logs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.error: OSError | None = None

    def connect(self, address: Any) -> None:
        try:
            self.sock.connect(address)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _TunedSocket(AssociationSocket):
    """pynetdicom's transport with ``TCP_NODELAY`` on and connection errors kept.

    See docs/design.md, "Nagle and delayed ACKs".
    """

    connect_error: OSError | None = None

    def _create_socket(self, address: Any) -> socket.socket:
        sock = super()._create_socket(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self, primitive: Any) -> None:
        probe = _ConnectProbe(self.socket)  # type: ignore[arg-type]
        self.socket = probe  # type: ignore[assignment]
        try:
            super().connect(primitive)
        finally:
            if self.socket is probe:
                self.socket = probe.sock
                tune_socket(probe.sock)
            self.connect_error = probe.error
            if probe.error is not None:
                probe.sock.close()  # pynetdicom's shutdown() of an unconnected socket raises before close()


class _AE(AE):
    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> AssociationSocket:
        sock = _TunedSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _peer_address(host: str, port: int, family: int) -> str | tuple[str, int, int]:
    """Resolve `host` the way `net.connect` does; pynetdicom wants an IP address (IPv6 as a 3-tuple)."""
    for af, _kind, _proto, _name, address in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM):
        if af == socket.AF_INET:
            return str(address[0])
        if af == socket.AF_INET6:
            ipv6 = cast(tuple[str, int, int, int], address)
            return (ipv6[0], ipv6[2], ipv6[3])
    raise OSError(f"cannot resolve {host}")


def _pause_reactor(assoc: Association) -> None:
    """Stop the association's reactor thread from taking DIMSE messages until its checkpoint is set again.

    ``Association.send_c_store`` clears the checkpoint and waits for ``_is_paused``, but the reactor sets
    ``_is_paused = True`` *before* ``_reactor_checkpoint.wait()``: when the wait returns just before the
    clear, the sender sees a stale True, sends, and the reactor's next ``dimse.get_msg`` can take the
    C-STORE-RSP (``_serve_request`` then drops it) so the sender waits for the DIMSE timeout. Measured with
    pynetdicom 3.0.4: ~1 C-STORE in 400 on 2 cores (tests/test_conformance.py ran into it). Here the reactor
    counts as paused only once it is blocked inside ``wait()`` (the event's condition has a waiter).
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    waiters = getattr(getattr(checkpoint, "_cond", None), "_waiters", None)
    while assoc.is_alive() and not assoc._kill:
        if waiters is not None:
            if waiters:
                return
        elif assoc._is_paused:  # pragma: no cover - a Python whose Event has no Condition._waiters
            return
        time.sleep(0.0001)


class PynetdicomSCU:
    """One association with a Storage SCP, through pynetdicom.

    The A-ASSOCIATE-RQ carries pynetdicom's Implementation Class UID and Version Name (``PYNETDICOM_…``),
    so a peer's log tells which engine is talking to it.

    Parameters
    ----------
    options : AssociationOptions
        Peer address, AE titles, timeouts, PDU sizes, user identity.
    contexts : sequence of (context_id, abstract_syntax, transfer_syntaxes)
        The presentation contexts to propose (at most 128), in this order. pynetdicom numbers them
        1, 3, 5 ... itself; the context IDs given here are mapped to pynetdicom's both ways.
    """

    def __init__(
        self, options: AssociationOptions, contexts: tuple[tuple[int, str, tuple[str, ...]], ...]
    ) -> None:
        if not 0 < len(contexts) <= 128:
            raise ValueError(f"an association carries 1 to 128 presentation contexts, not {len(contexts)}")
        self.options = options
        self.contexts = contexts
        self.assoc: Association | None = None
        self.accept: acse.AssociationAccept | None = None
        self.abstract_of = {cid: abstract for cid, abstract, _ in contexts}
        # ours -> pynetdicom's (2 * index + 1) and back
        self._to_pynetdicom = {cid: 2 * i + 1 for i, (cid, _, _) in enumerate(contexts)}
        self._from_pynetdicom = {theirs: ours for ours, theirs in self._to_pynetdicom.items()}
        self._message_id = 0
        self._abort_pdu: tuple[int, int] | None = None  # (source, reason) of an A-ABORT PDU from the peer
        self._lock = threading.Lock()

    # -- association life cycle ------------------------------------------------------------------

    def _on_pdu_recv(self, event: evt.Event) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        if isinstance(pdu, A_ABORT_RQ):
            with self._lock:
                self._abort_pdu = (int(pdu.source or 0), int(pdu.reason_diagnostic or 0))

    def open(self) -> acse.AssociationAccept:
        """Connect and negotiate.

        Raises
        ------
        acse.AssociationRejected
            A-ASSOCIATE-RJ (``.transient`` tells whether retrying may help).
        net.PeerAborted
            The peer answered with A-ABORT.
        OSError
            Connection refused, reset or timed out (`TimeoutError` when no answer came in time).
        PermissionError
            ``-rsp`` asked for a positive user identity response and the peer sent none.
        """
        opts = self.options
        address = _peer_address(opts.host, opts.port, opts.family)
        ae = _AE(ae_title=opts.calling_ae[:16])
        ae.connection_timeout = opts.connect_timeout
        ae.acse_timeout = phase_timeout(opts.acse_timeout, opts.socket_timeout)
        ae.dimse_timeout = phase_timeout(opts.dimse_timeout, opts.socket_timeout)
        ae.network_timeout = None  # like StoreSCU: an idle association is not aborted by us
        requested = [build_context(abstract, list(syntaxes)) for _cid, abstract, syntaxes in self.contexts]
        ext_neg = []
        identity = opts.user_identity
        if identity is not None:
            item = UserIdentityNegotiation()
            item.user_identity_type = identity.kind
            item.positive_response_requested = identity.positive_response
            item.primary_field = identity.primary
            if identity.kind == 2:
                item.secondary_field = identity.secondary
            ext_neg.append(item)
        self._abort_pdu = None
        assoc = ae.associate(
            address,
            opts.port,
            contexts=requested,
            ae_title=opts.called_ae[:16],
            max_pdu=opts.max_pdu,
            ext_neg=ext_neg,  # type: ignore[arg-type]
            evt_handlers=[(evt.EVT_PDU_RECV, self._on_pdu_recv)],
            tls_args=_tls_args(opts),  # type: ignore[arg-type]
        )
        if not assoc.is_established:
            answer = assoc.acceptor.primitive
            if getattr(answer, "result", None) == 0 and not assoc.accepted_contexts:
                # accepted without a usable context: pynetdicom aborts at once; StoreSCU keeps the
                # association, but either way no file can go out on it
                self.accept = self._accept_of(assoc)
                return self.accept
            self._raise_not_established(assoc, during_negotiation=True)
        accept = self._accept_of(assoc)
        if identity is not None and identity.positive_response and accept.user_identity_response is None:
            assoc.abort()
            raise PermissionError("peer sent no positive user identity response (-rsp)")
        if opts.max_send_pdu:
            self._cap_send_pdu(assoc, opts.max_send_pdu)
        self.assoc = assoc
        self.accept = accept
        return accept

    def _accept_of(self, assoc: Association) -> acse.AssociationAccept:
        peer = assoc.acceptor
        results: dict[int, tuple[int, str]] = {}
        for cx in list(assoc.accepted_contexts) + list(assoc.rejected_contexts):
            ours = self._from_pynetdicom.get(int(cx.context_id or 0))
            if ours is None:
                continue
            ts = str(cx.transfer_syntax[0]) if cx.transfer_syntax and cx.result == 0 else ""
            results[ours] = (int(cx.result if cx.result is not None else acse.PC_NO_REASON), ts)
        response = None
        identity = peer.user_identity
        if identity is not None and identity.server_response is not None:
            response = bytes(identity.server_response)
        return acse.AssociationAccept(
            max_pdu=int(peer.maximum_length or 0),
            results=results,
            implementation_class_uid=str(peer.implementation_class_uid or ""),
            implementation_version_name=str(peer.implementation_version_name or ""),
            user_identity_response=response,
        )

    @staticmethod
    def _cap_send_pdu(assoc: Association, cap: int) -> None:
        """``--max-send-pdu``: pynetdicom fragments to the peer's announced maximum, so lower that figure."""
        for item in assoc.acceptor.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer = int(item.maximum_length_received or 0)
                item.maximum_length_received = min(peer, cap) if peer else cap

    def _raise_not_established(self, assoc: Association, during_negotiation: bool = False) -> NoReturn:
        """Turn pynetdicom's "not established" into the exception `StoreSCU` would raise."""
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            raise acse.AssociationRejected(
                int(getattr(rsp, "result", 1) or 1),
                int(getattr(rsp, "result_source", 1) or 1),
                int(getattr(rsp, "diagnostic", 1) or 1),
            )
        sock = assoc.dul.socket
        error = getattr(sock, "connect_error", None)
        if error is not None:
            raise error
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:  # the DUL thread may still be processing what ended the association
            with self._lock:
                abort = self._abort_pdu
            if abort is not None:
                raise PeerAborted(*abort)
            pending = assoc.dul.peek_next_pdu()
            if isinstance(pending, A_ABORT):
                raise PeerAborted(int(pending.abort_source or 0), 0)
            if isinstance(pending, A_P_ABORT):
                raise ConnectionResetError("connection closed by peer")
            if not assoc.dul.is_alive() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if during_negotiation:
            if assoc.acceptor.primitive is not None:
                raise ProtocolError("invalid A-ASSOCIATE response from the peer")
            if assoc._sent_abort:
                raise TimeoutError("no answer to A-ASSOCIATE-RQ in time (ACSE timeout)")
        raise ConnectionResetError("association ended by the peer")

    @property
    def is_open(self) -> bool:
        """True while the association can carry the next message (as `StoreSCU.is_open`: input waiting
        between messages, or an abort the DUL thread has queued, means the peer ended it)."""
        assoc = self.assoc
        if assoc is None or not assoc.is_established or assoc.acse.is_aborted():
            return False
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is None:
            return False
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return not poller.poll(0)
            return not select.select([sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def accepted(self) -> dict[int, str]:
        """Accepted context ID -> transfer syntax."""
        return self.accept.accepted() if self.accept else {}

    def release(self) -> None:
        """A-RELEASE the association (errors while releasing only close the socket)."""
        assoc, self.assoc = self.assoc, None
        if assoc is None:
            return
        try:
            if assoc.is_established:
                _pause_reactor(assoc)  # release() pauses it too, with the race `_pause_reactor` describes
                assoc.release()
        except Exception:
            self._drop(assoc)
        else:
            if not assoc.is_released:
                self._drop(assoc)

    def abort(self) -> None:
        """A-ABORT the association (``--abort``, or after an error that leaves it unusable)."""
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            try:
                assoc.abort()
            except Exception:
                self._drop(assoc)

    def close(self) -> None:
        """Drop the connection without a PDU (the peer is gone or the association is broken)."""
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            self._drop(assoc)

    @staticmethod
    def _drop(assoc: Association) -> None:
        sock = assoc.dul.socket
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass
        try:
            assoc.kill()
        except Exception:
            pass

    # -- DIMSE ---------------------------------------------------------------------------------------

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1
        return self._message_id

    def _request(self, request: C_STORE | C_ECHO, context_id: int) -> Any:
        """Send `request` on our `context_id` and return pynetdicom's response primitive.

        This is the tail of ``Association.send_c_store``/``send_c_echo`` (pause the reactor so it does not
        take the response, ``dimse.send_msg``, ``dimse.get_msg``), done here so that the caller's context
        and data offset are honoured exactly instead of pynetdicom choosing a context for the file.
        """
        assoc = self.assoc
        if assoc is None:
            raise ConnectionResetError("association is closed")
        if not assoc.is_established:
            self.assoc = None
            self._raise_not_established(assoc)
        theirs = self._to_pynetdicom[context_id]
        try:
            _pause_reactor(assoc)
            if not assoc.is_established:
                self.assoc = None
                self._raise_not_established(assoc)
            assoc.dimse.send_msg(request, theirs)
            try:
                # dimse.get_msg(), but telling a DIMSE timeout (queue.Empty) from the (None, None) that
                # pynetdicom's state machine queues when the peer aborts or closes the connection
                _cx, rsp = assoc.dimse.msg_queue.get(block=True, timeout=assoc.dimse.dimse_timeout)
            except queue.Empty:
                rsp = None
                timed_out = True
            else:
                timed_out = False
        finally:
            assoc._reactor_checkpoint.set()
        if rsp is None:
            self.assoc = None
            if timed_out:
                assoc.abort()  # pynetdicom's answer to a DIMSE timeout
                raise TimeoutError("no response from the peer in time (DIMSE timeout)")
            self._raise_not_established(assoc)
        if not rsp.is_valid_response or rsp.MessageIDBeingRespondedTo != request.MessageID:
            self.abort()
            raise ProtocolError(
                f"response to message {rsp.MessageIDBeingRespondedTo}, expected {request.MessageID}"
            )
        return rsp

    def echo(self, context_id: int) -> int:
        """Send C-ECHO-RQ on `context_id`; return the response status."""
        request = C_ECHO()
        request.MessageID = self._next_message_id()
        request.AffectedSOPClassUID = self.abstract_of[context_id]
        rsp = self._request(request, context_id)
        return int(rsp.Status or 0)

    def _store(self, request: C_STORE, context_id: int) -> StoreResponse:
        rsp = self._request(request, context_id)
        status = rsp.Status
        comment = getattr(rsp, "ErrorComment", None) or ""
        return StoreResponse(int(status) if status is not None else 0xC000, str(comment))

    def _store_request(self, sop_class_uid: str, sop_instance_uid: str) -> C_STORE:
        request = C_STORE()
        request.MessageID = self._next_message_id()
        request.Priority = 2  # low, as storescu sends
        request.AffectedSOPClassUID = sop_class_uid
        request.AffectedSOPInstanceUID = sop_instance_uid
        return request

    def store_bytes(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes | memoryview
    ) -> StoreResponse:
        """Send one C-STORE-RQ whose data set is `dataset` (already encoded in the context's syntax)."""
        request = self._store_request(sop_class_uid, sop_instance_uid)
        request.DataSet = BytesIO(bytes(dataset))
        return self._store(request, context_id)

    def store_file(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        path: str,
        data_offset: int,
    ) -> StoreResponse:
        """Send one C-STORE-RQ whose data set is read from `path` starting at `data_offset`, unchanged.

        pynetdicom reads the file as it fragments it (what ``send_c_store`` does with
        ``_config.STORE_SEND_CHUNKED_DATASET``), so the data set is never decoded.
        """
        os.stat(path)  # a missing file fails here, before anything is sent (as in StoreSCU)
        request = self._store_request(sop_class_uid, sop_instance_uid)
        request._dataset_path = (Path(path), data_offset)
        return self._store(request, context_id)


def _tls_args(opts: AssociationOptions) -> tuple[Any, str | None] | None:
    """pynetdicom's ``tls_args`` for ``+tls``/``+tla``: the same context the lean engine uses."""
    if opts.tls is None:
        return None
    from ..net.tls import client_context  # ssl only when TLS is asked for

    return client_context(opts.tls), opts.tls.request_sni
