"""File import for branch systems and backfills: JSON-lines or CSV to the channel topics.

``import_file(settings, path)`` reads a file of events, checks every line
against the contract (``validate_event`` with ``now`` = the import's start
time), sends the good events in Avro (:class:`~connectors.platform.serde.EventSerde`),
their identifiers pseudonymised as the producer library does (one key-store
call per batch), to their channel topic keyed like the producer library
(:func:`~connectors.intake.producer.partition_key`), and writes every refused line
to a report. Nothing is dropped silently: a line is either on a topic or in
the report.

Formats (chosen by the file name's suffix)
    ``.jsonl`` / ``.ndjson``: one event per line in the contract's JSON form
    (DESIGN.md §1). Blank lines are ignored; a line that is not JSON is
    refused with the parser's message.

    ``.csv``: a flat layout a branch system's export can produce, UTF-8
    (a BOM is accepted), a header row first::

        event_id,type,channel,occurred_at,id_customer_no,id_card,id_email,id_phone,id_cookie,id_device,payload
        ev-1,branch_visit,branch,2025-01-02T09:30:00Z,C00000001,,,,,,"{""branch_id"":""FS-0001"",""purpose"":""advice""}"

    ``event_id``, ``type``, ``channel``, ``occurred_at`` and ``payload`` are
    required columns; the six ``id_<kind>`` columns are optional (include
    those you have); the order is free. An empty cell means absent.
    ``payload`` holds the type's payload as a JSON object, so nested lines
    and integer money survive exactly (lossless, no per-type columns). An
    unknown, duplicated or missing column is a :class:`FileImportError`
    before anything is sent. A record may span lines (a quoted newline);
    its "line" is the file line it starts on.

Report
    Default ``<file>.rejected.jsonl``: one JSON object per refused line,
    ``{"line", "event_id", "problems": [{"field", "message"}], "raw"}``.

Exactly once across crashes
    The file's identity is the SHA-256 of its bytes (``file_id``). The import
    runs as one Kafka transaction per batch with the transactional id
    ``<topic_prefix>-import-<file_id>``: the batch's events plus a checkpoint
    ``{"file_id", "path", "next_line", "accepted", "rejected", "now",
    "complete"}`` keyed by ``file_id`` on the compacted topic
    ``<prefix>.ingest-checkpoints``, then commit. A batch is therefore on the
    topics together with its checkpoint or not at all.

    On start the producer first calls ``init_transactions``, which fences a
    zombie of a crashed run of the same file and aborts its open batch; only
    then is the checkpoint topic read (``read_committed``, up to the end
    offset seen at start) for the last checkpoint of this ``file_id``. The
    import resumes at its ``next_line`` with its counts, judging events
    against the first run's ``now`` (so one import has one "now"). A file
    whose last checkpoint says ``complete`` is not sent again: the call is a
    no-op and the summary says so. A changed file has a new hash and is a
    new import.

    The report is appended to before each batch commits (and flushed). On
    resume it is cut back to the entries of lines before ``next_line``, i.e.
    exactly the committed batches; if what is left does not match the
    checkpoint's ``rejected`` count (the report was deleted or edited), it is
    re-derived by checking those lines again against the stored ``now``.

    Consumers must read the channel topics with
    ``isolation_level="read_committed"``, or they also see the events of
    batches that were aborted (a crash mid-batch) and later sent again.

Every wait on Kafka or the registry is bounded (``timeout_s``): a dead broker
or registry raises a :class:`~touchpoint.errors.TouchpointError` subclass
(:class:`~touchpoint.errors.PublishError`, ``StackError`` or
``RegistryError``), never a hang.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, ProducerFencedError
from kafka.partitioner.default import murmur2
from tqdm import tqdm

from connectors.intake.producer import keys_to_seal, normalised, partition_key, pseudonymised
from connectors.platform.keystore import KeyStoreError, PostgresKeyStore
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import CHANNELS, TopicSpec, ensure_topics, event_topic, topic_specs
from touchpoint import jsontext
from touchpoint.contract.models import ContractViolation, Event, identifier_values, validate_event
from touchpoint.core.normalise import Identifier
from touchpoint.errors import PublishError, TouchpointError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
CSV_ENVELOPE = ("event_id", "type", "channel", "occurred_at")
CSV_IDENTIFIERS = ("customer_no", "card", "email", "phone", "cookie", "device")
CSV_REQUIRED = (*CSV_ENVELOPE, "payload")
CSV_COLUMNS = (*CSV_ENVELOPE, *(f"id_{kind}" for kind in CSV_IDENTIFIERS), "payload")
CHECKPOINT_TOPIC = "ingest-checkpoints"
_TRANSACTION_TIMEOUT_MS = 60_000
T = TypeVar("T")


class FileImportError(TouchpointError):
    """The file cannot be imported as it is (missing, unknown format, bad CSV header, ...)."""


@dataclass(frozen=True)
class ImportSummary:
    """What one ``import_file`` call did; counts cover the whole file, across resumed runs."""

    path: Path
    file_id: str
    lines: int
    """Event lines in the file seen so far (``accepted + rejected``; blank lines not counted)."""
    accepted: int
    rejected: int
    skipped_already_imported: int
    """Lines a previous run had already committed, so this run did not send them."""
    seconds: float
    events_per_s: float
    """Lines this run checked and committed (accepted or rejected) per second of the call."""
    report_path: Path
    resumed_from_line: int | None
    """The file line this run started at, or ``None`` on a fresh import."""

    @property
    def already_imported(self) -> bool:
        """Nothing left to do: a previous run had imported the whole file."""
        return self.resumed_from_line is not None and self.skipped_already_imported == self.lines

    def __str__(self) -> str:
        head = f"{self.path} (sha256 {self.file_id[:12]}…)"
        if self.already_imported:
            return (f"{head}: already imported, nothing sent ({self.lines} lines: {self.accepted} accepted, "
                    f"{self.rejected} rejected; report {self.report_path})")
        parts = [f"{head}: {self.lines} lines, {self.accepted} accepted, {self.rejected} rejected"]
        if self.resumed_from_line is not None:
            parts.append(f"resumed at line {self.resumed_from_line} "
                         f"({self.skipped_already_imported} lines already imported)")
        parts.append(f"{self.seconds:.2f} s, {self.events_per_s:,.0f} lines/s")
        if self.rejected:
            parts.append(f"rejected lines in {self.report_path}")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Record:
    start: int  # file line the record starts on (1-based)
    end: int  # file line it ends on
    raw: str
    doc: Any
    problems: list[tuple[str, str]] | None  # set when the line could not even be turned into a doc
    parsed: bool = True  # False: before the resume point, not parsed


def import_file(
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    report_path: str | os.PathLike[str] | None = None,
    batch_size: int = 500,
    now: datetime | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> ImportSummary:
    """Import a JSON-lines or CSV file of events, exactly once per file content, resuming after a crash.

    :param path: the file; ``.jsonl``/``.ndjson`` or ``.csv`` (layout in the module docstring).
    :param report_path: where refused lines go; default ``<file>.rejected.jsonl``.
    :param batch_size: lines per Kafka transaction (and checkpoint).
    :param now: the instant events are judged against (aware); default the first run's start time.
    :param progress: show a tqdm bar on stderr (only when stderr is a terminal).
    :param timeout_s: bound on each wait for Kafka or the registry.
    :raises FileImportError: missing or unreadable file, unknown suffix, bad CSV header.
    :raises PublishError: Kafka unreachable, did not acknowledge in time, or another run took over.
    :raises StackError: the topics could not be created (Kafka unreachable).
    :raises RegistryError: the schema registry is unreachable.
    """
    began = time.perf_counter()
    path = Path(path)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    is_csv = _format_is_csv(path)
    file_id, physical_lines = _fingerprint(path)
    header = _csv_header(path) if is_csv else None
    report = Path(report_path) if report_path is not None else path.with_name(path.name + ".rejected.jsonl")

    checkpoints = settings.topic(CHECKPOINT_TOPIC)
    channel_topics = {event_topic(settings, channel) for channel in CHANNELS}
    ensure_topics(settings, [TopicSpec(checkpoints, 1, {"cleanup.policy": "compact", "retention.ms": "-1"}),
                             *(s for s in topic_specs(settings) if s.name in channel_topics)])

    with RegistryClient(settings.registry_url, timeout_s=min(timeout_s, 10.0)) as registry:
        serde = EventSerde(registry)
        serde.writer_id  # noqa: B018 - register now: a dead registry fails before anything is sent
        producer = _transactional_producer(settings, f"{settings.topic_prefix}-import-{file_id}", timeout_s)
        try:
            # Fence a crashed run's zombie and abort its open batch *before* reading the checkpoint,
            # so the read sees everything that run will ever have committed.
            _bounded(producer.init_transactions, timeout_s, "initialise the import's transactions")
            last = _last_checkpoint(settings, checkpoints, file_id, timeout_s)
            run = _Run(settings, producer, serde, checkpoints, file_id, path, batch_size, timeout_s, last, now)
            run.open_report(report)
            try:
                run.go(_records(path, header, run.parse_from), physical_lines, progress)
            finally:
                run.close_report()
                run.close()
        finally:
            producer.close(timeout=timeout_s)

    seconds = time.perf_counter() - began
    done_now = run.accepted + run.rejected - run.skipped
    return ImportSummary(
        path=path, file_id=file_id, lines=run.accepted + run.rejected, accepted=run.accepted,
        rejected=run.rejected, skipped_already_imported=run.skipped, seconds=seconds,
        events_per_s=done_now / seconds if seconds > 0 else 0.0, report_path=report,
        resumed_from_line=run.next_line_at_start if last is not None else None,
    )


_Checked = tuple[Event, dict[str, Identifier]]
"""An event that passed the contract, with its identifiers normalised (sealed when its batch commits)."""


class _Run:
    """The state of one import call: counts, report, the current batch."""

    def __init__(self, settings: Settings, producer: KafkaProducer, serde: EventSerde, checkpoints: str,
                 file_id: str, path: Path, batch_size: int, timeout_s: float,
                 last: dict[str, Any] | None, now: datetime | None) -> None:
        self.settings = settings
        self.producer = producer
        self.serde = serde
        self.checkpoints = checkpoints
        self.file_id = file_id
        self.path = path
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.secret = settings.identifier_key.get_secret_value().encode()
        self.keystore = PostgresKeyStore(settings)
        self.loop = asyncio.new_event_loop()  # the key store speaks asyncio; this import does not
        last = last or {}
        self.next_line_at_start = int(last.get("next_line", 1))
        self.accepted = int(last.get("accepted", 0))
        self.rejected = int(last.get("rejected", 0))
        self.skipped = self.accepted + self.rejected
        self.complete = bool(last.get("complete", False))
        stored_now = last.get("now")
        self.now = now or (datetime.fromisoformat(stored_now) if stored_now else datetime.now(UTC))
        self.parse_from = self.next_line_at_start
        self.rederive = False
        self.report: IO[str] | None = None
        self.partitions: dict[str, list[int]] = {}

    # -- report -------------------------------------------------------------

    def open_report(self, report: Path) -> None:
        """Fresh import: empty report. Resume: keep the entries of committed lines (or re-derive them)."""
        kept: list[str] = []
        if self.next_line_at_start > 1 and report.exists():
            with report.open(encoding="utf-8") as fh:
                for text in fh:
                    try:
                        line = json.loads(text)["line"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(line, int) and line < self.next_line_at_start:
                        kept.append(text if text.endswith("\n") else text + "\n")
        if len(kept) != self.rejected:  # deleted or edited: check the committed lines again
            kept, self.rederive, self.parse_from = [], True, 1
        elif self.complete:
            return  # a no-op re-import leaves the report as it is
        tmp = report.with_name(report.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(kept)
        os.replace(tmp, report)
        self.report = report.open("a", encoding="utf-8")

    def close_report(self) -> None:
        if self.report is not None:
            self.report.close()

    def _reject(self, record: _Record, problems: list[tuple[str, str]]) -> None:
        event_id = record.doc.get("event_id") if isinstance(record.doc, dict) else None
        entry = {"line": record.start, "event_id": event_id if isinstance(event_id, str) else None,
                 "problems": [{"field": f, "message": m} for f, m in problems], "raw": record.raw}
        assert self.report is not None
        self.report.write(jsontext.dumps(entry) + "\n")

    def _check(self, record: _Record) -> tuple[_Checked | None, list[tuple[str, str]] | None]:
        if record.problems is not None:
            return None, record.problems
        try:
            event = validate_event(record.doc, self.now)
        except ContractViolation as exc:
            return None, exc.problems
        try:
            return (event, normalised(event, self.secret, self.settings.phone_region)), None
        except ContractViolation as exc:
            return None, exc.problems

    # -- the loop -----------------------------------------------------------

    def go(self, records: Iterator[_Record], total_lines: int, progress: bool) -> None:
        if self.complete and not self.rederive:
            return
        bar = tqdm(total=total_lines, unit="line", unit_scale=True, file=sys.stderr, mininterval=0.5,
                   desc=self.path.name, disable=not (progress and sys.stderr.isatty()))
        try:
            batch: list[_Checked] = []
            lines_in_batch = 0
            last_end = self.next_line_at_start - 1
            for record in records:
                if record.start < self.next_line_at_start:
                    if self.rederive and record.parsed:
                        _, problems = self._check(record)
                        if problems is not None:
                            self._reject(record, problems)
                    continue
                message, problems = self._check(record)
                if problems is not None:
                    self._reject(record, problems)
                    self.rejected += 1
                else:
                    assert message is not None
                    batch.append(message)
                    self.accepted += 1
                lines_in_batch += 1
                last_end = record.end
                if lines_in_batch >= self.batch_size:
                    self._commit(batch, last_end + 1, complete=False)
                    bar.update(last_end - bar.n)
                    batch, lines_in_batch = [], 0
            if self.complete:  # re-derived the report of a finished import: nothing to send
                return
            self._commit(batch, last_end + 1, complete=True)
            bar.update(max(0, total_lines - bar.n))
        finally:
            bar.close()

    def _partition(self, topic: str, key: bytes) -> int:
        # The default partitioner's choice (murmur2 of the key, like EventProducer's sends), cached:
        # a person's key recurs, and kafka-python's pure-Python murmur2 was a fifth of the send cost.
        partitions = self.partitions.get(topic)
        if partitions is None:
            found = self.producer.partitions_for(topic)  # waits for metadata, bounded by max_block_ms
            partitions = self.partitions[topic] = sorted(found)
        return partitions[_murmur2_index(key, len(partitions))]

    def _sealed(self, batch: list[_Checked]) -> list[tuple[str, bytes, bytes]]:
        """The batch's events as (topic, key, Avro bytes), their identifiers pseudonymised (one key-store call)."""
        try:
            data_keys = self.loop.run_until_complete(self.keystore.data_keys(keys_to_seal(batch), create=True))
        except KeyStoreError as exc:
            raise PublishError(f"{exc}; run the import again to resume") from exc
        region = self.settings.phone_region
        tokens: dict[str, str] = {}
        sealed = [pseudonymised(event, identifiers, data_keys, tokens) for event, identifiers in batch]
        return [(event_topic(self.settings, e.channel),
                 partition_key(identifier_values(e.identifiers), self.secret, region), self.serde.serialize(e))
                for e in sealed]

    def close(self) -> None:
        self.loop.run_until_complete(self.keystore.close())
        self.loop.close()

    def _commit(self, checked: list[_Checked], next_line: int, *, complete: bool) -> None:
        """One transaction: the batch's events and the checkpoint saying how far the file is done."""
        batch = self._sealed(checked)
        assert self.report is not None
        self.report.flush()  # refused lines are on disk before the batch counting them commits
        checkpoint = {"file_id": self.file_id, "path": str(self.path), "next_line": next_line,
                      "accepted": self.accepted, "rejected": self.rejected, "now": self.now.isoformat(),
                      "complete": complete}
        producer = self.producer
        try:
            producer.begin_transaction()
            for topic, key, value in batch:
                producer.send(topic, key=key, value=value, partition=self._partition(topic, key))
            producer.send(self.checkpoints, key=self.file_id.encode(), value=json.dumps(checkpoint).encode())
            producer.flush(timeout=self.timeout_s)
            _bounded(producer.commit_transaction, self.timeout_s, "commit a batch")
        except ProducerFencedError as exc:
            raise PublishError(f"another import of {self.path} (same content) took over; this run stops") from exc
        except (KafkaError, PublishError) as exc:
            try:
                _bounded(producer.abort_transaction, self.timeout_s, "abort a batch")
            except (KafkaError, PublishError):
                pass  # The next run's init_transactions aborts it anyway.
            if isinstance(exc, PublishError):
                raise
            raise PublishError(f"Kafka at {self.settings.kafka_bootstrap} did not take a batch of {self.path} "
                               f"(lines before {next_line}): {exc}; run the import again to resume") from exc


# -- reading the file ---------------------------------------------------------------


def _format_is_csv(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return True
    if suffix in JSONL_SUFFIXES:
        return False
    raise FileImportError(f"{path}: unknown format {suffix or '(no suffix)'!r}; "
                          f"expected one of {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}")


def _fingerprint(path: Path) -> tuple[str, int]:
    """SHA-256 of the bytes (hex) and the number of lines, in one streamed pass."""
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except FileNotFoundError as exc:
        raise FileImportError(f"{path}: no such file") from exc
    except OSError as exc:
        raise FileImportError(f"{path}: cannot read: {exc}") from exc
    return digest.hexdigest(), lines + (0 if last == b"\n" else 1)


def _csv_header(path: Path) -> list[str]:
    """The CSV header, checked against the layout; raises naming unknown, duplicate or missing columns."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        try:
            header = next(csv.reader(fh), None)
        except csv.Error as exc:
            raise FileImportError(f"{path}: the CSV header cannot be read: {exc}") from exc
    if not header:
        raise FileImportError(f"{path}: empty CSV, expected a header row: {','.join(CSV_COLUMNS)}")
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        raise FileImportError(f"{path}: unknown CSV column(s) {', '.join(map(repr, unknown))}; "
                              f"known columns: {','.join(CSV_COLUMNS)}")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise FileImportError(f"{path}: duplicated CSV column(s) {', '.join(duplicated)}")
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise FileImportError(f"{path}: missing CSV column(s) {', '.join(missing)}")
    return header


def _records(path: Path, header: list[str] | None, parse_from: int) -> Iterator[_Record]:
    return _csv_records(path, header, parse_from) if header is not None else _jsonl_records(path, parse_from)


def _jsonl_records(path: Path, parse_from: int) -> Iterator[_Record]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if number < parse_from:
                yield _Record(number, number, "", None, None, parsed=False)
                continue
            if not line.strip():
                continue
            raw = line.decode("utf-8", "replace").rstrip("\r\n")
            try:
                doc = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                yield _Record(number, number, raw, None, [("(line)", f"not JSON: {exc}")])
                continue
            yield _Record(number, number, raw, doc, None)


def _csv_records(path: Path, header: list[str], parse_from: int) -> Iterator[_Record]:
    stash: list[str] = []
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:

        def lines() -> Iterator[str]:
            for text in fh:  # keep the physical lines of the record being read, for the report
                stash.append(text)
                yield text

        reader = csv.reader(lines())
        next(reader)
        start = reader.line_num + 1
        stash.clear()
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise FileImportError(f"{path}: line {start}: unreadable CSV: {exc}") from exc
            raw = "".join(stash).rstrip("\r\n")
            stash.clear()
            record_start, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if record_start < parse_from:
                yield _Record(record_start, reader.line_num, "", None, None, parsed=False)
                continue
            doc, problems = _csv_doc(header, row)
            yield _Record(record_start, reader.line_num, raw, doc, problems)


def _csv_doc(header: list[str], row: list[str]) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
    """A CSV row in the contract's JSON form; problems when the row itself is malformed."""
    problems: list[tuple[str, str]] = []
    if len(row) != len(header):
        problems.append(("(row)", f"expected {len(header)} cells, got {len(row)}"))
    cells = dict(zip(header, row, strict=False))
    doc: dict[str, Any] = {name: cells[name] for name in CSV_ENVELOPE if cells.get(name, "") != ""}
    doc["identifiers"] = {kind: cells[f"id_{kind}"] for kind in CSV_IDENTIFIERS if cells.get(f"id_{kind}", "") != ""}
    payload = cells.get("payload", "")
    if payload != "":
        try:
            doc["payload"] = json.loads(payload)
        except ValueError as exc:
            problems.append(("payload", f"not JSON: {exc}"))
    return doc, problems or None


# -- Kafka --------------------------------------------------------------------------


def _transactional_producer(settings: Settings, transactional_id: str, timeout_s: float) -> KafkaProducer:
    try:
        return KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="touchpoint-file-import",
            transactional_id=transactional_id,
            transaction_timeout_ms=_TRANSACTION_TIMEOUT_MS,
            acks="all",
            enable_idempotence=True,
            # Each transaction ends with a flush, so lingering costs no latency; it saves the sender
            # a wake-up per new partition batch, which dominated the profile at linger_ms=5.
            linger_ms=1000,
            batch_size=512 * 1024,
            max_block_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000) // 2,
            delivery_timeout_ms=int(timeout_s * 1000),
            **kafka_python_options(settings),
        )
    except KafkaError as exc:
        raise PublishError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc


def _last_checkpoint(settings: Settings, topic: str, file_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The last committed checkpoint of this file, or ``None``.

    Reads ``read_committed`` up to the high watermark seen at start: other files' imports may hold
    a transaction open on the topic, which holds the readable end back until they commit (or
    their transaction times out), so the wait is bounded by the transaction timeout too.
    """
    partition = TopicPartition(topic, 0)
    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-file-import",
                                 group_id=None, enable_auto_commit=False, isolation_level="read_committed",
                                 request_timeout_ms=int(timeout_s * 1000), **kafka_python_options(settings))
    except KafkaError as exc:
        raise PublishError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = _high_watermark(settings, partition, timeout_s)
        deadline = time.monotonic() + timeout_s + _TRANSACTION_TIMEOUT_MS / 1000
        last: dict[str, Any] | None = None
        key = file_id.encode()
        while consumer.position(partition) < end:
            if time.monotonic() > deadline:
                raise PublishError(f"the checkpoint topic {topic} could not be read to its end in time")
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    if message.key == key:
                        last = json.loads(message.value) if message.value is not None else None
        return last
    except KafkaError as exc:
        raise PublishError(f"cannot read the checkpoint topic {topic}: {exc}") from exc
    finally:
        consumer.close()


def _high_watermark(settings: Settings, partition: TopicPartition, timeout_s: float) -> int:
    # read_uncommitted: the end including open transactions (a read_committed end would stop before them).
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, client_id="touchpoint-file-import",
                             group_id=None, enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000),
                             **kafka_python_options(settings))
    try:
        end: int = consumer.end_offsets([partition])[partition]
        return end
    finally:
        consumer.close()


@functools.lru_cache(maxsize=1 << 16)
def _murmur2_index(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run a client call that has no timeout of its own (``commit_transaction``) with one."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"file-import-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise PublishError(f"Kafka did not {what} within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
