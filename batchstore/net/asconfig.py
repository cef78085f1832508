"""Parser for DCMTK association negotiation profile files (asconfig.txt format, ``-xf file profile``).

Owns the INI-like syntax with ``[[supersections]]``, the DCMTK symbolic UID names, and the two views
batchstore needs: the presentation contexts a storescu profile proposes and what a storescp profile accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from pydicom._uid_dict import UID_dictionary
from pynetdicom import sop_class as _sop_class

from ..dicom.uids import LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR
from .acse import PresentationContextProposal

__all__ = [
    "ConfigError",
    "DCMTK_UID_NAMES",
    "load_profile",
    "load_scp_profile",
    "profile_names",
    "resolve_uid",
]


class ConfigError(ValueError):
    """A configuration file cannot be used; the message names the file, the line and the problem."""


#: DCMTK's symbolic UID names (``dcmdata/libsrc/dcuid.cc``, as printed by dcmdump 3.6.7) that differ
#: from the pydicom/pynetdicom keywords; names equal to a keyword (``CTImageStorage``) resolve through
#: pydicom, case-insensitively (DCMTK writes ``Multiframe`` where pydicom writes ``MultiFrame``).
DCMTK_UID_NAMES: Final = MappingProxyType(
    {
        # the two run-time names of asconfig.txt section 2.1
        "LocalEndianExplicit": LOCAL_EXPLICIT_VR,
        "OppositeEndianExplicit": OPPOSITE_EXPLICIT_VR,
        "VerificationSOPClass": "1.2.840.10008.1.1",
        "LittleEndianImplicit": "1.2.840.10008.1.2",
        "LittleEndianExplicit": "1.2.840.10008.1.2.1",
        "DeflatedLittleEndianExplicit": "1.2.840.10008.1.2.1.99",
        "BigEndianExplicit": "1.2.840.10008.1.2.2",
        "JPEGBaseline": "1.2.840.10008.1.2.4.50",
        "JPEGExtended:Process2+4": "1.2.840.10008.1.2.4.51",
        "JPEGExtended:Process3+5": "1.2.840.10008.1.2.4.52",
        "JPEGSpectralSelection:Non-hierarchical:Process6+8": "1.2.840.10008.1.2.4.53",
        "JPEGSpectralSelection:Non-hierarchical:Process7+9": "1.2.840.10008.1.2.4.54",
        "JPEGFullProgression:Non-hierarchical:Process10+12": "1.2.840.10008.1.2.4.55",
        "JPEGFullProgression:Non-hierarchical:Process11+13": "1.2.840.10008.1.2.4.56",
        "JPEGLossless:Non-hierarchical:Process14": "1.2.840.10008.1.2.4.57",
        "JPEGLossless:Non-hierarchical:Process15": "1.2.840.10008.1.2.4.58",
        "JPEGExtended:Hierarchical:Process16+18": "1.2.840.10008.1.2.4.59",
        "JPEGExtended:Hierarchical:Process17+19": "1.2.840.10008.1.2.4.60",
        "JPEGSpectralSelection:Hierarchical:Process20+22": "1.2.840.10008.1.2.4.61",
        "JPEGSpectralSelection:Hierarchical:Process21+23": "1.2.840.10008.1.2.4.62",
        "JPEGFullProgression:Hierarchical:Process24+26": "1.2.840.10008.1.2.4.63",
        "JPEGFullProgression:Hierarchical:Process25+27": "1.2.840.10008.1.2.4.64",
        "JPEGLossless:Hierarchical:Process28": "1.2.840.10008.1.2.4.65",
        "JPEGLossless:Hierarchical:Process29": "1.2.840.10008.1.2.4.66",
        "JPEGLossless:Non-hierarchical-1stOrderPrediction": "1.2.840.10008.1.2.4.70",
        "JPEGLSLossy": "1.2.840.10008.1.2.4.81",
        "JPEG2000LosslessOnly": "1.2.840.10008.1.2.4.90",
        "JPEG2000MulticomponentLosslessOnly": "1.2.840.10008.1.2.4.92",
        "JPEG2000Multicomponent": "1.2.840.10008.1.2.4.93",
        "MPEG2MainProfile@MainLevel": "1.2.840.10008.1.2.4.100",
        "MPEG2MainProfile@HighLevel": "1.2.840.10008.1.2.4.101",
        "MPEG4HighProfile/Level4.1": "1.2.840.10008.1.2.4.102",
        "MPEG4BDcompatibleHighProfile/Level4.1": "1.2.840.10008.1.2.4.103",
        "MPEG4HighProfile/Level4.2For2DVideo": "1.2.840.10008.1.2.4.104",
        "MPEG4HighProfile/Level4.2For3DVideo": "1.2.840.10008.1.2.4.105",
        "MPEG4StereoHighProfile/Level4.2": "1.2.840.10008.1.2.4.106",
        "HEVCMainProfile/Level5.1": "1.2.840.10008.1.2.4.107",
        "HEVCMain10Profile/Level5.1": "1.2.840.10008.1.2.4.108",
        "SMPTEST2110-20:UncompressedProgressiveActiveVideo": "1.2.840.10008.1.2.7.1",
        "SMPTEST2110-20:UncompressedInterlacedActiveVideo": "1.2.840.10008.1.2.7.2",
        "SMPTEST2110-30:PCMDigitalAudio": "1.2.840.10008.1.2.7.3",
        "RETIRED_BasicStudyContentNotificationSOPClass": "1.2.840.10008.1.9",
        "StorageCommitmentPushModelSOPClass": "1.2.840.10008.1.20.1",
        "RETIRED_StorageCommitmentPullModelSOPClass": "1.2.840.10008.1.20.2",
        "ProceduralEventLoggingSOPClass": "1.2.840.10008.1.40",
        "SubstanceAdministrationLoggingSOPClass": "1.2.840.10008.1.42",
        "StandardApplicationContext": "1.2.840.10008.3.1.1.1",
        "RETIRED_DetachedPatientManagementSOPClass": "1.2.840.10008.3.1.2.1.1",
        "RETIRED_DetachedPatientManagementMetaSOPClass": "1.2.840.10008.3.1.2.1.4",
        "RETIRED_DetachedVisitManagementSOPClass": "1.2.840.10008.3.1.2.2.1",
        "RETIRED_DetachedStudyManagementSOPClass": "1.2.840.10008.3.1.2.3.1",
        "RETIRED_StudyComponentManagementSOPClass": "1.2.840.10008.3.1.2.3.2",
        "ModalityPerformedProcedureStepSOPClass": "1.2.840.10008.3.1.2.3.3",
        "ModalityPerformedProcedureStepRetrieveSOPClass": "1.2.840.10008.3.1.2.3.4",
        "ModalityPerformedProcedureStepNotificationSOPClass": "1.2.840.10008.3.1.2.3.5",
        "RETIRED_DetachedResultsManagementSOPClass": "1.2.840.10008.3.1.2.5.1",
        "RETIRED_DetachedResultsManagementMetaSOPClass": "1.2.840.10008.3.1.2.5.4",
        "RETIRED_DetachedStudyManagementMetaSOPClass": "1.2.840.10008.3.1.2.5.5",
        "RETIRED_DetachedInterpretationManagementSOPClass": "1.2.840.10008.3.1.2.6.1",
        "StorageServiceClass": "1.2.840.10008.4.2",
        "BasicFilmSessionSOPClass": "1.2.840.10008.5.1.1.1",
        "BasicFilmBoxSOPClass": "1.2.840.10008.5.1.1.2",
        "BasicGrayscaleImageBoxSOPClass": "1.2.840.10008.5.1.1.4",
        "BasicColorImageBoxSOPClass": "1.2.840.10008.5.1.1.4.1",
        "RETIRED_ReferencedImageBoxSOPClass": "1.2.840.10008.5.1.1.4.2",
        "BasicGrayscalePrintManagementMetaSOPClass": "1.2.840.10008.5.1.1.9",
        "RETIRED_ReferencedGrayscalePrintManagementMetaSOPClass": "1.2.840.10008.5.1.1.9.1",
        "PrintJobSOPClass": "1.2.840.10008.5.1.1.14",
        "BasicAnnotationBoxSOPClass": "1.2.840.10008.5.1.1.15",
        "PrinterSOPClass": "1.2.840.10008.5.1.1.16",
        "PrinterConfigurationRetrievalSOPClass": "1.2.840.10008.5.1.1.16.376",
        "BasicColorPrintManagementMetaSOPClass": "1.2.840.10008.5.1.1.18",
        "RETIRED_ReferencedColorPrintManagementMetaSOPClass": "1.2.840.10008.5.1.1.18.1",
        "VOILUTBoxSOPClass": "1.2.840.10008.5.1.1.22",
        "PresentationLUTSOPClass": "1.2.840.10008.5.1.1.23",
        "RETIRED_ImageOverlayBoxSOPClass": "1.2.840.10008.5.1.1.24",
        "RETIRED_BasicPrintImageOverlayBoxSOPClass": "1.2.840.10008.5.1.1.24.1",
        "RETIRED_PrintQueueManagementSOPClass": "1.2.840.10008.5.1.1.26",
        "RETIRED_StoredPrintStorage": "1.2.840.10008.5.1.1.27",
        "RETIRED_HardcopyGrayscaleImageStorage": "1.2.840.10008.5.1.1.29",
        "RETIRED_HardcopyColorImageStorage": "1.2.840.10008.5.1.1.30",
        "RETIRED_PullPrintRequestSOPClass": "1.2.840.10008.5.1.1.31",
        "RETIRED_PullStoredPrintManagementMetaSOPClass": "1.2.840.10008.5.1.1.32",
        "MediaCreationManagementSOPClass": "1.2.840.10008.5.1.1.33",
        "DisplaySystemSOPClass": "1.2.840.10008.5.1.1.40",
        "RETIRED_UltrasoundMultiframeImageStorage": "1.2.840.10008.5.1.4.1.1.3",
        "RETIRED_NuclearMedicineImageStorage": "1.2.840.10008.5.1.4.1.1.5",
        "RETIRED_UltrasoundImageStorage": "1.2.840.10008.5.1.4.1.1.6",
        "RETIRED_StandaloneOverlayStorage": "1.2.840.10008.5.1.4.1.1.8",
        "RETIRED_StandaloneCurveStorage": "1.2.840.10008.5.1.4.1.1.9",
        "DRAFT_WaveformStorage": "1.2.840.10008.5.1.4.1.1.9.1",
        "RETIRED_StandaloneModalityLUTStorage": "1.2.840.10008.5.1.4.1.1.10",
        "RETIRED_StandaloneVOILUTStorage": "1.2.840.10008.5.1.4.1.1.11",
        "RETIRED_XRayAngiographicBiPlaneImageStorage": "1.2.840.10008.5.1.4.1.1.12.3",
        "RETIRED_VLImageStorage": "1.2.840.10008.5.1.4.1.1.77.1",
        "RETIRED_VLMultiframeImageStorage": "1.2.840.10008.5.1.4.1.1.77.2",
        "DRAFT_SRTextStorage": "1.2.840.10008.5.1.4.1.1.88.1",
        "DRAFT_SRAudioStorage": "1.2.840.10008.5.1.4.1.1.88.2",
        "DRAFT_SRDetailStorage": "1.2.840.10008.5.1.4.1.1.88.3",
        "DRAFT_SRComprehensiveStorage": "1.2.840.10008.5.1.4.1.1.88.4",
        "ImplantationPlanSRDocumentStorage": "1.2.840.10008.5.1.4.1.1.88.70",
        "RETIRED_StandalonePETCurveStorage": "1.2.840.10008.5.1.4.1.1.129",
        "FINDProtocolApprovalInformationModel": "1.2.840.10008.5.1.4.1.1.200.4",
        "MOVEProtocolApprovalInformationModel": "1.2.840.10008.5.1.4.1.1.200.5",
        "GETProtocolApprovalInformationModel": "1.2.840.10008.5.1.4.1.1.200.6",
        "DICOS_CTImageStorage": "1.2.840.10008.5.1.4.1.1.501.1",
        "DICOS_DigitalXRayImageStorageForPresentation": "1.2.840.10008.5.1.4.1.1.501.2.1",
        "DICOS_DigitalXRayImageStorageForProcessing": "1.2.840.10008.5.1.4.1.1.501.2.2",
        "DICOS_ThreatDetectionReportStorage": "1.2.840.10008.5.1.4.1.1.501.3",
        "DICOS_2DAITStorage": "1.2.840.10008.5.1.4.1.1.501.4",
        "DICOS_3DAITStorage": "1.2.840.10008.5.1.4.1.1.501.5",
        "DICOS_QuadrupoleResonanceStorage": "1.2.840.10008.5.1.4.1.1.501.6",
        "DICONDE_EddyCurrentImageStorage": "1.2.840.10008.5.1.4.1.1.601.1",
        "DICONDE_EddyCurrentMultiframeImageStorage": "1.2.840.10008.5.1.4.1.1.601.2",
        "FINDPatientRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.1.1",
        "MOVEPatientRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.1.2",
        "GETPatientRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.1.3",
        "FINDStudyRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.2.1",
        "MOVEStudyRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.2.2",
        "GETStudyRootQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.2.3",
        "RETIRED_FINDPatientStudyOnlyQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.3.1",
        "RETIRED_MOVEPatientStudyOnlyQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.3.2",
        "RETIRED_GETPatientStudyOnlyQueryRetrieveInformationModel": "1.2.840.10008.5.1.4.1.2.3.3",
        "MOVECompositeInstanceRootRetrieve": "1.2.840.10008.5.1.4.1.2.4.2",
        "GETCompositeInstanceRootRetrieve": "1.2.840.10008.5.1.4.1.2.4.3",
        "GETCompositeInstanceRetrieveWithoutBulkData": "1.2.840.10008.5.1.4.1.2.5.3",
        "FINDDefinedProcedureProtocolInformationModel": "1.2.840.10008.5.1.4.20.1",
        "MOVEDefinedProcedureProtocolInformationModel": "1.2.840.10008.5.1.4.20.2",
        "GETDefinedProcedureProtocolInformationModel": "1.2.840.10008.5.1.4.20.3",
        "FINDModalityWorklistInformationModel": "1.2.840.10008.5.1.4.31",
        "RETIRED_GeneralPurposeWorklistManagementMetaSOPClass": "1.2.840.10008.5.1.4.32",
        "RETIRED_FINDGeneralPurposeWorklistInformationModel": "1.2.840.10008.5.1.4.32.1",
        "RETIRED_GeneralPurposeScheduledProcedureStepSOPClass": "1.2.840.10008.5.1.4.32.2",
        "RETIRED_GeneralPurposePerformedProcedureStepSOPClass": "1.2.840.10008.5.1.4.32.3",
        "InstanceAvailabilityNotificationSOPClass": "1.2.840.10008.5.1.4.33",
        "DRAFT_RTBeamsDeliveryInstructionStorage": "1.2.840.10008.5.1.4.34.1",
        "DRAFT_RTConventionalMachineVerification": "1.2.840.10008.5.1.4.34.2",
        "DRAFT_RTIonMachineVerification": "1.2.840.10008.5.1.4.34.3",
        "DRAFT_UnifiedWorklistAndProcedureStepServiceClass": "1.2.840.10008.5.1.4.34.4",
        "DRAFT_UnifiedProcedureStepPushSOPClass": "1.2.840.10008.5.1.4.34.4.1",
        "DRAFT_UnifiedProcedureStepWatchSOPClass": "1.2.840.10008.5.1.4.34.4.2",
        "DRAFT_UnifiedProcedureStepPullSOPClass": "1.2.840.10008.5.1.4.34.4.3",
        "DRAFT_UnifiedProcedureStepEventSOPClass": "1.2.840.10008.5.1.4.34.4.4",
        "UnifiedWorklistAndProcedureStepServiceClass": "1.2.840.10008.5.1.4.34.6",
        "UnifiedProcedureStepPushSOPClass": "1.2.840.10008.5.1.4.34.6.1",
        "UnifiedProcedureStepWatchSOPClass": "1.2.840.10008.5.1.4.34.6.2",
        "UnifiedProcedureStepPullSOPClass": "1.2.840.10008.5.1.4.34.6.3",
        "UnifiedProcedureStepEventSOPClass": "1.2.840.10008.5.1.4.34.6.4",
        "UnifiedProcedureStepQuerySOPClass": "1.2.840.10008.5.1.4.34.6.5",
        "FINDHangingProtocolInformationModel": "1.2.840.10008.5.1.4.38.2",
        "MOVEHangingProtocolInformationModel": "1.2.840.10008.5.1.4.38.3",
        "FINDColorPaletteInformationModel": "1.2.840.10008.5.1.4.39.2",
        "MOVEColorPaletteInformationModel": "1.2.840.10008.5.1.4.39.3",
        "GETColorPaletteInformationModel": "1.2.840.10008.5.1.4.39.4",
        "ProductCharacteristicsQuerySOPClass": "1.2.840.10008.5.1.4.41",
        "SubstanceApprovalQuerySOPClass": "1.2.840.10008.5.1.4.42",
        "FINDGenericImplantTemplateInformationModel": "1.2.840.10008.5.1.4.43.2",
        "MOVEGenericImplantTemplateInformationModel": "1.2.840.10008.5.1.4.43.3",
        "GETGenericImplantTemplateInformationModel": "1.2.840.10008.5.1.4.43.4",
        "FINDImplantAssemblyTemplateInformationModel": "1.2.840.10008.5.1.4.44.2",
        "MOVEImplantAssemblyTemplateInformationModel": "1.2.840.10008.5.1.4.44.3",
        "GETImplantAssemblyTemplateInformationModel": "1.2.840.10008.5.1.4.44.4",
        "FINDImplantTemplateGroupInformationModel": "1.2.840.10008.5.1.4.45.2",
        "MOVEImplantTemplateGroupInformationModel": "1.2.840.10008.5.1.4.45.3",
        "GETImplantTemplateGroupInformationModel": "1.2.840.10008.5.1.4.45.4",
        # standard keywords pydicom 3.0 does not have yet
        "JPEGXLLossless": "1.2.840.10008.1.2.4.110",
        "JPEGXLJPEGRecompression": "1.2.840.10008.1.2.4.111",
        "JPEGXL": "1.2.840.10008.1.2.4.112",
    }
)

_UID_RE: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
_TS_TYPES: Final = frozenset(("Transfer Syntax",))


def _keyword_tables() -> tuple[dict[str, str], dict[str, str]]:
    exact: dict[str, str] = {}
    for uid, entry in UID_dictionary.items():
        if entry[4]:
            exact.setdefault(entry[4], uid)
    for attr in dir(_sop_class):
        table = getattr(_sop_class, attr)
        if attr.startswith("_") and attr.endswith("_CLASSES") and isinstance(table, dict):
            for name, uid in table.items():
                exact.setdefault(name, str(uid))
    folded: dict[str, str] = {}
    ambiguous: set[str] = set()
    for name, uid in (*exact.items(), *DCMTK_UID_NAMES.items()):
        key = name.lower()
        if folded.setdefault(key, uid) != uid:
            ambiguous.add(key)
    for key in ambiguous:
        del folded[key]
    return exact, folded


_EXACT, _FOLDED = _keyword_tables()


def resolve_uid(name: str) -> str | None:
    """Return the UID for a numeric UID or a DCMTK / pydicom symbolic name, None if unknown.

    Parameters
    ----------
    name : str
        ``1.2.840.10008.1.2.1``, ``LittleEndianExplicit``, ``CTImageStorage`` ...

    Returns
    -------
    str or None
        DCMTK names are tried first, then pydicom and pynetdicom keywords, then either ignoring case.
    """
    name = name.strip()
    if _UID_RE.fullmatch(name) and len(name) <= 64:
        return name
    return DCMTK_UID_NAMES.get(name) or _EXACT.get(name) or _FOLDED.get(name.lower())


# --- the INI-like file format (DCMTK's OFConfigFile) ---------------------------------------------------


@dataclass
class _Entry:
    key: str  # mangled: no whitespace, upper case
    value: str
    line: int
    written: str  # the key as written


@dataclass
class _Section:
    name: str  # as written
    line: int
    entries: dict[str, _Entry] = field(default_factory=dict)


@dataclass
class _Super:
    name: str
    line: int
    sections: dict[str, _Section] = field(default_factory=dict)


def _mangle(name: str) -> str:
    """DCMTK compares keys and section names without whitespace and case."""
    return "".join(name.split()).upper()


def _read_tree(path: str) -> dict[str, _Super]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror or exc}") from exc
    tree: dict[str, _Super] = {}
    current_super: _Super | None = None
    current: _Section | None = None
    last: _Entry | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":  # continuation of the previous value
            if last is None:
                raise ConfigError(
                    f"{path}, line {lineno}: indented line does not continue a 'Key = Value' entry"
                )
            last.value += "\n" + stripped
            continue
        last = None
        if raw.startswith("["):
            match = re.fullmatch(r"(\[+)([^\[\]]*)(\]+)", stripped)
            if not match or len(match.group(1)) != len(match.group(3)) or len(match.group(1)) > 2:
                raise ConfigError(f"{path}, line {lineno}: malformed section heading {stripped!r}")
            name = match.group(2).strip()
            key = _mangle(name)
            if not key:
                raise ConfigError(f"{path}, line {lineno}: empty section name")
            if len(match.group(1)) == 2:
                if key in tree:
                    raise ConfigError(
                        f"{path}, line {lineno}: [[{name}]] appears twice (first on line {tree[key].line})"
                    )
                current_super = tree[key] = _Super(name, lineno)
                current = None
            else:
                if current_super is None:
                    raise ConfigError(
                        f"{path}, line {lineno}: section [{name}] is not inside a [[supersection]]"
                    )
                if key in current_super.sections:
                    first = current_super.sections[key].line
                    raise ConfigError(
                        f"{path}, line {lineno}: section [{name}] appears twice (first on line {first})"
                    )
                current = current_super.sections[key] = _Section(name, lineno)
            continue
        if "=" not in raw:
            raise ConfigError(
                f"{path}, line {lineno}: expected 'Key = Value' or a [section] heading, got {stripped!r}"
            )
        key_text, value = raw.split("=", 1)
        key = _mangle(key_text)
        if current is None:
            raise ConfigError(f"{path}, line {lineno}: entry {key_text.strip()!r} is not inside a [section]")
        if not key:
            raise ConfigError(f"{path}, line {lineno}: missing key before '='")
        if key in current.entries:
            first = current.entries[key].line
            raise ConfigError(
                f"{path}, line {lineno}: {key_text.strip()} appears twice in [{current.name}] (first on line {first})"
            )
        last = current.entries[key] = _Entry(key, value.strip(), lineno, key_text.strip())
    return tree


def _numbered(path: str, section: _Section, prefix: str) -> Iterator[_Entry]:
    """Yield ``<prefix>1``, ``<prefix>2`` ... in order; anything else in the section is an error."""
    pattern = re.compile(re.escape(prefix.upper()) + r"([1-9][0-9]*)")
    numbers: dict[int, _Entry] = {}
    for entry in section.entries.values():
        match = pattern.fullmatch(entry.key)
        if not match:
            raise ConfigError(
                f"{path}, line {entry.line}: unexpected key {entry.written!r} in [{section.name}] "
                f"(expected {prefix}1, {prefix}2, ...)"
            )
        numbers[int(match.group(1))] = entry
    for n in range(1, len(numbers) + 1):
        if n not in numbers:
            gap = min(k for k in numbers if k > n)
            raise ConfigError(
                f"{path}, line {numbers[gap].line}: {numbers[gap].written} in [{section.name}] "
                f"follows a gap: {prefix}{n} is missing (DCMTK would silently ignore everything after the gap)"
            )
        yield numbers[n]


def _split_pair(path: str, entry: _Entry, section: _Section, what: str) -> tuple[str, str]:
    if "\\" not in entry.value:
        raise ConfigError(
            f"{path}, line {entry.line}: {entry.written} in [{section.name}] must be "
            f"'<SOP class>\\<{what}>', got {entry.value!r}"
        )
    left, right = entry.value.split("\\", 1)
    return left.strip(), right


def _abstract_syntax(path: str, entry: _Entry, section: _Section, name: str) -> str:
    uid = resolve_uid(name)
    if uid is None:
        raise ConfigError(f"{path}, line {entry.line}: unknown SOP class {name!r} in [{section.name}]")
    return uid


@dataclass
class _Config:
    transfer_syntaxes: dict[str, tuple[str, ...]]
    contexts: dict[
        str, tuple[tuple[str, tuple[str, ...], int], ...]
    ]  # key -> (abstract syntax, syntaxes, line)
    context_names: dict[str, str]
    profiles: dict[str, tuple[str, str, int]]  # key -> (name as written, presentation context key, line)


def _require(path: str, tree: dict[str, _Super], name: str) -> _Super:
    sup = tree.get(_mangle(name))
    if sup is None:
        raise ConfigError(
            f"{path}: no [[{name}]] section (required in an association negotiation profile file)"
        )
    return sup


def _load(path: str) -> _Config:
    tree = _read_tree(path)

    transfer_syntaxes: dict[str, tuple[str, ...]] = {}
    for key, section in _require(path, tree, "TransferSyntaxes").sections.items():
        uids: list[str] = []
        for entry in _numbered(path, section, "TransferSyntax"):
            uid = resolve_uid(entry.value)
            if uid is None:
                raise ConfigError(
                    f"{path}, line {entry.line}: unknown transfer syntax {entry.value!r} in [{section.name}]"
                )
            known = UID_dictionary.get(uid)
            if known is not None and known[1] not in _TS_TYPES:
                raise ConfigError(
                    f"{path}, line {entry.line}: {entry.value!r} in [{section.name}] is a {known[1]}, not a transfer syntax"
                )
            if uid in uids:
                raise ConfigError(
                    f"{path}, line {entry.line}: transfer syntax {entry.value!r} repeated in [{section.name}]"
                )
            uids.append(uid)
        if not uids:
            raise ConfigError(f"{path}, line {section.line}: transfer syntax list [{section.name}] is empty")
        transfer_syntaxes[key] = tuple(uids)

    contexts: dict[str, tuple[tuple[str, tuple[str, ...], int], ...]] = {}
    context_names: dict[str, str] = {}
    for key, section in _require(path, tree, "PresentationContexts").sections.items():
        items: list[tuple[str, tuple[str, ...], int]] = []
        for entry in _numbered(path, section, "PresentationContext"):
            name, ts_key = _split_pair(path, entry, section, "transfer syntax list")
            abstract = _abstract_syntax(path, entry, section, name)
            syntaxes = transfer_syntaxes.get(_mangle(ts_key))
            if syntaxes is None:
                raise ConfigError(
                    f"{path}, line {entry.line}: transfer syntax list {ts_key.strip()!r} used in [{section.name}] "
                    "is not defined in [[TransferSyntaxes]]"
                )
            items.append((abstract, syntaxes, entry.line))
        if not items:
            raise ConfigError(
                f"{path}, line {section.line}: presentation context list [{section.name}] is empty"
            )
        contexts[key] = tuple(items)
        context_names[key] = section.name

    # Optional supersections: checked for syntax so that profiles can refer to them, then ignored:
    # neither storescu nor storescp negotiates SCP/SCU roles, and batchstore does no extended negotiation.
    optional: dict[str, set[str]] = {}
    for sup_name, prefix in (("SCPSCURoleSelection", "Role"), ("ExtendedNegotiation", "ExtendedNegotiation")):
        sup = tree.get(_mangle(sup_name))
        optional[_mangle(sup_name)] = set()
        if sup is None:
            continue
        for key, section in sup.sections.items():
            for entry in _numbered(path, section, prefix):
                name, rest = _split_pair(path, entry, section, "role" if prefix == "Role" else "hex data")
                _abstract_syntax(path, entry, section, name)
                if prefix == "Role" and _mangle(rest) not in ("SCU", "SCP", "BOTH"):
                    raise ConfigError(
                        f"{path}, line {entry.line}: role must be SCU, SCP or BOTH, not {rest.strip()!r}"
                    )
                if prefix != "Role" and not re.fullmatch(r"([0-9A-Fa-f]{2})*", rest.strip()):
                    raise ConfigError(
                        f"{path}, line {entry.line}: extended negotiation data must be hex digit pairs"
                    )
            optional[_mangle(sup_name)].add(key)

    profiles: dict[str, tuple[str, str, int]] = {}
    for key, section in _require(path, tree, "Profiles").sections.items():
        entries = section.entries
        pc = entries.get("PRESENTATIONCONTEXTS")
        if pc is None:
            raise ConfigError(
                f"{path}, line {section.line}: profile [{section.name}] has no PresentationContexts entry"
            )
        for entry in entries.values():
            if entry.key == "PRESENTATIONCONTEXTS":
                if _mangle(entry.value) not in contexts:
                    raise ConfigError(
                        f"{path}, line {entry.line}: presentation context list {entry.value!r} of profile "
                        f"[{section.name}] is not defined in [[PresentationContexts]]"
                    )
            elif entry.key in optional:
                if _mangle(entry.value) not in optional[entry.key]:
                    raise ConfigError(
                        f"{path}, line {entry.line}: list {entry.value!r} of profile [{section.name}] "
                        f"is not defined in the matching [[supersection]]"
                    )
            else:
                raise ConfigError(
                    f"{path}, line {entry.line}: unexpected key {entry.written!r} in profile [{section.name}]"
                )
        profiles[key] = (section.name, _mangle(pc.value), section.line)
    return _Config(transfer_syntaxes, contexts, context_names, profiles)


def _profile(path: str, profile_name: str) -> tuple[_Config, str, str]:
    config = _load(path)
    found = config.profiles.get(_mangle(profile_name))
    if found is None:
        names = ", ".join(name for name, _pc, _line in config.profiles.values()) or "none"
        raise ConfigError(f"{path}: no profile {profile_name!r} (profiles in this file: {names})")
    name, pc_key, _line = found
    return config, name, pc_key


def profile_names(path: str) -> list[str]:
    """Return the names of the profiles in a configuration file, as written.

    Parameters
    ----------
    path : str
        The configuration file.

    Returns
    -------
    list of str
        Profile names in file order.

    Raises
    ------
    ConfigError
        If the file is not a valid association negotiation profile file.
    """
    return [name for name, _pc, _line in _load(path).profiles.values()]


def load_profile(path: str, profile_name: str) -> tuple[PresentationContextProposal, ...]:
    """Return the presentation contexts a profile proposes (storescu ``-xf path profile``).

    Parameters
    ----------
    path : str
        The configuration file.
    profile_name : str
        Profile (section of ``[[Profiles]]``); compared without case and whitespace, like DCMTK.

    Returns
    -------
    tuple of PresentationContextProposal
        In file order, context IDs 1, 3, 5 ... The planner keeps only the SOP classes the files need
        and splits them into associations of at most 128 contexts, so, unlike storescu, a profile
        with more than 128 presentation contexts is accepted.

    Raises
    ------
    ConfigError
        With file, line and problem.
    """
    config, _name, pc_key = _profile(path, profile_name)
    return tuple(
        PresentationContextProposal(2 * i + 1, abstract, syntaxes)
        for i, (abstract, syntaxes, _line) in enumerate(config.contexts[pc_key])
    )


def load_scp_profile(path: str, profile_name: str) -> dict[str, tuple[str, ...]]:
    """Return what a profile accepts as an association acceptor (storescp ``-xf path profile``).

    Parameters
    ----------
    path : str
        The configuration file.
    profile_name : str
        Profile (section of ``[[Profiles]]``); compared without case and whitespace.

    Returns
    -------
    dict of str to tuple of str
        Abstract syntax -> accepted transfer syntaxes in order of preference, in file order.

    Raises
    ------
    ConfigError
        With file, line and problem; also if a SOP class appears in more than one presentation
        context (an acceptor needs exactly one transfer syntax list per abstract syntax).
    """
    config, name, pc_key = _profile(path, profile_name)
    accepted: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    for abstract, syntaxes, line in config.contexts[pc_key]:
        if abstract in accepted:
            raise ConfigError(
                f"{path}, line {line}: SOP class {abstract} appears more than once in "
                f"[{config.context_names[pc_key]}] (first on line {first_line[abstract]}), "
                f"which profile [{name}] uses as an association acceptor"
            )
        accepted[abstract] = syntaxes
        first_line[abstract] = line
    return accepted
