"""A scripted Storage SCP for protocol edge cases: answers each C-STORE-RQ with the status a test chooses.

It speaks the upper layer protocol through batchstore's own `net`/`acse`/`dimse` modules but decides
nothing by itself: `policy(n, sop_instance_uid)` returns the status of the n-th answered C-STORE (1-based,
counted across associations), ``"abort"`` to send an A-ABORT instead of a response, ``"abort-after"``
to answer 0x0000 and then abort the now idle association, or ``"silent"`` to never answer (the sender's
DIMSE timeout has to end it). With `abort_during=k` it aborts at the first
data set fragment of the k-th C-STORE-RQ it receives, while the sender is still sending. It runs in a
thread of the test process, on 127.0.0.1 and port 0; use it as a context manager.

Its threads assert nothing: what the SCP could not handle (an unexpected PDU, a policy that returns
something else than a status) is collected in `errors` and raised as an AssertionError in the test's own
thread when the ``with`` block ends, after the association threads have finished. A peer that aborts or
closes the connection is not an error.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from batchstore.net import acse, dimse, errors
from batchstore.net.pdu import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDUStream,
    iter_pdvs,
    pdata_parts,
)

Policy = Callable[[int, str], "int | str"]

_A_ABORT = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0))  # A-ABORT PDU, service user, no reason


class _Aborted(OSError):
    """This SCP aborted the association on purpose."""


class ScriptedSCP:
    """Context manager: ``with ScriptedSCP(lambda n, uid: 0xA700 if n <= 2 else 0) as scp: ... scp.port``."""

    def __init__(
        self, policy: Policy = lambda n, uid: 0, max_pdu: int = 16384, abort_during: int = 0
    ) -> None:
        self.policy = policy
        self.max_pdu = max_pdu
        self.abort_during = abort_during
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0  # C-STORE-RQs answered (or aborted by the policy)
        self.requests = 0  # C-STORE-RQs received
        self.stored: list[str] = []  # SOP Instance UIDs answered with success/warning
        self.data: dict[str, bytes] = {}  # SOP Instance UID -> data set bytes received, for stored ones
        self.aborted_uid = ""  # the C-STORE `abort_during` cut short
        self.associations = 0
        self.errors: list[str] = []  # what the SCP's threads could not handle, raised by __exit__
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._workers: list[tuple[threading.Thread, socket.socket]] = []
        self._closing = False

    def __enter__(self) -> ScriptedSCP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _serve (close alone does not)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            workers = list(self._workers)
        for thread, conn in workers:
            thread.join(2)
            if thread.is_alive():  # a peer still connected: end the association, then wait for the thread
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                thread.join(5)
        if (not exc or exc[0] is None) and self.errors:
            raise AssertionError("the scripted SCP failed: " + "; ".join(self.errors))

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._run_association, args=(conn,), daemon=True)
            with self._lock:
                self._workers.append((thread, conn))
            thread.start()

    def _run_association(self, conn: socket.socket) -> None:
        try:
            self._association(conn)
        except Exception as exc:  # collected for the test's thread: nothing is raised or asserted here
            self._error(f"{type(exc).__name__}: {exc}")

    def _association(self, conn: socket.socket) -> None:
        stream = PDUStream(conn)
        try:
            pdu_type, body = stream.read_pdu()
            if pdu_type != A_ASSOCIATE_RQ:
                self._error(f"PDU type 0x{pdu_type:02X} instead of an A-ASSOCIATE-RQ")
                return
            request, _ = acse.decode_request(body)
            results = {
                cid: (acse.PC_ACCEPTANCE, syntaxes[0]) for cid, _abstract, syntaxes in request.contexts
            }
            stream.pdu(A_ASSOCIATE_AC, acse.encode_accept(request, results, self.max_pdu))
            with self._lock:
                self.associations += 1
            command = b""
            data = bytearray()
            request_number = 0
            while True:
                pdu_type, body = stream.read_pdu()
                if pdu_type == A_RELEASE_RQ:
                    stream.pdu(A_RELEASE_RP, bytes(4))
                    return
                if pdu_type != P_DATA_TF:
                    self._error(f"PDU type 0x{pdu_type:02X} during the association")
                    return
                for ctx, control, fragment in iter_pdvs(body):
                    if control & 1:
                        command += bytes(fragment)
                        if control & 2:
                            cmd = dimse.decode_command(command)
                            command = b""
                            data = bytearray()
                            if not cmd.data_set_present:
                                self._answer(stream, ctx, cmd, b"")
                            else:
                                with self._lock:
                                    self.requests += 1
                                    request_number = self.requests
                        continue
                    if request_number == self.abort_during:
                        self.aborted_uid = cmd.sop_instance_uid
                        stream.abort()  # mid-data-set: the sender is still sending
                        raise _Aborted("scripted abort during a data set")
                    data += fragment
                    if control & 2:  # last data set fragment: answer
                        self._answer(stream, ctx, cmd, bytes(data))
        except (OSError, errors.PeerAborted):
            pass  # the peer closed or aborted the association (or this SCP aborted it: _Aborted)
        finally:
            stream.close()

    def _answer(self, stream: PDUStream, ctx: int, cmd: dimse.Command, data: bytes) -> None:
        if cmd.command_field == dimse.C_ECHO_RQ:
            stream.send_parts(pdata_parts(ctx, dimse.c_echo_rsp(cmd.message_id), True, 0))
            return
        with self._lock:
            self.count += 1
            n = self.count
        status = self.policy(n, cmd.sop_instance_uid)
        if status == "silent":
            return
        if status == "abort":
            stream.abort()
            raise _Aborted("scripted abort before the response")
        abort_after = status == "abort-after"
        if abort_after:
            status = 0
        if not isinstance(status, int):
            raise TypeError(f"the policy returned {status!r} for C-STORE {n}")
        if status == 0 or (status & 0xF000) == 0xB000:
            with self._lock:
                self.stored.append(cmd.sop_instance_uid)
                self.data[cmd.sop_instance_uid] = data
        rsp = dimse.c_store_rsp(cmd.message_id, cmd.sop_class_uid, cmd.sop_instance_uid, status)
        parts = pdata_parts(ctx, rsp, True, 0)
        if abort_after:
            # The A-ABORT goes out in the same write as the response, so it is there before the sender's
            # next request whatever the thread scheduling: the association is idle when it arrives.
            parts.append(_A_ABORT)
            stream.send_parts(parts)
            stream.close()
            raise _Aborted("scripted abort after the response")
        stream.send_parts(parts)
