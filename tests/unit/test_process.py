"""Component lifecycle on a trivial real process (a Python HTTP server): start, reuse, stop."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from touchpoint.errors import StackError
from touchpoint.stack.process import Component, port_open, tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_component(home: Path, port: int) -> Component:
    return Component(
        name="web", home=home, host="127.0.0.1", ports=(port,), marker=f"http.server {port}",
        prepare=lambda: None,
        argv=lambda: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready=lambda: port_open("127.0.0.1", port), start_timeout_s=20,
    )


def test_start_twice_then_stop(tmp_path: Path) -> None:
    component = http_component(tmp_path, free_port())
    assert "started" in component.start()
    pid = component.pid()
    assert pid is not None
    assert component.start() == f"web: already running (pid {pid}) "
    assert component.status().startswith(f"web: running (pid {pid}), ready")
    assert component.stop() == f"web: stopped (pid {pid})"
    assert component.pid() is None
    assert component.stop() == "web: not running"


def test_port_taken_by_stranger(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        component = http_component(tmp_path, squatter.getsockname()[1])
        with pytest.raises(StackError, match="is taken by another process"):
            component.start()


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    component = http_component(tmp_path, free_port())
    component.pid_file.parent.mkdir(parents=True)
    component.pid_file.write_text("1")  # pid 1 is alive but is not our server
    assert component.pid() is None
    assert not component.pid_file.exists()


def test_process_that_dies_reports_its_log(tmp_path: Path) -> None:
    component = Component(
        name="dies", home=tmp_path, host="127.0.0.1", ports=(), marker="never",
        prepare=lambda: None, argv=lambda: [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        ready=lambda: False, start_timeout_s=20,
    )
    with pytest.raises(StackError, match="exited with code 3") as raised:
        component.start()
    assert "boom" in str(raised.value)


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert tail(log, 2) == "line 98\nline 99"
    assert tail(tmp_path / "missing.log", 5) == ""
