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
    result = subprocess.run([sys.executable, "-m", "touchpoint", "demo"], env=settings_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    rows = re.search(r"(\d+) events became rows in `interactions`", out)
    assert rows is not None and int(rows.group(1)) > 1000, out
    known = re.search(r"the known person .* is cus_[0-9a-f]{16}: (\d+) interactions", out)
    assert known is not None and int(known.group(1)) >= 5, out  # five channels, once per demo run
    assert "bad message is on" in out and "undecodable" in out
    points = re.search(r"loyalty: (\d+) points issued, (\d+) reversed", out)
    assert points is not None and int(points.group(1)) > 0, out
    dormant = re.search(r"alerts active: (\d+) dormancy", out)
    assert dormant is not None and int(dormant.group(1)) > 0, out  # 120 days of history, some lapse
