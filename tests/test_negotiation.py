"""Which storage SOP classes the receiver accepts, against DCMTK storescp proposed the same contexts."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_receive_helpers import EXPLICIT_LE, IMPLICIT, RawSCU, Receiver

from batchstore.dicom.uids import DCMTK_MODALITY_PREFIXES, STORAGE_SOP_CLASSES
from batchstore.net.acse import PC_ACCEPTANCE

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"  # Ultrasound Multi-frame Image Storage (Retired)
NM_RETIRED = "1.2.840.10008.5.1.4.1.1.5"  # Nuclear Medicine Image Storage (Retired)
NOT_STORAGE = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Q/R Find: never a storage SOP class

PROPOSED = [US_RETIRED, US_MULTIFRAME_RETIRED, NM_RETIRED, NOT_STORAGE]


def accepted(port: int) -> list[bool]:
    contexts = tuple((2 * i + 1, uid, (EXPLICIT_LE, IMPLICIT)) for i, uid in enumerate(PROPOSED))
    scu = RawSCU(port, contexts)
    try:
        return [scu.accept.results[2 * i + 1][0] == PC_ACCEPTANCE for i in range(len(PROPOSED))]
    finally:
        scu.release()


def test_retired_storage_classes_are_in_the_table() -> None:
    retired = {US_RETIRED, US_MULTIFRAME_RETIRED, NM_RETIRED}
    assert not retired & set(STORAGE_SOP_CLASSES)  # pynetdicom's table leaves them out...
    assert retired <= set(DCMTK_MODALITY_PREFIXES)  # ...storescp's does not


@pytest.mark.needs_dcmtk
@pytest.mark.parametrize("mode", [[], ["+xa"]], ids=["default", "accept-all"])
def test_retired_storage_classes_accepted_as_storescp_does(storescp, tmp_path: Path, mode: list[str]) -> None:
    dcmtk = storescp(mode)
    theirs = accepted(dcmtk.port)
    with Receiver(tmp_path, mode) as rx:
        ours = accepted(rx.port)
    assert theirs == [True, True, True, False]
    assert ours == theirs
