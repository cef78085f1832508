"""Shared fixtures (a small synthetic corpus, real DICOM peers) and the peer markers.

A test that needs a real peer says so: ``@pytest.mark.needs_dcmtk`` (DCMTK's storescp, storescu, echoscu,
dcmsend or its configuration files), ``@pytest.mark.needs_orthanc`` or ``@pytest.mark.needs_dask`` (Dask
distributed, for ``send --cluster``). `pytest_runtest_setup` checks the
marker before the test's fixtures start: when the peer is missing the test is skipped, or, with
``BATCHSTORE_REQUIRE_PEERS=1`` in the environment (``.ci/run``), it fails with the reason ("needs DCMTK:
/usr/bin/storescp not installed"). The fixtures that start a peer check the same way. Where the peers live:
``tests/peers.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from _pytest.outcomes import Failed
from peers import Corpus, DcmtkStorescp, Orthanc, make_corpus, missing_peer, peers_required

CORPUS_SMALL_COUNT = 60
CORPUS_SMALL_JUNK = 6

#: marker -> the peer it needs (a key of peers.PEER_FILES)
PEER_MARKERS = {
    "needs_dcmtk": "dcmtk",
    "needs_orthanc": "orthanc",
    "needs_dask": "dask",
    "needs_chromium": "chromium",
}
#: fixture -> the marker a test using it must carry
PEER_FIXTURES = {"storescp": "needs_dcmtk", "orthanc": "needs_orthanc"}


class MissingPeer(Failed):
    """A peer a test needs is missing and ``BATCHSTORE_REQUIRE_PEERS=1``: reported as a failed test."""


def require_peer(peer: str) -> None:
    """Skip the running test when `peer` is missing, or fail it under ``BATCHSTORE_REQUIRE_PEERS=1``."""
    reason = missing_peer(peer)
    if reason is None:
        return
    if peers_required():
        raise MissingPeer(f"{reason} (BATCHSTORE_REQUIRE_PEERS=1)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for fixture, marker in PEER_FIXTURES.items():
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
            raise MissingPeer(f"uses the {fixture} fixture but is not marked {marker}", pytrace=False)
    for marker, peer in PEER_MARKERS.items():
        if item.get_closest_marker(marker) is not None:
            require_peer(peer)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingPeer):
        outcome.get_result().missing_peer = True


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):  # type: ignore[no-untyped-def]
    # A missing peer is raised before the test's fixtures, in the setup phase, which pytest would count
    # as an "error"; it is the test that cannot pass here, so it counts as "failed".
    if getattr(report, "missing_peer", False) and report.failed:
        return "failed", "F", "FAILED"
    return None


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

    The output directory defaults to a fresh directory under ``tmp_path``. Tests using it are marked
    ``needs_dcmtk``.
    """
    require_peer("dcmtk")
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
    """A fresh, empty Orthanc (AET ORTHANC, accepts everything), discarded at teardown. Tests using it are
    marked ``needs_orthanc``."""
    require_peer("orthanc")
    with Orthanc() as server:
        yield server
