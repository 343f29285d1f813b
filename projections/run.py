"""Runs every projection writer in its own thread until interrupted."""

from __future__ import annotations

import signal
import threading

from projections.interactions import InteractionsProjection
from projections.migrate import migrate
from projections.writer import Projection, run_projection
from touchpoint.settings import Settings


def all_projections(settings: Settings) -> list[Projection]:
    """Every read model the front line uses."""
    return [InteractionsProjection(settings)]


def run_projections(settings: Settings) -> None:
    """Migrate, then feed every projection until SIGINT or SIGTERM."""
    migrate(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = [
        threading.Thread(target=run_projection, args=(settings, p, stop), name=f"projection-{p.name}")
        for p in all_projections(settings)
    ]
    for thread in threads:
        thread.start()
    print(f"projections running: {', '.join(p.name for p in all_projections(settings))}", flush=True)
    for thread in threads:
        thread.join()
