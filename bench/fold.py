"""Benchmark of the offline fold (``touchpoint fold``): events/s and where the time goes.

Generates a population with ``touchpoint.generate`` into a temporary JSONL
file and times ``touchpoint fold`` on it as a user runs it (a subprocess,
output to a file): with one process per core (the default), then with
``--jobs 1``, and checks the two outputs are byte-identical. Prints events/s
(wall, and CPU summed over the fold's processes), the peak resident memory
of a process and the machine's size. Then, unless
``--no-split``, it times each stage on its own pass over the same lines:
JSON parsing alone (for reference: validation parses too), contract
validation (the contract's model, and the fast check the fold runs first), normalisation,
identity (resolve + apply + view merges), profile
(evolve), and rendering. CPU time is printed next to wall time because on a
shared machine the wall clock also measures the neighbours.

    python -m bench.fold --customers 15000 --days 365
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.machine import machine_line
from touchpoint.contract.fast import validate_json as fast_validate
from touchpoint.contract.models import Event
from touchpoint.core.fold import Folder
from touchpoint.core.identity import Merged, Minted, apply, resolve
from touchpoint.core.instants import epoch_ms
from touchpoint.core.normalise import InvalidIdentifier
from touchpoint.core.profile import CustomerView, evolve, merge_views
from touchpoint.fold_parallel import default_jobs
from touchpoint.generate import generate, write_jsonl

SECRET = b"bench-identifier-key"


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _split(path: Path) -> None:
    """Each stage on its own pass; identity and profile timed per event inside one loop."""
    lines = path.read_text(encoding="utf-8").splitlines()
    n = len(lines)
    gc.disable()  # as the fold does; with a million live objects the collector would dominate
    wall, cpu, _ = _timed(lambda: [json.loads(line) for line in lines])
    print(f"  parse JSON (reference)  {wall:6.2f}s wall {cpu:6.2f}s cpu  {cpu / n * 1e6:5.1f} us/event")

    context = {"now": None, "pseudonymised": False}

    def validate() -> list[Event]:
        events = []
        for line in lines:
            try:
                events.append(Event.model_validate_json(line, context=context))
            except ValueError:
                pass
        return events

    wall, cpu, out = _timed(validate)
    events: list[Event] = out  # type: ignore[assignment]
    print(f"  validate, contract      {wall:6.2f}s wall {cpu:6.2f}s cpu  {cpu / n * 1e6:5.1f} us/event")

    def validate_fast() -> int:
        refused = 0
        for line in lines:
            try:
                fast_validate(line, context)
            except ValueError:
                refused += 1  # the fold then asks the contract
        return refused

    wall, cpu, out = _timed(validate_fast)
    print(f"  validate, fast check    {wall:6.2f}s wall {cpu:6.2f}s cpu  {cpu / n * 1e6:5.1f} us/event "
          f"(what the fold runs; {out} refused, re-checked by the contract)")

    folder = Folder(secret=SECRET)
    clock = time.process_time
    t_norm = t_ident = t_evolve = 0.0
    for event in events:
        a = clock()
        try:
            idents = [folder._normalised.get(pair) or folder._normalise(pair) for pair in event.identifiers.items()]
        except InvalidIdentifier:
            continue
        b = clock()
        res = resolve(folder.state, idents, event.event_id, folder.identity)
        for decision in res.decisions:
            apply(folder.state, decision)
            if isinstance(decision, Minted):
                folder.views[decision.customer_id] = CustomerView(decision.customer_id, decision.shared)
            elif isinstance(decision, Merged):
                merge_views(folder.views[decision.survivor], folder.views.pop(decision.merged))
        c = clock()
        ms = epoch_ms(event.occurred_at)
        evolve(folder.views[res.customer_id], event, res.identifiers, ms=ms)
        folder.latest_ms = max(folder.latest_ms or ms, ms)
        t_norm, t_ident, t_evolve = t_norm + b - a, t_ident + c - b, t_evolve + clock() - c
    for name, spent in (("normalise", t_norm), ("identity", t_ident), ("evolve", t_evolve)):
        print(f"  {name:<23} {'':>12} {spent:6.2f}s cpu  {spent / n * 1e6:5.1f} us/event")
    wall, cpu, _ = _timed(folder.result)
    print(f"  render {len(folder.views)} customers {wall:6.2f}s wall {cpu:6.2f}s cpu")


def _fold_command(path: Path, jobs: int, events: int) -> str:
    """Time ``touchpoint fold PATH --jobs N`` as a user runs it; print the figures, return the output's digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "TOUCHPOINT_IDENTIFIER_KEY": SECRET.decode(), "TOUCHPOINT_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryFile() as out:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "touchpoint", "fold", str(path), "--jobs", str(jobs)], env=env,
                       stdout=out, stdin=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        digest = hashlib.sha256()
        while chunk := out.read(1 << 20):
            digest.update(chunk)
        out.seek(0)
        doc = json.load(out)
        size = out.tell()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"touchpoint fold --jobs {jobs}: {events} events in {wall:.1f}s wall ({events / wall:,.0f} events/s), "
          f"{cpu:.1f}s cpu in all its processes; load average {os.getloadavg()[0]:.2f}")
    print(f"  {len(doc['customers'])} customers, {len(doc['identity_decisions'])} identity decisions, "
          f"{len(doc['rejected'])} rejected, output {size / 1e6:.0f} MB; peak RSS of a process "
          f"{after.ru_maxrss / 1024:.0f} MiB")
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=15_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", help="fold this JSONL file instead of generating one")
    parser.add_argument("--no-split", action="store_true", help="skip the per-stage passes")
    args = parser.parse_args(argv)
    print(machine_line())

    with tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp:
        if args.events:
            path = Path(args.events)
        else:
            path = Path(tmp) / "events.jsonl"
            began = time.perf_counter()
            with path.open("w", encoding="utf-8") as fh:
                count = write_jsonl(generate(args.customers, args.days, args.seed), fh)
            print(f"generated {count} events ({args.customers} customers x {args.days} days, seed {args.seed}) "
                  f"in {time.perf_counter() - began:.1f}s -> {path.stat().st_size / 1e6:.0f} MB")
        with path.open("rb") as fh:
            events = sum(1 for line in fh if line.strip())
        digests = {}
        for jobs in dict.fromkeys([default_jobs(), 1]):
            digests[jobs] = _fold_command(path, jobs, events)
        if len(digests) > 1:
            same = len(set(digests.values())) == 1
            print(f"  outputs of --jobs {' and '.join(map(str, digests))}: {'byte-identical' if same else 'DIFFERENT'}")
            if not same:
                return 1
        if not args.no_split:
            print("split per stage (separate passes; identity = resolve + apply + view merges):")
            _split(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
