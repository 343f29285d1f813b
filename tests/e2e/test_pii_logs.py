"""No clear identifier in any log line or span: the demo at debug level with tracing on, scanned.

The demo (README command 1) runs a small population with a fixed seed, its
children (worker, projection writers, gateway, lookup API) logging at
``DEBUG`` and exporting spans over OTLP to a receiver in this test. Then
every line the children logged during the run, the demo's own standard
error, and every attribute of every span are searched for each e-mail
address, phone number, customer number and card number the demo fed in,
as given and normalised. (Cookies and device ids are generated from the
event clock and are not searched; they identify a browser, not a person.)
The demo's standard output is its report to the person running it, not a
log, and is left out.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backbone.demo import child_logs
from tests.e2e.otlp import Receiver, running_receiver
from tests.fix_stack import REPO, settings_env
from touchpoint.core.normalise import InvalidIdentifier, normalise
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

SEED, CUSTOMERS, DAYS = 4242, 80, 60
SEARCHED = ("customer_no", "email", "phone", "card")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def fed_in(secret: bytes) -> set[str]:
    """Every searched identifier the demo publishes, as given and normalised (and the demo's known person)."""
    forms = {"C00000042", "ann@example.com"}
    for event in generate(CUSTOMERS, DAYS, seed=SEED, start=datetime.now(UTC) - timedelta(days=DAYS)):
        identifiers = event.get("identifiers")
        for kind, value in (identifiers.items() if isinstance(identifiers, dict) else ()):
            if kind in SEARCHED and isinstance(value, str) and len(value.strip()) >= 6:
                forms |= {value.strip(), re.sub(r"[\s-]", "", value)}
                try:
                    display = normalise(kind, value, secret=secret).display
                except InvalidIdentifier:
                    continue  # refused at the edge, with a reason that never quotes it
                if kind != "card":
                    forms.add(display)
    return forms


def test_no_clear_identifier_in_logs_or_spans_of_the_demo(settings: Settings, receiver: Receiver) -> None:
    before = {path: _size(path) for path in child_logs(settings)}
    env = {**settings_env(settings), "TOUCHPOINT_LOG_LEVEL": "DEBUG", "TOUCHPOINT_TRACING": "true",
           "TOUCHPOINT_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "2000",
           "TOUCHPOINT_GATEWAY_PORT": "18290", "TOUCHPOINT_API_PORT": "18292"}
    result = subprocess.run([sys.executable, "-m", "touchpoint", "demo", "--customers", str(CUSTOMERS), "--days",
                             str(DAYS), "--seed", str(SEED), "--no-serve"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    lines = result.stderr.splitlines()
    for path, size in before.items():
        with path.open("rb") as log:
            log.seek(size)
            lines += log.read().decode(errors="replace").splitlines()
    debug = sum('"level": "DEBUG"' in line or "[D]" in line or " DEBUG " in line for line in lines)
    assert len(lines) > 200 and debug > 20, f"{len(lines)} lines, {debug} at debug: the scan would be vacuous"
    with receiver.lock:
        spans = list(receiver.spans)
    assert {s.name for s in spans} >= {"gateway", "publish", "ingest", "identity", "profile", "project"}

    forms = fed_in(settings.identifier_key.get_secret_value().encode())
    assert len(forms) > 200
    clear = re.compile("|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)))
    assert clear.search(result.stdout), "the scanner finds the known person the demo's report names"
    found_in_logs = sorted({match[-4:] for line in lines for match in clear.findall(line)})
    found_in_spans = sorted({f"{s.name}.{key}" for s in spans for key, value in s.attributes.items()
                             if clear.search(value)})
    assert found_in_logs == [], f"clear identifiers (last four shown) in {len(lines)} log lines: {found_in_logs}"
    assert found_in_spans == [], f"clear identifiers in span attributes: {found_in_spans}"


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
