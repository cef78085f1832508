"""The Storage SCP server: the listening socket and how associations are run (``--single-process``,
``--fork``, ``--inetd``), signals, reaping of children, and host access control (``+ac``).

`serve` is the Python API behind ``batchstore receive``::

    from batchstore.receiver.options import ReceiveOptions, StorageOptions
    from batchstore.receiver.server import serve

    serve(ReceiveOptions(port=11112, host="127.0.0.1", mode="fork",
                         storage=StorageOptions(output_dir="/data/in")))

Either way the server first takes each connection into a pre-association stage (`receiver.gate`): it
reads the A-ASSOCIATE-RQ itself, without blocking, bounded in length and time, so a connection that sends
nothing, or trickles, never holds an association slot nor, without ``--fork``, the server. With ``--fork``
the parent only accepts, reads requests and reaps: each association runs in a child of its own
(`os.fork`), at most `options.association_limit` at a time (complete requests wait for a free slot). A child that crashes or is killed never takes the parent down, and the parent
deletes the temporary files such a child leaves. SIGTERM stops accepting and lets running associations
finish (exit 0); SIGINT stops at once, killing the children (exit 130).
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import select
import selectors
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from ..net.sockets import phase_timeout
from .association import Association, AssociationResult
from .events import EventRunner
from .files import remove_temp_files
from .gate import MAX_ASSOCIATE_RQ, MAX_INCOMPLETE, Gate
from .hosts import HostAccess
from .negotiation import PREFERRED_TRANSFER_SYNTAXES, Negotiator
from .options import ReceiveOptions, association_limit, validate
from .spawner import ForkServer
from .store import Store


def _flush_logs() -> None:
    """Write out what the log handlers buffer (before a fork, and before a child's exit)."""
    for handler in logging.getLogger().handlers + logging.getLogger("batchstore").handlers:
        handler.flush()


#: The largest hand-over message to a spare child: the A-ASSOCIATE-RQ the gate read, and a little more.
MAX_HANDOVER = MAX_ASSOCIATE_RQ + 4096

log = logging.getLogger("batchstore.server")

EXIT_OK = 0
EXIT_INTERRUPTED = 130

# selector data of the listening socket and the wake-up pipe (a pending connection's is its `Pending`)
_LISTENER = object()
_WAKE = object()

def make_negotiator(options: ReceiveOptions) -> Negotiator:
    """The presentation context policy of `options` (reads the ``-xf`` profile).

    Raises
    ------
    ValueError
        If the configuration file or profile cannot be used.
    """
    if options.config_file:
        from ..net.asconfig import ConfigError, load_scp_profile

        path, profile = options.config_file
        try:
            contexts = load_scp_profile(path, profile)
        except ConfigError as exc:
            raise ValueError(f"--config-file {path} {profile}: {exc}") from None
        return Negotiator(profile=dict(contexts))
    return Negotiator(PREFERRED_TRANSFER_SYNTAXES[options.preferred], promiscuous=options.promiscuous)


def serve(options: ReceiveOptions, ready: Callable[[int], None] | None = None) -> int:
    """Run the Storage SCP until it is stopped; return the exit code.

    Parameters
    ----------
    options : ReceiveOptions
    ready : callable, optional
        Called with the bound port once the server listens (not in ``inetd`` mode).

    Returns
    -------
    int
        0 after SIGTERM (or the single ``--inetd`` association), 130 after SIGINT.

    Raises
    ------
    ValueError
        For an invalid option combination or an unusable ``-xf`` profile.
    OSError
        If the address cannot be bound.
    """
    validate(options)
    server = Server(options)
    if options.mode == "inetd":
        return server.serve_inetd()
    return server.run(ready)


class Server:
    """The state `serve` runs with: policy objects built once, before any fork."""

    def __init__(self, options: ReceiveOptions) -> None:
        self.options = options
        self.negotiator = make_negotiator(options)
        self.events = EventRunner(options.events)
        self.store = Store(
            options.storage,
            track_studies=options.events.tracks_studies,
            on_end_of_study=self.events.on_end_of_study,
        )
        self.access = (
            HostAccess(options.hosts_allow, options.hosts_deny, options.host_lookup)
            if options.access_control
            else None
        )
        self.root = self.store.root
        self.tls_context = None  # +tls: built once, before any fork (files and password checked once)
        if options.tls is not None:
            from ..net.tls import server_context

            self.tls_context = server_context(options.tls)
        self.children: dict[int, tuple[str, float]] = {}
        #: pre-forked children waiting for an association (pid -> the parent's end of their channel)
        self.spares: dict[int, socket.socket] = {}
        self._retired_spares: set[int] = set()
        self._gate: Gate | None = None  # --fork: the pre-association stage, whose sockets a child closes
        self._forker: ForkServer | None = None  # --fork: the process that forks the children (`spawner`)
        self.stopping = False
        self.interrupted = False
        self.port = 0
        self._wake_r = -1
        self._wake_w = -1
        self._listener: socket.socket | None = None
        self._listening = False

    # ---- one association

    def handle(
        self,
        conn: socket.socket,
        address: tuple[str, int],
        request: bytes | None = None,
        accepted: float = 0.0,
    ) -> AssociationResult:
        """Serve one accepted connection in this process (`request`: its A-ASSOCIATE-RQ body, when the
        pre-association stage read it; `accepted`: when it was accepted, `time.monotonic`)."""
        if self.access is not None and not self.access.allowed(address[0]):
            log.warning("access denied to %s by host access control rules", address[0])
            conn.close()
            return AssociationResult("refused-access")
        return Association(
            conn, address, self.options, self.negotiator, self.store, self.events, request, accepted
        ).run()

    def serve_inetd(self) -> int:
        """``--inetd``: serve the one association on the socket that is standard input."""
        sock = socket.socket(fileno=os.dup(0))
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # inetd hands the socket over as stdin, stdout and stderr: keep logs out of it
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:
                pass
        os.close(devnull)
        try:
            peer = sock.getpeername()
            address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("localhost", 0)
        except OSError:
            address = ("unknown", 0)
        if self.tls_context is not None:
            from ..net.tls import describe_handshake_error, wrap_server

            sock.settimeout(phase_timeout(self.options.acse_timeout, self.options.socket_timeout))
            try:
                sock = wrap_server(sock, self.tls_context)  # type: ignore[assignment]
            except OSError as exc:  # ssl.SSLError is an OSError; nothing reaches the DICOM layer
                log.error("connection from %s: %s", address[0], describe_handshake_error(exc))
                return EXIT_OK
        self.handle(sock, address)
        return EXIT_OK

    # ---- listening

    def _listen(self) -> socket.socket:
        options = self.options
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        listener = socket.create_server((options.host, options.port), family=family, backlog=128)
        listener.set_inheritable(False)
        return listener

    def run(self, ready: Callable[[int], None] | None = None) -> int:
        """Listen and serve until SIGTERM/SIGINT (or `stop`)."""
        listener = self._listener = self._listen()
        self.port = int(listener.getsockname()[1])
        stale = remove_temp_files(self.root)
        if stale:
            log.warning("removed %d temporary files left by processes that are gone", len(stale))
        if self.options.port_file:
            tmp = f"{self.options.port_file}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{self.port}\n")
            os.replace(tmp, self.options.port_file)
        log.info(
            "listening on %s:%d (%s, AE title %s, output directory %s)",
            self.options.host,
            self.port,
            {"single": "single process", "fork": "process per association"}[self.options.mode],
            self.options.ae_title,
            self.root,
        )
        if ready is not None:
            ready(self.port)
        restore = self._install_signals()
        try:
            if self.options.mode == "fork":
                return self._fork_loop(listener)
            return self._single_loop(listener)
        except KeyboardInterrupt:
            log.warning("interrupted")
            return EXIT_INTERRUPTED
        finally:
            restore()
            listener.close()
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def stop(self) -> None:
        """Ask a running server to stop accepting (what SIGTERM does); safe from another thread."""
        self.stopping = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def _install_signals(self) -> Callable[[], None]:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # embedded in a thread: no signal handling, use stop()
        fork = self.options.mode == "fork"
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

        def on_term(signum: int, frame: object) -> None:
            self.stopping = True

        def on_int(signum: int, frame: object) -> None:
            self.interrupted = True

        signal.signal(signal.SIGTERM, on_term)
        if fork:
            signal.signal(signal.SIGINT, on_int)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in saved.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

        return restore

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self, listener: socket.socket, gate: Gate) -> None:
        """Take the connections waiting in the backlog into the pre-association stage (a burst at most)."""
        for _ in range(MAX_INCOMPLETE):
            if gate.full():
                return
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            gate.admit(conn, (str(address[0]), int(address[1])))

    def _poll(
        self, selector: selectors.BaseSelector, listener: socket.socket, gate: Gate, timeout: float | None
    ) -> None:
        """Wait for connections, requests, signals or `timeout`; accept, read requests, expire deadlines."""
        listening = self._listening
        if gate.full() and listening:
            selector.unregister(listener)
            self._listening = False
        elif not gate.full() and not listening:
            selector.register(listener, selectors.EVENT_READ, _LISTENER)
            self._listening = True
        now = time.monotonic()
        due = gate.next_timeout(now)
        if due is not None:
            timeout = due if timeout is None else min(timeout, due)
        for key, _events in selector.select(timeout):
            if key.data is _LISTENER:
                self._accept(listener, gate)
            elif key.data is _WAKE:
                self._drain_wakeup()
            else:
                gate.read(key.data)
        gate.expire(time.monotonic())

    def _stage(self, listener: socket.socket) -> tuple[selectors.BaseSelector, Gate]:
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, _LISTENER)
        selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._listening = True
        options = self.options
        return selector, Gate(
            selector, phase_timeout(options.acse_timeout, options.socket_timeout), self.tls_context
        )

    def _single_loop(self, listener: socket.socket) -> int:
        tos = self.options.events.eostudy_timeout
        selector, gate = self._stage(listener)
        try:
            while not self.stopping:
                self.events.reap()
                if gate.waiting:
                    pending = gate.waiting.popleft()
                    self.handle(pending.sock, pending.address, pending.request, pending.accepted)
                    continue
                timeout = tos if tos and self.store.study is not None else None
                if timeout is None and self.events.busy:
                    timeout = 1.0  # come back to collect background commands
                started = time.monotonic()
                self._poll(selector, listener, gate, timeout)
                if (
                    tos
                    and self.store.study is not None
                    and not gate.waiting
                    and time.monotonic() - started >= tos
                ):
                    self.store.end_study()
        finally:
            gate.close()
            selector.close()
        log.info("stopped (SIGTERM)")
        return EXIT_OK

    # ---- fork

    def _fork_loop(self, listener: socket.socket) -> int:
        limit = association_limit(self.options)
        selector, gate = self._stage(listener)
        self._gate = gate
        # what exists now is shared with every child: out of the collector's sight, a child's collection
        # neither walks nor copies it (docs/design.md, "Small runs")
        gc.freeze()
        if self._spare_count():
            self._forker = ForkServer.start(self._child_setup, self._spare)
            if self._forker is not None:
                log.debug("fork server %d forks the association children", self._forker.pid)
        try:
            while not self.stopping and not self.interrupted:
                self._reap()
                while gate.waiting and (not limit or len(self.children) < limit):
                    pending = gate.waiting.popleft()
                    self._spawn(pending.sock, pending.address, pending.request, pending.accepted)
                if not gate.waiting and len(self.spares) < self._spare_count():
                    self._fork_spare()  # between associations: the next one finds a child ready
                    continue
                self._poll(selector, listener, gate, 1.0)
        finally:
            gate.close()
            selector.close()
        listener.close()
        self._retire_spares()
        return self._shutdown_children()

    # ---- pre-forked children: the fork, and the child's first touches of the parent's memory, happen
    # before an association arrives (docs/design.md, "Small runs")

    def _spare_count(self) -> int:
        """How many idle children to keep ready: ``BATCHSTORE_SPARE_CHILDREN`` (0 to 4, default 1); none
        with TLS, whose handshake the parent does and cannot hand over."""
        if self.tls_context is not None:
            return 0
        value = os.environ.get("BATCHSTORE_SPARE_CHILDREN", "1").strip()
        return min(int(value), 4) if value.isdigit() else 1

    def _fork_spare(self) -> None:
        _flush_logs()  # a child must not write the parent's buffered lines again
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self._forker is not None:
            pid = self._forker.spawn(child_end)
            if pid is not None:
                child_end.close()
                self.spares[pid] = parent_end
                return
            self._lose_forker("did not answer")
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("cannot fork a spare child: %s", exc)
            parent_end.close()
            child_end.close()
            return
        if pid == 0:
            parent_end.close()
            self._spare(child_end)  # never returns
        child_end.close()
        self.spares[pid] = parent_end

    def _lose_forker(self, why: str, reaped: bool = False) -> None:
        """The fork server failed: end it (unless it is `reaped` already), and fork the children here
        from now on."""
        forker = self._forker
        if forker is None:
            return
        log.warning("the fork server (pid %d) %s; forking association children in the receiver", forker.pid, why)
        forker.close()
        self._forker = None
        if reaped:
            return  # its pid may already be another process's
        self._retired_spares.add(forker.pid)
        try:
            os.kill(forker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _spare(self, channel: socket.socket) -> NoReturn:
        """A pre-forked child: prepare as an association child does, then serve the one association the
        parent hands over, or exit when the parent closes the channel."""

        def take() -> tuple[socket.socket, tuple[str, int], bytes | None, float] | None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, MAX_HANDOVER, 1)
            except OSError:
                return None
            if not fds:
                return None  # the parent is done with this spare
            address, request, accepted = pickle.loads(data)
            return socket.socket(fileno=fds[0]), address, request, accepted

        self._in_child(take)

    def _hand_over(
        self, conn: socket.socket, address: tuple[str, int], request: bytes | None, accepted: float
    ) -> bool:
        """Give `conn` to a spare child; False when there is none (or it is gone): fork one then."""
        while self.spares:
            pid, channel = self.spares.popitem()
            try:
                socket.send_fds(channel, [pickle.dumps((address, request, accepted))], [conn.fileno()])
            except OSError:
                channel.close()
                self._retired_spares.add(pid)
                continue
            channel.close()
            conn.close()
            self.children[pid] = (address[0], time.monotonic())
            log.debug("child %d (ready) for %s:%d (%d running)", pid, address[0], address[1], len(self.children))
            return True
        return False

    def _retire_spares(self) -> None:
        """Close the spares' channels and the fork server's: each exits at once (reaped with the
        association children)."""
        if self._forker is not None:
            self._forker.close()
            self._retired_spares.add(self._forker.pid)
            self._forker = None
        for pid, channel in self.spares.items():
            channel.close()
            self._retired_spares.add(pid)
        self.spares.clear()

    def _spawn(
        self, conn: socket.socket, address: tuple[str, int], request: bytes | None = None, accepted: float = 0.0
    ) -> None:
        if self._forker is not None and not self.spares:
            self._fork_spare()  # no child ready (a burst): the fork server makes one now
        if self._hand_over(conn, address, request, accepted):
            return
        _flush_logs()  # a child must not write the parent's buffered lines again
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("cannot fork for %s: %s", address[0], exc)
            conn.close()
            return
        if pid == 0:
            self._child(conn, address, request, accepted)  # never returns
        conn.close()
        self.children[pid] = (address[0], time.monotonic())
        log.debug("forked child %d for %s:%d (%d running)", pid, address[0], address[1], len(self.children))

    def _child(
        self, conn: socket.socket, address: tuple[str, int], request: bytes | None, accepted: float
    ) -> NoReturn:
        self._in_child(lambda: (conn, address, request, accepted))

    def _in_child(
        self, take: Callable[[], tuple[socket.socket, tuple[str, int], bytes | None, float] | None]
    ) -> NoReturn:
        """A child's whole life: set up, take its association (None: nothing to serve), serve, exit."""
        code = 1
        try:
            self._child_setup()
            association = take()
            if association is not None:
                self.handle(*association)
            code = 0
        except BaseException:  # noqa: BLE001 - a child must end in os._exit whatever happens
            log.exception("association child %d failed", os.getpid())
        finally:
            self._child_exit(code)

    def _child_setup(self) -> None:
        """In a new child (or the fork server, whose children then run this again): drop the parent's
        listening socket, signal handling and wake-up pipe."""
        if self._listener is not None:
            self._listener.close()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        for channel in self.spares.values():  # the parent's ends: a spare must see EOF when the parent closes
            channel.close()
        self.spares.clear()
        if self._forker is not None:  # the same for the fork server
            self._forker.close()
            self._forker = None
        if self._gate is not None:  # the stage's connections are the parent's: its copies would keep them open
            for pending in [*self._gate.incomplete.values(), *self._gate.waiting]:
                pending.sock.close()
        self.store.after_fork()

    @staticmethod
    def _child_exit(code: int) -> NoReturn:
        try:
            _flush_logs()
        except Exception:  # noqa: BLE001 - nothing may stop the exit
            pass
        os._exit(code)

    def _reap(self) -> None:
        while self.children or self.spares or self._retired_spares:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                for channel in self.spares.values():
                    channel.close()
                self.spares.clear()
                self._retired_spares.clear()
                return
            if pid == 0:
                return
            info = self.children.pop(pid, None)
            if self._forker is not None and pid == self._forker.pid:
                self._lose_forker("exited", reaped=True)
            if info is None:
                self._retired_spares.discard(pid)
                if pid in self.spares:  # a spare that died before it was needed: another is forked
                    self.spares.pop(pid).close()
                    log.debug("spare child %d exited before serving an association", pid)
                continue
            if os.WIFSIGNALED(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0):
                how = (
                    f"was killed by signal {os.WTERMSIG(status)}"
                    if os.WIFSIGNALED(status)
                    else f"exited with code {os.WEXITSTATUS(status)}"
                )
                removed = remove_temp_files(self.root, pid)
                log.warning(
                    "association child %d (%s) %s; removed %d temporary files",
                    pid,
                    info[0],
                    how,
                    len(removed),
                )
            else:
                # the child's peak memory, as the kernel counted it: what tests bound, without sampling
                log.debug("association child %d finished (peak RSS %d KiB)", pid, usage.ru_maxrss)

    def _shutdown_children(self) -> int:
        deadline = time.monotonic() + 2.0
        while self._retired_spares and time.monotonic() < deadline:  # they exit at once: reap them
            self._reap()
            if self._retired_spares:
                time.sleep(0.01)
        killed = False
        if self.children:
            log.info("waiting for %d running associations", len(self.children))
        while self.children:
            if self.interrupted and not killed:
                for pid in list(self.children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed = True
            self._reap()
            if self.children:
                select.select([self._wake_r], [], [], 0.2)
                self._drain_wakeup()
        if self.interrupted:
            log.warning("interrupted (SIGINT)")
            return EXIT_INTERRUPTED
        log.info("stopped (SIGTERM)")
        return EXIT_OK
