"""Transfer syntax and SOP class UIDs, storescu's ``-x`` proposal table and storescp's file name prefixes.

Everything here is a constant or a pure lookup; no I/O.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "ALL_TRANSFER_SYNTAXES",
    "DEFLATED_EXPLICIT_VR_LE",
    "DCMTK_MODALITY_PREFIXES",
    "ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "LOCAL_EXPLICIT_VR",
    "LOSSY_SYNTAXES",
    "MEDIA_STORAGE_DIRECTORY",
    "NATIVE_CONVERTIBLE",
    "OPPOSITE_EXPLICIT_VR",
    "PROPOSAL_FLAGS",
    "PROPOSAL_MODES",
    "PROPOSAL_OPTIONS",
    "storage_sop_classes",
    "UNCOMPRESSED",
    "VERIFICATION_SOP_CLASS",
    "is_encapsulated",
    "is_lossy",
    "is_native_convertible",
    "is_uncompressed",
    "modality_prefix",
    "sop_class_name",
    "ts_name",
]

# --- transfer syntaxes ------------------------------------------------------------------------------

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"

JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"  # process 1, 8 bit lossy (-xy)
JPEG_EXTENDED: Final = "1.2.840.10008.1.2.4.51"  # process 2+4, 12 bit lossy (-xx)
JPEG_LOSSLESS: Final = "1.2.840.10008.1.2.4.57"  # process 14
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"  # process 14, selection value 1 (-xs)
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_LS_LOSSY: Final = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
JPEG_2000_MC_LOSSLESS: Final = "1.2.840.10008.1.2.4.92"
JPEG_2000_MC: Final = "1.2.840.10008.1.2.4.93"
MPEG2_MPML: Final = "1.2.840.10008.1.2.4.100"
MPEG2_MPML_F: Final = "1.2.840.10008.1.2.4.100.1"
MPEG2_MPHL: Final = "1.2.840.10008.1.2.4.101"
MPEG2_MPHL_F: Final = "1.2.840.10008.1.2.4.101.1"
MPEG4_HP41: Final = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_F: Final = "1.2.840.10008.1.2.4.102.1"
MPEG4_HP41_BD: Final = "1.2.840.10008.1.2.4.103"
MPEG4_HP41_BD_F: Final = "1.2.840.10008.1.2.4.103.1"
MPEG4_HP42_2D: Final = "1.2.840.10008.1.2.4.104"
MPEG4_HP42_2D_F: Final = "1.2.840.10008.1.2.4.104.1"
MPEG4_HP42_3D: Final = "1.2.840.10008.1.2.4.105"
MPEG4_HP42_3D_F: Final = "1.2.840.10008.1.2.4.105.1"
MPEG4_HP42_STEREO: Final = "1.2.840.10008.1.2.4.106"
MPEG4_HP42_STEREO_F: Final = "1.2.840.10008.1.2.4.106.1"
HEVC_MP51: Final = "1.2.840.10008.1.2.4.107"
HEVC_M10P51: Final = "1.2.840.10008.1.2.4.108"
JPEG_XL_LOSSLESS: Final = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION: Final = "1.2.840.10008.1.2.4.111"
JPEG_XL: Final = "1.2.840.10008.1.2.4.112"
HTJ2K_LOSSLESS: Final = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL: Final = "1.2.840.10008.1.2.4.202"
HTJ2K: Final = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"

#: Explicit VR in the byte order of this machine, and the other one (storescu's "local byte ordering").
LOCAL_EXPLICIT_VR: Final = EXPLICIT_VR_LE if sys.byteorder == "little" else EXPLICIT_VR_BE
OPPOSITE_EXPLICIT_VR: Final = EXPLICIT_VR_BE if sys.byteorder == "little" else EXPLICIT_VR_LE

#: The three native (unencapsulated, uncompressed) transfer syntaxes, explicit local byte order first.
UNCOMPRESSED: Final[tuple[str, ...]] = (LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR, IMPLICIT_VR_LE)

#: Syntaxes whose data set can be re-encoded into one another without touching pixel data encoding.
NATIVE_CONVERTIBLE: Final = frozenset((*UNCOMPRESSED, DEFLATED_EXPLICIT_VR_LE))

#: Syntaxes whose pixel data were compressed lossily (decompressing them is allowed only with
#: ``--decompress-lossy``; compressing into them only when the user proposed them, ``-xy``, ``-xw`` ...).
LOSSY_SYNTAXES: Final = frozenset(
    (
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LS_LOSSY,
        JPEG_2000,
        JPEG_2000_MC,
        JPEG_XL,
        JPEG_XL_JPEG_RECOMPRESSION,
        HTJ2K,
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
    )
)

#: Every transfer syntax storescp accepts with ``+xa``, in the order its man page lists them.
ALL_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = (
    IMPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_LOSSY,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
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
    RLE_LOSSLESS,
)

# Names for syntaxes pydicom 3.0 does not know (JPEG XL), in the DICOM standard's wording.
_EXTRA_TS_NAMES: Final = {
    JPEG_XL_LOSSLESS: "JPEG XL Lossless",
    JPEG_XL_JPEG_RECOMPRESSION: "JPEG XL JPEG Recompression",
    JPEG_XL: "JPEG XL",
}


def is_uncompressed(ts: str) -> bool:
    """Return whether `ts` is one of the three native uncompressed transfer syntaxes.

    Parameters
    ----------
    ts : str
        Transfer syntax UID.

    Returns
    -------
    bool
        True for implicit VR little endian, explicit VR little endian and explicit VR big endian.
    """
    return ts in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE)


def is_lossy(ts: str) -> bool:
    """Return whether `ts` compresses pixel data lossily (JPEG baseline, JPEG 2000, JPEG-LS near-lossless ...).

    Parameters
    ----------
    ts : str
        Transfer syntax UID.

    Returns
    -------
    bool
        True for the lossy syntaxes of `LOSSY_SYNTAXES`; False for uncompressed, deflated and lossless ones.
    """
    return ts in LOSSY_SYNTAXES


def is_encapsulated(ts: str) -> bool:
    """Return whether pixel data in `ts` is encapsulated (fragments), i.e. anything but the native four.

    Parameters
    ----------
    ts : str
        Transfer syntax UID.

    Returns
    -------
    bool
        False for the uncompressed syntaxes and deflated explicit VR little endian, True otherwise.
    """
    return ts not in NATIVE_CONVERTIBLE


def is_native_convertible(src: str, dst: str) -> bool:
    """Return whether a data set in `src` can be re-encoded as `dst` without a codec.

    Parameters
    ----------
    src, dst : str
        Source and destination transfer syntax UIDs.

    Returns
    -------
    bool
        True when both are uncompressed or deflated explicit VR little endian (deflate is a byte
        stream compression of the whole data set, not a pixel data codec).
    """
    return src in NATIVE_CONVERTIBLE and dst in NATIVE_CONVERTIBLE


def ts_name(uid: str) -> str:
    """Return a human name for a transfer syntax UID (the UID itself if unknown).

    Parameters
    ----------
    uid : str
        Transfer syntax UID.

    Returns
    -------
    str
        For example ``"Explicit VR Little Endian"``.
    """
    if uid in _EXTRA_TS_NAMES:
        return _EXTRA_TS_NAMES[uid]
    from pydicom.uid import UID  # lazy: pydicom's import costs ~0.2 s of every send run

    name = UID(uid).name
    return name if name and name != uid else uid


# --- SOP classes ------------------------------------------------------------------------------------

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
#: Media Storage Directory Storage: a DICOMDIR, an index of files on a medium, not an object to store.
MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"


@cache
def storage_sop_classes() -> MappingProxyType[str, str]:
    """Every storage SOP class pynetdicom knows: UID -> pynetdicom/pydicom keyword (``CTImageStorage``).

    A static copy of pynetdicom's table (`dicom.sopclasses`): neither side imports pynetdicom to know it.
    """
    from .sopclasses import STORAGE_CLASSES

    return MappingProxyType(STORAGE_CLASSES)


def __getattr__(name: str) -> Any:
    if name == "STORAGE_SOP_CLASSES":  # the table as a module constant, built lazily
        return storage_sop_classes()
    raise AttributeError(name)


def sop_class_name(uid: str) -> str:
    """Return the keyword of a SOP class (``CTImageStorage``), or the UID itself if unknown.

    Parameters
    ----------
    uid : str
        SOP class UID.

    Returns
    -------
    str
        The pynetdicom keyword, else pydicom's keyword, else `uid`.
    """
    classes = storage_sop_classes()
    if uid in classes:
        return classes[uid]
    if uid == VERIFICATION_SOP_CLASS:
        return "Verification"
    from pydicom.uid import UID

    keyword = UID(uid).keyword
    return keyword or uid


# --- storescu -x options ----------------------------------------------------------------------------


def _with_uncompressed(preferred: str) -> tuple[str, ...]:
    return (preferred, *UNCOMPRESSED)


#: storescu's ``-x`` proposal modes: mode name -> transfer syntaxes in order of preference.
#: The first is the preferred transfer syntax; by default storescu proposes it in one presentation
#: context and the rest (if any) in a second one; ``+C`` combines them into a single context.
PROPOSAL_MODES: Final[MappingProxyType[str, tuple[str, ...]]] = MappingProxyType(
    {
        "uncompr": UNCOMPRESSED,  # -x=  (default)
        "little": (EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE),  # -xe
        "big": (EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE),  # -xb
        "implicit": (IMPLICIT_VR_LE,),  # -xi
        "lossless": _with_uncompressed(JPEG_LOSSLESS_SV1),  # -xs
        "jpeg8": _with_uncompressed(JPEG_BASELINE),  # -xy
        "jpeg12": _with_uncompressed(JPEG_EXTENDED),  # -xx
        "j2k-lossless": _with_uncompressed(JPEG_2000_LOSSLESS),  # -xv
        "j2k-lossy": _with_uncompressed(JPEG_2000),  # -xw
        "jls-lossless": _with_uncompressed(JPEG_LS_LOSSLESS),  # -xt
        "jls-lossy": _with_uncompressed(JPEG_LS_LOSSY),  # -xu
        "mpeg2": (MPEG2_MPML,),  # -xm
        "mpeg2-high": (MPEG2_MPHL,),  # -xh
        "mpeg4": (MPEG4_HP41,),  # -xn
        "mpeg4-bd": (MPEG4_HP41_BD,),  # -xl
        "mpeg4-2-2d": (MPEG4_HP42_2D,),  # -x2
        "mpeg4-2-3d": (MPEG4_HP42_3D,),  # -x3
        "mpeg4-2-st": (MPEG4_HP42_STEREO,),  # -xo
        "hevc": (HEVC_MP51,),  # -x4
        "hevc10": (HEVC_M10P51,),  # -x5
        "rle": _with_uncompressed(RLE_LOSSLESS),  # -xr
        "deflated": _with_uncompressed(DEFLATED_EXPLICIT_VR_LE),  # -xd
    }
)

#: storescu option (short and long form) -> mode name in `PROPOSAL_MODES`.
#: storescu's proposal options: (short, long, mode name in `PROPOSAL_MODES`).
PROPOSAL_FLAGS: Final[tuple[tuple[str, str, str], ...]] = (
    ("-x=", "--propose-uncompr", "uncompr"),
    ("-xe", "--propose-little", "little"),
    ("-xb", "--propose-big", "big"),
    ("-xi", "--propose-implicit", "implicit"),
    ("-xs", "--propose-lossless", "lossless"),
    ("-xy", "--propose-jpeg8", "jpeg8"),
    ("-xx", "--propose-jpeg12", "jpeg12"),
    ("-xv", "--propose-j2k-lossless", "j2k-lossless"),
    ("-xw", "--propose-j2k-lossy", "j2k-lossy"),
    ("-xt", "--propose-jls-lossless", "jls-lossless"),
    ("-xu", "--propose-jls-lossy", "jls-lossy"),
    ("-xm", "--propose-mpeg2", "mpeg2"),
    ("-xh", "--propose-mpeg2-high", "mpeg2-high"),
    ("-xn", "--propose-mpeg4", "mpeg4"),
    ("-xl", "--propose-mpeg4-bd", "mpeg4-bd"),
    ("-x2", "--propose-mpeg4-2-2d", "mpeg4-2-2d"),
    ("-x3", "--propose-mpeg4-2-3d", "mpeg4-2-3d"),
    ("-xo", "--propose-mpeg4-2-st", "mpeg4-2-st"),
    ("-x4", "--propose-hevc", "hevc"),
    ("-x5", "--propose-hevc10", "hevc10"),
    ("-xr", "--propose-rle", "rle"),
    ("-xd", "--propose-deflated", "deflated"),
)
PROPOSAL_OPTIONS: Final = MappingProxyType(
    {flag: mode for short, long, mode in PROPOSAL_FLAGS for flag in (short, long)}
)

# --- storescp file name prefixes --------------------------------------------------------------------

#: DCMTK's ``dcmSOPClassUIDToModality`` table: the prefix storescp puts before ``.<SOP Instance UID>``
#: in default file names. Captured from storescp 3.6.7 (one C-STORE per SOP class); the prefixes
#: are not all two letters (``CTe``, ``SRt``, ``RTb``, ``PDF`` ...) and SOP classes DCMTK does not know
#: get ``UNKNOWN``.
DCMTK_MODALITY_PREFIXES: Final = MappingProxyType(
    {
        "1.2.840.10008.5.1.1.27": "SP",
        "1.2.840.10008.5.1.1.29": "HG",
        "1.2.840.10008.5.1.1.30": "HC",
        "1.2.840.10008.5.1.4.1.1.1": "CR",
        "1.2.840.10008.5.1.4.1.1.1.1": "DX",
        "1.2.840.10008.5.1.4.1.1.1.1.1": "DP",
        "1.2.840.10008.5.1.4.1.1.1.2": "DXm",
        "1.2.840.10008.5.1.4.1.1.1.2.1": "DPm",
        "1.2.840.10008.5.1.4.1.1.1.3": "DXo",
        "1.2.840.10008.5.1.4.1.1.1.3.1": "DPo",
        "1.2.840.10008.5.1.4.1.1.2": "CT",
        "1.2.840.10008.5.1.4.1.1.2.1": "CTe",
        "1.2.840.10008.5.1.4.1.1.2.2": "CTl",
        "1.2.840.10008.5.1.4.1.1.3": "USf",
        "1.2.840.10008.5.1.4.1.1.3.1": "USm",
        "1.2.840.10008.5.1.4.1.1.4": "MR",
        "1.2.840.10008.5.1.4.1.1.4.1": "MRe",
        "1.2.840.10008.5.1.4.1.1.4.2": "MRs",
        "1.2.840.10008.5.1.4.1.1.4.3": "MRc",
        "1.2.840.10008.5.1.4.1.1.4.4": "MRl",
        "1.2.840.10008.5.1.4.1.1.5": "NMr",
        "1.2.840.10008.5.1.4.1.1.6": "USr",
        "1.2.840.10008.5.1.4.1.1.6.1": "US",
        "1.2.840.10008.5.1.4.1.1.6.2": "USe",
        "1.2.840.10008.5.1.4.1.1.7": "SC",
        "1.2.840.10008.5.1.4.1.1.7.1": "SCs",
        "1.2.840.10008.5.1.4.1.1.7.2": "SCb",
        "1.2.840.10008.5.1.4.1.1.7.3": "SCw",
        "1.2.840.10008.5.1.4.1.1.7.4": "SCc",
        "1.2.840.10008.5.1.4.1.1.8": "OV",
        "1.2.840.10008.5.1.4.1.1.9": "CV",
        "1.2.840.10008.5.1.4.1.1.9.1": "WV_d",
        "1.2.840.10008.5.1.4.1.1.9.1.1": "TLE",
        "1.2.840.10008.5.1.4.1.1.9.1.2": "ECG",
        "1.2.840.10008.5.1.4.1.1.9.1.3": "ECA",
        "1.2.840.10008.5.1.4.1.1.9.2.1": "WVh",
        "1.2.840.10008.5.1.4.1.1.9.3.1": "WVc",
        "1.2.840.10008.5.1.4.1.1.9.4.1": "AUV",
        "1.2.840.10008.5.1.4.1.1.9.4.2": "AUG",
        "1.2.840.10008.5.1.4.1.1.9.5.1": "WVa",
        "1.2.840.10008.5.1.4.1.1.9.6.1": "WVr",
        "1.2.840.10008.5.1.4.1.1.9.6.2": "WVm",
        "1.2.840.10008.5.1.4.1.1.9.7.1": "EEG",
        "1.2.840.10008.5.1.4.1.1.9.7.2": "EMG",
        "1.2.840.10008.5.1.4.1.1.9.7.3": "EOG",
        "1.2.840.10008.5.1.4.1.1.9.7.4": "WVs",
        "1.2.840.10008.5.1.4.1.1.9.8.1": "WVb",
        "1.2.840.10008.5.1.4.1.1.10": "ML",
        "1.2.840.10008.5.1.4.1.1.11": "VO",
        "1.2.840.10008.5.1.4.1.1.11.1": "PSg",
        "1.2.840.10008.5.1.4.1.1.11.2": "PSc",
        "1.2.840.10008.5.1.4.1.1.11.3": "PSp",
        "1.2.840.10008.5.1.4.1.1.11.4": "PSb",
        "1.2.840.10008.5.1.4.1.1.11.5": "PSx",
        "1.2.840.10008.5.1.4.1.1.11.6": "VPg",
        "1.2.840.10008.5.1.4.1.1.11.7": "VPc",
        "1.2.840.10008.5.1.4.1.1.11.8": "PSa",
        "1.2.840.10008.5.1.4.1.1.11.9": "VPv",
        "1.2.840.10008.5.1.4.1.1.11.10": "VPs",
        "1.2.840.10008.5.1.4.1.1.11.11": "VPm",
        "1.2.840.10008.5.1.4.1.1.12.1": "XA",
        "1.2.840.10008.5.1.4.1.1.12.1.1": "XAe",
        "1.2.840.10008.5.1.4.1.1.12.2": "RF",
        "1.2.840.10008.5.1.4.1.1.12.2.1": "RFe",
        "1.2.840.10008.5.1.4.1.1.12.3": "XB",
        "1.2.840.10008.5.1.4.1.1.13.1.1": "XA3",
        "1.2.840.10008.5.1.4.1.1.13.1.2": "XC3",
        "1.2.840.10008.5.1.4.1.1.13.1.3": "BT",
        "1.2.840.10008.5.1.4.1.1.13.1.4": "BX",
        "1.2.840.10008.5.1.4.1.1.13.1.5": "BP",
        "1.2.840.10008.5.1.4.1.1.14.1": "OCt",
        "1.2.840.10008.5.1.4.1.1.14.2": "OCp",
        "1.2.840.10008.5.1.4.1.1.20": "NM",
        "1.2.840.10008.5.1.4.1.1.30": "PM",
        "1.2.840.10008.5.1.4.1.1.66": "RAW",
        "1.2.840.10008.5.1.4.1.1.66.1": "RGs",
        "1.2.840.10008.5.1.4.1.1.66.2": "FID",
        "1.2.840.10008.5.1.4.1.1.66.3": "RGd",
        "1.2.840.10008.5.1.4.1.1.66.4": "SG",
        "1.2.840.10008.5.1.4.1.1.66.5": "SGs",
        "1.2.840.10008.5.1.4.1.1.66.6": "TR",
        "1.2.840.10008.5.1.4.1.1.67": "RWM",
        "1.2.840.10008.5.1.4.1.1.68.1": "SSm",
        "1.2.840.10008.5.1.4.1.1.68.2": "SSp",
        "1.2.840.10008.5.1.4.1.1.77.1": "VLr",
        "1.2.840.10008.5.1.4.1.1.77.1.1": "VLe",
        "1.2.840.10008.5.1.4.1.1.77.1.1.1": "VVe",
        "1.2.840.10008.5.1.4.1.1.77.1.2": "VLm",
        "1.2.840.10008.5.1.4.1.1.77.1.2.1": "VVm",
        "1.2.840.10008.5.1.4.1.1.77.1.3": "VLs",
        "1.2.840.10008.5.1.4.1.1.77.1.4": "VLp",
        "1.2.840.10008.5.1.4.1.1.77.1.4.1": "VVp",
        "1.2.840.10008.5.1.4.1.1.77.1.5.1": "OPb",
        "1.2.840.10008.5.1.4.1.1.77.1.5.2": "OPw",
        "1.2.840.10008.5.1.4.1.1.77.1.5.3": "OPr",
        "1.2.840.10008.5.1.4.1.1.77.1.5.4": "OPt",
        "1.2.840.10008.5.1.4.1.1.77.1.5.5": "OWs",
        "1.2.840.10008.5.1.4.1.1.77.1.5.6": "OW3",
        "1.2.840.10008.5.1.4.1.1.77.1.5.7": "OCe",
        "1.2.840.10008.5.1.4.1.1.77.1.5.8": "OCb",
        "1.2.840.10008.5.1.4.1.1.77.1.6": "VLw",
        "1.2.840.10008.5.1.4.1.1.77.1.7": "VLd",
        "1.2.840.10008.5.1.4.1.1.77.2": "VMr",
        "1.2.840.10008.5.1.4.1.1.78.1": "OPl",
        "1.2.840.10008.5.1.4.1.1.78.2": "OPa",
        "1.2.840.10008.5.1.4.1.1.78.3": "OPk",
        "1.2.840.10008.5.1.4.1.1.78.4": "OPs",
        "1.2.840.10008.5.1.4.1.1.78.5": "OPv",
        "1.2.840.10008.5.1.4.1.1.78.6": "SRs",
        "1.2.840.10008.5.1.4.1.1.78.7": "OPx",
        "1.2.840.10008.5.1.4.1.1.78.8": "OPc",
        "1.2.840.10008.5.1.4.1.1.79.1": "SRg",
        "1.2.840.10008.5.1.4.1.1.80.1": "OPp",
        "1.2.840.10008.5.1.4.1.1.81.1": "OPm",
        "1.2.840.10008.5.1.4.1.1.82.1": "CM",
        "1.2.840.10008.5.1.4.1.1.88.1": "SR_t",
        "1.2.840.10008.5.1.4.1.1.88.2": "SR_a",
        "1.2.840.10008.5.1.4.1.1.88.3": "SR_d",
        "1.2.840.10008.5.1.4.1.1.88.4": "SR_c",
        "1.2.840.10008.5.1.4.1.1.88.11": "SRt",
        "1.2.840.10008.5.1.4.1.1.88.22": "SRe",
        "1.2.840.10008.5.1.4.1.1.88.33": "SRc",
        "1.2.840.10008.5.1.4.1.1.88.34": "SR3",
        "1.2.840.10008.5.1.4.1.1.88.35": "SRx",
        "1.2.840.10008.5.1.4.1.1.88.40": "SRp",
        "1.2.840.10008.5.1.4.1.1.88.50": "SRm",
        "1.2.840.10008.5.1.4.1.1.88.59": "KO",
        "1.2.840.10008.5.1.4.1.1.88.65": "SRh",
        "1.2.840.10008.5.1.4.1.1.88.67": "SRd",
        "1.2.840.10008.5.1.4.1.1.88.68": "SRr",
        "1.2.840.10008.5.1.4.1.1.88.69": "SRo",
        "1.2.840.10008.5.1.4.1.1.88.70": "SRi",
        "1.2.840.10008.5.1.4.1.1.88.71": "SRa",
        "1.2.840.10008.5.1.4.1.1.88.72": "SRu",
        "1.2.840.10008.5.1.4.1.1.88.73": "SRq",
        "1.2.840.10008.5.1.4.1.1.88.74": "SRj",
        "1.2.840.10008.5.1.4.1.1.88.75": "SRi",  # sic: DCMTK reuses SRi for Performed Imaging Agent Admin.
        "1.2.840.10008.5.1.4.1.1.88.76": "SRde",
        "1.2.840.10008.5.1.4.1.1.90.1": "AS",
        "1.2.840.10008.5.1.4.1.1.91.1": "MAs",
        "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
        "1.2.840.10008.5.1.4.1.1.104.2": "CDA",
        "1.2.840.10008.5.1.4.1.1.104.3": "STL",
        "1.2.840.10008.5.1.4.1.1.104.4": "OBJ",
        "1.2.840.10008.5.1.4.1.1.104.5": "MTL",
        "1.2.840.10008.5.1.4.1.1.128": "PI",
        "1.2.840.10008.5.1.4.1.1.128.1": "PIl",
        "1.2.840.10008.5.1.4.1.1.129": "PC",
        "1.2.840.10008.5.1.4.1.1.130": "PIe",
        "1.2.840.10008.5.1.4.1.1.131": "SD",
        "1.2.840.10008.5.1.4.1.1.200.2": "PPcp",
        "1.2.840.10008.5.1.4.1.1.200.8": "PPxp",
        "1.2.840.10008.5.1.4.1.1.481.1": "RI",
        "1.2.840.10008.5.1.4.1.1.481.2": "RD",
        "1.2.840.10008.5.1.4.1.1.481.3": "RS",
        "1.2.840.10008.5.1.4.1.1.481.4": "RTb",
        "1.2.840.10008.5.1.4.1.1.481.5": "RP",
        "1.2.840.10008.5.1.4.1.1.481.6": "RTr",
        "1.2.840.10008.5.1.4.1.1.481.7": "RTs",
        "1.2.840.10008.5.1.4.1.1.481.8": "RPi",
        "1.2.840.10008.5.1.4.1.1.481.9": "RTi",
        "1.2.840.10008.5.1.4.1.1.481.10": "RIp",
        "1.2.840.10008.5.1.4.1.1.481.11": "RAs",
        "1.2.840.10008.5.1.4.1.1.481.12": "RSe",
        "1.2.840.10008.5.1.4.1.1.481.13": "Rca",
        "1.2.840.10008.5.1.4.1.1.481.14": "Rto",
        "1.2.840.10008.5.1.4.1.1.481.15": "Rra",
        "1.2.840.10008.5.1.4.1.1.481.16": "RSr",
        "1.2.840.10008.5.1.4.1.1.481.17": "RRs",
        "1.2.840.10008.5.1.4.1.1.481.18": "RRt",
        "1.2.840.10008.5.1.4.1.1.481.19": "RRc",
        "1.2.840.10008.5.1.4.1.1.481.20": "RRr",
        "1.2.840.10008.5.1.4.1.1.481.21": "RSd",
        "1.2.840.10008.5.1.4.1.1.481.22": "RTp",
        "1.2.840.10008.5.1.4.1.1.501.1": "CTs",
        "1.2.840.10008.5.1.4.1.1.501.2.1": "DXs",
        "1.2.840.10008.5.1.4.1.1.501.2.2": "DPs",
        "1.2.840.10008.5.1.4.1.1.501.3": "TDR",
        "1.2.840.10008.5.1.4.1.1.501.4": "AI2",
        "1.2.840.10008.5.1.4.1.1.501.5": "AI3",
        "1.2.840.10008.5.1.4.1.1.501.6": "QR",
        "1.2.840.10008.5.1.4.1.1.601.1": "EC",
        "1.2.840.10008.5.1.4.1.1.601.2": "ECm",
        "1.2.840.10008.5.1.4.34.1": "RB_d",
        "1.2.840.10008.5.1.4.34.7": "RTd",
        "1.2.840.10008.5.1.4.34.10": "RTa",
    }
)

# Keyword rules for storage SOP classes newer than DCMTK's table: first match on the keyword wins.
_PREFIX_RULES: Final[tuple[tuple[str, str], ...]] = (
    (r"Photoacoustic", "PA"),
    (r"SR(Document)?Storage", "SR"),
    (r"PresentationSta(te|ge)", "PS"),  # sic: pynetdicom spells one "PresentationStage"
    (r"ECGWaveform", "ECG"),
    (r"Waveform", "WV"),
    (r"Segmentation", "SG"),
    (r"Microscopy|^VL", "VL"),
    (r"^Video", "VV"),
    (r"RTImage", "RI"),
    (r"^RT|Radiation", "RT"),
    (r"Ophthalmic", "OP"),
    (r"^Encapsulated", "EN"),
    (r"Inventory", "INV"),
    (r"^(Enhanced|LegacyConvertedEnhanced)?CT", "CT"),
    (r"^(Enhanced|LegacyConvertedEnhanced)?MR", "MR"),
    (r"^(Enhanced|LegacyConvertedEnhanced)?PET|PositronEmission", "PI"),
    (r"Ultrasound|^EnhancedUS", "US"),
    (r"SecondaryCapture", "SC"),
    (r"Mammography|Breast", "MG"),
    (r"XRay|^DigitalX", "DX"),
    (r"NuclearMedicine", "NM"),
)


def modality_prefix(sop_class_uid: str, default: str = "UNKNOWN") -> str:
    """Return storescp's file name prefix for a SOP class (``CT`` in ``CT.1.2.3...``).

    Parameters
    ----------
    sop_class_uid : str
        SOP class UID of the received object.
    default : str, optional
        Prefix for SOP classes nobody knows; storescp itself writes ``UNKNOWN``.

    Returns
    -------
    str
        DCMTK's own prefix where DCMTK has one (`DCMTK_MODALITY_PREFIXES`); for storage SOP classes
        newer than that table, a prefix derived from the SOP class keyword; otherwise `default`.
    """
    prefix = DCMTK_MODALITY_PREFIXES.get(sop_class_uid)
    if prefix is not None:
        return prefix
    from pydicom.uid import UID

    keyword = storage_sop_classes().get(sop_class_uid) or UID(sop_class_uid).keyword
    if keyword and "Storage" in keyword:
        for pattern, derived in _PREFIX_RULES:
            if re.search(pattern, keyword):
                return derived
    return default
