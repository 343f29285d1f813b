"""Starting, watching and stopping the stack's processes.

A component runs as a detached process (its own session, so a Ctrl-C in the
terminal that started it does not kill it) with its output in a log file and
its pid in a pid file. A pid file is trusted only if that pid is alive and
its command line still names the component's marker, so a recycled pid is
never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from touchpoint.errors import StackError

# Children started by this process, kept so that they are reaped when we stop
# them (and not reported as leaked while they are meant to outlive a call).
_children: dict[int, subprocess.Popen[bytes]] = {}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Component:
    """One process of the stack.

    :param name: short name used for pid and log files (``kafka``).
    :param host: the address it serves on.
    :param ports: ports it must own; any of them taken by a stranger is an error.
    :param marker: a string that appears in its command line, used to check a pid.
    :param prepare: idempotent set-up run before start (fetch, format, init).
    :param argv: the command that runs it in the foreground.
    :param ready: returns True once it serves; polled after start.
    :param stop_signal: the signal that makes it shut down cleanly.
    """

    name: str
    home: Path
    host: str
    ports: Sequence[int]
    marker: str
    prepare: Callable[[], None]
    argv: Callable[[], list[str]]
    ready: Callable[[], bool]
    describe: str = ""
    stop_signal: int = signal.SIGTERM
    env: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None
    start_timeout_s: float = 90.0

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if self.marker not in cmdline:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def start(self) -> str:
        """Start unless already running; returns what happened, for the user."""
        pid = self.pid()
        if pid is not None:
            if not self.ready():
                self._wait_ready(pid)
            return f"{self.name}: already running (pid {pid}) {self.describe}"
        for port in self.ports:
            if port_open(self.host, port):
                raise StackError(
                    f"{self.name}: port {self.host}:{port} is taken by another process "
                    f"(not one this stack started); stop it or choose another port in the TOUCHPOINT_* settings"
                )
        started = time.monotonic()
        self.prepare()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - argv is ours
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
                user=self.run_as,
            )
        _children[proc.pid] = proc
        self.pid_file.write_text(str(proc.pid))
        self._wait_ready(proc.pid, proc)
        took = time.monotonic() - started
        return f"{self.name}: started (pid {proc.pid}) in {took:.1f}s {self.describe}"

    def _wait_ready(self, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                _children.pop(proc.pid, None)
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name}: exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file, 15)}"
                )
            if self.ready():
                return
            time.sleep(0.3)
        raise StackError(f"{self.name}: not ready after {self.start_timeout_s:.0f}s (pid {pid}); see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop our process (never anyone else's); returns what happened."""
        pid = self.pid()
        if pid is None:
            return f"{self.name}: not running"
        _signal_group(pid, self.stop_signal)
        child = _children.pop(pid, None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            outcome = "killed after not stopping in time"
        else:
            outcome = "stopped"
        if child is not None:
            child.wait()
        self.pid_file.unlink(missing_ok=True)
        return f"{self.name}: {outcome} (pid {pid})"

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return f"{self.name}: stopped"
        state = "ready" if self.ready() else "starting or unhealthy"
        return f"{self.name}: running (pid {pid}), {state} {self.describe}"


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """Terminate a child process and wait for it, killing it if it does not stop in time; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
