"""DICOMDIR (Media Storage Directory) files: the files they reference, for dcmsend's ``+rd/--read-dicomdir``.

A DICOMDIR is an index of the files on a medium, not an object a Storage SCP stores: the sender skips it
(`sender.plan.DICOMDIR_REASON`) and, when asked, sends the files its directory records reference instead.
"""

from __future__ import annotations

import os

__all__ = ["referenced_files"]


def referenced_files(path: str) -> list[str]:
    """The paths of the files a DICOMDIR references, in record order, without repeats.

    Each record's Referenced File ID (0004,1500) holds path components relative to the DICOMDIR's
    directory; on case-insensitive media they are often upper case while the files are not, so a
    component that does not exist as written is looked up ignoring case.

    Raises
    ------
    ValueError
        If `path` cannot be read as a DICOMDIR.
    """
    import pydicom  # only with +rd

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many kinds for a bad file
        raise ValueError(f"cannot read DICOMDIR {path}: {exc}") from exc
    root = os.path.dirname(os.path.abspath(path))
    found: dict[str, None] = {}
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
        found[_resolve(root, parts)] = None
    return list(found)


def _resolve(root: str, parts: list[str]) -> str:
    current = root
    for part in parts:
        candidate = os.path.join(current, part)
        if not os.path.exists(candidate) and os.path.isdir(current):
            lower = part.lower()
            for name in os.listdir(current):
                if name.lower() == lower:
                    candidate = os.path.join(current, name)
                    break
        current = candidate
    return current
