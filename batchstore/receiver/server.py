"""The Storage SCP server: the listening socket and how associations are run (``--single-process``,
``--fork``, ``--inetd``), signals, reaping of children, and host access control (``+ac``).

`serve` is the Python API behind ``batchstore receive``::

    from batchstore.server import ReceiveOptions, serve
    from batchstore.storage import StorageOptions

    serve(ReceiveOptions(port=11112, host="127.0.0.1", mode="fork",
                         storage=StorageOptions(output_dir="/data/in")))

With ``--fork`` the parent only accepts and reaps: each association runs in a child of its own
(`os.fork`), at most `ReceiveOptions.max_associations` at a time (the parent waits for one to finish
before accepting more). A child that crashes or is killed never takes the parent down, and the parent
deletes the temporary files such a child leaves. SIGTERM stops accepting and lets running associations
finish (exit 0); SIGINT stops at once, killing the children (exit 130).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .association import PREFERRED_TRANSFER_SYNTAXES, Association, AssociationResult, Negotiator
from .events import EventOptions, EventRunner
from .store import StorageOptions, Store, remove_temp_files

log = logging.getLogger("batchstore.server")

EXIT_OK = 0
EXIT_INTERRUPTED = 130

MODES = ("single", "fork", "inetd")


@dataclass(frozen=True)
class ReceiveOptions:
    """Everything ``batchstore receive`` can be told (storescp's options plus a few of batchstore's own).

    Attributes
    ----------
    port : int
        TCP port to listen on; 0 picks a free one (see `port_file`).
    host : str
        Address to bind (storescp binds all interfaces: ``0.0.0.0``).
    port_file : str or None
        Write the bound port to this file once listening.
    mode : str
        ``single`` (``--single-process``), ``fork`` (``--fork``) or ``inetd`` (``--inetd``: one association
        on the socket inherited as standard input).
    max_associations : int
        ``--fork``: at most this many associations at a time (0: no limit).
    ae_title : str
        ``-aet``: our AE title, returned in the A-ASSOCIATE-AC (called AE titles are not checked).
    max_pdu : int
        ``-pdu``: our maximum receive PDU length (4096..131072).
    preferred : str
        A key of `scp.PREFERRED_TRANSFER_SYNTAXES` (``+x=``, ``+xe`` … ``+xa``).
    config_file : (str, str) or None
        ``-xf``: association negotiation profile (file, profile name); replaces `preferred`.
    promiscuous : bool
        ``-pm``: accept unknown SOP classes.
    refuse : bool
        ``--refuse``: reject every association.
    reject_without_implementation_uid : bool
        ``--reject``: reject associations whose request has no Implementation Class UID.
    accept_aets : tuple of str
        ``--accept-aet``: allowed calling AE titles (empty: all); others are rejected (permanent,
        service user, reason 3 "calling AE title not recognized").
    access_control : bool
        ``+ac``: enforce `hosts_allow`/`hosts_deny` rules for daemon ``storescp`` or ``batchstore``.
    host_lookup : bool
        False with ``-dhl``: never resolve the peer's host name (``#r`` is its IP address).
    socket_timeout, acse_timeout, dimse_timeout : float or None
        ``-ts`` (default 60), ``-ta`` (30), ``-td`` (none); 0 or None: no timeout.
    sleep_after, sleep_during : float
        ``--sleep-after``: seconds to sleep after each C-STORE (after its response);
        ``--sleep-during``: seconds to sleep at the start of a C-STORE, after each data set PDV and before
        storing it.
    abort_after, abort_during : bool
        ``--abort-after``: A-ABORT once a data set was received, before answering (nothing is stored);
        ``--abort-during``: A-ABORT after the first data set PDV.
    verbose_pc : bool
        ``+v``: log the presentation contexts in verbose mode.
    storage : StorageOptions
        Output options (``-od``, ``--ignore``, file format, naming, sorting).
    events : EventOptions
        ``-xcr -xcs -rns -tos -xs``.
    """

    port: int = 104
    host: str = "0.0.0.0"
    port_file: str | None = None
    mode: str = "single"
    max_associations: int = 0
    ae_title: str = "STORESCP"
    max_pdu: int = 16384
    preferred: str = "uncompr"
    config_file: tuple[str, str] | None = None
    promiscuous: bool = False
    refuse: bool = False
    reject_without_implementation_uid: bool = False
    accept_aets: tuple[str, ...] = ()
    access_control: bool = False
    hosts_allow: str = "/etc/hosts.allow"
    hosts_deny: str = "/etc/hosts.deny"
    host_lookup: bool = True
    socket_timeout: float | None = 60.0
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = None
    sleep_after: float = 0.0
    sleep_during: float = 0.0
    abort_after: bool = False
    abort_during: bool = False
    verbose_pc: bool = False
    storage: StorageOptions = field(default_factory=StorageOptions)
    events: EventOptions = field(default_factory=EventOptions)


def validate(options: ReceiveOptions) -> None:
    """Check option combinations the way storescp does.

    Raises
    ------
    ValueError
        With a message naming the options in conflict.
    """
    storage, events = options.storage, options.events
    if options.mode not in MODES:
        raise ValueError(f"unknown mode {options.mode!r} (one of {', '.join(MODES)})")
    if options.mode != "inetd" and not 0 <= options.port <= 65535:
        raise ValueError(f"port {options.port} out of range 0..65535")
    if options.max_pdu != 0 and not 4096 <= options.max_pdu <= 131072:
        raise ValueError(f"--max-pdu {options.max_pdu} is not 0 (unlimited) or in the range 4096..131072")
    if not 1 <= len(options.ae_title) <= 16:
        raise ValueError("--aetitle must be 1 to 16 characters")
    if options.preferred not in PREFERRED_TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax preference {options.preferred!r}")
    if options.config_file and options.promiscuous:
        raise ValueError("--promiscuous cannot be used with --config-file")
    if options.max_associations < 0:
        raise ValueError("--max-associations must be 0 (no limit) or more")
    if options.mode in ("fork", "inetd"):
        flag = "--fork" if options.mode == "fork" else "--inetd"
        for given, name in (
            (events.exec_on_eostudy, "--exec-on-eostudy"),
            (events.rename_on_eostudy, "--rename-on-eostudy"),
            (storage.sort == "conc", "--sort-conc-studies"),
        ):
            if given:
                raise ValueError(
                    f"{name} cannot be used with {flag}: the end of a study spans associations, "
                    "and each association runs in a process of its own"
                )
    if events.rename_on_eostudy and storage.sort is None:
        raise ValueError(
            "--rename-on-eostudy needs one of --sort-conc-studies, --sort-on-study-uid, --sort-on-patientname"
        )
    if events.eostudy_timeout is not None and not (
        storage.sort or events.exec_on_eostudy or events.rename_on_eostudy
    ):
        raise ValueError("--eostudy-timeout needs --sort-xxx, --exec-on-eostudy or --rename-on-eostudy")
    if storage.bit_preserving:
        for given, name in (
            (storage.write_xfer != "same", "--write-xfer-" + storage.write_xfer),
            (not storage.new_vr, "--disable-new-vr"),
            (storage.group_length != "recalc", "--group-length-" + storage.group_length),
            (not storage.explicit_length, "--length-undefined"),
            (storage.padding is not None, "--padding-create"),
            (storage.convert_un, "--convert-un"),
            (storage.compression_level is not None, "--compression-level"),
            (storage.sort is not None, "--sort-xxx"),
        ):
            if given:
                raise ValueError(f"{name} cannot be used with --bit-preserving")
    if storage.padding is not None:
        if not storage.write_meta:
            raise ValueError("--padding-create cannot be used with --write-dataset")
        if min(storage.padding) < 0:
            raise ValueError("--padding-create values must not be negative")
    if storage.compression_level is not None:
        if storage.write_xfer not in ("same", "deflated"):
            raise ValueError("--compression-level only with --write-xfer-deflated or --write-xfer-same")
        if not 0 <= storage.compression_level <= 9:
            raise ValueError("--compression-level must be 0..9")
    if not os.path.isdir(storage.output_dir):
        raise ValueError(f"output directory does not exist: {storage.output_dir}")
    for value, name in ((options.sleep_after, "--sleep-after"), (options.sleep_during, "--sleep-during")):
        if value < 0:
            raise ValueError(f"{name} must not be negative")


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


# --------------------------------------------------------------------------------------------------------
# host access control (tcp wrapper style)


class HostAccess:
    """A small hosts_access(5) implementation: ``daemon_list : client_list [: options]`` lines.

    Access is granted when a rule in `allow_path` matches, else denied when one in `deny_path` matches,
    else granted. Daemon lists match ``storescp``, ``batchstore`` or ``ALL``. Client patterns: ``ALL``,
    ``LOCAL``, ``KNOWN``, ``UNKNOWN``, an address, an address prefix (``127.``), a network
    (``10.0.0.0/255.0.0.0`` or ``10.0.0.0/8``), a host name, a domain suffix (``.example.org``), ``*``/``?``
    wildcards, and ``EXCEPT``. Options after a second colon are ignored.
    """

    DAEMONS = ("storescp", "batchstore")

    def __init__(
        self, allow_path: str = "/etc/hosts.allow", deny_path: str = "/etc/hosts.deny", lookup: bool = True
    ) -> None:
        self.allow = self._parse(allow_path)
        self.deny = self._parse(deny_path)
        self.lookup = lookup

    @staticmethod
    def _parse(path: str) -> list[tuple[list[str], list[str]]]:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            return []
        rules = []
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or ":" not in line:
                continue
            daemons, rest = line.split(":", 1)
            clients = rest.split(":", 1)[0] if not rest.lstrip().startswith("[") else rest
            rules.append((daemons.replace(",", " ").split(), clients.replace(",", " ").split()))
        return rules

    def allowed(self, ip: str) -> bool:
        """True when the host at `ip` may connect."""
        host: list[str | None] = []

        def hostname() -> str | None:
            if not host:
                name = None
                if self.lookup:
                    try:
                        name = socket.gethostbyaddr(ip)[0].lower()
                    except OSError:
                        name = None
                host.append(name)
            return host[0]

        def client(pattern: str) -> bool:
            return self._client_matches(pattern, ip, hostname)

        def daemon(pattern: str) -> bool:
            return pattern == "ALL" or pattern.lower() in self.DAEMONS

        for rules, verdict in ((self.allow, True), (self.deny, False)):
            for daemons, clients in rules:
                if _list_matches(daemons, daemon) and _list_matches(clients, client):
                    return verdict
        return True

    @staticmethod
    def _client_matches(pattern: str, ip: str, hostname: Callable[[], str | None]) -> bool:
        if "@" in pattern:
            pattern = pattern.split("@", 1)[1]
        if pattern == "ALL":
            return True
        if pattern == "LOCAL":
            name = hostname()
            return name is not None and "." not in name
        if pattern in ("KNOWN", "UNKNOWN"):
            return (hostname() is not None) == (pattern == "KNOWN")
        if pattern == "PARANOID":
            return False
        bare = pattern.strip("[]")
        if "/" in bare:
            try:
                return ipaddress.ip_address(ip) in ipaddress.ip_network(bare, strict=False)
            except ValueError:
                return False
        if pattern.endswith("."):
            return ip.startswith(pattern)
        if "*" in pattern or "?" in pattern:
            name = hostname() or ""
            return fnmatch.fnmatch(ip, pattern) or fnmatch.fnmatch(name, pattern.lower())
        try:
            return ipaddress.ip_address(bare) == ipaddress.ip_address(ip)
        except ValueError:
            pass
        name = hostname()
        if name is None:
            return False
        if pattern.startswith("."):
            return name.endswith(pattern.lower())
        return name == pattern.lower()


def _list_matches(items: list[str], matches: Callable[[str], bool]) -> bool:
    if "EXCEPT" in items:
        at = items.index("EXCEPT")
        return _list_matches(items[:at], matches) and not _list_matches(items[at + 1 :], matches)
    return any(matches(item) for item in items)


# --------------------------------------------------------------------------------------------------------
# serving


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
        self.children: dict[int, tuple[str, float]] = {}
        self.stopping = False
        self.interrupted = False
        self.port = 0
        self._wake_r = -1
        self._wake_w = -1
        self._listener: socket.socket | None = None

    # ---- one association

    def handle(self, conn: socket.socket, address: tuple[str, int]) -> AssociationResult:
        """Serve one accepted connection in this process."""
        if self.access is not None and not self.access.allowed(address[0]):
            log.warning("access denied to %s by host access control rules", address[0])
            conn.close()
            return AssociationResult("refused-access")
        return Association(conn, address, self.options, self.negotiator, self.store, self.events).run()

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

    def _single_loop(self, listener: socket.socket) -> int:
        tos = self.options.events.eostudy_timeout
        while not self.stopping:
            self.events.reap()
            timeout = tos if tos and self.store.study is not None else None
            if timeout is None and self.events.busy:
                timeout = 1.0  # come back to collect background commands
            ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], timeout)
            if not ready and (not tos or self.store.study is None):
                continue
            if not ready:
                self.store.end_study()
                continue
            if self._wake_r in ready:
                self._drain_wakeup()
                continue
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            self.handle(conn, (str(address[0]), int(address[1])))
        log.info("stopped (SIGTERM)")
        return EXIT_OK

    # ---- fork

    def _fork_loop(self, listener: socket.socket) -> int:
        limit = self.options.max_associations
        while not self.stopping and not self.interrupted:
            self._reap()
            if limit and len(self.children) >= limit:
                select.select([self._wake_r], [], [], 1.0)
                self._drain_wakeup()
                continue
            ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], 1.0)
            if self._wake_r in ready:
                self._drain_wakeup()
            if listener.fileno() not in ready or self.stopping or self.interrupted:
                continue
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            self._spawn(conn, (str(address[0]), int(address[1])))
        listener.close()
        return self._shutdown_children()

    def _spawn(self, conn: socket.socket, address: tuple[str, int]) -> None:
        for handler in logging.getLogger().handlers + logging.getLogger("batchstore").handlers:
            handler.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("cannot fork for %s: %s", address[0], exc)
            conn.close()
            return
        if pid == 0:
            self._child(conn, address)  # never returns
        conn.close()
        self.children[pid] = (address[0], time.monotonic())
        log.debug("forked child %d for %s:%d (%d running)", pid, address[0], address[1], len(self.children))

    def _child(self, conn: socket.socket, address: tuple[str, int]) -> None:
        code = 1
        try:
            if self._listener is not None:
                self._listener.close()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.store.after_fork()
            self.handle(conn, address)
            code = 0
        except BaseException:  # noqa: BLE001 - a child must end in os._exit whatever happens
            log.exception("association child %d failed", os.getpid())
        finally:
            for handler in logging.getLogger().handlers + logging.getLogger("batchstore").handlers:
                try:
                    handler.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            info = self.children.pop(pid, None)
            if info is None:
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
                log.debug("association child %d finished", pid)

    def _shutdown_children(self) -> int:
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
