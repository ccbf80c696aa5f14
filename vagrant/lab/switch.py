"""A private Ethernet segment between the lab VMs: a vde_switch on a Unix socket.

The VMs' SAN and management NICs plug into it with QEMU's vde netdev. It has no tap and no
route on the host, so lab traffic exists only between the VMs and never leaves the machine.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .process import alive_pid
from .errors import LabError

START_TIMEOUT_S = 10
STOP_TIMEOUT_S = 10


@dataclass
class Switch:
    name: str
    directory: Path  # vde_switch's control directory; QEMU's vde sock= points here

    @property
    def pidfile(self) -> Path:
        return self.directory.with_suffix(".pid")

    def pid(self) -> int | None:
        return alive_pid(self.pidfile)

    def start(self) -> None:
        if self.pid():
            return
        proc = subprocess.run(
            ["vde_switch", "--sock", str(self.directory), "--daemon", "--pidfile", str(self.pidfile)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise LabError(f"vde_switch {self.name} failed to start: {proc.stderr.strip()}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.directory / "ctl").exists():
            if time.monotonic() > deadline:
                raise LabError(f"vde_switch {self.name}: no control socket after {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then wait (bounded) until it has exited, so that nothing later races its
        removal of the control directory; SIGKILL if it has not."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid():
                os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
