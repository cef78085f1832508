"""Host access control for ``+ac``: a small hosts_access(5) implementation (``/etc/hosts.allow`` and
``/etc/hosts.deny`` rules, as tcp wrappers read them).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable


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
