"""Benchmark of the synthetic population generator.

Runs ``generate`` for a population and writes the JSON lines (to a counting
sink, or to ``--out``), then prints events/s and MB/s with the machine's size
and the peak resident memory, so figures from different machines compare.
CPU time is printed next to wall time because on a shared machine the wall
clock also measures the neighbours.

    python -m bench.generate --customers 15000 --days 365
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from bench.machine import machine_line
from touchpoint.generate import generate, write_jsonl


class _CountingSink:
    """A write-only text sink that only counts characters (ASCII JSON: bytes)."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=15_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--out", help="write the JSON lines to this file instead of a counting sink")
    args = parser.parse_args(argv)

    print(machine_line())
    print(f"population: {args.customers} customers x {args.days} days, seed {args.seed}")

    began, cpu = time.perf_counter(), time.process_time()
    generated = sum(1 for _ in generate(args.customers, args.days, args.seed, bad_share=args.bad_share))
    gen_s, gen_cpu = time.perf_counter() - began, time.process_time() - cpu
    print(
        f"generate only:    {generated:>10} events in {gen_s:6.2f} s = {generated / gen_s:>9.0f} events/s"
        f" (CPU {gen_cpu:.2f} s = {generated / gen_cpu:.0f} events/CPU-s)"
    )

    began, cpu = time.perf_counter(), time.process_time()
    events = generate(args.customers, args.days, args.seed, bad_share=args.bad_share)
    if args.out:
        with open(args.out, "w", encoding="ascii") as fh:
            count = write_jsonl(events, fh)
        size = os.path.getsize(args.out)
    else:
        sink = _CountingSink()
        count = write_jsonl(events, sink)  # type: ignore[arg-type]
        size = sink.chars
    total_s, total_cpu = time.perf_counter() - began, time.process_time() - cpu
    mb = size / 1e6
    print(
        f"generate + JSONL: {count:>10} events in {total_s:6.2f} s = {count / total_s:>9.0f} events/s,"
        f" {mb:.1f} MB = {mb / total_s:.1f} MB/s (CPU {total_cpu:.2f} s)"
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
