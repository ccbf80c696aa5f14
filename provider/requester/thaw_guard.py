"""The thaw guard: a process of its own that thaws the filesystems a requester froze when the
requester dies or hangs during the hold (VSS cancels a hold after 10 s whatever happens, spec §3).

The Freezer's watchdog is a thread of the requester, so a SIGKILL of `shadowlun create` during
the hold would leave the filesystems frozen for ever and every writer on them hung. Before
freezing, the Freezer starts `python3 -m provider.requester.thaw_guard --seconds S MOUNTPOINT...` in a
session of its own (a kill of the requester's process group does not reach it), its stdin the
read end of a pipe whose write end only the requester holds. One line each:

    guard -> requester (stdout)  "ready"   the mount points are open: the requester may freeze
    requester -> guard (stdin)   "hold"    written just before the first FIFREEZE: S s from now
    requester -> guard (stdin)   "thawed"  the requester thawed everything itself: nothing to do

EOF after "hold" without "thawed" (the requester died, or its thaw failed) or S s after "hold"
⇒ the guard thaws every mount point (FITHAW; EINVAL, not frozen, is fine), then says what it did
on stderr and to syslog (the journal): only then, as either may be on a frozen filesystem. EOF
before "hold": nothing was frozen. The guard lives at most ARM_TIMEOUT_S + S s. It imports
nothing of the project, so that it starts fast.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import select
import subprocess
import sys
import syslog
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878    # _IOWR('X', 120, int)
ARM_TIMEOUT_S = 60.0   # from "ready" to "hold": the requester freezes right after starting us
START_TIMEOUT_S = 30.0  # from spawning the guard to its "ready": a Python start on a loaded host (about 1 s
                        # on an idle TCG VM); it comes before the hold, so a generous bound costs no held time
MARGIN_S = 0.5         # after the requester's own watchdog, which goes first while it is alive
IDENT = "shadowlun-thaw-guard"

Ioctl = Callable[[int, int], Any]


def fs_ioctl(fd: int, request: int) -> Any:
    return fcntl.ioctl(fd, request, 0)


@dataclass
class Outcome:
    """What the guard saw and did: `why` it acted (None: the requester thawed, or never froze)
    and, per mount point, what FITHAW said."""

    why: str | None
    thawed: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r not in ("thawed", "was not frozen") for r in self.thawed.values())


class _Commands:
    """The requester's lines on a pipe, read without blocking past a deadline."""

    def __init__(self, fd: int, clock: Callable[[], float]) -> None:
        self.fd, self.clock, self.buf = fd, clock, b""

    def next(self, until: float) -> str | None:
        """The next line; "" at EOF, None when `until` passed first."""
        while b"\n" not in self.buf:
            left = until - self.clock()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 64)
            if not chunk:
                return ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("ascii", "replace").strip()


def guard(fds: dict[str, int], seconds: float, commands: int, *, ioctl: Ioctl = fs_ioctl,
          arm_timeout: float = ARM_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Watch `commands` (the protocol above) and thaw `fds` (mount point -> open fd) when the
    requester goes away or overruns the hold. The fds are left open (the caller's)."""
    lines = _Commands(commands, clock)
    line = lines.next(clock() + arm_timeout)
    if line != "hold":  # EOF, silence or anything else before the hold: nothing was frozen
        return Outcome(None)
    deadline = clock() + seconds
    while True:
        line = lines.next(deadline)
        if line == "thawed":
            return Outcome(None)
        if line is None:
            return _thaw_all(fds, f"writes held longer than {seconds:g} s", ioctl)
        if line == "":
            return _thaw_all(fds, "the requester went away during the hold without thawing", ioctl)


def _thaw_all(fds: dict[str, int], why: str, ioctl: Ioctl) -> Outcome:
    out = Outcome(why)
    for mountpoint, fd in reversed(fds.items()):
        try:
            ioctl(fd, FITHAW)
            out.thawed[mountpoint] = "thawed"
        except OSError as e:
            out.thawed[mountpoint] = "was not frozen" if e.errno == errno.EINVAL else f"FITHAW: {e.strerror or e}"
    return out


def _report(outcome: Outcome) -> None:
    """Stderr (may be gone with the requester) and syslog; only after the thaw."""
    done = ", ".join(f"{m}: {r}" for m, r in outcome.thawed.items())
    message = f"{outcome.why}; thawing: {done}"
    syslog.openlog(IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR if outcome.failed else syslog.LOG_WARNING, message)
    try:
        print(f"{IDENT}: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m provider.requester.thaw_guard", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="the longest hold after 'hold'")
    parser.add_argument("mountpoints", nargs="+")
    args = parser.parse_args(argv)
    fds: dict[str, int] = {}
    for m in args.mountpoints:
        try:
            fds[m] = os.open(m, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # the requester cannot open it to freeze it either, and says so
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the requester may stop reading: no EPIPE later
    outcome = guard(fds, args.seconds, 0)
    if outcome.why:
        _report(outcome)
    return 1 if outcome.failed else 0


class ThawGuard:
    """The requester's side of a running guard: hold() before freezing, release() after."""

    def __init__(self, proc: subprocess.Popen[bytes], commands: int, mountpoints: list[str]) -> None:
        self.proc, self.mountpoints, self._commands = proc, mountpoints, commands

    @classmethod
    def start(cls, mountpoints: list[str], seconds: float, *, start_timeout: float = START_TIMEOUT_S,
              python: str = sys.executable) -> ThawGuard:
        """Start a guard for `mountpoints` and wait for its "ready", at most `start_timeout` s.
        RuntimeError with its reason when it does not come (the guard is killed then)."""
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps the guard from its EOF
        try:
            proc = subprocess.Popen([python, "-m", "provider.requester.thaw_guard", "--seconds", f"{seconds:g}", "--",
                                     *mountpoints], stdin=read_end, stdout=subprocess.PIPE,
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            os.close(write_end)
            raise RuntimeError(f"cannot run {python}: {e.strerror or e}") from None
        finally:
            os.close(read_end)
        assert proc.stdout is not None
        with proc.stdout:
            ready = select.select([proc.stdout], [], [], start_timeout)[0]
            line = proc.stdout.readline(4096).decode("utf-8", "replace").strip() if ready else ""
        if line == "ready":
            threading.Thread(target=proc.wait, name=f"thaw-guard-{proc.pid}", daemon=True).start()  # reaps it
            return cls(proc, write_end, list(mountpoints))
        os.close(write_end)
        if not ready:
            proc.kill()
        try:
            status = proc.wait(1.0)  # it closed its stdout: it is exiting
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        raise RuntimeError(line or (f"it exited with status {status}" if ready
                                    else f"no answer within {start_timeout:g} s"))

    def hold(self) -> None:
        """Writes are about to be held: the guard's deadline starts. RuntimeError if it is gone."""
        try:
            os.write(self._commands, b"hold\n")
        except OSError as e:
            raise RuntimeError(f"the guard (pid {self.proc.pid}) is gone: {e.strerror or e}") from None

    def release(self, thawed: bool) -> None:
        """End the guard: "thawed" when the requester thawed everything itself; otherwise the
        guard thaws once more (EOF). Idempotent."""
        if self._commands < 0:
            return
        try:
            if thawed:
                os.write(self._commands, b"thawed\n")
        except OSError:
            pass  # the guard is gone already (it overran its deadline and thawed)
        finally:
            os.close(self._commands)
            self._commands = -1


if __name__ == "__main__":
    sys.exit(main())
