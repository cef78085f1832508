"""Host access control for ``+ac``: a small hosts_access(5) implementation (``/etc/hosts.allow`` and
``/etc/hosts.deny`` rules, as tcp wrappers read them).

It fails closed (docs/design.md, "Hostile peers"): only a rules file that does not exist means "no
rules"; one that cannot be read refuses to start, and an error while matching denies. A host name is
trusted only when it is forward-confirmed (the name's own addresses include the peer's): otherwise the
peer counts as ``UNKNOWN`` and matches ``PARANOID``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("batchstore.server")


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
        """The rules of `path`; none if it does not exist.

        Raises
        ------
        ValueError
            If it exists but cannot be read (permissions, a directory, an I/O error): a deny file that
            cannot be read must not mean "allow everyone".
        """
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ValueError(f"+ac: cannot read {path}: {exc.strerror or exc}") from None
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
        """True when the host at `ip` may connect (False, too, when matching fails)."""
        try:
            return self._allowed(ip)
        except Exception as exc:  # fail closed
            log.error("+ac: cannot match %s against the rules (%s): access denied", ip, exc)
            return False

    def _allowed(self, ip: str) -> bool:
        host: list[str | None] = []
        paranoid: list[bool] = []

        def hostname() -> str | None:
            if not host:
                name, unconfirmed = self._confirmed_name(ip) if self.lookup else (None, False)
                host.append(name)
                paranoid.append(unconfirmed)
            return host[0]

        def client(pattern: str) -> bool:
            if pattern == "PARANOID":
                hostname()
                return paranoid[0]
            return self._client_matches(pattern, ip, hostname)

        def daemon(pattern: str) -> bool:
            return pattern == "ALL" or pattern.lower() in self.DAEMONS

        for rules, verdict in ((self.allow, True), (self.deny, False)):
            for daemons, clients in rules:
                if _list_matches(daemons, daemon) and _list_matches(clients, client):
                    return verdict
        return True

    @staticmethod
    def _confirmed_name(ip: str) -> tuple[str | None, bool]:
        """The host name of `ip` if forward-confirmed, and whether a name was found but not confirmed."""
        try:
            name = socket.gethostbyaddr(ip)[0].lower()
        except (OSError, UnicodeError):
            return None, False
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
        except (OSError, UnicodeError):
            addresses = set()
        try:
            wanted = ipaddress.ip_address(ip)
            confirmed = any(ipaddress.ip_address(a.split("%", 1)[0]) == wanted for a in addresses)
        except ValueError:
            confirmed = False
        if not confirmed:
            log.warning("+ac: host name %s of %s is not forward-confirmed: treated as unknown", name, ip)
            return None, True
        return name, False

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
