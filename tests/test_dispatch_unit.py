"""Pure parts of batchstore.dispatch (no network, no workers)."""

from __future__ import annotations

import gc

from batchstore.sender.dispatch import GC_THRESHOLDS, backoff, quiet_gc


def test_quiet_gc_restores_the_callers_collector() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    garbage = [[i] for i in range(1000)]
    restore = quiet_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(garbage)
    restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_quiet_gc_keeps_a_freeze_it_did_not_make() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        restore = quiet_gc()
        restore()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_backoff_stays_within_its_bounds() -> None:
    for attempt in range(1, 12):
        for _ in range(50):
            wait = backoff(attempt, 1.0)
            assert 0.5 <= wait <= min(60.0, 2 ** (attempt - 1))
    assert backoff(3, 0.0) == 0.0
