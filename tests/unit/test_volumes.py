"""Unit tests of provider.requester.volumes: volume -> SCSI disks on fake sysfs trees laid out as the kernel
does it (/sys/class/block, /sys/block, /sys/dev/block links into /sys/devices; partitions inside
their disk's directory; dm devices with slaves/ and dm/name), mountinfo files, and the Freezer with
a fake ioctl (real FIFREEZE needs root and a real filesystem: the lab tests do that)."""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError
from provider.requester.volumes import (
    FIFREEZE,
    FITHAW,
    Freezer,
    filesystems_on,
    hold_writes,
    read_mounts,
    resolve_volume,
)


class FakeBlocks:
    """A fake /sys with SCSI disks, virtio disks, loop devices, partitions and dm devices."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("class/block", "block", "dev/block"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.luns = 0

    def _register(self, name: str, block: Path, majmin: str, whole: bool = True) -> None:
        block.mkdir(parents=True, exist_ok=True)
        (block / "dev").write_text(majmin + "\n")
        (self.root / "class/block" / name).symlink_to(block)
        (self.root / "dev/block" / majmin).symlink_to(block)
        if whole:
            (self.root / "block" / name).symlink_to(block)

    def scsi_disk(self, name: str, majmin: str) -> None:
        self.luns += 1
        sdev = self.root / f"devices/platform/host2/session1/target2:0:0/2:0:0:{self.luns}"
        sdev.mkdir(parents=True)
        (sdev / "type").write_text("0\n")
        block = sdev / "block" / name
        self._register(name, block, majmin)
        (block / "device").symlink_to(sdev)

    def virtio_disk(self, name: str, majmin: str) -> None:
        vdev = self.root / f"devices/pci0000:00/0000:00:0{len(name)}.0/virtio{majmin[-1]}"
        vdev.mkdir(parents=True)
        (vdev / "features").write_text("0\n")  # no SCSI 'type' attribute
        block = vdev / "block" / name
        self._register(name, block, majmin)
        (block / "device").symlink_to(vdev)

    def loop(self, name: str, majmin: str) -> None:
        self._register(name, self.root / "devices/virtual/block" / name, majmin)

    def partition(self, disk: str, name: str, majmin: str) -> None:
        block = Path(os.path.realpath(self.root / "class/block" / disk)) / name
        self._register(name, block, majmin, whole=False)
        (block / "partition").write_text(name[-1] + "\n")

    def dm(self, name: str, majmin: str, dm_name: str, slaves: list[str]) -> None:
        block = self.root / "devices/virtual/block" / name
        self._register(name, block, majmin)
        (block / "dm").mkdir()
        (block / "dm/name").write_text(dm_name + "\n")
        (block / "slaves").mkdir()
        for slave in slaves:
            (block / "slaves" / slave).symlink_to(os.path.realpath(self.root / "class/block" / slave))


def mountinfo(path: Path, *mounts: tuple[str, str, str, str]) -> Path:
    """Write a mountinfo file of (mount point, major:minor, fstype, source)."""
    lines = ["22 1 0:21 / /proc rw,nosuid - proc proc rw"]
    for i, (mp, majmin, fstype, source) in enumerate(mounts, start=30):
        lines.append(f"{i} 1 {majmin} / {mp} rw,relatime shared:{i} - {fstype} {source} rw")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def blocks(tmp_path: Path) -> FakeBlocks:
    return FakeBlocks(tmp_path / "sys")


@pytest.fixture
def lab(blocks: FakeBlocks, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A host: root on virtio vda1; LUNs sdb (partitioned), sdc, sdd (partitioned) from the array;
    /srv on sdb1, LVM vg0/data on sdb2, vg1/lv-x across sdc and sdd1, a crypt device on vg1/lv-x,
    an LV spanning sdc and vda2, tmpfs on /run, a loop device."""
    blocks.virtio_disk("vda", "254:0")
    blocks.partition("vda", "vda1", "254:1")
    blocks.partition("vda", "vda2", "254:2")
    blocks.scsi_disk("sdb", "8:16")
    blocks.partition("sdb", "sdb1", "8:17")
    blocks.partition("sdb", "sdb2", "8:18")
    blocks.scsi_disk("sdc", "8:32")
    blocks.scsi_disk("sdd", "8:48")
    blocks.partition("sdd", "sdd1", "8:49")
    blocks.loop("loop0", "7:0")
    blocks.dm("dm-0", "253:0", "vg0-data", ["sdb2"])
    blocks.dm("dm-1", "253:1", "vg1-lv--x", ["sdc", "sdd1"])
    blocks.dm("dm-2", "253:2", "secret", ["dm-1"])
    blocks.dm("dm-3", "253:3", "vg2-mixed", ["sdc", "vda2"])
    dev = tmp_path / "dev"
    (dev / "disk/by-id").mkdir(parents=True)
    (dev / "sdb1").touch()
    (dev / "disk/by-id/wwn-0x6001405aa-part1").symlink_to("../../sdb1")
    mounts = mountinfo(tmp_path / "mountinfo",
                       ("/", "254:1", "ext4", "/dev/vda1"),
                       ("/run", "0:25", "tmpfs", "tmpfs"),
                       ("/srv", "8:17", "ext4", "/dev/sdb1"),
                       ("/data", "253:0", "xfs", "/dev/mapper/vg0-data"),
                       ("/mnt/my\\040files", "253:2", "ext4", "/dev/mapper/secret"),
                       ("/srv-again", "8:17", "ext4", "/dev/sdb1"),
                       ("/mixed", "253:3", "ext4", "/dev/mapper/vg2-mixed"),
                       ("/img", "7:0", "ext4", "/dev/loop0"),
                       ("/dev/shm", "0:26", "tmpfs", "tmpfs"))
    return blocks.root, mounts, dev


def resolve(lab: tuple[Path, Path, Path], volume: str) -> list[str]:
    sysfs, mounts, dev = lab
    return resolve_volume(volume, sysfs, mounts, dev_root=dev)


# --- resolve_volume ------------------------------------------------------------------------------

def test_partition_leads_to_its_disk(lab: tuple[Path, Path, Path]) -> None:
    assert resolve(lab, "/srv") == ["sdb"]
    assert resolve(lab, "/srv/") == ["sdb"]
    assert resolve(lab, "/dev/sdb1") == ["sdb"]
    assert resolve(lab, "/dev/sdb") == ["sdb"]
    assert resolve(lab, "/dev/disk/by-id/wwn-0x6001405aa-part1") == ["sdb"]


def test_dm_over_a_partition(lab: tuple[Path, Path, Path]) -> None:
    assert resolve(lab, "/data") == ["sdb"]
    assert resolve(lab, "/dev/mapper/vg0-data") == ["sdb"]
    assert resolve(lab, "/dev/vg0/data") == ["sdb"]
    assert resolve(lab, "/dev/dm-0") == ["sdb"]


def test_lvm_over_two_disks(lab: tuple[Path, Path, Path]) -> None:
    assert resolve(lab, "/dev/vg1/lv-x") == ["sdc", "sdd"]
    assert resolve(lab, "/dev/mapper/vg1-lv--x") == ["sdc", "sdd"]


def test_dm_stacked_on_dm(lab: tuple[Path, Path, Path]) -> None:
    assert resolve(lab, "/mnt/my files") == ["sdc", "sdd"]
    assert resolve(lab, "/dev/mapper/secret") == ["sdc", "sdd"]


def test_virtio_disk_refused(lab: tuple[Path, Path, Path]) -> None:
    with pytest.raises(VssUserError) as e:
        resolve(lab, "/")
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED
    assert "vda is a virtio-blk disk, not a SCSI disk" in e.value.message
    assert "ext4 at /" in e.value.message


def test_volume_partly_on_a_virtio_disk_refused(lab: tuple[Path, Path, Path]) -> None:
    with pytest.raises(VssUserError, match=r"is on sdc, vda: vda is a virtio-blk disk") as e:
        resolve(lab, "/mixed")
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED


def test_loop_and_tmpfs_refused(lab: tuple[Path, Path, Path]) -> None:
    with pytest.raises(VssUserError, match="loop0 is a loop device"):
        resolve(lab, "/img")
    with pytest.raises(VssUserError, match=r"tmpfs at /run \(tmpfs\) is not on a block device") as e:
        resolve(lab, "/run")
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED
    with pytest.raises(VssUserError, match="tmpfs at /dev/shm") as e:
        resolve(lab, "/dev/shm")  # a mount point under /dev, not a block device
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED


@pytest.mark.parametrize("volume, hint", [
    ("/nope", "neither a mount point nor a block device"),
    ("/srv/sub/dir", "inside the filesystem mounted at /srv"),
    ("/dev/sdz", "/dev/sdz: no such block device"),
    ("/dev/mapper/vg9-none", "no such block device"),
    ("", "neither"),
])
def test_unknown_volume(lab: tuple[Path, Path, Path], volume: str, hint: str) -> None:
    with pytest.raises(VssUserError) as e:
        resolve(lab, volume)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND
    assert hint in e.value.message


def test_topmost_mount_wins(blocks: FakeBlocks, tmp_path: Path) -> None:
    blocks.virtio_disk("vda", "254:0")
    blocks.scsi_disk("sdb", "8:16")
    mounts = mountinfo(tmp_path / "mi", ("/mnt", "254:0", "ext4", "/dev/vda"), ("/mnt", "8:16", "xfs", "/dev/sdb"))
    assert resolve_volume("/mnt", blocks.root, mounts) == ["sdb"]


def test_mountinfo_parsing(tmp_path: Path) -> None:
    f = tmp_path / "mi"
    f.write_text("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw\n")
    [m] = read_mounts(f)
    assert (m.mount_point, m.major, m.minor, m.root, m.fstype, m.source) == \
        ("/mnt/with space", 98, 0, "/mnt1", "ext3", "/dev/root")


# --- filesystems_on -----------------------------------------------------------------------------

def test_filesystems_on_disks(lab: tuple[Path, Path, Path]) -> None:
    sysfs, mounts, _ = lab
    assert filesystems_on(["sdb"], sysfs, mounts) == ["/srv", "/data"]  # /srv-again: same filesystem
    assert filesystems_on(["/dev/sdd"], sysfs, mounts) == ["/mnt/my files"]
    assert filesystems_on(["sdc"], sysfs, mounts) == ["/mnt/my files", "/mixed"]
    assert filesystems_on(["sde"], sysfs, mounts) == []
    assert filesystems_on([], sysfs, mounts) == []


# --- Freezer --------------------------------------------------------------------------------------

class FakeIoctl:
    """Records (FREEZE|THAW, path) in call order; `fail` maps (request, path) to an errno."""

    def __init__(self, fail: dict[tuple[int, str], int] | None = None,
                 hook: Callable[[int, str], None] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or {}
        self.hook = hook
        self.fds: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, fd: int, request: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.hook:
            self.hook(request, path)
        with self._lock:
            self.calls.append(({FIFREEZE: "FREEZE", FITHAW: "THAW"}[request], path))
            self.fds.append(fd)
        code = self.fail.get((request, path))
        if code:
            raise OSError(code, os.strerror(code))


class FakeTimer:
    last: FakeTimer  # the timer made most recently, so a test can fire it

    def __init__(self, seconds: float, callback: Callable[[], None]) -> None:
        self.seconds, self.callback = seconds, callback
        self.started = self.cancelled = False
        FakeTimer.last = self

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        self.callback()


@pytest.fixture
def mps(tmp_path: Path) -> list[str]:
    paths = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        paths.append(str(tmp_path / name))
    return paths


def test_freeze_all_then_thaw_in_reverse(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer)
    freezer.freeze(mps + [mps[0]])  # a duplicate is frozen once
    assert sorted(ioctl.calls) == [("FREEZE", m) for m in mps]
    assert freezer.frozen == mps
    assert FakeTimer.last.seconds == 10.0 and FakeTimer.last.started
    freezer.thaw()
    assert ioctl.calls[3:] == [("THAW", m) for m in reversed(mps)]
    assert FakeTimer.last.cancelled and freezer.frozen == [] and not freezer.watchdog_fired
    for fd in ioctl.fds:
        with pytest.raises(OSError):
            os.fstat(fd)  # every fd closed


def test_freezes_are_issued_concurrently(mps: list[str]) -> None:
    barrier = threading.Barrier(len(mps), timeout=5)

    def meet(request: int, path: str) -> None:
        if request == FIFREEZE:
            barrier.wait()  # sequential freezes would never all arrive here

    freezer = Freezer(ioctl=FakeIoctl(hook=meet), timer=FakeTimer)
    freezer.freeze(mps)
    freezer.thaw()


def test_watchdog_thaws_and_later_thaw_reports_timeout(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    freezer = Freezer(timeout=10.0, ioctl=ioctl, timer=FakeTimer)
    freezer.freeze(mps)
    FakeTimer.last.fire()
    assert freezer.watchdog_fired and freezer.frozen == []
    assert ioctl.calls[3:] == [("THAW", m) for m in reversed(mps)]
    with pytest.raises(VssRuntimeError) as e:
        freezer.thaw()
    assert e.value.hresult == HResult.VSS_E_HOLD_WRITES_TIMEOUT
    assert "held longer than 10 s" in e.value.message
    assert len(ioctl.calls) == 6  # nothing thawed twice


def test_real_watchdog_fires_inside_hold_writes(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    with pytest.raises(VssRuntimeError) as e:
        with hold_writes(mps, freezer=Freezer(timeout=0.1, ioctl=ioctl)):
            deadline = time.monotonic() + 5
            while len(ioctl.calls) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
    assert e.value.hresult == HResult.VSS_E_HOLD_WRITES_TIMEOUT
    assert [c[0] for c in ioctl.calls] == ["FREEZE"] * 3 + ["THAW"] * 3


def test_failed_freeze_thaws_the_others(mps: list[str]) -> None:
    ioctl = FakeIoctl(fail={(FIFREEZE, mps[1]): errno.EOPNOTSUPP})
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer)
    with pytest.raises(VssRuntimeError) as e:
        freezer.freeze(mps + ["/no/such/mountpoint"])
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED
    assert f"{mps[1]}: FIFREEZE: the filesystem does not support freezing" in e.value.message
    assert "/no/such/mountpoint: cannot open" in e.value.message
    assert sorted(p for op, p in ioctl.calls if op == "THAW") == [mps[0], mps[2]]
    assert freezer.frozen == [] and FakeTimer.last.cancelled


def test_thaw_collects_every_error(mps: list[str]) -> None:
    ioctl = FakeIoctl(fail={(FITHAW, mps[0]): errno.EINVAL, (FITHAW, mps[2]): errno.EIO})
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer)
    freezer.freeze(mps)
    with pytest.raises(VssRuntimeError) as e:
        freezer.thaw()
    msg = e.value.message
    assert f"{mps[0]}: FITHAW: was not frozen any more" in msg
    assert f"{mps[2]}: FITHAW: {os.strerror(errno.EIO)}" in msg
    assert [p for op, p in ioctl.calls if op == "THAW"] == list(reversed(mps))  # all tried


def test_freeze_that_hangs_past_the_watchdog(mps: list[str]) -> None:
    release = threading.Event()

    def hang(request: int, path: str) -> None:
        if request == FIFREEZE and path == mps[1]:
            release.wait(5)

    ioctl = FakeIoctl(hook=hang)
    freezer = Freezer(timeout=0.2, ioctl=ioctl)
    with pytest.raises(VssRuntimeError) as e:
        freezer.freeze(mps)
    assert e.value.hresult == HResult.VSS_E_FLUSH_WRITES_TIMEOUT
    assert f"{mps[1]}: FIFREEZE did not return within 0.2 s" in e.value.message
    release.set()
    deadline = time.monotonic() + 5
    while ("THAW", mps[1]) not in ioctl.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ("THAW", mps[1]) in ioctl.calls  # the late freeze undid itself
    assert sorted(p for op, p in ioctl.calls if op == "THAW") == sorted(mps)


def test_hold_writes_thaws_when_the_block_fails(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    with pytest.raises(VssRuntimeError) as e:
        with hold_writes(mps, freezer=Freezer(ioctl=ioctl, timer=FakeTimer)):
            raise VssRuntimeError(HResult.VSS_E_PROVIDER_VETO, "commit failed")
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    assert [op for op, _ in ioctl.calls].count("THAW") == 3


def test_hold_writes_timeout_wins_over_the_block_error(mps: list[str]) -> None:
    freezer = Freezer(ioctl=FakeIoctl(), timer=FakeTimer)
    with pytest.raises(VssRuntimeError) as e:
        with hold_writes(mps, freezer=freezer):
            FakeTimer.last.fire()
            raise VssRuntimeError(HResult.VSS_E_PROVIDER_VETO, "commit interrupted")
    assert e.value.hresult == HResult.VSS_E_HOLD_WRITES_TIMEOUT
    assert isinstance(e.value.__cause__, VssError) and "commit interrupted" in str(e.value.__cause__)


def test_hold_writes_notes_a_failed_thaw_on_the_block_error(mps: list[str]) -> None:
    freezer = Freezer(ioctl=FakeIoctl(fail={(FITHAW, mps[0]): errno.EIO}), timer=FakeTimer)
    with pytest.raises(RuntimeError) as e:
        with hold_writes(mps, freezer=freezer):
            raise RuntimeError("boom")
    assert any("thaw failed" in note for note in e.value.__notes__)


def test_freezing_twice_is_a_bad_state(mps: list[str]) -> None:
    freezer = Freezer(ioctl=FakeIoctl(), timer=FakeTimer)
    freezer.freeze(mps[:1])
    with pytest.raises(VssUserError) as e:
        freezer.freeze(mps[1:])
    assert e.value.hresult == HResult.VSS_E_BAD_STATE
    freezer.thaw()
    freezer.freeze(mps[1:])  # reusable after a thaw
    freezer.thaw()


# --- the Freezer and its thaw guard (provider.requester.thaw_guard) --------------------------------------------

class FakeGuard:
    """Records the guard's life among the ioctl calls: started, hold, released(thawed)."""

    def __init__(self, ioctl: FakeIoctl, fail: str = "") -> None:
        self.ioctl, self.fail = ioctl, fail
        self.started: list[tuple[list[str], float]] = []

    def __call__(self, mountpoints: list[str], seconds: float) -> FakeGuard:
        if self.fail == "start":
            raise RuntimeError("it exited with status 1")
        self.started.append((mountpoints, seconds))
        self.mountpoints = mountpoints
        return self

    def hold(self) -> None:
        if self.fail == "hold":
            raise RuntimeError("the guard (pid 1) is gone: Broken pipe")
        self.ioctl.calls.append(("GUARD", "hold"))

    def release(self, thawed: bool) -> None:
        self.ioctl.calls.append(("GUARD", f"released, thawed={thawed}"))


def test_the_guard_is_armed_before_the_hold_and_released_after_the_thaw(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    guard = FakeGuard(ioctl)
    hold = hold_writes(mps, freezer=Freezer(ioctl=ioctl, timer=FakeTimer, guard=guard))
    assert guard.started == [(mps, 10.5)] and ioctl.calls == []  # started when made, before `with`
    with hold:
        assert ioctl.calls[0] == ("GUARD", "hold") and sorted(ioctl.calls[1:]) == [("FREEZE", m) for m in mps]
    assert ioctl.calls[4:] == [("THAW", m) for m in reversed(mps)] + [("GUARD", "released, thawed=True")]
    assert len(guard.started) == 1


def test_the_guard_thaws_again_when_the_requester_could_not(mps: list[str]) -> None:
    ioctl = FakeIoctl(fail={(FITHAW, mps[1]): errno.EIO})
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer, guard=FakeGuard(ioctl))
    freezer.freeze(mps)
    with pytest.raises(VssRuntimeError):
        freezer.thaw()
    assert ioctl.calls[-1] == ("GUARD", "released, thawed=False")


def test_the_watchdog_releases_the_guard_once(mps: list[str]) -> None:
    ioctl = FakeIoctl()
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer, guard=FakeGuard(ioctl))
    freezer.freeze(mps)
    FakeTimer.last.fire()
    assert ioctl.calls[-1] == ("GUARD", "released, thawed=True")
    with pytest.raises(VssRuntimeError):
        freezer.thaw()
    assert [c for c in ioctl.calls if c[0] == "GUARD"] == [("GUARD", "hold"), ("GUARD", "released, thawed=True")]


def test_a_failed_freeze_releases_the_guard(mps: list[str]) -> None:
    ioctl = FakeIoctl(fail={(FIFREEZE, mps[1]): errno.EOPNOTSUPP})
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer, guard=FakeGuard(ioctl))
    with pytest.raises(VssRuntimeError):
        freezer.freeze(mps)
    assert ioctl.calls[-1] == ("GUARD", "released, thawed=True")


@pytest.mark.parametrize("fail", ["start", "hold"])
def test_no_freeze_without_a_guard(mps: list[str], fail: str) -> None:
    ioctl = FakeIoctl()
    freezer = Freezer(ioctl=ioctl, timer=FakeTimer, guard=FakeGuard(ioctl, fail=fail))
    with pytest.raises(VssRuntimeError) as e:
        freezer.freeze(mps)
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED and "writes are not held" in e.value.message
    assert not [c for c in ioctl.calls if c[0] == "FREEZE"] and freezer.frozen == []
    freezer.thaw()  # nothing held: nothing to do


def test_a_set_of_raw_volumes_holds_no_filesystem_and_starts_no_guard() -> None:
    """Volumes with no filesystem (raw LUNs) have nothing to freeze: the commit runs with no
    guard process, whose command line needs at least one mount point."""
    ioctl = FakeIoctl()
    guard = FakeGuard(ioctl)
    with hold_writes([], freezer=Freezer(ioctl=ioctl, timer=FakeTimer, guard=guard)):
        pass
    assert guard.started == [] and ioctl.calls == []
