"""Shared fixtures: a small synthetic corpus and real DICOM peers (DCMTK storescp, Orthanc)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from peers import DCMTK_STORESCP, DCMTK_STORESCU, ORTHANC_BIN, Corpus, DcmtkStorescp, Orthanc, make_corpus

CORPUS_SMALL_COUNT = 60
CORPUS_SMALL_JUNK = 6


def _require(*binaries: str) -> None:
    missing = [b for b in binaries if not os.access(b, os.X_OK)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="session")
def corpus_small(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """~60 mixed files (all 8 SOP classes, 4 transfer syntaxes, one ~3 MB file) + 6 junk files (one per kind).

    Session-scoped and shared: treat it as read-only.
    """
    root = tmp_path_factory.mktemp("corpus_small")
    return make_corpus(root, CORPUS_SMALL_COUNT, seed=0, profile="mixed", junk=CORPUS_SMALL_JUNK)


@pytest.fixture
def storescp(tmp_path) -> Iterator[Callable[..., DcmtkStorescp]]:
    """Factory: ``storescp(extra_args=[...], **kwargs)`` starts a DCMTK storescp, stopped at teardown.

    The output directory defaults to a fresh directory under ``tmp_path``.
    """
    _require(DCMTK_STORESCP, DCMTK_STORESCU)
    started: list[DcmtkStorescp] = []

    def start(extra_args=(), **kwargs) -> DcmtkStorescp:
        if "out_dir" not in kwargs and "-od" not in extra_args:
            kwargs["out_dir"] = tmp_path / f"storescp{len(started)}"
            kwargs["out_dir"].mkdir()
        scp = DcmtkStorescp(extra_args, **kwargs)
        started.append(scp)
        return scp.start()

    yield start
    for scp in started:
        scp.close()


@pytest.fixture
def orthanc() -> Iterator[Orthanc]:
    """A fresh, empty Orthanc (AET ORTHANC, accepts everything), discarded at teardown."""
    _require(ORTHANC_BIN, DCMTK_STORESCU)
    with Orthanc() as server:
        yield server
