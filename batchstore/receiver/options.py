"""The receiver's options: storescp's output options (`StorageOptions`) and everything else
``batchstore receive`` takes (`ReceiveOptions`), and `validate`, which checks their combinations the way
storescp does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .events import EventOptions
from .negotiation import PREFERRED_TRANSFER_SYNTAXES

if TYPE_CHECKING:
    from ..net.tls import TLSOptions


@dataclass(frozen=True)
class StorageOptions:
    """storescp's output options.

    Attributes
    ----------
    output_dir : str
        ``-od``: an existing directory.
    bit_preserving : bool
        ``+B``: write the data set exactly as received (also what the default does when no format option is
        given; ``+B`` additionally forbids the options that would change it).
    write_meta : bool
        ``+F`` (True) or ``-F`` (False, data set only).
    write_xfer : str
        ``same`` (``+t=``), ``little`` (``+te``), ``big`` (``+tb``), ``implicit`` (``+ti``), ``deflated`` (``+td``).
    new_vr : bool
        ``+u`` (True) or ``-u``: write UN, UT, UC, UR, OD, OF, OL, OV as OB.
    group_length : str
        ``recalc`` (``+g=``), ``create`` (``+g``) or ``remove`` (``-g``).
    explicit_length : bool
        ``+e`` (True) or ``-e``: sequences and items with undefined length.
    padding : tuple of (int, int) or None
        ``+p f i``: pad the file to a multiple of f bytes and items to a multiple of i bytes.
    convert_un : bool
        ``+uc``: convert UN elements to their dictionary VR.
    compression_level : int or None
        ``+cl``: zlib level for deflated output (None: 6, and deflated input is kept as received).
    sort : str or None
        ``conc`` (``-ss``), ``study-uid`` (``-su``) or ``patient-name`` (``-sp``).
    sort_prefix : str
        The prefix of ``-ss``/``-su``.
    filenames : str
        ``default`` (``-uf``: from the SOP Instance UID), ``unique`` (``+uf``), ``time`` (``-tn``).
    extension : str
        ``-fe``: appended to every file name (no dot added).
    ignore : bool
        ``--ignore``: receive but do not store.
    uid_padding : bool
        ``-up``: tolerate space-padded UIDs in the data set when checking them against the request.
    fsync : bool
        ``--fsync``: sync each file and its directory to stable storage before the C-STORE-RSP, so that
        an acknowledged object survives a power cut (docs/design.md, "Hostile peers").
    """

    output_dir: str = "."
    bit_preserving: bool = False
    write_meta: bool = True
    write_xfer: str = "same"
    new_vr: bool = True
    group_length: str = "recalc"
    explicit_length: bool = True
    padding: tuple[int, int] | None = None
    convert_un: bool = False
    compression_level: int | None = None
    sort: str | None = None
    sort_prefix: str = ""
    filenames: str = "default"
    extension: str = ""
    ignore: bool = False
    uid_padding: bool = False
    fsync: bool = False

    @property
    def reencodes(self) -> bool:
        """True when an option asks for a different encoding than the one received."""
        return (
            self.write_xfer != "same"
            or not self.new_vr
            or self.group_length != "recalc"
            or not self.explicit_length
            or self.padding is not None
            or self.convert_un
        )


MODES = ("single", "fork", "inetd")

#: ``--fork`` without ``--max-associations``: at most this many association children at a time. Idle or
#: slow connections never count (they wait in the server's pre-association stage, `receiver.gate`).
DEFAULT_MAX_ASSOCIATIONS = 32


@dataclass(frozen=True)
class CommitmentOptions:
    """``--commitment``: the Storage Commitment SCP (`receiver.commitment`).

    Attributes
    ----------
    reply_to : (str, int) or None
        ``--commit-reply-to HOST:PORT``: report on a new association to that address; None: on the
        association of the request.
    reply_aet : str or None
        ``--commit-reply-aet``: the called AE title of that association (default: the requestor's AE title).
    """

    reply_to: tuple[str, int] | None = None
    reply_aet: str | None = None


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
    max_associations : int or None
        ``--fork``: at most this many associations at a time (0: no limit; None: the default,
        `DEFAULT_MAX_ASSOCIATIONS`).
    ae_title : str
        ``-aet``: our AE title, returned in the A-ASSOCIATE-AC (called AE titles are not checked).
    max_pdu : int
        ``-pdu``: our maximum receive PDU length (4096..131072).
    preferred : str
        A key of `receiver.negotiation.PREFERRED_TRANSFER_SYNTAXES` (``+x=``, ``+xe`` … ``+xa``).
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
    max_associations: int | None = None
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
    tls: TLSOptions | None = None  # +tls: every association over TLS (batchstore.net.tls)
    storage: StorageOptions = field(default_factory=StorageOptions)
    events: EventOptions = field(default_factory=EventOptions)
    commitment: CommitmentOptions | None = None  # --commitment: Storage Commitment SCP too


def association_limit(options: ReceiveOptions) -> int:
    """How many association children ``--fork`` runs at a time (0: no limit)."""
    if options.max_associations is None:
        return DEFAULT_MAX_ASSOCIATIONS
    return options.max_associations


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
    if options.max_associations is not None and options.max_associations < 0:
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
