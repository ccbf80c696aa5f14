"""Commands in a lab VM over SSH, as Vagrant reaches its machines: a loopback-forwarded port,
the lab's own key, the image's host key pinned, one multiplexed connection per VM."""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandFailed, LabError

HOST_KEY_ALIAS = "shadowlun-lab"
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class SSH:
    vm: str
    port: int
    key: Path
    known_hosts: Path
    control_dir: Path

    def argv(self, *extra: str) -> list[str]:
        return [
            "ssh", "-p", str(self.port), "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", f"HostKeyAlias={HOST_KEY_ALIAS}", "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
            "-o", "ControlPersist=300", "-o", "LogLevel=ERROR",
            *extra, "root@127.0.0.1",
        ]

    def run(
        self,
        command: str | list[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        input: str | bytes | None = None,
    ) -> Result:
        """Run a shell command line (or an argv, quoted for the remote shell) as root."""
        line = command if isinstance(command, str) else shlex.join(command)
        return run_remote(self.vm, self.argv(), line, check=check, timeout=timeout, input=input)

    def close(self) -> None:
        subprocess.run([*self.argv("-O", "exit")], capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)

    def interactive(self, command: list[str] | None = None) -> int:
        """An interactive shell (or command) for a developer: `python -m lab ssh host-b`."""
        return subprocess.call([*self.argv("-t"), *([" ".join(command)] if command else [])])


def run_remote(vm: str, ssh_argv: list[str], line: str, *, check: bool = True,
               timeout: float = DEFAULT_TIMEOUT_S, input: str | bytes | None = None) -> Result:
    """`line` run by the remote shell that `ssh_argv` (an ssh command without its command)
    reaches: bounded, with its output; CommandFailed on a non-zero exit when `check`."""
    binary = isinstance(input, bytes)
    try:
        proc = subprocess.run(
            [*ssh_argv, line], input=input, capture_output=True, timeout=timeout,
            text=not binary, stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{vm}: command did not finish within {timeout:.0f} s: {line}") from None
    out, err = (proc.stdout, proc.stderr) if not binary else (
        proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
    result = Result(proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandFailed(vm, line, proc.returncode, out, err)
    return result
