"""Turning scanned instances into batches and the presentation contexts proposed to send them (pure, no I/O).

A plan groups files by (SOP class, transfer syntax), cuts the groups into batches, and splits the
presentation contexts into context groups of at most 128 (one association each) without ever
splitting one SOP class's contexts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import NamedTuple

from ..dicom.codecs import can_decode, can_encode
from ..dicom.part10 import Instance
from ..dicom.records import Frozen
from ..dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MEDIA_STORAGE_DIRECTORY,
    NATIVE_CONVERTIBLE,
    PROPOSAL_MODES,
    is_lossy,
    is_native_convertible,
    is_uncompressed,
    sop_class_name,
    ts_name,
)
from ..net.acse import PresentationContextProposal

__all__ = [
    "Batch",
    "ContextGroup",
    "Plan",
    "PlanOptions",
    "PresentationContextProposal",
    "choose_context",
    "context_choices",
    "conversion",
    "make_plan",
    "no_context_reason",
    "proposal_for_sop_class",
]

#: The logger of the ``+v`` notes about the proposal (``batchstore send +v`` sets it to INFO).
contexts_log = logging.getLogger("batchstore.contexts")

#: DICOM allows at most 128 presentation contexts per association (odd IDs 1..255).
MAX_CONTEXTS = 128

#: dcmsend's decompression policies (``--decompress-never``, ``--decompress-lossless``, ``--decompress-lossy``).
DECOMPRESS_POLICIES = ("never", "lossless", "lossy")

#: Native syntaxes to convert or decompress into, best first: explicit VR before implicit VR (big-endian
#: files keep their VRs), little endian first.
_NATIVE_PREFERENCE = {EXPLICIT_VR_LE: 0, EXPLICIT_VR_BE: 1, DEFLATED_EXPLICIT_VR_LE: 2, IMPLICIT_VR_LE: 3}

DICOMDIR_REASON = (
    "DICOMDIR: a media storage directory is an index of files, not an object to store; skipped "
    "(+rd/--read-dicomdir sends the files it references)"
)


def conversion(file_ts: str, ts: str, compress_to: tuple[str, ...] = (), decompress: str = "lossless") -> str:
    """How a file in `file_ts` can go out in `ts`: ``"as-is"``, ``"convert"``, ``"compress"``, ``"decompress"``.

    Parameters
    ----------
    file_ts, ts : str
        The file's own transfer syntax and a syntax a context proposes.
    compress_to : tuple of str
        The compressed (and deflated) syntaxes the user proposed (``-xs``, ``-xv``, ``-xd`` ...): only
        these are compressed into, and only from uncompressed input; lossy ones only because they are here.
    decompress : {"never", "lossless", "lossy"}
        Which compressed files may be decompressed (dcmsend's policy; ``lossless`` by default).

    Returns
    -------
    str
        ``""`` when it cannot. No codec is imported: the tables are `codecs`'s.
    """
    if file_ts == ts:
        return "as-is"
    if file_ts in NATIVE_CONVERTIBLE:
        if ts in NATIVE_CONVERTIBLE:
            return "convert"
        if ts in compress_to and can_encode(ts):
            return "compress"
        return ""
    if (
        ts in NATIVE_CONVERTIBLE
        and ts != EXPLICIT_VR_BE
        and can_decode(file_ts)
        and (decompress == "lossy" or (decompress == "lossless" and not is_lossy(file_ts)))
    ):
        return "decompress"
    return ""


class ContextGroup(Frozen):
    """The presentation contexts of one association (at most 128, context IDs 1, 3, 5 ...).

    `ContextGroup` and `Batch` are `Frozen` records, not dataclasses (start-up, docs/design.md "Small runs"),
    nor named tuples (the field ``index`` would shadow ``tuple.index``); ``_replace`` gives a changed copy.

    Attributes
    ----------
    index : int
    contexts : tuple of PresentationContextProposal
    compress_to : tuple of str
        The compressed/deflated syntaxes the user proposed (compressed into from uncompressed input).
    decompress : str
        dcmsend's decompression policy: "never", "lossless" (default) or "lossy".
    """

    __slots__ = _fields = ("index", "contexts", "compress_to", "decompress")
    index: int
    contexts: tuple[PresentationContextProposal, ...]
    compress_to: tuple[str, ...]
    decompress: str

    def __init__(
        self,
        index: int,
        contexts: tuple[PresentationContextProposal, ...],
        compress_to: tuple[str, ...] = (),
        decompress: str = "lossless",
    ) -> None:
        self._set(index, contexts, compress_to, decompress)

    def __reduce__(self) -> tuple:
        return ContextGroup, (self.index, self.contexts, self.compress_to, self.decompress)

    @property
    def sop_classes(self) -> tuple[str, ...]:
        """The abstract syntaxes in this group, in proposal order, without repeats."""
        return tuple(dict.fromkeys(pc.abstract_syntax for pc in self.contexts))

    def candidates(self, sop_class: str, transfer_syntax: str) -> tuple[int, ...]:
        """Return the context IDs that could carry a file, in order of preference.

        Parameters
        ----------
        sop_class : str
            The file's SOP class UID.
        transfer_syntax : str
            The file's own transfer syntax.

        Returns
        -------
        tuple of int
            First the contexts proposing the file's own syntax (it can go out as its own bytes), then
            those proposing a syntax it can be converted to (re-encoded, compressed as the user proposed,
            or decompressed as the policy allows; see `conversion`); proposal order within each.
        """
        own: list[int] = []
        convertible: list[int] = []
        for pc in self.contexts:
            if pc.abstract_syntax != sop_class:
                continue
            if transfer_syntax in pc.transfer_syntaxes:
                own.append(pc.context_id)
            elif any(
                conversion(transfer_syntax, ts, self.compress_to, self.decompress)
                for ts in pc.transfer_syntaxes
            ):
                convertible.append(pc.context_id)
        return (*own, *convertible)


class Batch(Frozen):
    """Files of one SOP class and transfer syntax that one worker sends on one association."""

    __slots__ = _fields = ("index", "sop_class_uid", "transfer_syntax", "context_group", "instances", "nbytes")
    index: int
    sop_class_uid: str
    transfer_syntax: str
    context_group: int
    instances: tuple[Instance, ...]
    nbytes: int

    def __init__(
        self,
        index: int,
        sop_class_uid: str,
        transfer_syntax: str,
        context_group: int,
        instances: tuple[Instance, ...],
        nbytes: int,
    ) -> None:
        self._set(index, sop_class_uid, transfer_syntax, context_group, instances, nbytes)

    def __reduce__(self) -> tuple:
        # Pickled (to a worker) as plain tuples: each file's path, SOP instance UID, size, data offset and
        # mtime, the SOP class and syntax once for the batch: pickling and unpickling take about 10,000
        # instructions per file less than for `Instance` objects (docs/design.md, "The send side, issue 17").
        sop_class, syntax = self.sop_class_uid, self.transfer_syntax
        instances = self.instances
        if all(i.sop_class_uid == sop_class and i.transfer_syntax == syntax for i in instances):
            rows: list[tuple] = [_own_fields(i) for i in instances]
            shared = True
        else:  # not a batch `make_plan` cuts; kept whole all the same
            rows, shared = [_all_fields(i) for i in instances], False
        return _batch, (self.index, sop_class, syntax, self.context_group, rows, shared, self.nbytes)


#: `Instance`'s fields in order (a test checks them against `Instance._fields`), and those of one file that a
#: batch does not share with its other files.
INSTANCE_FIELDS = (
    "path", "sop_class_uid", "sop_instance_uid", "transfer_syntax", "size", "data_offset", "mtime_ns"
)  # fmt: skip
_all_fields = attrgetter(*INSTANCE_FIELDS)
_own_fields = attrgetter("path", "sop_instance_uid", "size", "data_offset", "mtime_ns")


def _batch(
    index: int, sop_class: str, syntax: str, group: int, rows: list[tuple], shared: bool, nbytes: int
) -> Batch:
    """A `Batch` from its pickled form (`Batch.__reduce__`).

    Each `Instance` is made as pickle makes one, its ``__dict__`` filled directly: its ``__init__`` (one
    ``object.__setattr__`` per field, as the frozen dataclass it was) costs about twice as much.
    """
    new = object.__new__
    instances = []
    for row in rows:
        inst = new(Instance)
        if shared:
            path, uid, size, offset, mtime = row
            inst.__dict__.update({
                "path": path, "sop_class_uid": sop_class, "sop_instance_uid": uid, "transfer_syntax": syntax,
                "size": size, "data_offset": offset, "mtime_ns": mtime,
            })  # fmt: skip
        else:
            inst.__dict__.update(zip(INSTANCE_FIELDS, row, strict=True))
        instances.append(inst)
    return Batch(index, sop_class, syntax, group, tuple(instances), nbytes)


class PlanOptions(NamedTuple):
    """How to propose presentation contexts and cut batches (storescu's ``-x…``, ``+C``, ``-R``, ``-xf``).

    Attributes
    ----------
    proposal : str
        A mode of `uids.PROPOSAL_MODES` (``"uncompr"`` is storescu's default ``-x=``).
    combine : bool
        ``+C``: one presentation context holding all the mode's transfer syntaxes instead of one
        for the preferred syntax and one for the others.
    required : bool
        ``-R``: leave out presentation contexts that no file of the SOP class could use (e.g. the
        JPEG lossless context of ``-xs`` for a SOP class whose files are all uncompressed).
    batch_size, batch_bytes : int
        Upper limits of one batch (a single file larger than `batch_bytes` is a batch of its own).
    max_contexts : int
        Presentation contexts per association (1..128).
    profile_contexts : tuple of PresentationContextProposal, optional
        The presentation contexts of an ``-xf`` profile; replaces the generated proposal.
    decompress : {"never", "lossless", "lossy"}
        dcmsend's ``--decompress-*`` policy: which compressed files may be decompressed when the peer
        rejects their own syntax.
    """

    proposal: str = "uncompr"
    combine: bool = False
    required: bool = False
    batch_size: int = 100
    batch_bytes: int = 64 * 2**20
    max_contexts: int = MAX_CONTEXTS
    profile_contexts: tuple[PresentationContextProposal, ...] | None = None
    decompress: str = "lossless"

    @property
    def compress_to(self) -> tuple[str, ...]:
        """The compressed and deflated syntaxes of the proposal mode: what the user asked to send in."""
        if self.profile_contexts is not None:
            return ()
        return tuple(ts for ts in PROPOSAL_MODES.get(self.proposal, ()) if not is_uncompressed(ts))


class Plan(NamedTuple):
    """Everything the dispatcher needs; `instance_count` and `total_bytes` count planned files only.

    `Plan` and `PlanOptions` are named tuples, not frozen dataclasses: each dataclass created at import cost a
    send ~0.7 ms of start-up (docs/design.md, "Small runs"). ``options._replace(batch_size=50)`` gives a
    changed copy.
    """

    batches: tuple[Batch, ...]
    context_groups: tuple[ContextGroup, ...]
    instance_count: int
    total_bytes: int
    unplannable: tuple[tuple[Instance, str], ...] = ()
    #: files not to send, with the reason (DICOMDIRs): reported as not sent, they do not halt the run
    skipped: tuple[tuple[Instance, str], ...] = ()


def _uid_key(uid: str) -> tuple[int | str, ...]:
    """Sort key ordering UIDs numerically component by component (``1.2.10`` after ``1.2.9``)."""
    return tuple(int(p) if p.isdigit() else p for p in uid.split("."))


def proposal_for_sop_class(file_syntaxes: Iterable[str], options: PlanOptions) -> list[tuple[str, ...]]:
    """Return the transfer syntax lists to propose for one SOP class (context IDs not yet assigned).

    Parameters
    ----------
    file_syntaxes : iterable of str
        The transfer syntaxes of this SOP class's files.
    options : PlanOptions
        The proposal mode, ``+C`` and ``-R``.

    Returns
    -------
    list of tuple of str
        First a context of its own for each file syntax that is not the preferred (first) syntax of
        a mode context: compressed or deflated syntaxes the mode lacks, and uncompressed syntaxes the
        mode offers only as an alternative (an acceptor picks one syntax per context, typically an
        explicit one, which would force a conversion). Then the mode's contexts: the preferred syntax
        and the rest separately, or all together with ``combine`` (``+C``).
    """
    try:
        mode = PROPOSAL_MODES[options.proposal]
    except KeyError:
        raise ValueError(
            f"unknown proposal mode {options.proposal!r}; expected one of {', '.join(PROPOSAL_MODES)}"
        ) from None
    syntaxes = tuple(dict.fromkeys(file_syntaxes))
    mode_lists = [mode] if options.combine or len(mode) == 1 else [mode[:1], mode[1:]]
    preferred = {ts_list[0] for ts_list in mode_lists}
    # A file syntax that no mode context prefers gets a context of its own, so that the peer can
    # accept it as is and the file goes out as its own bytes: compressed (and deflated) syntaxes the
    # mode lacks, and uncompressed ones the mode offers only as an alternative. Uncompressed syntaxes
    # the mode does not offer at all (-xi, mpeg/hevc) are converted, or unplannable.
    lists: list[tuple[str, ...]] = [
        (ts,)
        for ts in sorted(syntaxes, key=_uid_key)
        if ts not in preferred and (ts in mode or not is_uncompressed(ts))
    ]
    if options.required:
        mode_lists = [
            ts_list
            for ts_list in mode_lists
            if any(_usable(f, ts, options) for f in syntaxes for ts in ts_list)
        ]
    lists.extend(mode_lists)
    # A compressed file the policy lets us decompress needs an uncompressed fallback: add one when the
    # mode has none (-xm, -xn ...), so that a peer rejecting the file's own syntax can still take it.
    if not any(ts in NATIVE_CONVERTIBLE for ts_list in lists for ts in ts_list) and any(
        conversion(f, EXPLICIT_VR_LE, (), options.decompress) == "decompress" for f in syntaxes
    ):
        lists.append((EXPLICIT_VR_LE, IMPLICIT_VR_LE))
    return lists


def _note_combine_extras(sop_class: str, lists: list[tuple[str, ...]], options: PlanOptions) -> None:
    """``+v``: say which contexts ``+C`` proposes besides the combined one (storescu proposes only that)."""
    combined = PROPOSAL_MODES[options.proposal]
    for ts_list in lists:
        if len(ts_list) == 1 and ts_list != combined:  # a file's own syntax (not the decompression fallback)
            contexts_log.info(
                "+C: %s: also proposing %s in a context of its own, besides the combined one (storescu "
                "proposes only the combined context), so that the files in it go out unchanged",
                sop_class_name(sop_class),
                ts_name(ts_list[0]),
            )


def _usable(file_ts: str, ts: str, options: PlanOptions | None = None) -> bool:
    if options is None:
        return file_ts == ts or is_native_convertible(file_ts, ts)
    return bool(conversion(file_ts, ts, options.compress_to, options.decompress))


def _group_contexts(
    per_class: Sequence[tuple[str, list[tuple[str, ...]]]],
    max_contexts: int,
    options: PlanOptions | None = None,
) -> tuple[tuple[ContextGroup, ...], dict[str, int]]:
    """First-fit the SOP classes' context lists into groups of at most `max_contexts`."""
    bins: list[list[tuple[str, list[tuple[str, ...]]]]] = []
    sizes: list[int] = []
    for sop_class, lists in per_class:
        if len(lists) > max_contexts:
            raise ValueError(
                f"{sop_class_name(sop_class)} needs {len(lists)} presentation contexts, "
                f"more than the {max_contexts} allowed in one association"
            )
        for i, used in enumerate(sizes):
            if used + len(lists) <= max_contexts:
                bins[i].append((sop_class, lists))
                sizes[i] += len(lists)
                break
        else:
            bins.append([(sop_class, lists)])
            sizes.append(len(lists))
    groups: list[ContextGroup] = []
    group_of: dict[str, int] = {}
    for index, members in enumerate(bins):
        contexts: list[PresentationContextProposal] = []
        for sop_class, lists in members:
            group_of[sop_class] = index
            for ts_list in lists:
                contexts.append(PresentationContextProposal(2 * len(contexts) + 1, sop_class, ts_list))
        if options is None:
            groups.append(ContextGroup(index, tuple(contexts)))
        else:
            groups.append(ContextGroup(index, tuple(contexts), options.compress_to, options.decompress))
    return tuple(groups), group_of


def make_plan(instances: Iterable[Instance], options: PlanOptions | None = None) -> Plan:
    """Plan batches and presentation contexts for scanned instances.

    Parameters
    ----------
    instances : iterable of Instance
        Scanned files; their order is kept within each (SOP class, transfer syntax) group.
    options : PlanOptions, optional
        Proposal mode, limits and an optional ``-xf`` profile.

    Returns
    -------
    Plan
        Batches ordered by context group, then SOP class and transfer syntax (UIDs in numeric
        order), then input order; files no proposed context can carry are in `Plan.unplannable`.
    """
    options = options or PlanOptions()
    if not 1 <= options.max_contexts <= MAX_CONTEXTS:
        raise ValueError(f"max_contexts must be between 1 and {MAX_CONTEXTS}, not {options.max_contexts}")
    if options.batch_size < 1 or options.batch_bytes < 1:
        raise ValueError("batch_size and batch_bytes must be positive")
    if options.decompress not in DECOMPRESS_POLICIES:
        raise ValueError(
            f"decompress must be one of {', '.join(DECOMPRESS_POLICIES)}, not {options.decompress!r}"
        )

    by_key: dict[tuple[str, str], list[Instance]] = {}
    skipped: list[tuple[Instance, str]] = []
    for inst in instances:
        if inst.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            skipped.append((inst, DICOMDIR_REASON))
            continue
        by_key.setdefault((inst.sop_class_uid, inst.transfer_syntax), []).append(inst)
    syntaxes_of: dict[str, list[str]] = {}
    for sop_class, ts in by_key:
        syntaxes_of.setdefault(sop_class, []).append(ts)
    sop_classes = sorted(syntaxes_of, key=_uid_key)

    unplannable: list[tuple[Instance, str]] = []
    per_class: list[tuple[str, list[tuple[str, ...]]]] = []
    if options.profile_contexts is not None:
        profile: dict[str, list[tuple[str, ...]]] = {}
        for pc in options.profile_contexts:
            profile.setdefault(pc.abstract_syntax, []).append(tuple(pc.transfer_syntaxes))
        for sop_class in sop_classes:
            if sop_class in profile:
                per_class.append((sop_class, profile[sop_class]))
        missing_why = "in profile"
    else:
        for sop_class in sop_classes:
            lists = proposal_for_sop_class(syntaxes_of[sop_class], options)
            if options.combine:
                _note_combine_extras(sop_class, lists, options)
            if lists:
                per_class.append((sop_class, lists))
        missing_why = f"in proposal mode {options.proposal!r}"

    groups, group_of = _group_contexts(per_class, options.max_contexts, options)

    keys = sorted(by_key, key=lambda k: (group_of.get(k[0], -1), _uid_key(k[0]), _uid_key(k[1])))
    batches: list[Batch] = []
    count = total = 0
    for sop_class, ts in keys:
        members = by_key[(sop_class, ts)]
        group = group_of.get(sop_class)
        if group is None:
            reason = f"no presentation context for {sop_class_name(sop_class)} {missing_why}"
            unplannable.extend((inst, reason) for inst in members)
            continue
        if not groups[group].candidates(sop_class, ts):
            reason = (
                f"no presentation context for {sop_class_name(sop_class)} in {ts_name(ts)} "
                f"or a transfer syntax it converts to {missing_why}"
            )
            unplannable.extend((inst, reason) for inst in members)
            continue
        for chunk, nbytes in _cut(members, options.batch_size, options.batch_bytes):
            batches.append(Batch(len(batches), sop_class, ts, group, chunk, nbytes))
            count += len(chunk)
            total += nbytes
    return Plan(tuple(batches), groups, count, total, tuple(unplannable), tuple(skipped))


def _cut(
    members: list[Instance], max_files: int, max_bytes: int
) -> Iterable[tuple[tuple[Instance, ...], int]]:
    chunk: list[Instance] = []
    nbytes = 0
    for inst in members:
        if chunk and (len(chunk) >= max_files or nbytes + inst.size > max_bytes):
            yield tuple(chunk), nbytes
            chunk, nbytes = [], 0
        chunk.append(inst)
        nbytes += inst.size
    if chunk:
        yield tuple(chunk), nbytes


def context_choices(
    group: ContextGroup, sop_class: str, file_ts: str, accepted: Mapping[int, str]
) -> tuple[tuple[int, str, str], ...]:
    """Every accepted presentation context a file could go out on, best first.

    Parameters
    ----------
    group : ContextGroup
        The proposed contexts of the association (with the user's compression and decompression policy).
    sop_class : str
        The file's SOP class UID.
    file_ts : str
        The file's own transfer syntax.
    accepted : mapping of int to str
        Accepted context ID -> the transfer syntax the peer chose for it.

    Returns
    -------
    tuple of (context_id, transfer syntax to send in, mode)
        `mode` is ``"as-is"``, ``"convert"`` (re-encode a native data set), ``"compress"`` or
        ``"decompress"``. Order: a compressed (or deflated) syntax the user proposed, for uncompressed
        input, as storescu does with ``-xs``/``-xd`` ...; then the file's own syntax as is; then lossless
        conversions and decompression into explicit VR before implicit VR. The caller tries them in
        order: compressing falls back to the next when the file cannot be compressed (no pixel data,
        a bit depth the codec lacks). Lossy compression only ever comes from `group.compress_to`.
    """
    ranked: list[tuple[int, int, tuple[int, str, str]]] = []
    for order, cid in enumerate(group.candidates(sop_class, file_ts)):
        ts = accepted.get(cid)
        if ts is None:
            continue
        mode = conversion(file_ts, ts, group.compress_to, group.decompress)
        if not mode:
            continue
        if ts in group.compress_to and mode in ("compress", "convert") and not is_uncompressed(ts):
            rank = 0  # the user asked to send in this syntax
        elif mode == "as-is":
            rank = 1
        else:
            rank = 2 + _NATIVE_PREFERENCE.get(ts, 9)
        ranked.append((rank, order, (cid, ts, mode)))
    ranked.sort(key=lambda r: (r[0], r[1]))
    seen: set[tuple[int, str]] = set()
    choices: list[tuple[int, str, str]] = []
    for _, _, choice in ranked:
        if choice[:2] not in seen:
            seen.add(choice[:2])
            choices.append(choice)
    return tuple(choices)


def choose_context(
    group: ContextGroup, sop_class: str, file_ts: str, accepted: Mapping[int, str]
) -> tuple[int, str, str] | None:
    """The first of `context_choices`, or None if nothing fits (e.g. a compressed file whose own transfer
    syntax the peer rejected and that the policy does not let us decompress)."""
    choices = context_choices(group, sop_class, file_ts, accepted)
    return choices[0] if choices else None


def no_context_reason(group: ContextGroup, file_ts: str) -> str:
    """Why a file in `file_ts` has no accepted context: the error of its report record."""
    reason = f"no accepted presentation context for {ts_name(file_ts)}"
    if file_ts in NATIVE_CONVERTIBLE:
        return reason
    if not can_decode(file_ts):
        return f"{reason} (no installed codec decodes it)"
    if group.decompress == "never":
        return f"{reason} (not decompressed: --decompress-never)"
    if is_lossy(file_ts) and group.decompress != "lossy":
        return f"{reason} (lossy compressed: --decompress-lossy allows decompressing it)"
    return f"{reason}, nor an uncompressed little endian one to decompress it into"
