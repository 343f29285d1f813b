"""``touchpoint fold`` on every core: the same fold, split by who can affect whom.

The fold is sequential because identity is: an event may link or merge any
two customers. But two events that share no identifier, directly or through
a chain of other events, can never touch the same customer. So:

1. **Group** (one pass, split by byte ranges over ``jobs`` processes):
   every line's identifiers are keyed as the fold keys them (phones by their
   last seven digits instead: phonenumbers costs ~85 us a value; any key
   that joins more than the fold's is safe), and a union-find joins the keys
   that appear on one line. Each connected group goes, whole, to one of
   ``jobs`` parts, balancing their lines. Ticks go to every part; lines that
   carry no identifier (they will be rejected) go to part 0.
2. **Fold** (``jobs`` forked processes): each part runs an ordinary
   :class:`~touchpoint.core.fold.Folder` over its lines, in file order,
   with the line numbers of the whole file. One thing a part cannot see is
   the log's clock: without ``now``, an event more than ``max_ahead_days``
   after the latest *accepted* event before it in the whole file is
   rejected. Each part is given that latest as the grouping pass presumed it
   (every event accepted unless that very check refuses it) and records the
   verdicts it reached.
3. **Check, then render.** The parts must have keyed disjoint identifiers
   (else the grouping missed a link) and every clock verdict must be the
   one the true latest (from the accepted events the parts report) gives. If
   both hold, every part behaved exactly as the one sequential Folder would
   have on those customers, so the parts render their customers as of the
   log's final clock, and the document is their merge: customers by id,
   decisions, unscored purchases and rejections by line. If either fails
   (a rejected event that held the latest time, or an identifier the grouping
   keyed differently), the file is folded again in one process, and the
   reason goes to the log. Either way the bytes equal
   :func:`~touchpoint.core.fold.fold_to_json` of the file (tested).
"""

from __future__ import annotations

import gc
import heapq
import logging
import multiprocessing
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import orjson

from touchpoint.contract.models import MAX_AHEAD, Event
from touchpoint.core.fold import FoldConfig, Folder, fold_to_json, tick_of
from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.instants import any_zone_ms, epoch_ms
from touchpoint.core.normalise import InvalidIdentifier, normalise
from touchpoint.core.pseudonym import PREFIX as PSEUDONYM_PREFIX
from touchpoint.errors import ConfigError

__all__ = ["default_jobs", "fold_file_to_json"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_EVERY_PART = 255  # a tick: every part folds it
_NO_LATEST = -(1 << 62)
_MAX_AHEAD_MS = int(MAX_AHEAD / timedelta(milliseconds=1))  # with a ``now``, events later than this are refused


def default_jobs() -> int:
    """One part per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fold_file_to_json(path: str | Path, *, jobs: int, as_of: datetime | None = None,
                      config: FoldConfig | None = None, secret: bytes = b"",
                      now_for_validation: datetime | None = None) -> bytes:
    """:func:`~touchpoint.core.fold.fold_to_json` of the lines of ``path``, folded in ``jobs`` processes, as UTF-8."""
    if not secret:
        raise ConfigError("the fold needs the identifier key (secret) to key identifiers")
    config = config or FoldConfig()
    jobs = max(1, min(jobs, 254))
    # Each part reads the file again: a pipe or a terminal cannot be read twice.
    if jobs > 1 and Path(path).is_file() and "fork" in multiprocessing.get_all_start_methods():
        folded = _fold_in_parts(Path(path), jobs, as_of, config, secret, now_for_validation)
        if folded is not None:
            return folded
    with open(path, "rb") as fh:
        return fold_to_json(fh, as_of, config, secret, now_for_validation).encode()


# --- 1. group -----------------------------------------------------------------------------------


class _Groups:
    """Union-find over identifier keys."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, key: str) -> str:
        parent = self.parent
        root = parent.setdefault(key, key)
        if root == key:
            return key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def union(self, keys: list[str]) -> str:
        root = self.find(keys[0])
        for key in keys[1:]:
            other = self.find(key)
            if other != root:
                if self.size.get(other, 1) > self.size.get(root, 1):
                    root, other = other, root
                self.parent[other] = root
                self.size[root] = self.size.get(root, 1) + self.size.get(other, 1)
        return root


def _ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """``parts`` byte ranges of the file, each a run of whole lines."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as fh:
        for part in range(1, parts):
            fh.seek(max(bounds[-1], size * part // parts))
            fh.readline()  # to the start of the next line
            bounds.append(min(max(fh.tell(), bounds[-1]), size))
    bounds.append(size)
    return list(pairwise(bounds))


def _scan(path: Path, start: int, end: int, config: FoldConfig, secret: bytes) -> _Scan:
    """One range's lines: each line's identifier keys joined, its event time, and its tick."""
    gc.disable()
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    pieces = data.split(b"\n") if data else []  # a range may be empty: a long line can span two cuts
    if data.endswith(b"\n"):
        pieces.pop()  # the newline ending the range's last line
    groups = _Groups()
    keyed: dict[tuple[str, str], str] = {}
    anchors: list[str | None] = []
    times = array("q")
    ticks: dict[int, int] = {}
    kinds = frozenset(IDENTIFIER_KINDS)
    region = config.region
    for line in pieces:
        anchor = None
        ms = _NO_LATEST
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            if len(doc) == 1 and "tick" in doc:
                at = tick_of(doc)
                if at is not None:
                    ticks[len(anchors)] = at
            else:
                identifiers = doc.get("identifiers")
                keys = []
                if isinstance(identifiers, dict):
                    for kind, value in identifiers.items():
                        if kind in kinds and isinstance(value, str):
                            pair = (kind, value)
                            key = keyed.get(pair)
                            if key is None:
                                key = keyed[pair] = _group_key(kind, value, region, secret)
                            keys.append(key)
                if keys:
                    anchor = groups.union(keys) if len(keys) > 1 else groups.find(keys[0])
                event_ms = _event_ms(doc.get("occurred_at"))
                if event_ms is not None:
                    ms = event_ms
        anchors.append(anchor)
        times.append(ms)
    # Keys as numbers: each line's anchor, and each key's root in this range.
    table = list(groups.parent)
    number = {key: n for n, key in enumerate(table)}
    roots = array("i", [number[groups.find(key)] for key in table])
    return _Scan(table, roots, array("i", [-1 if a is None else number[a] for a in anchors]), times, ticks)


def _group_key(kind: str, value: str, region: str, secret: bytes) -> str:
    """A key that two identifiers the fold keys alike share (it may also join some it keys apart).

    Identity's own normalisation but for phones, where it costs ~85 us a value (phonenumbers): a
    phone's group key is its last seven digits. Should two spellings of one number differ there (an
    extension, letters), the parts key it alike apart and the check sends the fold to one process.
    """
    if kind == "phone" and not value.startswith(PSEUDONYM_PREFIX):
        digits = "".join(c for c in value if "0" <= c <= "9")
        return f"phone~{digits[-7:]}"
    try:
        return normalise(kind, value, region=region, secret=secret).key
    except InvalidIdentifier:
        return f"{kind}~{value}"  # the event will be rejected; grouping it joins nothing wrongly


@dataclass
class _Scan:
    keys: list[str]
    roots: array[int]
    anchors: array[int]
    times: array[int]
    ticks: dict[int, int]


def _group(path: Path, jobs: int, config: FoldConfig, secret: bytes, now: datetime | None,
           ahead_ms: int) -> tuple[bytearray, array[int], dict[int, int]]:
    """Each line's part, the log's latest time before each line as presumed, and the ticks' lines and instants.

    The lines are scanned in ``jobs`` processes, a byte range each; their groups are joined here.
    """
    scans: list[_Scan] = _in_children(_scan, [(path, start, end, config, secret)
                                              for start, end in _ranges(path, jobs)])
    groups = _Groups()
    for scan in scans:
        for n, root in enumerate(scan.roots):
            if root != n:
                groups.union([scan.keys[root], scan.keys[n]])
    # Lines per group, then whole groups to parts, biggest first, each to the part with the fewest lines.
    sizes: Counter[str] = Counter()
    for scan in scans:
        for anchor, lines in Counter(scan.anchors).items():
            if anchor >= 0:
                sizes[groups.find(scan.keys[anchor])] += lines
    load = [(0, part) for part in range(jobs)]
    part_of: dict[str, int] = {}
    for group, count in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        lines, part = heapq.heappop(load)
        part_of[group] = part
        heapq.heappush(load, (lines + count, part))
    now_ms = None if now is None else epoch_ms(now)
    owner = bytearray()
    latest_before = array("q")
    ticks: dict[int, int] = {}
    latest = _NO_LATEST
    for scan in scans:
        parts = [part_of[groups.find(key)] if n == root else -1 for n, (key, root) in
                 enumerate(zip(scan.keys, scan.roots, strict=True))]
        first = len(owner)
        owner += bytes(0 if a < 0 else parts[scan.roots[a]] for a in scan.anchors)
        for n, at in scan.ticks.items():
            ticks[first + n] = at
            owner[first + n] = _EVERY_PART
        for n, ms in enumerate(scan.times):
            latest_before.append(latest)
            tick = scan.ticks.get(n)
            if tick is not None:
                latest = max(latest, tick)
            elif ms != _NO_LATEST and ((now_ms is not None and ms <= now_ms + _MAX_AHEAD_MS) or (
                    now_ms is None and (latest == _NO_LATEST or ms <= latest + ahead_ms))):
                latest = max(latest, ms)  # presumed accepted
    return owner, latest_before, ticks


def _in_children(target: Callable[..., T], calls: list[tuple[Any, ...]]) -> list[T]:
    """``target(*args)`` for each ``args`` in ``calls``, each in a forked process; their results in order."""
    context = multiprocessing.get_context("fork")
    with context.Pool(len(calls)) as pool:
        return pool.starmap(target, calls)


_HOUR_MS: dict[str, int] = {}


def _event_ms(value: object) -> int | None:
    """An event's time as the grouping presumes it (a mistake here costs a fallback, never a wrong fold)."""
    if not isinstance(value, str):
        return None
    # The contract's usual spelling, "YYYY-MM-DDTHH:MM:SS[.fff]Z", from a table of hours: ~4x faster.
    if len(value) in (20, 24) and value[-1] == "Z" and value[13] == ":" and value[16] == ":":
        hour = _HOUR_MS.get(value[:13])
        if hour is None:
            hour = _event_ms(value[:13] + ":00:00+00:00")
            if hour is None:
                return None
            if len(_HOUR_MS) < 1 << 20:
                _HOUR_MS[value[:13]] = hour
        try:
            minute, second = int(value[14:16]), int(value[17:19])
            millis = int(value[20:23]) if len(value) == 24 else 0
        except ValueError:
            minute = second = 60  # not this spelling after all
        if minute < 60 and second < 60:
            return hour + minute * 60_000 + second * 1000 + millis
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return None
    try:
        return any_zone_ms(instant)
    except (OverflowError, ValueError):
        return None


# --- 2. fold, in a forked child --------------------------------------------------------------------


def _fold_part(part: int, path: Path, owner: bytearray, latest_before: array[int], as_of: datetime | None,
               config: FoldConfig, secret: bytes, now: datetime | None, conn: Connection) -> None:
    """A child: fold this part's lines, report, wait for the render instant, send the rendered customers."""
    try:
        gc.disable()  # as the fold does: millions of long-lived acyclic objects
        folder = Folder(config, secret=secret, now=now)
        folder.cache_limit = None  # every key this part met is reported for the disjointness check
        decisions: list[tuple[int, list[Any]]] = []
        rejected: list[tuple[int, dict[str, str]]] = []
        unscored: list[tuple[int, dict[str, str]]] = []
        reached: list[tuple[int, int, bool]] = []  # (line, event ms, accepted) of events that met the clock check
        held: list[int] = []  # lines of refunds held (their deadline counts from the log's clock)
        with open(path, "rb") as fh, open(path, "rb") as again:
            def history(offsets: Sequence[int]) -> list[Event]:  # the events at these byte offsets, read again
                read = []
                for offset in offsets:
                    again.seek(offset)
                    read.append(folder.event_of_line(again.readline()))
                return read

            folder.history = history
            at = 0
            for i, line in enumerate(fh):
                offset, at = at, at + len(line)
                mine = owner[i]
                if (mine != part and mine != _EVERY_PART) or not line or line.isspace():
                    continue
                folder.lines = i
                folder.position = offset
                presumed = latest_before[i]
                folder.latest_ms = None if presumed == _NO_LATEST else presumed
                folder.last_event_ms = None
                n_decisions, n_rejected, n_unscored = len(folder.decisions), len(folder.rejected), len(folder.unscored)
                holds = folder.holds
                folder.add_json(line)
                if folder.holds > holds:
                    held.append(i)
                if len(folder.decisions) > n_decisions:
                    decisions.append((i, [d.to_json() for d in folder.decisions[n_decisions:]]))
                if len(folder.rejected) > n_rejected:
                    rejected += [(i, entry) for entry in folder.rejected[n_rejected:]]
                if len(folder.unscored) > n_unscored:
                    unscored += [(i, entry) for entry in folder.unscored[n_unscored:]]
                if folder.last_event_ms is not None:
                    reached.append((i, folder.last_event_ms, folder.last_customer_id is not None))
        if as_of is not None:
            n_rejected = len(folder.rejected)
            folder.tick(as_of)  # may reject held refunds: listed after every line
            rejected += [(len(owner), entry) for entry in folder.rejected[n_rejected:]]
        log.debug("fold part %d: %d lines folded in %.1fs of CPU", part, len(reached), time.process_time())
        keys = {ident.key for ident in folder._normalised.values()}
        conn.send((decisions, rejected, unscored, reached, keys, held))
        render_as_of = conn.recv()
        if render_as_of is None:
            conn.send([])
            return
        conn.send([(customer_id, orjson.dumps(folder.rendered(customer_id, render_as_of), option=orjson.OPT_SORT_KEYS))
                   for customer_id in sorted(folder.views)])
    except BaseException as exc:  # the parent folds in one process instead; say why
        conn.send(exc)
        raise
    finally:
        conn.close()


# --- 3. check and merge -----------------------------------------------------------------------------


def _fold_in_parts(path: Path, jobs: int, as_of: datetime | None, config: FoldConfig, secret: bytes,
                   now_for_validation: datetime | None) -> bytes | None:
    """The document, or None when the parts cannot be trusted to equal one fold (see the module docstring)."""
    now = now_for_validation or as_of
    ahead_ms = config.max_ahead_days * 86_400_000
    began = time.perf_counter()
    collecting = gc.isenabled()
    gc.disable()
    try:
        owner, latest_before, ticks = _group(path, jobs, config, secret, now, ahead_ms)
    finally:
        if collecting:
            gc.enable()
    log.debug("fold: %d lines grouped into %d parts in %.1fs", len(owner), jobs, time.perf_counter() - began)
    context = multiprocessing.get_context("fork")
    pipes, children = [], []
    for part in range(jobs):
        mine, theirs = context.Pipe()
        child = context.Process(target=_fold_part, name=f"fold-part-{part}", daemon=True,
                                args=(part, path, owner, latest_before, as_of, config, secret, now, theirs))
        child.start()
        theirs.close()
        pipes.append(mine)
        children.append(child)
    try:
        reports = _receive(pipes)
        log.debug("fold: parts folded at %.1fs", time.perf_counter() - began)
        if reports is None:
            return None
        problem = _check(reports, latest_before, ticks, now, ahead_ms)
        if problem is not None:
            log.info("folding in one process: %s", problem)
            return None
        accepted_latest = _final_latest(reports, ticks)
        if as_of is not None:
            render_as_of: datetime | None = as_of
        elif accepted_latest is None:
            render_as_of = None
        else:
            render_as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=accepted_latest)
        for pipe in pipes:
            pipe.send(render_as_of)
        rendered = _receive(pipes)
        log.debug("fold: parts rendered at %.1fs", time.perf_counter() - began)
        if rendered is None:
            return None
    finally:
        # Everything a part had to say is received, or it is no longer wanted (a part left waiting for the
        # render instant would wait for ever: each child also holds the other ends of the pipes).
        for pipe in pipes:
            pipe.close()
        for child in children:
            child.kill()
            child.join()
    log.debug("fold: parts ended at %.1fs", time.perf_counter() - began)
    customers = [orjson.Fragment(card) for _, card in heapq.merge(*rendered, key=lambda item: item[0])]
    document = {
        "customers": customers,
        "identity_decisions": [d for _, ds in sorted((d for r in reports for d in r[0]), key=_line) for d in ds],
        "loyalty_unscored": [entry for _, entry in sorted((e for r in reports for e in r[2]), key=_line)],
        "rejected": [entry for _, entry in sorted((e for r in reports for e in r[1]), key=_line_and_event)],
    }
    out = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    log.debug("fold: merged at %.1fs", time.perf_counter() - began)
    return out


def _receive(pipes: list[Connection]) -> list[Any] | None:
    """What every part sent next, or None (logged) when one failed or died: the file is then folded in one process."""
    received = []
    for part, pipe in enumerate(pipes):
        try:
            message = pipe.recv()
        except EOFError:
            message = RuntimeError("it ended without an answer")
        if isinstance(message, BaseException):
            log.warning("fold part %d failed (%r); folding in one process", part, message)
            return None
        received.append(message)
    return received


def _line(item: tuple[int, Any]) -> int:
    return item[0]


def _line_and_event(item: tuple[int, dict[str, str]]) -> tuple[int, str]:
    """A rejection's order: by line, and at one tick (held refunds of customers in several parts) by event id."""
    return item[0], item[1]["event_id"]


def _check(reports: list[Any], latest_before: array[int], ticks: dict[int, int], now: datetime | None,
           ahead_ms: int) -> str | None:
    """Why the parts may differ from one fold, or None when they cannot."""
    seen: set[str] = set()
    for _, _, _, _, keys, _ in reports:
        if not seen.isdisjoint(keys):
            return "an identifier was keyed in two parts (the grouping missed a link)"
        seen |= keys
    held = {i for *_, lines in reports for i in lines}
    if now is not None and not held:
        return None  # events are judged against ``now``, not the log's clock: nothing presumed
    # The true latest before each line: accepted events and (valid) ticks, in file order.
    accepted = bytearray(len(latest_before))
    judged: dict[int, int] = {}
    for _, _, _, reached, _, _ in reports:
        for i, ms, ok in reached:
            judged[i] = ms
            if ok:
                accepted[i] = 1
    latest = _NO_LATEST
    for i in range(len(latest_before)):
        ms = judged.get(i)
        if i in held and ms is not None and max(latest_before[i], ms) != max(latest, ms):
            return f"line {i + 1} held a refund until a deadline counted from a presumed latest time"
        if ms is not None:
            presumed = latest_before[i]
            refused = presumed != _NO_LATEST and ms > presumed + ahead_ms
            truly = latest != _NO_LATEST and ms > latest + ahead_ms
            if now is None and refused != truly:
                return f"line {i + 1} was judged against a presumed latest time that a rejected event set"
            if accepted[i]:
                latest = max(latest, ms)
        elif i in ticks:
            latest = max(latest, ticks[i])
    return None


def _final_latest(reports: list[Any], ticks: dict[int, int]) -> int | None:
    """The log's clock after the last line: the latest accepted event or tick (None: none)."""
    times = [ms for _, _, _, reached, _, _ in reports for _, ms, ok in reached if ok]
    return max([*times, *ticks.values()], default=None)
