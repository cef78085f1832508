"""The compiled modules: `batchstore.dicom._walkfast` (docs/design.md, "A compiled walker") and
`batchstore.receiver._onemessage` (docs/design.md, "Receiving one small file"), and
`batchstore.receiver._sibling` (docs/design.md, "Where an association's time goes").

Everything else is in pyproject.toml. ``optional=True``: without a C compiler the install goes on and
batchstore uses the pure-Python code, which gives the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "batchstore.dicom._walkfast",
            ["batchstore/dicom/_walkfast.c"],
            depends=["batchstore/dicom/_bytes.h"],
            optional=True,
        ),
        Extension(
            "batchstore.receiver._onemessage",
            ["batchstore/receiver/_onemessage.c"],
            depends=["batchstore/dicom/_bytes.h"],
            optional=True,
        ),
        Extension("batchstore.receiver._sibling", ["batchstore/receiver/_sibling.c"], optional=True),
    ]
)
