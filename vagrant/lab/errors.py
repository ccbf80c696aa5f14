"""Errors of the lab: every failure says what was waited for, how long, and what the VM printed."""
from __future__ import annotations


class LabError(RuntimeError):
    """The lab could not be built, booted or driven."""


class CommandFailed(LabError):
    """A command in a VM exited non-zero; carries its exit status and output."""

    def __init__(self, vm: str, command: str, returncode: int, stdout: str, stderr: str) -> None:
        self.vm, self.command, self.returncode = vm, command, returncode
        self.stdout, self.stderr = stdout, stderr
        super().__init__(
            f"{vm}: command exited {returncode}: {command}\n"
            f"--- stdout ---\n{stdout[-4000:]}--- stderr ---\n{stderr[-4000:]}"
        )


class VMFailed(LabError):
    """A VM did not come up, or died; carries the tail of its serial console."""

    def __init__(self, vm: str, what: str, console_tail: str) -> None:
        self.vm, self.console_tail = vm, console_tail
        super().__init__(f"{vm}: {what}\n--- {vm} console (last lines) ---\n{console_tail}")
