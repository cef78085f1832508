"""storescp's event options: a command run after each received object (``-xcr``), a command run and a
renaming done at the end of a study (``-xcs``, ``-rns``), end-of-study by timeout (``-tos``) and
synchronous execution (``-xs``).

Every value a peer controls (AE titles, addresses, file names) is sanitised and then shell-quoted before it
replaces a placeholder, so nothing a peer sends reaches the shell unescaped.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger("batchstore.events")

#: Placeholders of ``-xcr``/``-xcs`` (storescp man page): output directory, file name, calling AE title,
#: called AE title, calling presentation address.
PLACEHOLDERS = ("#p", "#f", "#a", "#c", "#r")
_PLACEHOLDER = re.compile(r"#[pfacr]")
_UNUSUAL = re.compile(r"[^A-Za-z0-9._\-]")


@dataclass(frozen=True)
class EventOptions:
    """The event options of storescp.

    Attributes
    ----------
    exec_on_reception : str or None
        ``-xcr``: shell command run after each C-STORE-RQ was received and processed.
    exec_on_eostudy : str or None
        ``-xcs``: shell command run when a study is complete (``#f`` is not available).
    rename_on_eostudy : bool
        ``-rns``: at the end of a study, rename its files to ``<2-letter prefix><6-digit number>``.
    eostudy_timeout : float or None
        ``-tos``: a study also ends when nothing was received for this many seconds.
    exec_sync : bool
        ``-xs``: wait for the commands to finish instead of running them in the background.
    """

    exec_on_reception: str | None = None
    exec_on_eostudy: str | None = None
    rename_on_eostudy: bool = False
    eostudy_timeout: float | None = None
    exec_sync: bool = False

    @property
    def tracks_studies(self) -> bool:
        """True when the end of a study has to be detected for these options."""
        return bool(self.exec_on_eostudy or self.rename_on_eostudy)


@dataclass(frozen=True)
class Peer:
    """The association an event belongs to: what ``#a``, ``#c`` and ``#r`` expand to."""

    calling_ae: str = ""
    called_ae: str = ""
    address: str = ""


@dataclass
class Study:
    """The study being received: its directory and the files stored for it so far."""

    uid: str
    directory: str
    peer: Peer
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, 2-letter modality prefix)


def sanitize(value: str) -> str:
    """Map every character other than letters, digits, ``.``, ``_`` and ``-`` to ``_`` (storescp's rule)."""
    clean = _UNUSUAL.sub("_", value)
    if clean != value:
        log.warning("sanitised %r to %r before passing it to the shell", value, clean)
    return clean


def expand(command: str, *, path: str = "", filename: str | None = "", peer: Peer | None = None) -> str:
    """Replace the placeholders of `command`, each value sanitised and shell-quoted.

    Parameters
    ----------
    command : str
        The ``-xcr``/``-xcs`` command line.
    path : str
        ``#p``: the directory the last object was stored in (paths are quoted, not sanitised: the operator
        chose the output directory; the parts a peer controls are sanitised where the path is built).
    filename : str or None
        ``#f``: the file name of the last object (empty with ``--ignore``); None for ``-xcs``, where, as in
        storescp, ``#f`` is left as it is (there is no single file at the end of a study).
    peer : Peer
        ``#a``, ``#c``, ``#r``.
    """
    peer = peer or Peer()
    values = {
        "#p": path,
        "#a": sanitize(peer.calling_ae),
        "#c": sanitize(peer.called_ae),
        "#r": sanitize(peer.address),
    }
    if filename is not None:
        values["#f"] = filename
    return _PLACEHOLDER.sub(lambda m: shlex.quote(values[m[0]]) if m[0] in values else m[0], command)


class EventRunner:
    """Runs the ``-xcr``/``-xcs`` commands and does the ``-rns`` renaming.

    Background commands are started in their own session and reaped opportunistically, so they never
    hold up reception and never pile up as zombies.
    """

    def __init__(self, options: EventOptions) -> None:
        self.options = options
        self._background: list[subprocess.Popen[bytes]] = []

    def run(self, command: str) -> int | None:
        """Run `command` through ``/bin/sh``; return its exit code with ``-xs``, else None."""
        self.reap()
        log.info("executing command: %s", command)
        try:
            if self.options.exec_sync:
                return subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, check=False).returncode
            proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.error("cannot execute command %r: %s", command, exc)
            return None
        self._background.append(proc)
        return None

    @property
    def busy(self) -> bool:
        """True while background commands may still be running."""
        return bool(self._background)

    def reap(self) -> None:
        """Collect background commands that have finished (no zombies)."""
        if self._background:
            self._background = [p for p in self._background if p.poll() is None]

    def on_reception(self, directory: str, filename: str, peer: Peer) -> None:
        """``-xcr``: called after a C-STORE-RQ was processed and answered."""
        if self.options.exec_on_reception:
            self.run(expand(self.options.exec_on_reception, path=directory, filename=filename, peer=peer))

    def on_end_of_study(self, study: Study) -> None:
        """``-rns`` then ``-xcs`` for a study that just ended."""
        log.info("end of study %s (%d files in %s)", study.uid, len(study.files), study.directory)
        if self.options.rename_on_eostudy:
            rename_study(study)
        if self.options.exec_on_eostudy:
            self.run(expand(self.options.exec_on_eostudy, path=study.directory, filename=None, peer=study.peer))


def rename_study(study: Study) -> None:
    """Rename the files of `study` to ``<prefix><000001…>`` in its directory (storescp ``-rns``)."""
    counter = 0
    renamed: list[tuple[str, str]] = []
    for path, prefix in study.files:
        directory = os.path.dirname(path)
        while True:
            counter += 1
            target = os.path.join(directory, f"{prefix}{counter:06d}")
            if not os.path.exists(target):
                break
        try:
            os.replace(path, target)
        except OSError as exc:
            log.error("cannot rename %s to %s: %s", path, target, exc)
            renamed.append((path, prefix))
            continue
        renamed.append((target, prefix))
    study.files[:] = renamed
