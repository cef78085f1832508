"""batchstore: parallel, resumable DICOM C-STORE sender and forking receiver.

Command-line compatible with DCMTK's storescu and storescp; `batchstore.send` is the Python API the
``batchstore send`` command wraps, `batchstore.load` the one ``batchstore load`` wraps.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "send"]


def __getattr__(name: str):  # lazy: keep `import batchstore` cheap in worker processes
    if name == "send":
        from .api import send

        return send
    if name == "load":
        from .api import load

        return load
    raise AttributeError(name)
