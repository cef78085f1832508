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


def test_static_storage_sop_classes_equal_pynetdicoms() -> None:
    """`dicom.sopclasses` is pynetdicom's table written out; an upgrade that changes it fails here
    (regenerate with ``python scripts/gen_sop_classes.py``)."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from batchstore.dicom.sopclasses import STORAGE_CLASSES

    assert STORAGE_CLASSES == {str(uid): name for name, uid in _STORAGE_CLASSES.items()}


def test_receiver_parent_does_not_load_pynetdicom_pydicom_or_numpy() -> None:
    """The forking parent's size is what every association's fork copies: 24 MB without them, 82 MB with."""
    import subprocess
    import sys

    code = (
        "import sys, batchstore.cli.receive, batchstore.receiver.server as s;"
        "from batchstore.receiver.options import ReceiveOptions;"
        "s.make_negotiator(ReceiveOptions(promiscuous=True));"
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
