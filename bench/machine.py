"""The machine's size, printed next to every benchmark figure."""

from __future__ import annotations

import os
import platform


def mem_total_gib() -> float:
    """Total memory in GiB from /proc/meminfo (0.0 where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def machine_line() -> str:
    """One line describing the machine: cores, memory, Python."""
    return (f"machine: {os.cpu_count()} cores, {mem_total_gib():.1f} GiB, "
            f"Python {platform.python_version()} on {platform.system()}")
