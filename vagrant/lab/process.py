"""Processes the lab started in the background (QEMU, vde_switch), known by their pid files."""
from __future__ import annotations

import os
from pathlib import Path


def alive_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process still exists, else None (stale or missing file)."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
