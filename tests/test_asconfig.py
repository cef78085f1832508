"""Tests for batchstore.asconfig: DCMTK association negotiation profile files."""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import DCMTK_CONFIG_DIR

from batchstore.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    LOCAL_EXPLICIT_VR,
    MPEG2_MPML,
    OPPOSITE_EXPLICIT_VR,
    RLE_LOSSLESS,
    VERIFICATION_SOP_CLASS,
)
from batchstore.net.asconfig import ConfigError, load_profile, load_scp_profile, profile_names, resolve_uid
from batchstore.sender.plan import PresentationContextProposal

CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SHIPPED = Path(DCMTK_CONFIG_DIR)  # /etc/dcmtk unless BATCHSTORE_DCMTK_CONFIG_DIR says otherwise
UNCOMPRESSED = (EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE)


def cfg(tmp_path: Path, text: str) -> str:
    path = tmp_path / "test.cfg"
    path.write_text(text)
    return str(path)


# --- DCMTK's own example files -------------------------------------------------------------------------


@pytest.mark.needs_dcmtk
def test_shipped_storescu_cfg() -> None:
    contexts = load_profile(str(SHIPPED / "storescu.cfg"), "Default")
    assert len(contexts) == 128
    assert [pc.context_id for pc in contexts] == list(range(1, 256, 2))
    assert contexts[0] == PresentationContextProposal(1, CR, (JPEG_BASELINE,))
    assert contexts[1] == PresentationContextProposal(3, CR, (JPEG_LOSSLESS_SV1,))
    assert contexts[2] == PresentationContextProposal(5, CR, UNCOMPRESSED)
    us = [pc.transfer_syntaxes for pc in contexts if pc.abstract_syntax == US]
    assert us == [(JPEG_BASELINE,), (JPEG_LOSSLESS_SV1,), (RLE_LOSSLESS,), UNCOMPRESSED]
    assert contexts[-1].transfer_syntaxes == (MPEG2_MPML,)  # VideoPhotographicImageStorage\MPEG2
    # DCMTK spells "Multiframe" where pydicom spells "MultiFrame"
    assert any(pc.abstract_syntax == SC_BYTE for pc in contexts)


@pytest.mark.needs_dcmtk
def test_shipped_storescp_cfg() -> None:
    path = str(SHIPPED / "storescp.cfg")
    assert profile_names(path) == ["Default", "AllDICOM"]
    default = load_scp_profile(path, "Default")
    assert default[VERIFICATION_SOP_CLASS] == (LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR, IMPLICIT_VR_LE)
    assert default[CT][0] == "1.2.840.10008.1.2.4.91"  # JPEG2000 first in AnyTransferSyntax
    assert default[CT][-4:] == (
        DEFLATED_EXPLICIT_VR_LE,
        LOCAL_EXPLICIT_VR,
        OPPOSITE_EXPLICIT_VR,
        IMPLICIT_VR_LE,
    )
    assert len(default[CT]) == 21
    assert "1.2.840.10008.5.1.1.30" in default  # RETIRED_HardcopyColorImageStorage
    alldicom = load_scp_profile(path, " all dicom ")  # DCMTK ignores case and whitespace in names
    assert len(alldicom) == 128
    assert alldicom["1.2.840.10008.5.1.4.1.1.88.70"] == (  # ImplantationPlanSRDocumentStorage
        DEFLATED_EXPLICIT_VR_LE,
        LOCAL_EXPLICIT_VR,
        OPPOSITE_EXPLICIT_VR,
        IMPLICIT_VR_LE,
    )


# --- a small inline file -------------------------------------------------------------------------------

GOOD = """\
# comment
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = 1.2.840.10008.1.2

[ Lossless JPEG ]
transfersyntax1 = JPEGLossless:Non-hierarchical-1stOrderPrediction
TransferSyntax2=RLELossless

[Keywords]
TransferSyntax1 = ExplicitVRBigEndian
TransferSyntax2 = DeflatedLittleEndianExplicit

[[PresentationContexts]]
[CTAndUS]
PresentationContext1 = CTImageStorage\\LosslessJPEG
PresentationContext2 = CTImageStorage\\ uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.6.1\\Keywords
PresentationContext4 = ultrasoundmultiframeimagestorage\\Uncompressed

[SCP]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\Keywords

[[SCPSCURoleSelection]]
[Roles]
Role1 = CTImageStorage\\BOTH

[[ExtendedNegotiation]]
[ExtNeg]
ExtendedNegotiation1 = CTImageStorage\\020003000000

[[Profiles]]
[SCU]
PresentationContexts = CT And US
SCPSCURoleSelection = Roles
ExtendedNegotiation = ExtNeg

[SCPProfile]
PresentationContexts = SCP
"""


def test_inline_scu_profile(tmp_path: Path) -> None:
    path = cfg(tmp_path, GOOD)
    assert load_profile(path, "scu") == (
        PresentationContextProposal(1, CT, (JPEG_LOSSLESS_SV1, RLE_LOSSLESS)),
        PresentationContextProposal(3, CT, (LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR, IMPLICIT_VR_LE)),
        PresentationContextProposal(5, US, (EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE)),
        PresentationContextProposal(7, US_MULTI, (LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR, IMPLICIT_VR_LE)),
    )


def test_inline_scp_profile(tmp_path: Path) -> None:
    path = cfg(tmp_path, GOOD)
    assert load_scp_profile(path, "SCPProfile") == {
        VERIFICATION_SOP_CLASS: (LOCAL_EXPLICIT_VR, OPPOSITE_EXPLICIT_VR, IMPLICIT_VR_LE),
        CT: (EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE),
    }


def test_scp_profile_with_repeated_sop_class(tmp_path: Path) -> None:
    path = cfg(tmp_path, GOOD)
    with pytest.raises(
        ConfigError,
        match=r"line 19: SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 appears more than once in \[CTAndUS\] \(first on line 18\)",
    ):
        load_scp_profile(path, "SCU")


def test_resolve_uid() -> None:
    assert resolve_uid("LittleEndianImplicit") == IMPLICIT_VR_LE
    assert resolve_uid("ImplicitVRLittleEndian") == IMPLICIT_VR_LE
    assert resolve_uid("JPEGExtended:Process2+4") == "1.2.840.10008.1.2.4.51"
    assert resolve_uid("RETIRED_UltrasoundImageStorage") == "1.2.840.10008.5.1.4.1.1.6"
    assert resolve_uid("MultiframeTrueColorSecondaryCaptureImageStorage") == "1.2.840.10008.5.1.4.1.1.7.4"
    assert resolve_uid("DICOS_CTImageStorage") == "1.2.840.10008.5.1.4.1.1.501.1"
    assert resolve_uid(" 1.2.3.4 ") == "1.2.3.4"
    assert resolve_uid("NoSuchThing") is None
    assert resolve_uid("1.2.x") is None


# --- errors --------------------------------------------------------------------------------------------


def broken(replace: str, by: str) -> str:
    assert replace in GOOD
    return GOOD.replace(replace, by, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            broken("RLELossless", "RLELosles"),
            r"line 10: unknown transfer syntax 'RLELosles' in \[Lossless JPEG\]",
        ),
        (
            broken("RLELossless", "CTImageStorage"),
            r"line 10: 'CTImageStorage' .* is a SOP Class, not a transfer syntax",
        ),
        (
            broken("TransferSyntax2=RLE", "TransferSyntax3=RLE"),
            r"line 10: TransferSyntax3 in \[Lossless JPEG\] follows a gap: TransferSyntax2 is missing",
        ),
        (
            broken("TransferSyntax2=RLE", "Compression=RLE"),
            r"line 10: unexpected key 'Compression' in \[Lossless JPEG\] \(expected TransferSyntax1, TransferSyntax2, \.\.\.\)",
        ),
        (
            broken(
                "TransferSyntax2=RLELossless",
                "TransferSyntax2=JPEGLossless:Non-hierarchical-1stOrderPrediction",
            ),
            r"line 10: transfer syntax .* repeated in \[Lossless JPEG\]",
        ),
        (
            broken("CTImageStorage\\LosslessJPEG", "CTImageStorage LosslessJPEG"),
            r"line 18: PresentationContext1 in \[CTAndUS\] must be '<SOP class>\\<transfer syntax list>'",
        ),
        (
            broken("CTImageStorage\\LosslessJPEG", "CTImageStorage\\Lossy"),
            r"line 18: transfer syntax list 'Lossy' used in \[CTAndUS\] is not defined",
        ),
        (
            broken("CTImageStorage\\LosslessJPEG", "CTImageStorg\\LosslessJPEG"),
            r"line 18: unknown SOP class 'CTImageStorg' in \[CTAndUS\]",
        ),
        (
            broken("Role1 = CTImageStorage\\BOTH", "Role1 = CTImageStorage\\ALL"),
            r"line 29: role must be SCU, SCP or BOTH",
        ),
        (
            broken("020003000000", "02000300000"),
            r"line 33: extended negotiation data must be hex digit pairs",
        ),
        (
            broken("PresentationContexts = CT And US", "PresentationContexts = CT"),
            r"line 37: presentation context list 'CT' of profile \[SCU\] is not defined",
        ),
        (
            broken("SCPSCURoleSelection = Roles", "SCPSCURoleSelection = Rolls"),
            r"line 38: list 'Rolls' of profile \[SCU\]",
        ),
        (
            broken("[SCPProfile]\nPresentationContexts = SCP", "[SCPProfile]\nContexts = SCP"),
            r"line 41: profile \[SCPProfile\] has no PresentationContexts",
        ),
        (broken("[[Profiles]]", "[[Profile]]"), r"no \[\[Profiles\]\] section"),
        (
            broken("[[TransferSyntaxes]]\n", ""),
            r"line 2: section \[Uncompressed\] is not inside a \[\[supersection\]\]",
        ),
        (broken("[Uncompressed]\n", ""), r"line 3: entry 'TransferSyntax1' is not inside a \[section\]"),
        (broken("[Keywords]", "[Keywords"), r"line 12: malformed section heading"),
        (
            broken("[Keywords]", "[Uncompressed]"),
            r"line 12: section \[Uncompressed\] appears twice \(first on line 3\)",
        ),
        (
            broken("TransferSyntax2 = OppositeEndianExplicit", "TransferSyntax2 OppositeEndianExplicit"),
            r"line 5: expected 'Key = Value'",
        ),
        (
            broken("TransferSyntax2 = OppositeEndianExplicit", "TransferSyntax1 = OppositeEndianExplicit"),
            r"line 5: TransferSyntax1 appears twice",
        ),
        (broken("# comment\n", "   stray\n"), r"line 1: indented line does not continue"),
        (broken("# comment\n", "  # indented comment\n"), None),
        (broken("[Roles]\nRole1 = CTImageStorage\\BOTH\n", "[Roles]\n"), None),  # an empty role list is fine
    ],
)
def test_errors(tmp_path: Path, text: str, message: str | None) -> None:
    path = cfg(tmp_path, text)
    if message is None:
        load_profile(path, "SCU")
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_profile(path, "SCU")
    assert str(info.value).startswith(path)


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    path = cfg(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"no profile 'Storage' \(profiles in this file: SCU, SCPProfile\)"):
        load_profile(path, "Storage")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file: No such file or directory"):
        load_profile(str(tmp_path / "missing.cfg"), "Default")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_continuation_lines(tmp_path: Path) -> None:
    text = GOOD.replace("PresentationContexts = SCP\n", "PresentationContexts =\n    SCP\n")
    assert load_scp_profile(cfg(tmp_path, text), "SCPProfile")[CT] == (
        EXPLICIT_VR_BE,
        DEFLATED_EXPLICIT_VR_LE,
    )
