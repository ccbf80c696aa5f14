"""Unit tests of provider.requester.thaw_guard, the process that thaws what a killed or hung requester
left frozen: the protocol with an injected ioctl (EOF, deadline, "thawed"), and the real process
outliving a SIGKILLed requester's whole process group. Real FIFREEZE needs a real filesystem: the
lab test kills `shadowlun create` during a real hold. Every wait is bounded."""
from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provider.requester.thaw_guard import FITHAW, ThawGuard, guard
from test_volumes import FakeIoctl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Three mount points (directories here), opened as the guard opens them."""
    opened = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        opened[str(tmp_path / name)] = os.open(tmp_path / name, os.O_RDONLY | os.O_DIRECTORY)
    yield opened
    for fd in opened.values():
        os.close(fd)


def commands(*lines: str, close: bool = True) -> tuple[int, int]:
    """A pipe with `lines` written in one go (as they may arrive); the write end closed unless not."""
    r, w = os.pipe()
    if lines:
        os.write(w, "".join(f"{line}\n" for line in lines).encode())
    if close:
        os.close(w)
        w = -1
    return r, w


def run_guard(fds: dict[str, int], lines: tuple[str, ...], close: bool = True, seconds: float = 10.0,
              ioctl: FakeIoctl | None = None):
    ioctl = ioctl or FakeIoctl()
    r, w = commands(*lines, close=close)
    try:
        started = time.monotonic()
        outcome = guard(fds, seconds, r, ioctl=ioctl, arm_timeout=5.0)
        return outcome, ioctl, time.monotonic() - started
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_eof_during_the_hold_thaws_every_mountpoint_in_reverse(fds):
    outcome, ioctl, took = run_guard(fds, ("hold",))
    assert ioctl.calls == [("THAW", m) for m in reversed(fds)]
    assert outcome.why == "the requester went away during the hold without thawing"
    assert outcome.thawed == {m: "thawed" for m in reversed(fds)} and not outcome.failed
    assert took < 1.0  # at once, not at the deadline


def test_the_deadline_thaws_while_the_requester_stays_silent(fds):
    outcome, ioctl, took = run_guard(fds, ("hold",), close=False, seconds=0.3)
    assert 0.3 <= took < 2.0
    assert ioctl.calls == [("THAW", m) for m in reversed(fds)]
    assert outcome.why == "writes held longer than 0.3 s"


def test_thawed_means_no_thaw_even_when_it_arrives_with_hold(fds):
    outcome, ioctl, _ = run_guard(fds, ("hold", "thawed"))
    assert ioctl.calls == [] and outcome.why is None


def test_eof_before_the_hold_thaws_nothing(fds):
    outcome, ioctl, _ = run_guard(fds, ())
    assert ioctl.calls == [] and outcome.why is None


def test_not_frozen_is_fine_and_other_errors_are_failures(fds):
    a, b, c = fds
    ioctl = FakeIoctl(fail={(FITHAW, a): errno.EINVAL, (FITHAW, b): errno.EIO})
    outcome, _, _ = run_guard(fds, ("hold",), ioctl=ioctl)
    assert outcome.thawed == {c: "thawed", b: f"FITHAW: {os.strerror(errno.EIO)}", a: "was not frozen"}
    assert outcome.failed
    assert len(ioctl.calls) == 3  # all tried


REQUESTER = """
import sys, time
from provider.requester.thaw_guard import ThawGuard
g = ThawGuard.start(sys.argv[1:], 30.0)
g.hold()
print(g.proc.pid, flush=True)
time.sleep(60)
"""


def test_the_guard_outlives_a_killed_requester_group_and_thaws_at_once(tmp_path):
    """The requester and its whole process group SIGKILLed during the hold: the guard (its own
    session) thaws at once, says so on the stderr it inherited, and exits."""
    mps = [str(tmp_path / n) for n in ("x", "y")]
    for m in mps:
        os.mkdir(m)
    requester = subprocess.Popen([sys.executable, "-c", REQUESTER, *mps], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True, cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert select.select([requester.stdout], [], [], 20)[0], "the requester never held"
        guard_pid = int(requester.stdout.readline())
        assert os.getpgid(guard_pid) != requester.pid  # not in the group killed below
        os.killpg(requester.pid, signal.SIGKILL)
        killed = time.monotonic()
        requester.wait(5)
        err = b""
        while time.monotonic() - killed < 5:  # the guard holds the stderr pipe until it exits
            if not select.select([requester.stderr], [], [], 0.2)[0]:
                continue
            chunk = os.read(requester.stderr.fileno(), 4096)
            if not chunk:
                break
            err += chunk
        took = time.monotonic() - killed
    finally:
        if requester.poll() is None:
            os.killpg(requester.pid, signal.SIGKILL)
            requester.wait()
        requester.stdout.close()
        requester.stderr.close()
    text = err.decode()
    assert "shadowlun-thaw-guard: the requester went away during the hold without thawing" in text, text
    assert all(m in text for m in mps), text  # each named with what FITHAW said (not frozen here)
    assert took < 3.0, text
    gone_by = time.monotonic() + 2  # its stderr closes a moment before it exits
    while running(guard_pid) and time.monotonic() < gone_by:
        time.sleep(0.02)
    assert not running(guard_pid)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for init, or a subreaper, to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_guard_that_cannot_start_is_an_error_naming_why(tmp_path):
    with pytest.raises(RuntimeError, match="exited with status 2"):  # argparse: no mount point
        ThawGuard.start([], 1.0)
    with pytest.raises(RuntimeError, match="cannot run"):
        ThawGuard.start([str(tmp_path)], 1.0, python=str(tmp_path / "no-python"))
