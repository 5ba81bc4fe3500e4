"""Pausing the cyclic garbage collector around synchronous batch decodes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused(enabled: bool = True) -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a synchronous batch decode.

    Building thousands of pydantic models at once allocates container objects by the hundred
    thousand; every 700 of them the collector runs, and its older generations walk everything
    built so far again: more than half the time of a 10,000-record ``get_many``. The pause
    covers only a stretch of code that never awaits (one batch of at most ``BATCH_SIZE``
    documents, a few ms), so no other task of the event loop runs meanwhile; nothing is
    lost, the objects are collected by the next collection. It is process-wide: another
    thread's allocations trigger no collection during those ms. When the collector is already
    off (the application's choice), or ``enabled`` is False, nothing changes.
    """
    if not enabled or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
