"""README command 1 (`touchpoint demo`) runs end to end and says what happened."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.fix_stack import REPO, settings_env
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end(settings: Settings) -> None:
    # Ports of its own: the lookup bench and other tests may serve on the defaults.
    env = {**settings_env(settings), "TOUCHPOINT_GATEWAY_PORT": "18190", "TOUCHPOINT_API_PORT": "18192"}
    result = subprocess.run([sys.executable, "-m", "touchpoint", "demo", "--customers", "300", "--days", "120",
                             "--no-serve"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    events_in = re.search(r"events in: (\d+) of (\d+) \((\d+) web, e-mail and SMS events posted to the gateway, "
                          r"(\d+) branch and phone events through the producer library", out)
    assert events_in is not None, out
    delivered, generated, over_http, in_python = map(int, events_in.groups())
    assert over_http > 1000 and in_python > 1000 and over_http + in_python == generated
    assert 0.9 * generated < delivered < generated  # the generator makes a few bad events on purpose
    rows = re.search(r"(\d+) events became rows in `interactions`", out)
    assert rows is not None and 0.9 * delivered < int(rows.group(1)) <= delivered, out
    known = re.search(r"the known person .* is cus_[0-9a-f]{16}: (\d+) interactions", out)
    assert known is not None and int(known.group(1)) >= 5, out  # five channels, once per demo run
    merged = re.search(r"(\d+) ids merged into another customer", out)
    assert merged is not None and int(merged.group(1)) > 0, out
    points = re.search(r"loyalty: (\d+) points issued, (\d+) reversed", out)
    assert points is not None and int(points.group(1)) > 0 and int(points.group(2)) > 0, out
    dormant = re.search(r"alerts active: (\d+) dormancy", out)
    assert dormant is not None and int(dormant.group(1)) > 0, out  # 120 days of history, some lapse
    refused = re.search(r"(\d+) events refused at the edge .*, by reason:\n +(\d+) × identifiers", out)
    assert refused is not None and int(refused.group(1)) > 0, out
    # The generator's refunds of purchases nobody made are held on the cards, not dead-lettered.
    held = re.search(r"(\d+) accepted at the edge and not in `interactions`: refunds held .*; "
                     r"(\d+) refunds held now", out)
    assert held is not None and int(held.group(1)) > 0 and int(held.group(2)) > 0, out
    dead = re.search(r"(\d+) dead-lettered on `[\w.-]+dlq` during this run, by reason:\n(( +\d+ × .+\n)+)", out)
    assert dead is not None and int(dead.group(1)) >= 1 and "undecodable" in dead.group(2), out
    pages = dict(re.findall(r"^  (merged|dormant|churn risk|fuel and shop)\S* .*?(http://127\.0\.0\.1:18192/agent"
                            r"\?customer_id=cus_[0-9a-f]{16})$", out, flags=re.MULTILINE))
    assert set(pages) == {"merged", "dormant", "churn risk", "fuel and shop"}, out
    assert "gateway (HTTP)" in result.stderr and "folding and projecting" in result.stderr  # progress bars
