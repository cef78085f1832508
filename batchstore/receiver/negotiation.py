"""Which presentation contexts the Storage SCP accepts: storescp's ``+x…`` preference tables, the
``-xf`` profile and ``-pm``, decided per proposed context by `Negotiator`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..dicom.uids import (
    DCMTK_MODALITY_PREFIXES,
    DEFLATED_EXPLICIT_VR_LE,
    ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    HEVC_M10P51,
    HEVC_MP51,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_LOSSY,
    JPEG_XL,
    JPEG_XL_JPEG_RECOMPRESSION,
    JPEG_XL_LOSSLESS,
    MPEG2_MPHL,
    MPEG2_MPHL_F,
    MPEG2_MPML,
    MPEG2_MPML_F,
    MPEG4_HP41,
    MPEG4_HP41_BD,
    MPEG4_HP41_BD_F,
    MPEG4_HP41_F,
    MPEG4_HP42_2D,
    MPEG4_HP42_2D_F,
    MPEG4_HP42_3D,
    MPEG4_HP42_3D_F,
    MPEG4_HP42_STEREO,
    MPEG4_HP42_STEREO_F,
    RLE_LOSSLESS,
    STORAGE_SOP_CLASSES,
    UNCOMPRESSED,
    VERIFICATION_SOP_CLASS,
)
from ..net import acse
from ..net.commitment import STORAGE_COMMITMENT, TRANSFER_SYNTAXES


def _preferring(ts: str) -> tuple[str, ...]:
    return (ts, *UNCOMPRESSED)


#: storescp's ``+x…`` options: mode -> accepted transfer syntaxes, most preferred first.
PREFERRED_TRANSFER_SYNTAXES: dict[str, tuple[str, ...]] = {
    "uncompr": UNCOMPRESSED,  # +x=: explicit VR in this machine's byte order first
    "little": (EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE),  # +xe
    "big": (EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE),  # +xb
    "lossless": _preferring(JPEG_LOSSLESS_SV1),  # +xs
    "jpeg8": _preferring(JPEG_BASELINE),  # +xy
    "jpeg12": _preferring(JPEG_EXTENDED),  # +xx
    "j2k-lossless": _preferring(JPEG_2000_LOSSLESS),  # +xv
    "j2k-lossy": _preferring(JPEG_2000),  # +xw
    "jls-lossless": _preferring(JPEG_LS_LOSSLESS),  # +xt
    "jls-lossy": _preferring(JPEG_LS_LOSSY),  # +xu
    "mpeg2": _preferring(MPEG2_MPML),  # +xm
    "mpeg2-high": _preferring(MPEG2_MPHL),  # +xh
    "mpeg4": _preferring(MPEG4_HP41),  # +xn
    "mpeg4-bd": _preferring(MPEG4_HP41_BD),  # +xl
    "mpeg4-2-2d": _preferring(MPEG4_HP42_2D),  # +x2
    "mpeg4-2-3d": _preferring(MPEG4_HP42_3D),  # +x3
    "mpeg4-2-st": _preferring(MPEG4_HP42_STEREO),  # +xo
    "hevc": _preferring(HEVC_MP51),  # +x4
    "hevc10": _preferring(HEVC_M10P51),  # +x5
    "rle": _preferring(RLE_LOSSLESS),  # +xr
    "deflated": _preferring(DEFLATED_EXPLICIT_VR_LE),  # +xd
    "implicit": (IMPLICIT_VR_LE,),  # +xi
    "accept-all": (  # +xa: the man page's list, compressed first as storescp does
        JPEG_2000,
        JPEG_2000_LOSSLESS,
        JPEG_EXTENDED,
        JPEG_BASELINE,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSY,
        JPEG_LS_LOSSLESS,
        RLE_LOSSLESS,
        MPEG2_MPML,
        MPEG2_MPML_F,
        MPEG2_MPHL,
        MPEG2_MPHL_F,
        MPEG4_HP41,
        MPEG4_HP41_F,
        MPEG4_HP41_BD,
        MPEG4_HP41_BD_F,
        MPEG4_HP42_2D,
        MPEG4_HP42_2D_F,
        MPEG4_HP42_3D,
        MPEG4_HP42_3D_F,
        MPEG4_HP42_STEREO,
        MPEG4_HP42_STEREO_F,
        HEVC_MP51,
        HEVC_M10P51,
        JPEG_XL_LOSSLESS,
        JPEG_XL_JPEG_RECOMPRESSION,
        JPEG_XL,
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
        HTJ2K,
        DEFLATED_EXPLICIT_VR_LE,
        ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LE,
        *UNCOMPRESSED,
    ),
}


def storage_sop_classes() -> frozenset[str]:
    """Every storage SOP class storescp accepts: pynetdicom's current ones (`uids.STORAGE_SOP_CLASSES`) and
    the retired ones DCMTK still knows (US Image Storage (Retired), NM Image Storage (Retired)...), whose
    UIDs are the keys of `uids.DCMTK_MODALITY_PREFIXES`."""
    return frozenset(STORAGE_SOP_CLASSES) | frozenset(DCMTK_MODALITY_PREFIXES)


class Negotiator:
    """Decides each proposed presentation context, as storescp does.

    Parameters
    ----------
    preferred : sequence of str
        Accepted transfer syntaxes, most preferred first (`PREFERRED_TRANSFER_SYNTAXES`).
    profile : dict, optional
        ``-xf``: abstract syntax -> accepted transfer syntaxes in order of preference; replaces the
        built-in SOP classes and `preferred` entirely.
    promiscuous : bool
        ``-pm``: accept any abstract syntax, not only known storage SOP classes and Verification.
    """

    def __init__(
        self,
        preferred: Iterable[str] = UNCOMPRESSED,
        profile: dict[str, tuple[str, ...]] | None = None,
        promiscuous: bool = False,
        sop_classes: frozenset[str] | None = None,
    ) -> None:
        self.preferred = tuple(preferred)
        self.profile = profile
        self.promiscuous = promiscuous
        self.sop_classes = (sop_classes if sop_classes is not None else storage_sop_classes()) | {
            VERIFICATION_SOP_CLASS
        }

    def decide(self, abstract: str, proposed: Iterable[str]) -> tuple[int, str]:
        """Return (result, transfer syntax) for one presentation context (PS3.8 Table 9-18 results)."""
        offered = set(proposed)
        if not acse.valid_text(abstract, acse.MAX_UID_LENGTH):  # not a UID any response could name
            return acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        if self.profile is not None:
            wanted: tuple[str, ...] | None = self.profile.get(abstract)
            if wanted is None:
                return acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        elif abstract in self.sop_classes or self.promiscuous:
            wanted = self.preferred
        else:
            return acse.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        for ts in wanted:
            if ts in offered:
                return acse.PC_ACCEPTANCE, ts
        return acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, ""

    def results(self, request: acse.AssociationRequest) -> dict[int, tuple[int, str]]:
        return {cid: self.decide(abstract, syntaxes) for cid, abstract, syntaxes in request.contexts}


def commitment_results(
    request: acse.AssociationRequest, results: dict[int, tuple[int, str]]
) -> dict[str, tuple[bool, bool]]:
    """``--commitment``: accept the Storage Commitment Push Model SOP class (in `results`, in place) in an
    explicit or implicit little endian syntax; return the SCP/SCU roles to answer (the requestor is SCU:
    whatever it proposed for that class, SCU role only)."""
    for cid, abstract, syntaxes in request.contexts:
        if abstract == STORAGE_COMMITMENT:
            ts = next((t for t in TRANSFER_SYNTAXES if t in syntaxes), "")
            results[cid] = (acse.PC_ACCEPTANCE, ts) if ts else (acse.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    return {abstract: (scu, False) for abstract, scu, _scp in request.roles if abstract == STORAGE_COMMITMENT}
