"""Write ``batchstore/dicom/sopclasses.py`` from the installed pynetdicom's storage SOP class list.

    python scripts/gen_sop_classes.py
"""

from __future__ import annotations

from pathlib import Path

HEADER = '''"""Every storage SOP class batchstore knows, as a static table: UID -> keyword (``CTImageStorage``).

Written out from pynetdicom {version}'s storage SOP class list so that neither side has to import
pynetdicom (about 0.5 s and 60 MB with pydicom and numpy) to know it: a forking receiver whose parent
does not hold them forks in a fraction of the time (docs/design.md, "Small runs").
`tests/test_negotiation.py` checks that it equals the installed pynetdicom's list, so an upgrade that adds
classes shows up as a failing test; regenerate it with ``python scripts/gen_sop_classes.py``.
"""

from __future__ import annotations

STORAGE_CLASSES: dict[str, str] = {{
'''


def table() -> list[tuple[str, str]]:
    """(UID, keyword) of every storage SOP class the installed pynetdicom knows, in UID order."""
    from pynetdicom.sop_class import _STORAGE_CLASSES  # the only complete name -> UID table pynetdicom has

    items = [(str(uid), name) for name, uid in _STORAGE_CLASSES.items()]
    return sorted(items, key=lambda item: [int(part) for part in item[0].split(".")])


def render() -> str:
    import pynetdicom

    body = "".join(f'    "{uid}": "{name}",\n' for uid, name in table())
    return HEADER.format(version=pynetdicom.__version__) + body + "}\n"


def main() -> None:
    target = Path(__file__).resolve().parent.parent / "batchstore" / "dicom" / "sopclasses.py"
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target} ({len(table())} classes)")


if __name__ == "__main__":
    main()
