"""Text from a request or a file that UTF-8 cannot encode (lone surrogates) never breaks an answer or a log line."""

from __future__ import annotations

import json
import logging

import pytest

from touchpoint.jsontext import dumps, printable
from touchpoint.logs import JsonFormatter, TextFormatter


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ({"id": "Zoë"}, '{"id": "Zoë"}'),  # encodable text keeps its characters
        ({"id": "bad-\ud800"}, '{"id": "bad-\\ud800"}'),  # a lone surrogate goes back out as its escape
        (["\udfff", "é"], '["\\udfff", "\\u00e9"]'),
    ],
)  # fmt: skip
def test_dumps_always_encodes(doc: object, text: str) -> None:
    out = dumps(doc)
    assert out == text
    assert json.loads(out.encode("utf-8")) == doc


def test_printable_escapes_only_what_utf8_cannot_encode() -> None:
    assert printable("Zoë \ud83d") == "Zoë \\ud83d"
    assert printable("plain") == "plain"


def test_log_lines_with_a_lone_surrogate_encode() -> None:
    record = logging.makeLogRecord({"msg": "refused %s", "args": ("bad-\ud800",), "event": "e-\udc80"})
    assert TextFormatter("%(message)s").format(record).encode("utf-8") == b"refused bad-\\ud800"
    line = JsonFormatter().format(record)
    assert json.loads(line.encode("utf-8"))["event"] == "e-\udc80"
