"""File import on the real stack: JSON-lines and CSV, the rejected-lines report, re-import, crash and resume."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.intake.file_import import CHECKPOINT_TOPIC, FileImportError, ImportSummary, import_file
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import CHANNELS, event_topic
from tests.fix_stack import REPO, settings_env
from touchpoint.contract.models import ContractViolation
from touchpoint.errors import RegistryError, SerializationError
from touchpoint.generate import generate, write_jsonl
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

# The generator's "unknown_refund" is bad only against history (the stream stages catch it): the
# contract passes it, so it is imported like a good event.
NEEDS_HISTORY = "bad-unknown_refund-"


def committed_event_ids(settings: Settings, prefix: str | tuple[str, ...]) -> Counter[str]:
    """Every event id starting with ``prefix`` (or one of them) on the channel topics, read_committed, with its
    count."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    found: Counter[str] = Counter()
    try:
        partitions = [TopicPartition(event_topic(settings, ch), p)
                      for ch in CHANNELS for p in consumer.partitions_for_topic(event_topic(settings, ch)) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        with RegistryClient(settings.registry_url) as registry:
            serde = EventSerde(registry)
            while any(consumer.position(tp) < ends[tp] for tp in partitions):
                assert time.monotonic() < deadline, "channel topics not read to their end in time"
                for messages in consumer.poll(timeout_ms=500).values():
                    for message in messages:
                        try:
                            event_id = serde.deserialize(message.value).event_id
                        except (SerializationError, ContractViolation):
                            continue  # another test's deliberately bad bytes on the shared topics
                        if event_id.startswith(prefix):
                            found[event_id] += 1
    finally:
        consumer.close()
    return found


def checkpoint_of(settings: Settings, file_id: str) -> dict[str, Any] | None:
    """The last committed checkpoint of a file (read_committed), or None."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    tp = TopicPartition(settings.topic(CHECKPOINT_TOPIC), 0)
    last = None
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=300).values():
                for message in messages:
                    if message.key == file_id.encode():
                        last = json.loads(message.value)
    finally:
        consumer.close()
    return last


def write_population(path: Path, customers: int, days: int, seed: int) -> list[dict[str, Any]]:
    events = list(generate(customers=customers, days=days, seed=seed))
    with path.open("w", encoding="utf-8") as fh:
        write_jsonl(events, fh)
    return events


def report_entries(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def expected_split(events: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(ids that must reach the topics, ids that must be refused) of generated events."""
    refused = {e["event_id"] for e in events if e["event_id"].startswith("bad-")
               and not e["event_id"].startswith(NEEDS_HISTORY)}
    return {e["event_id"] for e in events} - refused, refused


def test_jsonl_good_events_once_on_topics_bad_ones_in_report(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "population.jsonl"
    events = write_population(path, customers=30, days=60, seed=7)
    good, bad = expected_split(events)
    assert bad, "the generator should produce bad events"

    summary = import_file(settings, path, batch_size=100, progress=False)

    assert (summary.lines, summary.accepted, summary.rejected) == (len(events), len(good), len(bad))
    assert summary.resumed_from_line is None and summary.skipped_already_imported == 0
    assert summary.report_path == tmp_path / "population.jsonl.rejected.jsonl"
    found = committed_event_ids(settings, "")
    mine = Counter({k: v for k, v in found.items() if "-7-" in k})
    assert set(mine) == good
    assert set(mine.values()) == {1}
    entries = report_entries(summary.report_path)
    assert {e["event_id"] for e in entries} == bad
    for entry in entries:
        assert entry["problems"] and all(p["field"] and p["message"] for p in entry["problems"])
        assert json.loads(entry["raw"])["event_id"] == entry["event_id"]
        assert events[entry["line"] - 1]["event_id"] == entry["event_id"]

    again = import_file(settings, path, progress=False)
    assert again.already_imported
    assert "already imported" in str(again)
    assert (again.lines, again.accepted, again.rejected) == (summary.lines, summary.accepted, summary.rejected)
    assert report_entries(summary.report_path) == entries
    assert committed_event_ids(settings, "") == found, "a re-import sent something"


def test_not_json_lines_and_blank_lines(settings: Settings, tmp_path: Path) -> None:
    events = list(generate(customers=3, days=5, seed=71, bad_share=0.0))[:3]
    path = tmp_path / "mixed.ndjson"
    lines = [json.dumps(events[0]), "", "{not json", json.dumps(events[1]), "[1, 2]", json.dumps(events[2])]
    path.write_text("\n".join(lines), encoding="utf-8")  # no final newline: the last line still counts

    report = tmp_path / "out" / "report.jsonl"
    report.parent.mkdir()
    summary = import_file(settings, path, report_path=report, progress=False)

    assert (summary.lines, summary.accepted, summary.rejected) == (5, 3, 2)
    entries = report_entries(report)
    assert [(e["line"], e["raw"]) for e in entries] == [(3, "{not json"), (5, "[1, 2]")]
    assert entries[0]["problems"][0]["message"].startswith("not JSON")
    assert set(committed_event_ids(settings, ("ev-71-", "pf-71-"))) == {e["event_id"] for e in events}


def test_a_line_whose_event_id_is_not_unicode_goes_to_the_report(settings: Settings, tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON but no Unicode text: the line is refused and reported, the import goes on."""
    events = list(generate(customers=2, days=5, seed=72, bad_share=0.0))[:2]
    bad = {**events[0], "event_id": "ev-72-\ud800"}
    path = tmp_path / "surrogate.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in (events[0], bad, events[1])), encoding="utf-8")

    summary = import_file(settings, path, progress=False)

    assert (summary.lines, summary.accepted, summary.rejected) == (3, 2, 1)
    (entry,) = report_entries(summary.report_path)
    assert (entry["line"], entry["event_id"]) == (2, "ev-72-\ud800")
    assert [p["field"] for p in entry["problems"]] == ["event_id"]
    assert set(committed_event_ids(settings, ("ev-72-", "pf-72-"))) == {e["event_id"] for e in events}


def csv_row(event: dict[str, Any]) -> dict[str, str]:
    row = {k: event[k] for k in ("event_id", "type", "channel", "occurred_at")}
    row.update({f"id_{kind}": value for kind, value in event["identifiers"].items()})
    row["payload"] = json.dumps(event["payload"])
    return row


def test_csv_import_with_a_bad_row(settings: Settings, tmp_path: Path) -> None:
    events = list(generate(customers=5, days=10, seed=11, bad_share=0.0))[:8]
    columns = ["event_id", "type", "channel", "occurred_at", "id_customer_no", "id_card", "id_email", "id_phone",
               "id_cookie", "id_device", "payload"]
    path = tmp_path / "branch.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        writer.writeheader()
        for event in events[:4]:
            writer.writerow(csv_row(event))
        writer.writerow({"event_id": "csv-11-neg", "type": "purchase", "channel": "branch",  # line 6
                         "occurred_at": "2025-01-03T10:00:00Z", "id_customer_no": "C00000001",
                         "payload": json.dumps({"transaction_id": "T1", "location_id": "FS-0001", "currency": "GBP",
                                                "total_minor": -5, "lines": [{"sku": "A", "category": "shop",
                                                                               "quantity": 1, "amount_minor": -5}]})})
        writer.writerow({"event_id": "csv-11-nopayload", "type": "web", "channel": "web",  # line 7
                         "occurred_at": "2025-01-03T10:00:00Z", "id_cookie": "ck", "payload": "{oops"})
        for event in events[4:]:
            writer.writerow(csv_row(event))

    summary = import_file(settings, path, progress=False)

    assert (summary.lines, summary.accepted, summary.rejected) == (10, 8, 2)
    entries = report_entries(summary.report_path)
    assert [(e["line"], e["event_id"]) for e in entries] == [(6, "csv-11-neg"), (7, "csv-11-nopayload")]
    assert {p["field"] for p in entries[0]["problems"]} >= {"payload.total_minor"}
    assert entries[1]["problems"][0]["field"] == "payload"
    assert entries[1]["raw"].startswith("csv-11-nopayload,web,web,")
    assert set(committed_event_ids(settings, ("ev-11-", "pf-11-"))) == {e["event_id"] for e in events}
    assert import_file(settings, path, progress=False).already_imported


def test_csv_unknown_column_is_refused_up_front(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("event_id,type,channel,occurred_at,id_customer_no,loyalty_tier,payload\n"
                    "csv-12-1,branch_visit,branch,2025-01-03T10:00:00Z,C1,gold,{}\n", encoding="utf-8")
    with pytest.raises(FileImportError, match="unknown CSV column.*'loyalty_tier'"):
        import_file(settings, path, progress=False)
    assert not (tmp_path / "odd.csv.rejected.jsonl").exists()
    assert committed_event_ids(settings, "csv-12-") == Counter()


def test_missing_file_unknown_suffix_and_dead_registry(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(FileImportError, match="no such file"):
        import_file(settings, tmp_path / "nope.jsonl", progress=False)
    (tmp_path / "events.txt").write_text("{}\n", encoding="utf-8")
    with pytest.raises(FileImportError, match="unknown format"):
        import_file(settings, tmp_path / "events.txt", progress=False)
    path = tmp_path / "ok.jsonl"
    path.write_text("{}\n", encoding="utf-8")
    dead = settings.model_copy(update={"registry_url": "http://127.0.0.1:9/apis/ccompat/v7"})
    began = time.monotonic()
    with pytest.raises(RegistryError, match="unreachable"):
        import_file(dead, path, progress=False)
    assert time.monotonic() - began < 30


CHILD = """
import sys
from connectors.intake.file_import import import_file
from touchpoint.settings import load_settings
import_file(load_settings(), sys.argv[1], batch_size=20, progress=False)
print("finished")
"""


def test_killed_import_resumes_without_duplicates(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "backfill.jsonl"
    events = write_population(path, customers=400, days=120, seed=13)
    good, bad = expected_split(events)
    file_id = hashlib.sha256(path.read_bytes()).hexdigest()

    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=settings_env(settings),  # noqa: S603
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert child.poll() is None, f"the import ended before it could be killed: {log.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint committed in time"
            checkpoint = checkpoint_of(settings, file_id)
            if checkpoint is not None and checkpoint["next_line"] > 200:
                break
            time.sleep(0.2)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not checkpoint["complete"]

    summary: ImportSummary = import_file(settings, path, batch_size=200, progress=False)

    assert summary.resumed_from_line is not None and summary.resumed_from_line > 200
    assert 0 < summary.skipped_already_imported < len(events)
    assert (summary.lines, summary.accepted, summary.rejected) == (len(events), len(good), len(bad))
    assert "resumed at line" in str(summary)
    found = committed_event_ids(settings, "")
    mine = {k: v for k, v in found.items() if "-13-" in k}
    assert set(mine) == good
    assert set(mine.values()) == {1}, "an event was committed twice"
    entries = report_entries(summary.report_path)
    assert sorted(e["event_id"] for e in entries) == sorted(bad), "the report lost or repeated a line"
    assert import_file(settings, path, progress=False).already_imported
