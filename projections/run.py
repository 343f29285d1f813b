"""Runs every projection writer in its own thread until interrupted."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from connectors.platform.alert_wire import AlertSerde
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import ensure_topics_before_serving
from projections.alerts import AlertsProjection
from projections.customers import CustomersProjection
from projections.interactions import InteractionsProjection
from projections.lag import pipeline_lag
from projections.loyalty import LedgerProjection
from projections.migrate import migrate
from projections.writer import Projection, run_projection
from touchpoint.logs import configure_logging
from touchpoint.settings import Settings
from touchpoint.telemetry import configure_metrics, configure_tracing, meter
from touchpoint.telemetry_attrs import STAGE

log = logging.getLogger(__name__)


def all_projections(settings: Settings, registry: RegistryClient | None = None) -> list[Projection]:
    """Every read model the front line uses (pass ``registry`` to close it yourself)."""
    registry = registry or RegistryClient(settings.registry_url)
    return [InteractionsProjection(settings, EventSerde(registry)), CustomersProjection(settings),
            LedgerProjection(settings), AlertsProjection(settings, AlertSerde(registry))]


def observe_lag(settings: Settings) -> None:
    """Report ``touchpoint.lag`` (records not yet processed, per stage) at each metrics export."""
    def lag(_: CallbackOptions) -> Iterable[Observation]:
        try:
            behind = pipeline_lag(settings)
        except Exception:  # noqa: BLE001 - a broker or database outage must not break the export
            log.warning("lag not observed: the pipeline's positions could not be read", exc_info=True)
            return []
        return [Observation(records, {STAGE: stage}) for stage, records in behind.items()]

    meter().create_observable_gauge("touchpoint.lag", callbacks=[lag], unit="{record}",
                                    description="Records not yet processed, per stage")


def run_projections(settings: Settings) -> None:
    """Migrate, then feed every projection until SIGINT or SIGTERM."""
    configure_logging(settings.log_level, settings.log_json)
    configure_tracing(settings, "touchpoint-projections")
    if configure_metrics(settings, "touchpoint-projections") is not None:
        observe_lag(settings)
    migrate(settings)
    ensure_topics_before_serving(settings, "projections")  # a writer needs its topics' partitions to assign them
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    projections = all_projections(settings)
    failed: list[str] = []

    def feed(projection: Projection) -> None:
        try:
            run_projection(settings, projection, stop)
        except Exception:
            # Not an outage it retries (those never leave run_projection): a writer that stopped must not
            # leave the others running as if the read model were still kept up to date.
            log.exception("projection %s stopped on an error it does not retry; stopping every writer",
                          projection.name)
            failed.append(projection.name)
            stop.set()

    threads = [threading.Thread(target=feed, args=(p,), name=f"projection-{p.name}") for p in projections]
    for thread in threads:
        thread.start()
    print(f"projections running: {', '.join(p.name for p in projections)}", flush=True)
    for thread in threads:
        thread.join()
    if failed:
        raise SystemExit(f"projections stopped: {', '.join(failed)} failed (the log says why)")
