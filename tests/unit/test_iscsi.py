"""Unit tests of provider.hardware.iscsi with a recording fake runner and a fake sysfs tree laid out as
the kernel does it: /sys/class/iscsi_session/sessionM -> /sys/devices/platform/hostH/sessionM/...,
disks under .../sessionM/targetH:0:0/H:0:0:L/block/sdX, /sys/block/sdX and
/sys/bus/scsi/devices/H:0:0:L -> there."""
from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from provider.contract.hresult import HResult, VssRuntimeError, VssUserError
from provider.commands import command_text
from provider.hardware import iscsi
from provider.hardware.iscsi import (
    Initiator,
    format_portal,
    initiator_name,
    normalize_wwid,
    parse_portal,
)

TARGET = "iqn.2026-11.lab.shadowlun:array.target"
OTHER_TARGET = "iqn.2026-11.lab.other:t"
PORTAL = "10.87.0.10:3260"
WWID = "naa.6001405fa5badb6f1504973818978195"
WWID2 = "naa.60014051111111111111111111111111"
SECRET = "s3cret-chap-Password"


# --- fakes -------------------------------------------------------------------------------------

@dataclass
class Result:
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""


class FakeRunner:
    """Records every argv; `on(*words, ...)` scripts the result of commands containing all words
    (first matching rule wins; an `effect` runs before the result is returned)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.rules: list[tuple[tuple[str, ...], Result, Callable[[list[str]], None] | None]] = []

    def on(self, *words: str, rc: int = 0, stdout: str = "", stderr: str = "",
           effect: Callable[[list[str]], None] | None = None) -> None:
        self.rules.append((words, Result(rc, stdout, stderr), effect))

    def __call__(self, argv: list[str], check: bool = True) -> Result:
        self.calls.append(list(argv))
        for words, result, effect in self.rules:
            if all(w in argv for w in words):
                if effect:
                    effect(argv)
                if check and result.returncode:
                    raise AssertionError("the initiator must pass check=False")
                return result
        return Result()

    def having(self, *words: str) -> list[list[str]]:
        return [c for c in self.calls if all(w in c for w in words)]

    def index(self, *words: str) -> int:
        return next(i for i, c in enumerate(self.calls) if all(w in c for w in words))


class FakeSys:
    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("class/iscsi_session", "class/iscsi_connection", "class/scsi_host", "block"):
            (root / d).mkdir(parents=True, exist_ok=True)

    def session(self, sid: int, host: int, target: str = TARGET, address: str = "10.87.0.10",
                port: int = 3260) -> None:
        dev = self.root / f"devices/platform/host{host}/session{sid}"
        sess = dev / f"iscsi_session/session{sid}"
        sess.mkdir(parents=True)
        (sess / "targetname").write_text(target + "\n")
        (self.root / f"class/iscsi_session/session{sid}").symlink_to(sess)
        conn = dev / f"connection{sid}:0/iscsi_connection/connection{sid}:0"
        conn.mkdir(parents=True)
        (conn / "persistent_address").write_text(address + "\n")
        (conn / "persistent_port").write_text(f"{port}\n")
        (self.root / f"class/iscsi_connection/connection{sid}:0").symlink_to(conn)
        (self.root / f"class/scsi_host/host{host}").mkdir(exist_ok=True)

    def disk(self, name: str, host: int, sid: int, lun: int, wwid: str) -> Path:
        sdev = self.root / f"devices/platform/host{host}/session{sid}/target{host}:0:0/{host}:0:0:{lun}"
        sdev.mkdir(parents=True)
        block = sdev / "block" / name
        block.mkdir(parents=True)
        (block / "device").symlink_to(sdev)
        (self.root / "block" / name).symlink_to(block)
        bus = self.root / "bus/scsi/devices"
        bus.mkdir(parents=True, exist_ok=True)
        (bus / sdev.name).symlink_to(sdev)
        (sdev / "wwid").write_text(wwid + "\n")  # last: a reader that sees the WWID sees a whole disk
        return sdev

    def remove_disk(self, name: str) -> None:
        (self.root / "block" / name).unlink()


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "sys")


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


def make(runner: FakeRunner, sysfs: FakeSys, **kw: Any) -> Initiator:
    kw.setdefault("events", None)
    return Initiator(runner, sysfs.root, sysfs.root.parent / "dev", **kw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- identity and portals ---------------------------------------------------------------------

def test_initiator_name(tmp_path: Path) -> None:
    f = tmp_path / "initiatorname.iscsi"
    f.write_text("## DO NOT EDIT\n# InitiatorName=iqn.commented:out\nInitiatorName=iqn.1993-08.org.debian:01:abc\n")
    assert initiator_name(f) == "iqn.1993-08.org.debian:01:abc"


def test_initiator_name_not_generated_yet(tmp_path: Path) -> None:
    f = tmp_path / "initiatorname.iscsi"
    f.write_text("GenerateName=yes\n")
    with pytest.raises(VssRuntimeError, match="start iscsid once") as e:
        initiator_name(f)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    with pytest.raises(VssRuntimeError, match="missing"):
        initiator_name(tmp_path / "nope")


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1", ("10.0.0.1", 3260)),
    ("10.0.0.1:3261", ("10.0.0.1", 3261)),
    ("10.0.0.1:3260,1", ("10.0.0.1", 3260)),
    ("[fd00::1]:3262", ("fd00::1", 3262)),
    ("fd00::1", ("fd00::1", 3260)),
    ("array.san", ("array.san", 3260)),
])
def test_parse_portal(text: str, expected: tuple[str, int]) -> None:
    assert parse_portal(text) == expected


def test_format_portal_brackets_ipv6() -> None:
    assert format_portal("10.0.0.1") == "10.0.0.1:3260"
    assert format_portal("fd00::1", 3261) == "[fd00::1]:3261"
    with pytest.raises(VssUserError):
        parse_portal("10.0.0.1:x")


def test_command_text_hides_chap_secret() -> None:
    argv = ["iscsiadm", "-m", "node", "-o", "update", "-n", "node.session.auth.password", "-v", SECRET]
    assert SECRET not in command_text(argv)
    assert command_text(argv).endswith("-v ***")


# --- login ---------------------------------------------------------------------------------------

def logs_in(sysfs: FakeSys, sid: int = 1, host: int = 3) -> Callable[[list[str]], None]:
    return lambda argv: sysfs.session(sid, host)


def test_login_creates_record_sets_manual_scan_and_chap(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", effect=logs_in(sysfs))
    runner.on("-o")
    runner.on("node", rc=21, stderr="iscsiadm: No records found")  # the lookup
    host = make(runner, sysfs).login(TARGET, "10.87.0.10", "host-b", SECRET)
    assert host == 3
    node = ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL]
    assert runner.calls[0] == node
    assert runner.calls[1] == node + ["-o", "new"]
    [update] = runner.having("-o", "update")  # one iscsiadm for every setting
    pairs = update[update.index("update") + 1:]
    assert pairs[0::4] == ["-n"] * 6 and pairs[2::4] == ["-v"] * 6
    assert dict(zip(pairs[1::4], pairs[3::4])) == {
        "node.startup": "manual",
        "node.session.scan": "manual",
        "node.session.initial_login_retry_max": "3",
        "node.session.auth.authmethod": "CHAP",
        "node.session.auth.username": "host-b",
        "node.session.auth.password": SECRET,
    }
    assert runner.calls[-1] == node + ["--login"]
    assert runner.index("--login") > runner.index("node.session.scan")  # settings before login


def test_login_is_idempotent(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", effect=logs_in(sysfs, sid=4, host=7))
    initiator = make(runner, sysfs)
    assert initiator.login(TARGET, PORTAL, "u", SECRET) == 7
    assert initiator.login(TARGET, PORTAL, "u", SECRET) == 7
    assert len(runner.having("--login")) == 1
    assert not runner.having("new")  # the record existed (lookup exit 0): never overwritten


def test_login_reuses_a_session_found_in_sysfs(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(2, 5, target=OTHER_TARGET)
    sysfs.session(9, 6, address="10.87.0.10", port=3260)
    assert make(runner, sysfs).login(TARGET, "10.87.0.10", None, None) == 6
    assert not runner.having("--login")
    assert runner.having("node.session.auth.authmethod", "None")


def test_login_session_exists_exit_is_success(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", rc=15, stderr="iscsiadm: session exists", effect=logs_in(sysfs, 2, 4))
    assert make(runner, sysfs).login(TARGET, PORTAL, "u", SECRET) == 4


def test_login_authorization_failure_says_so(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", rc=24, stderr="iscsiadm: Could not login to [iface: default, target: x, portal: "
                                       "10.87.0.10,3260].\niscsiadm: initiator reported error "
                                       "(24 - iSCSI login failed due to authorization failure)")
    runner.on("-o")
    runner.on("node", rc=21)
    with pytest.raises(VssRuntimeError) as e:
        make(runner, sysfs).login(TARGET, PORTAL, "u", SECRET)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    msg = e.value.message
    assert "authorization failure" in msg and "CHAP" in msg and TARGET in msg and PORTAL in msg
    assert "exit 24" in msg and "initiator reported error" in msg
    assert SECRET not in msg
    assert runner.calls[-1][-2:] == ["-o", "delete"]  # the record this login made (with the secret) goes


def test_login_failure_keeps_a_record_it_did_not_create(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", rc=8, stderr="iscsiadm: connection timed out")
    with pytest.raises(VssRuntimeError, match="timed out"):
        make(runner, sysfs).login(TARGET, PORTAL, "u", SECRET)
    assert not runner.having("delete")


def test_login_without_a_session_in_sysfs_is_an_error(runner: FakeRunner, sysfs: FakeSys) -> None:
    with pytest.raises(VssRuntimeError, match="sysfs shows no such session"):
        make(runner, sysfs).login(TARGET, PORTAL, "u", SECRET)


def test_login_needs_both_chap_fields(runner: FakeRunner, sysfs: FakeSys) -> None:
    with pytest.raises(VssUserError) as e:
        make(runner, sysfs).login(TARGET, PORTAL, "u", None)
    assert e.value.hresult == HResult.E_INVALIDARG
    assert runner.calls == []


def test_failed_setting_is_reported_without_the_secret(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("node.session.auth.password", rc=7, stderr="iscsiadm: invalid parameter")
    with pytest.raises(VssRuntimeError, match="node.session.auth.password") as e:
        make(runner, sysfs).login(TARGET, PORTAL, "u", SECRET)
    assert SECRET not in str(e.value)


def test_sessions_from_sysfs(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.session(10, 11, target=OTHER_TARGET, address="fd00::10", port=3261)
    assert make(runner, sysfs).sessions() == [
        {"sid": 1, "target": TARGET, "portal": PORTAL, "host": 3},
        {"sid": 10, "target": OTHER_TARGET, "portal": "[fd00::10]:3261", "host": 11},
    ]


# --- scan, find, wait -----------------------------------------------------------------------------

def test_scan_lun_writes_the_lun_only(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    make(runner, sysfs).scan_lun(3, 5, WWID)
    assert (sysfs.root / "class/scsi_host/host3/scan").read_text() == "- - 5"


def test_a_device_left_at_the_lun_by_another_lu_is_deleted_before_the_scan(runner: FakeRunner,
                                                                          sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    stale = sysfs.disk("sda", 3, 1, 0, WWID2)  # the LUN's number, given by the array to a new LU
    kept = sysfs.disk("sdb", 3, 1, 1, "naa.60014052222222222222222222222222")  # another LUN
    (sysfs.root.parent / "dev").mkdir()
    (sysfs.root.parent / "dev/sda").touch()
    make(runner, sysfs).scan_lun(3, 0, WWID)
    assert (stale / "delete").read_text() == "1" and not (kept / "delete").exists()
    assert (sysfs.root / "class/scsi_host/host3/scan").read_text() == "- - 0"


def test_a_device_already_of_the_lu_is_left_as_it_is(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    dev = sysfs.disk("sda", 3, 1, 0, WWID)
    make(runner, sysfs).scan_lun(3, 0, "3" + WWID[4:])  # udev's form of the same identity
    assert not (dev / "delete").exists()


def test_a_stale_device_in_use_is_refused_and_kept(runner: FakeRunner, sysfs: FakeSys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs.session(1, 3)
    stale = sysfs.disk("sda", 3, 1, 0, WWID2)

    def busy(path, flags):
        assert flags & os.O_EXCL and str(path).endswith("/sda")
        raise OSError(errno.EBUSY, "Device or resource busy")
    monkeypatch.setattr(iscsi.os, "open", busy)
    with pytest.raises(VssRuntimeError) as e:
        make(runner, sysfs).scan_lun(3, 0, WWID)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    assert all(s in e.value.message for s in ("3:0:0:0 (sda", WWID2, WWID, "in use (Device or resource busy)"))
    assert not (stale / "delete").exists() and not (sysfs.root / "class/scsi_host/host3/scan").exists()


def test_scan_of_a_missing_host_is_a_veto(runner: FakeRunner, sysfs: FakeSys) -> None:
    with pytest.raises(VssRuntimeError, match="host42"):
        make(runner, sysfs).scan_lun(42, 0, WWID)


def test_find_disk_by_wwid(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.disk("sdb", 3, 1, 0, WWID2)
    sysfs.disk("sdc", 3, 1, 1, WWID)
    initiator = make(runner, sysfs)
    assert initiator.find_disk(WWID) == "sdc"
    assert initiator.find_disk(WWID.upper().replace("NAA.", "naa.")) == "sdc"
    assert initiator.find_disk("3" + WWID[4:]) == "sdc"  # udev's ID_SERIAL form
    assert initiator.find_disk("naa.6001405000000000000000000000000f") is None


def test_normalize_wwid() -> None:
    assert normalize_wwid("6001405ABC") == "naa.6001405abc"
    assert normalize_wwid(" naa.6001405abc\n") == "naa.6001405abc"
    assert normalize_wwid("t10.LIO-ORG x") == "t10.lio-org x"


class DiskArrives:
    """Fake udev events: the disk appears during the `after`-th wait; each wait takes its time."""

    def __init__(self, sysfs: FakeSys, clock: FakeClock, after: int) -> None:
        self.sysfs, self.clock, self.after = sysfs, clock, after
        self.waits: list[float] = []
        self.closed = False

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if len(self.waits) == self.after:
            self.clock.now += 0.1
            self.sysfs.disk("sdd", 3, 1, 2, WWID)
            return True
        self.clock.now += timeout
        return False

    def close(self) -> None:
        self.closed = True


def test_wait_for_disks_wakes_on_udev_event(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    clock = FakeClock()
    events = DiskArrives(sysfs, clock, after=3)
    initiator = make(runner, sysfs, events=lambda: events, clock=clock, sleep=clock.sleep)
    assert initiator.wait_for_disks({WWID: 2}, timeout=30) == {WWID: "sdd"}
    assert events.waits == [0.5, 0.5, 0.5] and events.closed


def test_wait_for_disks_polls_without_udev(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    clock = FakeClock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)
        if len(sleeps) == 4:
            sysfs.disk("sde", 3, 1, 4, WWID)

    initiator = make(runner, sysfs, clock=clock, sleep=sleep)
    assert initiator.wait_for_disks({WWID: 4}, timeout=10) == {WWID: "sde"}
    assert sleeps == [0.5] * 4


def test_wait_for_disks_sees_a_disk_added_by_another_thread(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    adder = threading.Timer(0.3, lambda: sysfs.disk("sdf", 3, 1, 5, WWID))
    adder.start()
    started = time.monotonic()
    try:
        assert make(runner, sysfs).wait_for_disks({WWID: 5}, timeout=10) == {WWID: "sdf"}
    finally:
        adder.join()
    assert time.monotonic() - started < 5


def test_wait_for_disks_timeout_explains(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.disk("sdb", 3, 1, 0, WWID2)
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock, sleep=clock.sleep)
    with pytest.raises(VssRuntimeError) as e:
        initiator.wait_for_disks({WWID: 0}, timeout=2)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK
    msg = e.value.message
    assert f"no disk with WWID {WWID} appeared within 2 s" in msg
    assert f"sdb={WWID2}" in msg and "sysfs every 0.5 s" in msg
    assert clock.now == pytest.approx(1002.0)


def test_wait_for_disks_rescans_at_growing_intervals(runner: FakeRunner, sysfs: FakeSys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs.session(1, 3)
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock, sleep=clock.sleep)
    scans: list[float] = []
    monkeypatch.setattr(initiator, "scan_lun", lambda host, lun, wwid: scans.append(clock.now - 1000))
    with pytest.raises(VssRuntimeError, match=r"LUN\(s\) 2 on host3 rescanned 2 times"):
        initiator.wait_for_disks({WWID: 2}, timeout=12, host=3)
    assert scans == [pytest.approx(3.0), pytest.approx(9.0)]


def test_broken_udev_monitor_falls_back_to_polling(runner: FakeRunner, sysfs: FakeSys) -> None:
    class Broken:
        closed = False

        def wait(self, timeout: float) -> bool:
            raise OSError("netlink socket closed")

        def close(self) -> None:
            Broken.closed = True

    clock = FakeClock()
    initiator = make(runner, sysfs, events=Broken, clock=clock, sleep=clock.sleep)
    with pytest.raises(VssRuntimeError, match="within 1 s"):
        initiator.wait_for_disks({WWID: 0}, timeout=1)
    assert Broken.closed


# --- removal, logout, disconnect ------------------------------------------------------------------

def test_remove_disk_flushes_then_deletes(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sdev = sysfs.disk("sdb", 3, 1, 0, WWID)

    def not_deleted_yet(argv: list[str]) -> None:
        assert not (sdev / "delete").exists()

    runner.on("blockdev", effect=not_deleted_yet)
    make(runner, sysfs).remove_disk("/dev/sdb")
    assert runner.calls == [["blockdev", "--flushbufs", str(sysfs.root.parent / "dev/sdb")]]
    assert (sdev / "delete").read_text() == "1"


def test_remove_disk_already_gone(runner: FakeRunner, sysfs: FakeSys) -> None:
    make(runner, sysfs).remove_disk("sdq")
    assert runner.calls == []


def test_remove_disk_stops_when_flush_fails(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sdev = sysfs.disk("sdb", 3, 1, 0, WWID)
    runner.on("blockdev", rc=1, stderr="blockdev: ioctl error on BLKFLSBUF: Input/output error")
    with pytest.raises(VssRuntimeError, match="Input/output error; not deleted"):
        make(runner, sysfs).remove_disk("sdb")
    assert not (sdev / "delete").exists()


def test_logout_and_forget_tolerate_nothing_to_do(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("node", rc=21, stderr="iscsiadm: No matching sessions found")
    initiator = make(runner, sysfs)
    initiator.logout(TARGET, PORTAL)
    initiator.forget(TARGET, "10.87.0.10")
    assert runner.calls[0][-1] == "--logout"
    assert runner.calls[1] == ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-o", "delete"]


def test_logout_failure_is_a_veto(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--logout", rc=10, stderr="iscsiadm: Could not logout")
    with pytest.raises(VssRuntimeError, match="logout from .* exit 10.*Could not logout"):
        make(runner, sysfs).logout(TARGET, PORTAL)


def test_disconnect_removes_disks_before_logout(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sdb = sysfs.disk("sdb", 3, 1, 0, WWID)
    sdc = sysfs.disk("sdc", 3, 1, 1, WWID2)

    def both_deleted(argv: list[str]) -> None:
        assert (sdb / "delete").read_text() == "1" and (sdc / "delete").read_text() == "1"

    runner.on("--logout", effect=both_deleted)
    make(runner, sysfs).disconnect(TARGET, PORTAL, ["sdb", "/dev/sdc"])
    kinds = [c[0] if c[0] == "blockdev" else c[-1] for c in runner.calls]
    assert kinds == ["blockdev", "blockdev", "--logout", "delete"]


def test_disconnect_keeps_a_session_with_other_disks(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.disk("sdb", 3, 1, 0, WWID)
    sysfs.disk("sdc", 3, 1, 1, WWID2)  # another LUN of the same target, still in use
    make(runner, sysfs).disconnect(TARGET, PORTAL, ["sdb"])
    assert [c[0] for c in runner.calls] == ["blockdev"]


def test_disconnect_without_session_still_forgets(runner: FakeRunner, sysfs: FakeSys) -> None:
    make(runner, sysfs).disconnect(TARGET, PORTAL, [])
    assert runner.calls == [["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-o", "delete"]]


def test_disconnect_collects_every_error(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.session(2, 4, target=OTHER_TARGET)
    sysfs.disk("sdb", 3, 1, 0, WWID)
    sdc = sysfs.disk("sdc", 3, 1, 1, WWID2)
    sysfs.disk("sdx", 4, 2, 0, "naa.600140522222222222222222222222")  # another target's disk
    runner.on("blockdev", str(sysfs.root.parent / "dev/sdb"), rc=1, stderr="blockdev: cannot open /dev/sdb: No such device")
    with pytest.raises(VssRuntimeError) as e:
        make(runner, sysfs).disconnect(TARGET, PORTAL, ["sdb", "sdx", "sdc"])
    msg = e.value.message
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    assert "2 step(s) failed" in msg
    assert "sdb: flushing sdb failed" in msg
    assert "sdx is not a LUN of the session" in msg
    assert (sdc / "delete").read_text() == "1"  # the failures did not stop the rest
    assert not runner.having("--logout")  # sdb is still there: the session stays


def test_disconnect_reports_a_failed_logout_and_keeps_the_record(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    runner.on("--logout", rc=10, stderr="iscsiadm: Could not logout of all requested sessions")
    with pytest.raises(VssRuntimeError, match="1 step.*Could not logout") as e:
        make(runner, sysfs).disconnect(TARGET, PORTAL, ["sdz"])
    assert "sdz" not in e.value.message  # gone already: not an error
    assert not runner.having("-o", "delete")  # the record of a live session stays


def test_real_default_runner_uses_c_locale() -> None:
    from provider.commands import SubprocessRunner

    out = SubprocessRunner(timeout=10)(["sh", "-c", "echo $LC_ALL"]).stdout
    assert out.strip() == "C"
    with pytest.raises(VssRuntimeError, match="exit 3"):
        SubprocessRunner(timeout=10)(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(VssRuntimeError, match="no answer within 0.2 s"):
        SubprocessRunner(timeout=0.2)(["sleep", "5"])


# --- connect: one login (or none), one scan pass, one wait, undone on failure --------------------

def arriving(sysfs: FakeSys, clock: FakeClock, disks: list[tuple[str, int, str]]) -> Callable[[float], None]:
    """A sleep during which these disks (name, LUN, WWID) appear on session 1 of host 3."""
    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        for name, lun, wwid in disks:
            if not (sysfs.root / "block" / name).exists():
                sysfs.disk(name, 3, 1, lun, wwid)
    return sleep


def test_connect_over_an_existing_session_runs_no_iscsiadm(runner: FakeRunner, sysfs: FakeSys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs.session(1, 3)
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock,
                     sleep=arriving(sysfs, clock, [("sdb", 4, WWID), ("sdc", 5, WWID2)]))
    scans: list[tuple[int, int]] = []
    monkeypatch.setattr(initiator, "scan_lun", lambda host, lun, wwid: scans.append((host, lun)))
    assert initiator.connect(TARGET, PORTAL, "u", SECRET, {4: WWID, 5: WWID2}, 30) == {WWID: "sdb", WWID2: "sdc"}
    assert runner.calls == [] and scans == [(3, 4), (3, 5)]


def test_connect_logs_in_once_for_all_its_luns(runner: FakeRunner, sysfs: FakeSys) -> None:
    runner.on("--login", effect=logs_in(sysfs))
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock,
                     sleep=arriving(sysfs, clock, [("sdb", 0, WWID), ("sdc", 1, WWID2)]))
    assert initiator.connect(TARGET, PORTAL, "u", SECRET, {0: WWID, 1: WWID2}, 30) == {WWID: "sdb", WWID2: "sdc"}
    assert len(runner.having("--login")) == 1
    assert (sysfs.root / "class/scsi_host/host3/scan").read_text() == "- - 1"


def test_a_failed_connect_removes_the_disks_it_made_then_its_session_and_record(runner: FakeRunner,
                                                                               sysfs: FakeSys) -> None:
    runner.on("--login", effect=logs_in(sysfs))
    runner.on("-o")
    runner.on("node", "-p", PORTAL, rc=21, stderr="iscsiadm: No records found")  # the lookup: a new record
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock, sleep=arriving(sysfs, clock, [("sdb", 0, WWID)]))
    with pytest.raises(VssRuntimeError) as e:
        initiator.connect(TARGET, PORTAL, "u", SECRET, {0: WWID, 1: WWID2}, 2)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK and WWID2 in e.value.message
    after = runner.calls[runner.index("--login") + 1:]
    assert [c[0] if c[0] == "blockdev" else c[-1] for c in after] == ["blockdev", "--logout", "delete"]


def test_a_failed_connect_over_a_session_it_found_keeps_that_session(runner: FakeRunner, sysfs: FakeSys) -> None:
    sysfs.session(1, 3)
    sysfs.disk("sdx", 3, 1, 7, "naa.600140533333333333333333333333")  # in use, not this call's
    clock = FakeClock()
    initiator = make(runner, sysfs, clock=clock, sleep=arriving(sysfs, clock, [("sdb", 0, WWID)]))
    runner.on("blockdev", rc=1, stderr="blockdev: cannot flush")
    with pytest.raises(VssRuntimeError) as e:
        initiator.connect(TARGET, PORTAL, "u", SECRET, {0: WWID, 1: WWID2}, 2)
    assert "undoing the connect: flushing sdb failed" in e.value.message  # the cleanup's failure, added
    assert [c[0] for c in runner.calls] == ["blockdev"] and (sysfs.root / "block/sdx").exists()
