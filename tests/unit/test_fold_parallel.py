"""The fold in parts (``touchpoint fold --jobs N``) prints exactly the bytes of the fold in one process."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_fold import _IDS, event, log_lines
from touchpoint.core.fold import FoldConfig, fold_to_json
from touchpoint.fold_parallel import fold_file_to_json
from touchpoint.generate import generate, write_jsonl

SECRET = b"test-secret"
_LOGGER = "touchpoint.fold_parallel"


def _population(tmp_path: Path, customers: int, days: int, seed: int) -> Path:
    """A generated population (2 % bad events, merges, refunds) with ticks and blank lines among it."""
    buffer = io.StringIO()
    write_jsonl(generate(customers, days, seed=seed), buffer)
    lines = buffer.getvalue().splitlines()
    start = datetime.fromisoformat(json.loads(lines[0])["occurred_at"])
    for n, at in enumerate(range(len(lines) // 3, len(lines), len(lines) // 3)):
        tick = (start + timedelta(days=(n + 1) * days // 4)).isoformat().replace("+00:00", "Z")
        lines.insert(at, json.dumps({"tick": tick}))
    lines.insert(5, "")
    lines.insert(9, "   ")
    lines.insert(11, '{"tick": "yesterday"}')
    lines.insert(12, "not json")
    first_id = json.loads(lines[0])["event_id"]
    lines.insert(13, lines[0].replace(f'"{first_id}"', '"\\ud800"', 1))  # valid JSON, not Unicode
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _one_process(path: Path, **kwargs: object) -> bytes:
    with open(path, "rb") as fh:
        return fold_to_json(fh, secret=SECRET, **kwargs).encode()  # type: ignore[arg-type]


@pytest.mark.parametrize("jobs", [2, 3])
@pytest.mark.parametrize("as_of", [None, datetime(2026, 6, 1, tzinfo=UTC)])
def test_parts_print_the_bytes_of_one_fold(tmp_path: Path, caplog: pytest.LogCaptureFixture, jobs: int,
                                           as_of: datetime | None) -> None:
    path = _population(tmp_path, customers=150, days=200, seed=7)
    expected = _one_process(path, as_of=as_of)
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        got = fold_file_to_json(path, jobs=jobs, as_of=as_of, secret=SECRET)
    assert [r.getMessage() for r in caplog.records if r.name == _LOGGER] == []  # the parts were used
    assert got == expected
    document = json.loads(got)
    assert len(document["customers"]) > 100
    assert any(d["decision"] == "merged" for d in document["identity_decisions"])
    reasons = {r["event_id"]: r["reason"] for r in document["rejected"]}
    assert reasons["line 12"].startswith("not a tick") and reasons["line 13"].startswith("not JSON")
    assert reasons["\\ud800"].startswith("event_id:")  # a lone surrogate, kept as its escape


def test_a_config_reaches_every_part(tmp_path: Path) -> None:
    path = _population(tmp_path, customers=80, days=120, seed=3)
    config = FoldConfig(limits={"cookie": 2, "email": 1}, max_ahead_days=5)
    assert fold_file_to_json(path, jobs=2, config=config, secret=SECRET) == _one_process(path, config=config)


def test_a_rejected_event_that_set_the_clock_sends_the_fold_to_one_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Line 2 is rejected (an invalid e-mail) but the grouping presumed it accepted, so it presumed the
    # log's clock at day 20: line 3, 40 days in, is within 30 days of that but not of the true latest (day 0).
    lines = [
        event("e1", {"customer_no": "A"}, minutes=0),
        event("e2", {"customer_no": "B", "email": "not an e-mail"}, minutes=20 * 1440),
        event("e3", {"customer_no": "C"}, minutes=40 * 1440),
    ]
    path = tmp_path / "clock.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        got = fold_file_to_json(path, jobs=2, secret=SECRET)
    assert got == _one_process(path)
    assert [r.getMessage() for r in caplog.records if r.name == _LOGGER] == [
        "folding in one process: line 3 was judged against a presumed latest time that a rejected event set"]
    assert [r["event_id"] for r in json.loads(got)["rejected"]] == ["e2", "e3"]


def test_one_job_folds_in_one_process(tmp_path: Path) -> None:
    path = _population(tmp_path, customers=20, days=30, seed=1)
    assert fold_file_to_json(path, jobs=1, secret=SECRET) == _one_process(path)


def test_groups_join_through_chains_of_lines(tmp_path: Path) -> None:
    # A-B on one line, B-C on another, C-D on a third: one person, whatever part the first line went to.
    lines = [
        event("e1", {"customer_no": "A1", "email": "a@example.com"}, minutes=0),
        event("x1", {"cookie": "other-1"}, minutes=1),
        event("e2", {"email": "A@Example.com", "phone": "07700 900123"}, minutes=2),
        event("x2", {"cookie": "other-2"}, minutes=3),
        event("e3", {"phone": "+44 7700 900123", "cookie": "k-1"}, minutes=4),
        event("e4", {"cookie": "k-1"}, typ="purchase", minutes=5),
        event("e5", {"cookie": "k-1"}, typ="refund", minutes=6),
    ]
    path = tmp_path / "chain.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = fold_file_to_json(path, jobs=2, secret=SECRET)
    assert got == _one_process(path)
    customers = json.loads(got)["customers"]
    assert sorted(sorted(c["identifiers"]) for c in customers) == [
        ["cookie"], ["cookie"], ["cookie", "customer_no", "email", "phone"]]
    assert json.loads(got)["rejected"] == []


def test_a_backfill_channel_by_channel_folds_in_parts_to_the_bytes_of_one_fold(tmp_path: Path) -> None:
    # Channel files one after another: late events in components the guardrails kept apart, resolved
    # again in event-time order in whichever part holds them (their lines read again by byte offset).
    events = [e for e in generate(300, 365, seed=7) if e["event_id"].startswith("ev-")]
    ordered = sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))
    by_channel = [e for channel in ("branch", "phone", "web", "email", "sms") for e in ordered
                  if e.get("channel") == channel]
    path = tmp_path / "backfill.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in by_channel), encoding="utf-8")
    as_of = datetime(2026, 1, 3, tzinfo=UTC)
    one = _one_process(path, as_of=as_of)
    assert any(d["decision"] == "refolded" for d in json.loads(one)["identity_decisions"])
    assert fold_file_to_json(path, jobs=2, as_of=as_of, secret=SECRET) == one


@pytest.mark.parametrize("jobs", [[], ["--jobs", "1"]])
def test_the_command_prints_the_fold(tmp_path: Path, jobs: list[str]) -> None:
    path = _population(tmp_path, customers=30, days=60, seed=5)
    env = {**os.environ, "TOUCHPOINT_IDENTIFIER_KEY": SECRET.decode()}
    result = subprocess.run([sys.executable, "-m", "touchpoint", "fold", str(path), "--as-of", "2026-06-01T00:00:00Z",
                             *jobs], env=env, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout == _one_process(path, as_of=datetime(2026, 6, 1, tzinfo=UTC)) + b"\n"


_LINE = st.one_of(
    st.tuples(_IDS, st.sampled_from(["web", "purchase", "refund", "call"]), st.integers(0, 90 * 1440)),
    st.sampled_from(["", "not json", '{"tick": "2025-04-01T00:00:00Z"}', '{"tick": "2025-06-15T00:00:00Z"}',
                     '{"tick": "soon"}']),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=st.lists(_LINE, max_size=30), as_of=st.sampled_from([None, datetime(2025, 7, 1, tzinfo=UTC)]))
def test_any_log_folds_in_parts_to_the_bytes_of_one_fold(tmp_path: Path, log: list[object],
                                                        as_of: datetime | None) -> None:
    # Few identifiers, so groups join and merge; minutes up to 90 days apart, so the log's clock refuses some
    # events (max_ahead_days 30) and a refused or rejected event may hold the latest time the grouping presumed.
    lines = log_lines(log)
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert fold_file_to_json(path, jobs=2, as_of=as_of, secret=SECRET) == _one_process(path, as_of=as_of)


def test_lines_are_numbered_alike_whatever_the_cuts(tmp_path: Path) -> None:
    # Three parts of a small file: one long line spans both cuts of the scan; then a one-line file,
    # whose second and third byte ranges are empty.
    lines = [event("e1", {"customer_no": "A"}, minutes=0), "x" * 20_000,
             event("e2", {"customer_no": "B"}, minutes=1), "", event("e3", {"customer_no": "A"}, minutes=2)]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")  # and no newline after the last line
    got = fold_file_to_json(path, jobs=3, secret=SECRET)
    assert got == _one_process(path)
    assert [r["event_id"] for r in json.loads(got)["rejected"]] == ["line 2"]
    path.write_text(lines[1] + "\n", encoding="utf-8")
    assert fold_file_to_json(path, jobs=3, secret=SECRET) == _one_process(path)


def test_a_part_that_dies_sends_the_fold_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = _population(tmp_path, customers=20, days=30, seed=2)

    def killed(*_: object) -> None:
        os._exit(9)  # as the OOM killer would: no answer, no exception

    monkeypatch.setattr("touchpoint.fold_parallel._fold_part", killed)
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        assert fold_file_to_json(path, jobs=2, secret=SECRET) == _one_process(path)
    assert "fold part 0 failed (RuntimeError('it ended without an answer')); folding in one process" in [
        r.getMessage() for r in caplog.records]


def test_a_grouping_that_splits_one_identifier_sends_the_fold_to_one_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Two spellings of one phone that the group key (wrongly, here) tells apart: each part keys the phone.
    lines = [event(f"e{n}", {"phone": phone}, minutes=n) for n, phone in
             enumerate(["07700 900123", "+447700900123", "07700 900123", "+447700900123"])]
    path = tmp_path / "split.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr("touchpoint.fold_parallel._group_key", lambda kind, value, *_: f"{kind}~{value}")
    with caplog.at_level(logging.INFO, logger=_LOGGER):
        got = fold_file_to_json(path, jobs=2, secret=SECRET)
    assert got == _one_process(path)
    assert len(json.loads(got)["customers"]) == 1
    assert "folding in one process: an identifier was keyed in two parts (the grouping missed a link)" in [
        r.getMessage() for r in caplog.records]
