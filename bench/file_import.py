"""Benchmark of the file import against the local stack.

Generates a synthetic population as JSON lines into a temporary directory,
then imports it with ``connectors.intake.file_import.import_file`` into topics of a
unique prefix (created first, so topic creation is not timed), and prints
events/s and MB/s with the machine's size. A second import of the same file
is timed too: it is the no-op a re-run costs. The stack must be up
(``touchpoint stack up``).

    python -m bench.file_import --customers 4500 --days 365
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from bench.machine import machine_line
from connectors.intake.file_import import import_file
from connectors.platform.topics import ensure_topics
from touchpoint.generate import generate, write_jsonl
from touchpoint.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.file_import", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4_500)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500, help="lines per Kafka transaction")
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    args = parser.parse_args(argv)

    settings = load_settings().model_copy(update={"topic_prefix": f"bench-import-{uuid.uuid4().hex[:8]}"})
    print(machine_line())
    print(f"population: {args.customers} customers x {args.days} days, seed {args.seed}; "
          f"batch {args.batch_size}; topics {settings.topic_prefix}.*")
    ensure_topics(settings)

    with tempfile.TemporaryDirectory(prefix="touchpoint-bench-import-") as tmp:
        path = Path(tmp) / "population.jsonl"
        began = time.perf_counter()
        with path.open("w", encoding="ascii") as fh:
            count = write_jsonl(generate(args.customers, args.days, args.seed), fh)
        mb = path.stat().st_size / 1e6
        print(f"file: {count} events, {mb:.1f} MB, generated in {time.perf_counter() - began:.1f} s")

        cpu = time.process_time()
        summary = import_file(settings, path, batch_size=args.batch_size, progress=args.progress)
        cpu = time.process_time() - cpu
        print(summary)
        print(f"import:    {summary.lines:>9} lines in {summary.seconds:6.2f} s = "
              f"{summary.events_per_s:>8.0f} events/s,"
              f" {mb / summary.seconds:.2f} MB/s (CPU {cpu:.2f} s; {summary.accepted} sent,"
              f" {summary.rejected} rejected)")
        again = import_file(settings, path, progress=False)
        print(f"re-import: no-op in {again.seconds:.2f} s (already imported: {again.already_imported})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
