"""The one compiled module, `batchstore.dicom._walkfast` (docs/design.md, "A compiled walker").

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install goes on and
batchstore uses the pure-Python walker, which gives the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("batchstore.dicom._walkfast", ["batchstore/dicom/_walkfast.c"], optional=True),
    ]
)
