"""Tests for batchstore.plan: grouping, batch cutting, presentation contexts and context choice."""

from __future__ import annotations

import pickle

import pytest

from batchstore.dicom.part10 import Instance
from batchstore.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    MPEG2_MPML,
    RLE_LOSSLESS,
    STORAGE_SOP_CLASSES,
)
from batchstore.sender.plan import (
    Batch,
    ContextGroup,
    Plan,
    PlanOptions,
    PresentationContextProposal,
    choose_context,
    context_choices,
    make_plan,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
LEE, BEE, LEI = EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

_counter = 0


def inst(sop: str = CT, ts: str = LEE, size: int = 1000, path: str | None = None) -> Instance:
    global _counter
    _counter += 1
    return Instance(
        path=path or f"/data/f{_counter:05d}.dcm",
        sop_class_uid=sop,
        sop_instance_uid=f"1.2.3.{_counter}",
        transfer_syntax=ts,
        size=size,
        data_offset=132,
        mtime_ns=0,
    )


def contexts_of(plan: Plan, sop: str) -> list[tuple[str, ...]]:
    return [
        pc.transfer_syntaxes for g in plan.context_groups for pc in g.contexts if pc.abstract_syntax == sop
    ]


# --- grouping and batches -----------------------------------------------------------------------------


def test_grouping_by_sop_class_and_transfer_syntax() -> None:
    files = [inst(MR, LEE), inst(CT, LEI), inst(CT, LEE), inst(MR, LEE), inst(CT, LEE)]
    plan = make_plan(files)
    keys = [(b.sop_class_uid, b.transfer_syntax) for b in plan.batches]
    assert keys == [(CT, LEI), (CT, LEE), (MR, LEE)]  # UIDs in numeric order: 1.2 before 1.2.1
    by_key = {(b.sop_class_uid, b.transfer_syntax): b.instances for b in plan.batches}
    assert by_key[(CT, LEE)] == (files[2], files[4])  # input order kept
    assert by_key[(MR, LEE)] == (files[0], files[3])
    assert [b.index for b in plan.batches] == [0, 1, 2]
    assert [b.instances for b in plan.batches][0] == (files[1],)
    assert plan.instance_count == 5
    assert plan.total_bytes == 5000
    assert plan.unplannable == ()


def test_uid_order_is_numeric() -> None:
    a = "1.2.840.10008.5.1.4.1.1.9.1.1"
    b = "1.2.840.10008.5.1.4.1.1.12.1"
    plan = make_plan([inst(b), inst(a)])
    assert [x.sop_class_uid for x in plan.batches] == [a, b]


def test_batch_cut_by_count() -> None:
    files = [inst() for _ in range(250)]
    plan = make_plan(files, PlanOptions(batch_size=100))
    assert [len(b.instances) for b in plan.batches] == [100, 100, 50]
    assert [i for b in plan.batches for i in b.instances] == files
    assert [b.nbytes for b in plan.batches] == [100_000, 100_000, 50_000]


def test_batch_cut_by_bytes() -> None:
    sizes = [400, 400, 400, 5000, 100, 100, 900]
    files = [inst(size=s) for s in sizes]
    plan = make_plan(files, PlanOptions(batch_size=100, batch_bytes=1000))
    assert [[i.size for i in b.instances] for b in plan.batches] == [
        [400, 400],
        [400],
        [5000],
        [100, 100],
        [900],
    ]
    assert [b.nbytes for b in plan.batches] == [800, 400, 5000, 200, 900]


def test_plan_is_deterministic_and_pickles() -> None:
    files = [inst(s, t) for s in (CT, MR, US) for t in (LEE, JPEG_BASELINE)]
    a = make_plan(files, PlanOptions(batch_size=1))
    assert a == make_plan(files, PlanOptions(batch_size=1))
    assert pickle.loads(pickle.dumps(a)) == a


# --- presentation contexts per proposal mode ----------------------------------------------------------


def test_default_contexts() -> None:
    plan = make_plan([inst(CT, LEE)])
    (group,) = plan.context_groups
    assert group.contexts == (
        PresentationContextProposal(1, CT, (LEE,)),
        PresentationContextProposal(3, CT, (BEE, LEI)),
    )


def test_combine() -> None:
    plan = make_plan([inst(CT, LEE)], PlanOptions(combine=True))
    assert contexts_of(plan, CT) == [(LEE, BEE, LEI)]


def test_propose_big() -> None:
    assert contexts_of(make_plan([inst()], PlanOptions(proposal="big")), CT) == [(BEE,), (LEE, LEI)]


def test_implicit_only() -> None:
    plan = make_plan([inst(CT, LEE), inst(CT, LEI)], PlanOptions(proposal="implicit"))
    assert contexts_of(plan, CT) == [(LEI,)]
    assert plan.unplannable == ()  # explicit files are converted


def test_lossless_mode() -> None:
    plan = make_plan([inst(CT, LEE)], PlanOptions(proposal="lossless"))
    assert contexts_of(plan, CT) == [(JPEG_LOSSLESS_SV1,), (LEE, BEE, LEI)]
    # +C: the combined context may be accepted with JPEG lossless, which an uncompressed file
    # cannot use without a codec, so the file's own syntax gets a context of its own
    plan = make_plan([inst(CT, LEE)], PlanOptions(proposal="lossless", combine=True))
    assert contexts_of(plan, CT) == [(LEE,), (JPEG_LOSSLESS_SV1, LEE, BEE, LEI)]
    plan = make_plan([inst(CT, JPEG_LOSSLESS_SV1)], PlanOptions(proposal="lossless", combine=True))
    assert contexts_of(plan, CT) == [(JPEG_LOSSLESS_SV1, LEE, BEE, LEI)]


def test_uncompressed_alternatives_get_their_own_context() -> None:
    """So that the peer can accept each file's own syntax and it goes out byte for byte."""
    files = [inst(CT, LEE), inst(CT, LEI), inst(CT, BEE), inst(CT, RLE_LOSSLESS)]
    plan = make_plan(files, PlanOptions(proposal="lossless"))
    assert contexts_of(plan, CT) == [(LEI,), (BEE,), (RLE_LOSSLESS,), (JPEG_LOSSLESS_SV1,), (LEE, BEE, LEI)]
    assert contexts_of(make_plan(files), CT) == [(LEI,), (RLE_LOSSLESS,), (LEE,), (BEE, LEI)]
    assert contexts_of(make_plan(files, PlanOptions(combine=True)), CT) == [
        (LEI,),
        (BEE,),
        (RLE_LOSSLESS,),
        (LEE, BEE, LEI),
    ]


def test_compressed_file_syntax_gets_its_own_context() -> None:
    plan = make_plan([inst(CT, LEE), inst(CT, JPEG_BASELINE), inst(CT, RLE_LOSSLESS), inst(MR, LEE)])
    assert contexts_of(plan, CT) == [(JPEG_BASELINE,), (RLE_LOSSLESS,), (LEE,), (BEE, LEI)]
    assert contexts_of(plan, MR) == [(LEE,), (BEE, LEI)]
    # with +C the file's own syntax stays separate: the peer must be able to accept it on its own
    plan = make_plan([inst(CT, JPEG_BASELINE)], PlanOptions(combine=True))
    assert contexts_of(plan, CT) == [(JPEG_BASELINE,), (LEE, BEE, LEI)]


def test_mode_syntax_is_not_duplicated() -> None:
    plan = make_plan([inst(CT, JPEG_LOSSLESS_SV1)], PlanOptions(proposal="lossless"))
    assert contexts_of(plan, CT) == [(JPEG_LOSSLESS_SV1,), (LEE, BEE, LEI)]


def test_deflated_file_gets_its_own_context() -> None:
    plan = make_plan([inst(CT, DEFLATED_EXPLICIT_VR_LE)])
    assert contexts_of(plan, CT) == [(DEFLATED_EXPLICIT_VR_LE,), (LEE,), (BEE, LEI)]


def test_required_drops_contexts_no_file_can_use() -> None:
    opts = PlanOptions(proposal="lossless", required=True)
    # -xs: uncompressed files are compressed into the proposed JPEG lossless syntax (issue 12)
    assert contexts_of(make_plan([inst(CT, LEE)], opts), CT) == [(JPEG_LOSSLESS_SV1,), (LEE, BEE, LEI)]
    assert contexts_of(make_plan([inst(SR, LEE)], PlanOptions(proposal="mpeg2", required=True)), SR) == []
    assert contexts_of(make_plan([inst(CT, LEE), inst(CT, JPEG_LOSSLESS_SV1)], opts), CT) == [
        (JPEG_LOSSLESS_SV1,),
        (LEE, BEE, LEI),
    ]
    assert contexts_of(make_plan([inst(CT, JPEG_BASELINE)], PlanOptions(required=True)), CT) == [
        (JPEG_BASELINE,)
    ]
    # a lossless compressed file keeps the uncompressed contexts it is decompressed into, unless told never
    assert contexts_of(make_plan([inst(CT, RLE_LOSSLESS)], PlanOptions(required=True)), CT) == [
        (RLE_LOSSLESS,),
        (LEE,),
        (BEE, LEI),
    ]
    never = PlanOptions(required=True, decompress="never")
    assert contexts_of(make_plan([inst(CT, RLE_LOSSLESS)], never), CT) == [(RLE_LOSSLESS,)]


def test_mpeg2_mode() -> None:
    video = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    movie, image = inst(video, MPEG2_MPML), inst(CT, LEE)
    plan = make_plan([movie, image], PlanOptions(proposal="mpeg2"))
    assert contexts_of(plan, video) == [(MPEG2_MPML,)]
    assert [b.instances for b in plan.batches] == [(movie,)]
    assert plan.unplannable == (
        (
            image,
            "no presentation context for CTImageStorage in Explicit VR Little Endian or a transfer syntax "
            "it converts to in proposal mode 'mpeg2'",
        ),
    )
    assert plan.instance_count == 1


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown proposal mode"):
        make_plan([inst()], PlanOptions(proposal="jpeg9"))


@pytest.mark.parametrize("n", [0, 129])
def test_max_contexts_range(n: int) -> None:
    with pytest.raises(ValueError, match="max_contexts"):
        make_plan([inst()], PlanOptions(max_contexts=n))


# --- more than 128 presentation contexts --------------------------------------------------------------


def test_split_into_context_groups() -> None:
    classes = sorted(STORAGE_SOP_CLASSES)[:70]
    files = [inst(sop, ts) for sop in classes for ts in (LEE, JPEG_BASELINE if sop in classes[:10] else LEE)]
    plan = make_plan(files)
    assert sum(len(g.contexts) for g in plan.context_groups) == 150  # 10 x 3 + 60 x 2
    assert len(plan.context_groups) == 2
    seen: dict[str, int] = {}
    for group in plan.context_groups:
        assert len(group.contexts) <= 128
        ids = [pc.context_id for pc in group.contexts]
        assert ids == list(range(1, 2 * len(ids), 2))
        assert max(ids) <= 255
        for pc in group.contexts:
            assert seen.setdefault(pc.abstract_syntax, group.index) == group.index  # never split
    assert set(seen) == set(classes)
    groups = [b.context_group for b in plan.batches]
    assert groups == sorted(groups)  # batches ordered by group
    for batch in plan.batches:
        assert batch.sop_class_uid in plan.context_groups[batch.context_group].sop_classes


def test_small_max_contexts_first_fit() -> None:
    files = [inst(CT, JPEG_BASELINE), inst(CT), inst(MR), inst(US), inst(SR)]  # 3 + 2 + 2 + 2 + 2
    plan = make_plan(files, PlanOptions(max_contexts=4))
    assert [g.sop_classes for g in plan.context_groups] == [(CT,), (MR, US), (SR,)]
    assert [b.context_group for b in plan.batches] == [0, 0, 1, 1, 2]


def test_sop_class_needing_too_many_contexts() -> None:
    with pytest.raises(ValueError, match="needs 3 presentation contexts"):
        make_plan([inst(CT, JPEG_BASELINE), inst(CT)], PlanOptions(max_contexts=2))


# --- profiles ------------------------------------------------------------------------------------------


def test_profile_contexts_replace_the_proposal() -> None:
    profile = (
        PresentationContextProposal(1, MR, (JPEG_BASELINE,)),
        PresentationContextProposal(3, CT, (LEI,)),
        PresentationContextProposal(5, CT, (JPEG_BASELINE,)),
        PresentationContextProposal(7, US, (LEE, LEI)),  # no US files: not proposed
    )
    ct, ct_jpeg, sr = inst(CT, LEE), inst(CT, JPEG_BASELINE), inst(SR, LEE)
    mr = inst(MR, LEE)
    plan = make_plan([ct, ct_jpeg, sr, mr], PlanOptions(proposal="lossless", profile_contexts=profile))
    (group,) = plan.context_groups
    assert group.contexts == (
        PresentationContextProposal(1, CT, (LEI,)),
        PresentationContextProposal(3, CT, (JPEG_BASELINE,)),
        PresentationContextProposal(5, MR, (JPEG_BASELINE,)),
    )
    assert [b.instances for b in plan.batches] == [(ct,), (ct_jpeg,)]
    assert dict((i.path, r) for i, r in plan.unplannable) == {
        mr.path: "no presentation context for MRImageStorage in Explicit VR Little Endian or a transfer syntax "
        "it converts to in profile",
        sr.path: "no presentation context for EnhancedSRStorage in profile",
    }


def test_profile_split_into_groups() -> None:
    classes = sorted(STORAGE_SOP_CLASSES)[:100]
    profile = tuple(
        PresentationContextProposal(2 * i + 1, sop, ts)
        for i, (sop, ts) in enumerate((s, t) for s in classes for t in ((LEE,), (LEI,)))
    )
    plan = make_plan([inst(s) for s in classes], PlanOptions(profile_contexts=profile))
    assert [len(g.contexts) for g in plan.context_groups] == [128, 72]


# --- choose_context ------------------------------------------------------------------------------------


GROUP = ContextGroup(
    0,
    (
        PresentationContextProposal(1, CT, (JPEG_BASELINE,)),
        PresentationContextProposal(3, CT, (LEE,)),
        PresentationContextProposal(5, CT, (BEE, LEI)),
        PresentationContextProposal(7, MR, (LEE,)),
    ),
)


def test_candidates() -> None:
    assert GROUP.candidates(CT, LEE) == (3, 5)
    assert GROUP.candidates(CT, LEI) == (5, 3)
    assert GROUP.candidates(CT, JPEG_BASELINE) == (1,)
    assert GROUP.candidates(CT, RLE_LOSSLESS) == (3, 5)  # decompressed (issue 12)
    assert GROUP._replace(decompress="never").candidates(CT, RLE_LOSSLESS) == ()
    assert GROUP.candidates(MR, LEE) == (7,)
    assert GROUP.candidates(US, LEE) == ()


def test_choose_as_is() -> None:
    assert choose_context(GROUP, CT, LEE, {1: JPEG_BASELINE, 3: LEE, 5: LEI}) == (3, LEE, "as-is")
    assert choose_context(GROUP, CT, LEI, {3: LEE, 5: LEI}) == (5, LEI, "as-is")
    assert choose_context(GROUP, CT, JPEG_BASELINE, {1: JPEG_BASELINE, 3: LEE}) == (1, JPEG_BASELINE, "as-is")


def test_choose_prefers_as_is_over_an_earlier_conversion() -> None:
    group = ContextGroup(
        0, (PresentationContextProposal(1, CT, (LEE, BEE, LEI)), PresentationContextProposal(3, CT, (LEI,)))
    )
    assert choose_context(group, CT, LEI, {1: LEE, 3: LEI}) == (3, LEI, "as-is")


def test_choose_convert() -> None:
    assert choose_context(GROUP, CT, LEE, {1: JPEG_BASELINE, 5: BEE}) == (5, BEE, "convert")
    assert choose_context(GROUP, CT, DEFLATED_EXPLICIT_VR_LE, {3: LEE}) == (3, LEE, "convert")


def test_choose_nothing_fits() -> None:
    assert choose_context(GROUP, CT, JPEG_BASELINE, {3: LEE, 5: LEI}) is None  # JPEG rejected: no decoding
    assert choose_context(GROUP, CT, LEE, {1: JPEG_BASELINE}) is None  # no uncompressed context accepted
    assert choose_context(GROUP, US, LEE, {3: LEE}) is None
    assert choose_context(GROUP, CT, LEE, {}) is None


# --- conversions (issue 12) ---------------------------------------------------------------------------


def test_decompress_lossless_by_default_explicit_before_implicit() -> None:
    assert context_choices(GROUP, CT, RLE_LOSSLESS, {3: LEE, 5: LEI}) == (
        (3, LEE, "decompress"),
        (5, LEI, "decompress"),
    )
    assert context_choices(GROUP, CT, RLE_LOSSLESS, {5: BEE}) == ()  # never into big endian
    assert choose_context(GROUP, CT, JPEG_BASELINE, {3: LEE}) is None  # lossy: not by default
    lossy = GROUP._replace(decompress="lossy")
    assert choose_context(lossy, CT, JPEG_BASELINE, {3: LEE}) == (3, LEE, "decompress")
    never = GROUP._replace(decompress="never")
    assert choose_context(never, CT, RLE_LOSSLESS, {3: LEE, 5: LEI}) is None


def test_big_endian_goes_explicit_little_endian_before_implicit() -> None:
    group = ContextGroup(
        0, (PresentationContextProposal(1, CT, (BEE,)), PresentationContextProposal(3, CT, (LEI, LEE)))
    )
    assert context_choices(group, CT, BEE, {3: LEI}) == ((3, LEI, "convert"),)
    group = ContextGroup(
        0, (PresentationContextProposal(1, CT, (LEI,)), PresentationContextProposal(3, CT, (LEE, LEI)))
    )
    assert choose_context(group, CT, BEE, {1: LEI, 3: LEE}) == (3, LEE, "convert")


def test_compress_only_into_what_the_user_proposed() -> None:
    plan = make_plan([inst(CT, LEE), inst(CT, JPEG_LS_LOSSLESS)], PlanOptions(proposal="lossless"))
    group = plan.context_groups[0]
    ids = {pc.transfer_syntaxes[0]: pc.context_id for pc in group.contexts}
    accepted = {
        ids[JPEG_LS_LOSSLESS]: JPEG_LS_LOSSLESS,
        ids[JPEG_LOSSLESS_SV1]: JPEG_LOSSLESS_SV1,
        ids[LEE]: LEE,
    }
    # -xs: uncompressed input goes JPEG lossless first, as is when that fails (no pixel data ...)
    assert context_choices(group, CT, LEE, accepted) == (
        (ids[JPEG_LOSSLESS_SV1], JPEG_LOSSLESS_SV1, "compress"),
        (ids[LEE], LEE, "as-is"),
    )
    # never into a compressed syntax the user did not propose (the JPEG-LS context of another file)
    assert all(c[1] != JPEG_LS_LOSSLESS for c in context_choices(group, CT, LEE, accepted))
    # compressed input is never re-compressed
    assert choose_context(group, CT, JPEG_LS_LOSSLESS, {ids[JPEG_LOSSLESS_SV1]: JPEG_LOSSLESS_SV1}) is None
    # lossy only when proposed: -xw compresses, the default mode never does
    lossy = make_plan([inst(CT, LEE)], PlanOptions(proposal="j2k-lossy")).context_groups[0]
    first = lossy.contexts[0]
    assert first.transfer_syntaxes == (JPEG_2000,)
    assert choose_context(lossy, CT, LEE, {first.context_id: JPEG_2000}) == (
        first.context_id,
        JPEG_2000,
        "compress",
    )
    assert JPEG_2000 not in PlanOptions().compress_to


def test_deflate_when_proposed() -> None:
    group = make_plan([inst(CT, LEE)], PlanOptions(proposal="deflated")).context_groups[0]
    assert [pc.transfer_syntaxes for pc in group.contexts] == [(DEFLATED_EXPLICIT_VR_LE,), (LEE, BEE, LEI)]
    assert choose_context(group, CT, LEE, {1: DEFLATED_EXPLICIT_VR_LE, 3: LEE}) == (
        1,
        DEFLATED_EXPLICIT_VR_LE,
        "convert",
    )


def test_dicomdir_is_skipped() -> None:
    dicomdir = inst("1.2.840.10008.1.3.10", LEE)
    plan = make_plan([dicomdir, inst(CT, LEE)])
    assert plan.instance_count == 1
    assert [(i.path, r.split(":")[0]) for i, r in plan.skipped] == [(dicomdir.path, "DICOMDIR")]


def test_batch_is_a_frozen_record() -> None:
    batch = Batch(0, CT, LEE, 0, (inst(),), 1000)
    with pytest.raises(AttributeError):
        batch.index = 1  # type: ignore[misc]
