"""batchstore: parallel, resumable DICOM C-STORE sender and forking receiver.

Command-line compatible with DCMTK's storescu and storescp; `batchstore.send` is the Python API the
``batchstore send`` command wraps, `batchstore.load` the one ``batchstore load`` wraps.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "commit", "load", "send"]


def __getattr__(name: str):  # lazy: keep `import batchstore` cheap in worker processes
    if name in ("send", "commit", "load"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
