"""The CDNOW 1/10 sample, which the BG/NBD and Gamma-Gamma papers fit, as Touchpoint purchase events.

2,357 customers who first bought at CDNOW in the first quarter of 1997,
6,919 transactions to the end of June 1998 (customer, date, CDs, dollars).
The file ships with the ``lifetimes`` package (a test dependency); it is
read from where that package is installed, never downloaded, and the
package is never imported. Each transaction is a branch purchase at noon
UTC on its day, by the customer's number.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

CALIBRATION_END = date(1997, 9, 30)
"""The papers' 39-week calibration period from 1997-01-01 ends with this day."""
HOLDOUT_END = date(1998, 6, 30)
"""The papers' 39-week holdout period ends with this day."""


def sample_path() -> Path:
    """Where ``lifetimes`` installed ``CDNOW_sample.txt``.

    :raises FileNotFoundError: the package (a test dependency) is not installed.
    """
    try:
        found = importlib.metadata.distribution("lifetimes").locate_file("lifetimes/datasets/CDNOW_sample.txt")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError("CDNOW_sample.txt ships with the lifetimes package: pip install -e '.[test]'") from exc
    return Path(str(found))


def events(path: Path | None = None) -> Iterator[dict[str, Any]]:
    """The sample's transactions as purchase events in event-time order (the file lists them customer by
    customer; a history is backfilled in time order, which the fold's clock check expects of a file)."""
    with (path or sample_path()).open(encoding="ascii") as fh:
        rows = sorted((line.split() for line in fh), key=lambda row: row[2])  # a stable sort: by day, then file order
        for n, (_, customer, day, cds, dollars) in enumerate(rows):
            at = datetime.strptime(day, "%Y%m%d").replace(hour=12, tzinfo=UTC)
            cents = round(float(dollars) * 100)
            yield {"event_id": f"cdnow-{n:05d}", "type": "purchase", "channel": "branch",
                   "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   "identifiers": {"customer_no": f"CDNOW-{int(customer):04d}"},
                   "payload": {"transaction_id": f"cdnow-{n:05d}", "location_id": "CDNOW",
                               "lines": [{"sku": "CD", "category": "music", "quantity": int(cds),
                                          "amount_minor": cents}],
                               "total_minor": cents, "currency": "USD"}}
