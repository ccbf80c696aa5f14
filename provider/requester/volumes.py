"""What the coordinator needs of a host's volumes: which SCSI disks (LUNs) carry a volume, which
filesystems live on given disks, and holding their writes (FIFREEZE/FITHAW) around
CommitSnapshots, the Linux equivalent of VSS's flush-and-hold with its 10 s watchdog (in the
requester, and out of it in `provider.requester.thaw_guard`, for a requester that is killed).

A volume is a mount point or a block device path. Everything is read from sysfs and mountinfo,
not from lsblk or udev links: sysfs is what the kernel has now, and the stack below a volume
(partition -> disk, dm/LVM -> slaves) is written there by the kernel itself.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.contract.hresult import HResult, VssError, vss_error
from provider.hardware.lun_info import is_supported
from provider.requester.thaw_guard import FIFREEZE, FITHAW, MARGIN_S, Ioctl, ThawGuard, fs_ioctl

log = logging.getLogger("shadowlun.volumes")

SYSFS = Path("/sys")
MOUNTINFO = Path("/proc/self/mountinfo")
DEV = Path("/dev")

HOLD_WRITES_TIMEOUT = 10.0  # s; VSS kernel support cancels a hold after 10 s (spec §3)

# What a non-SCSI whole disk is, by kernel name prefix, for the refusal message.
_KINDS = (("loop", "a loop device"), ("vd", "a virtio-blk disk"), ("nvme", "an NVMe namespace"),
          ("xvd", "a Xen disk"), ("zram", "a compressed RAM disk"), ("ram", "a RAM disk"),
          ("nbd", "a network block device"), ("rbd", "a Ceph RBD device"), ("mmcblk", "an MMC card"),
          ("sr", "a CD/DVD drive"), ("md", "an MD RAID array without members"))


# --- mountinfo ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    major: int
    minor: int
    root: str    # the path inside the filesystem that is mounted here ("/" unless a bind mount)
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mounts(mounts_file: Path = MOUNTINFO) -> list[Mount]:
    """The mounts of this mount namespace, in mountinfo order (parents before children)."""
    try:
        text = Path(mounts_file).read_text()
    except OSError as e:
        raise vss_error(HResult.VSS_E_UNEXPECTED, f"{mounts_file}: cannot read: {e.strerror or e}") from None
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        major, _, minor = fields[2].partition(":")
        mounts.append(Mount(mount_point=_unescape(fields[4]), major=int(major), minor=int(minor),
                            root=_unescape(fields[3]), fstype=fields[sep + 1],
                            source=_unescape(fields[sep + 2])))
    return mounts


# --- block devices in sysfs --------------------------------------------------------------------

def _class_block(sysfs_root: Path, name: str) -> Path:
    return sysfs_root / "class/block" / name


def _block_of_devnum(sysfs_root: Path, major: int, minor: int) -> str | None:
    link = sysfs_root / f"dev/block/{major}:{minor}"
    return Path(os.path.realpath(link)).name if link.exists() else None


def _dm_named(sysfs_root: Path, dm_name: str) -> str | None:
    """The kernel name (dm-3) of the device-mapper device called `dm_name` (vg-lv)."""
    for block in (sysfs_root / "class/block").glob("dm-*"):
        try:
            if (block / "dm/name").read_text().strip() == dm_name:
                return block.name
        except OSError:
            continue
    return None


def _lvm_dm_name(vg: str, lv: str) -> str:
    """LVM's device-mapper name of vg/lv: hyphens inside each part doubled, joined by one hyphen."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def _block_of_device_path(path: str, sysfs_root: Path, dev_root: Path) -> str | None:
    """The kernel block name of a /dev path: /dev/sdb1, /dev/dm-3, /dev/mapper/vg-lv, /dev/vg/lv,
    or any link to one (/dev/disk/by-id/...). None if it names no block device sysfs knows."""
    rel = os.path.relpath(os.path.normpath(path), str(DEV))
    if rel.startswith(".."):
        return None
    candidate = dev_root / rel
    parts = Path(rel).parts
    if os.path.exists(candidate):
        real = Path(os.path.realpath(candidate))
        if _class_block(sysfs_root, real.name).exists():
            return real.name
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat.S_ISBLK(st.st_mode):
            return _block_of_devnum(sysfs_root, os.major(st.st_rdev), os.minor(st.st_rdev))
        return None
    # No node under dev_root (a device that just went, or a test's fake sysfs): go by the name.
    if len(parts) == 1:
        return parts[0] if _class_block(sysfs_root, parts[0]).exists() else None
    if len(parts) == 2 and parts[0] == "mapper":
        return _dm_named(sysfs_root, parts[1])
    if len(parts) == 2:
        return _dm_named(sysfs_root, _lvm_dm_name(*parts))
    return None


def _stack(name: str, sysfs_root: Path, trail: tuple[str, ...] = ()) -> list[tuple[str, str | None]]:
    """(whole disk, partition or None) pairs at the bottom of block device `name`: a partition
    leads to its parent disk, a dm/md device to its slaves followed down recursively; a disk
    without slaves is a leaf with no partition."""
    if name in trail:
        return []  # a loop in sysfs should not exist; do not recurse forever if it does
    block = _class_block(sysfs_root, name)
    if (block / "partition").exists():
        return [(disk, name) for disk, _ in _stack(Path(os.path.realpath(block)).parent.name,
                                                    sysfs_root, trail + (name,))]
    slaves = sorted(p.name for p in (block / "slaves").glob("*"))
    if slaves:
        found: list[tuple[str, str | None]] = []
        for slave in slaves:
            for pair in _stack(slave, sysfs_root, trail + (name,)):
                if pair not in found:
                    found.append(pair)
        return found
    return [(name, None)]


def _leaves(name: str, sysfs_root: Path) -> list[str]:
    """The whole disks at the bottom of block device `name`."""
    return list(dict.fromkeys(disk for disk, _ in _stack(name, sysfs_root)))


def _not_scsi_reason(name: str) -> str:
    for prefix, kind in _KINDS:
        if name.startswith(prefix):
            return f"{name} is {kind}, not a SCSI disk"
    return f"{name} is not a SCSI disk"


def _sort_key(name: str) -> tuple[int, str]:
    return len(name), name  # sdz before sdaa


def _disks_of_block(name: str, what: str, sysfs_root: Path) -> list[str]:
    leaves = _leaves(name, sysfs_root)
    refused = [leaf for leaf in leaves if not is_supported(sysfs_root / "class/block" / leaf)]
    if refused:
        reasons = "; ".join(_not_scsi_reason(leaf) for leaf in refused)
        raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED, f"{what} is on {', '.join(leaves)}: {reasons}")
    return sorted(leaves, key=_sort_key)


def resolve_volume(volume: str, sysfs_root: Path = SYSFS, mounts_file: Path = MOUNTINFO, *,
                   dev_root: Path = DEV) -> list[str]:
    """The whole SCSI disks ('sdb', ...) under a volume: a mount point, or a block device path
    (/dev/sdb1, /dev/mapper/vg-lv, /dev/vg/lv, /dev/dm-3, /dev/sdb).

    Partitions lead to their disk, dm devices (LVM, crypt, multipath) to their slaves, recursively.
    A mount point is matched exactly (the topmost mount there); a path inside a filesystem is
    refused with the mount point to use. VssUserError VSS_E_OBJECT_NOT_FOUND for what is neither;
    VSS_E_VOLUME_NOT_SUPPORTED, with the reason, when any part of it is not on a SCSI disk
    (virtio, loop, NVMe, tmpfs, btrfs/overlay/NFS with no block device of their own).
    `dev_root` stands for /dev in tests.
    """
    name, what = _volume_block(volume, Path(sysfs_root), Path(mounts_file), Path(dev_root))
    return _disks_of_block(name, what, Path(sysfs_root))


def _volume_block(volume: str, sysfs_root: Path, mounts_file: Path, dev_root: Path) -> tuple[str, str]:
    """The block device (kernel name) of a volume, and how to name it in messages."""
    if volume.startswith("/dev/"):
        name = _block_of_device_path(volume, sysfs_root, dev_root)
        if name is not None:
            return name, volume
    path = os.path.realpath(volume) if volume else ""
    mounts = read_mounts(mounts_file)
    here = [m for m in mounts if m.mount_point == path]
    if not here and volume.startswith("/dev/"):  # and not a mount point either (/dev/shm is one)
        raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"{volume}: no such block device")
    if not here:
        parents = [m.mount_point for m in mounts
                   if path.startswith(m.mount_point.rstrip("/") + "/") and m.mount_point != "/"]
        hint = f"; it is inside the filesystem mounted at {max(parents, key=len)}" if parents else ""
        raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                        f"{volume!r} is neither a mount point nor a block device under /dev{hint}")
    mount = here[-1]  # the last mount on a path hides the earlier ones
    what = f"{mount.fstype} at {mount.mount_point}"
    name = _block_of_devnum(sysfs_root, mount.major, mount.minor)
    if name is None:
        raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED,
                        f"{what} ({mount.source}) is not on a block device of its own "
                        f"(device {mount.major}:{mount.minor})")
    return name, what


@dataclass(frozen=True)
class Extent:
    """Where a volume lies on one of its disks, in bytes; `partition` is the partition's number
    when the volume is on (or, through dm, inside) a partition, None for the whole disk."""

    disk: str
    offset_bytes: int
    length_bytes: int
    partition: int | None


def volume_extents(volume: str, sysfs_root: Path = SYSFS, mounts_file: Path = MOUNTINFO, *,
                   dev_root: Path = DEV) -> list[Extent]:
    """The extents of a volume on its disks: the partitions it is on, or whole disks. A dm volume
    (LVM, crypt) is given the whole partitions or disks under it."""
    sysfs_root = Path(sysfs_root)
    name, what = _volume_block(volume, sysfs_root, Path(mounts_file), Path(dev_root))
    _disks_of_block(name, what, sysfs_root)  # refuses what is not on SCSI disks

    def sectors(block: Path, what: str) -> int:
        return int((block / what).read_text()) * 512

    extents = []
    for disk, part in _stack(name, sysfs_root):
        if part is None:
            extents.append(Extent(disk, 0, sectors(_class_block(sysfs_root, disk), "size"), None))
        else:
            block = _class_block(sysfs_root, part)
            extents.append(Extent(disk, sectors(block, "start"), sectors(block, "size"),
                                  int((block / "partition").read_text())))
    return extents


def filesystems_on(disks: Iterable[str], sysfs_root: Path = SYSFS, mounts_file: Path = MOUNTINFO) -> list[str]:
    """Mount points of the filesystems on `disks` ('sdb' or '/dev/sdb'), directly or through
    partitions and dm devices; one per filesystem (the first in mountinfo order), because
    FIFREEZE acts on the filesystem and a second freeze through a bind mount fails with EBUSY."""
    sysfs_root = Path(sysfs_root)
    wanted = {d.rstrip("/").rsplit("/", 1)[-1] for d in disks}
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for mount in read_mounts(mounts_file):
        key = (mount.major, mount.minor)
        if key in seen:
            continue
        name = _block_of_devnum(sysfs_root, mount.major, mount.minor)
        if name is None:
            continue
        if wanted & set(_leaves(name, sysfs_root)):
            seen.add(key)
            found.append(mount.mount_point)
    return found


# --- holding writes ----------------------------------------------------------------------------

GuardFactory = Callable[[list[str], float], ThawGuard]  # (mount points, seconds) -> a started guard


def _explain(e: OSError, action: str) -> str:
    reasons = {
        errno.EOPNOTSUPP: "the filesystem does not support freezing",
        errno.EBUSY: "already frozen (by another process, or through another mount point listed too)",
        errno.EPERM: "not permitted (needs CAP_SYS_ADMIN)",
        errno.EINVAL: "was not frozen any more: someone thawed it during the hold, so writes were not held"
        if action == "thaw" else "invalid argument",
    }
    return reasons.get(e.errno or 0, e.strerror or str(e))


class Freezer:
    """Holds writes on a set of filesystems: FIFREEZE on all of them at once, FITHAW on each.

    A watchdog thaws everything by itself when the hold lasts `timeout` s (VSS kernel support
    does the same at 10 s), so a stuck commit cannot leave the host's filesystems frozen; `thaw()`
    then raises VSS_E_HOLD_WRITES_TIMEOUT. That watchdog dies with this process, so each hold also
    has a thaw guard (`provider.requester.thaw_guard`), a process that thaws when this one dies or hangs
    during the hold; it is started by arm() (or freeze()), before the hold, and told when writes
    flow again. `ioctl`, `timer` (threading.Timer-like: (seconds, callback) with start() and
    cancel()) and `guard` are injectable for tests.
    """

    def __init__(self, timeout: float = HOLD_WRITES_TIMEOUT, ioctl: Ioctl = fs_ioctl,
                 timer: Callable[[float, Callable[[], None]], Any] = threading.Timer,
                 guard: GuardFactory = ThawGuard.start) -> None:
        self.timeout = timeout
        self._ioctl = ioctl
        self._timer_factory = timer
        self._guard_factory = guard
        self._guard: ThawGuard | None = None
        self._lock = threading.Lock()
        self._frozen: dict[str, int] = {}   # mount point -> open fd, in freezing order
        self._order: list[str] = []         # mount points as requested (thawed in reverse)
        self._timer: Any = None
        self._holding = False
        self.watchdog_fired = False
        self.watchdog_errors: list[str] = []
        self.frozen_at: float | None = None

    @property
    def frozen(self) -> list[str]:
        """Mount points frozen now, in the order they were requested."""
        with self._lock:
            return [m for m in self._order if m in self._frozen]

    def arm(self, mountpoints: Iterable[str]) -> None:
        """Start the thaw guard of the next freeze of `mountpoints` now, so that its start-up is
        not part of the hold. VSS_E_UNEXPECTED when it does not start: nothing is frozen then."""
        order = list(dict.fromkeys(mountpoints))
        if self._guard is not None:
            if self._guard.mountpoints == order:
                return
            self._release_guard(thawed=True)  # armed for other mount points, never held
        if not order:  # volumes with no filesystem (raw LUNs): nothing is frozen, nothing to guard
            return
        try:
            self._guard = self._guard_factory(order, self.timeout + MARGIN_S)
        except RuntimeError as e:
            self._guard = None
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"the thaw guard of {', '.join(order)} did not start, "
                                                      f"so writes are not held: {e}") from None

    def _release_guard(self, thawed: bool) -> None:
        """Tell the guard the hold is over (once: the watchdog thread may race the thaw)."""
        with self._lock:
            guard, self._guard = self._guard, None
        if guard is not None:
            guard.release(thawed)

    def freeze(self, mountpoints: Iterable[str]) -> None:
        """Freeze every filesystem, concurrently (one thread each), so all hold at about the
        same instant. On any failure those already frozen are thawed and VssRuntimeError
        VSS_E_UNEXPECTED lists every failure; a freeze that does not return before the watchdog
        gives VSS_E_FLUSH_WRITES_TIMEOUT."""
        order = list(dict.fromkeys(mountpoints))  # the same path twice would fail with EBUSY
        with self._lock:
            if self._holding:
                raise vss_error(HResult.VSS_E_BAD_STATE, "writes are already held by this freezer")
        self.arm(order)
        if self._guard is not None:
            try:
                self._guard.hold()
            except RuntimeError as e:
                self._release_guard(thawed=True)
                raise vss_error(HResult.VSS_E_UNEXPECTED, f"writes are not held: the thaw guard: {e}") from None
        with self._lock:
            self._holding, self.watchdog_fired, self._order = True, False, order
            self.watchdog_errors = []
        errors: dict[str, str] = {}
        self._timer = self._timer_factory(self.timeout, self._watchdog)
        self._timer.daemon = True
        self._timer.start()
        started = time.monotonic()
        threads = [threading.Thread(target=self._freeze_one, args=(m, errors), daemon=True,
                                    name=f"freeze {m}") for m in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(self.timeout - (time.monotonic() - started), 0) + 0.5)
        stuck = [t.name[len("freeze "):] for t in threads if t.is_alive()]
        if stuck or errors:
            failures = [f"{m}: {why}" for m, why in errors.items()]
            failures += [f"{m}: FIFREEZE did not return within {self.timeout:g} s (thawed when it does)"
                         for m in stuck]
            self._stop()  # first, so that a freeze returning late thaws itself (see _freeze_one)
            cleanup = self._thaw_all()
            self._release_guard(thawed=not cleanup)  # a stuck freeze thaws itself when it returns
            message = "could not hold writes: " + "; ".join(failures + cleanup)
            raise vss_error(HResult.VSS_E_FLUSH_WRITES_TIMEOUT if stuck else HResult.VSS_E_UNEXPECTED, message)
        self.frozen_at = time.monotonic()
        log.info("writes held on %s", ", ".join(order))

    def _freeze_one(self, mountpoint: str, errors: dict[str, str]) -> None:
        try:
            fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            errors[mountpoint] = f"cannot open: {e.strerror or e}"
            return
        try:
            self._ioctl(fd, FIFREEZE)
        except OSError as e:
            os.close(fd)
            errors[mountpoint] = f"FIFREEZE: {_explain(e, 'freeze')}"
            return
        except Exception as e:
            os.close(fd)
            errors[mountpoint] = f"FIFREEZE: {e}"
            return
        with self._lock:
            late = self.watchdog_fired or not self._holding
            if not late:
                self._frozen[mountpoint] = fd
        if late:  # the watchdog or a failed freeze already released the hold: do not keep this one
            self._thaw_fd(mountpoint, fd, self.watchdog_errors)

    def _thaw_fd(self, mountpoint: str, fd: int, errors: list[str]) -> None:
        try:
            self._ioctl(fd, FITHAW)
        except OSError as e:
            errors.append(f"{mountpoint}: FITHAW: {_explain(e, 'thaw')}")
        except Exception as e:
            errors.append(f"{mountpoint}: FITHAW: {e}")
        finally:
            os.close(fd)

    def _thaw_all(self) -> list[str]:
        """Thaw every frozen filesystem, in reverse request order; returns the failures."""
        with self._lock:
            todo = [(m, self._frozen.pop(m)) for m in reversed(self._order) if m in self._frozen]
        errors: list[str] = []
        for mountpoint, fd in todo:
            self._thaw_fd(mountpoint, fd, errors)
        return errors

    def _watchdog(self) -> None:
        with self._lock:
            if not self._holding or self.watchdog_fired:
                return
            self.watchdog_fired = True
        held = self.frozen
        log.error("writes held longer than %g s on %s: thawing them", self.timeout, ", ".join(held))
        self.watchdog_errors.extend(self._thaw_all())
        self._release_guard(thawed=not self.watchdog_errors)

    def _stop(self) -> None:
        """End the hold: no freeze is kept after this, and the watchdog is off."""
        with self._lock:
            self._holding = False
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            join = getattr(timer, "join", None)
            if join is not None and timer is not threading.current_thread():
                join(self.timeout)  # a watchdog already thawing finishes before we report

    def thaw(self) -> None:
        """Thaw everything still frozen, in reverse order. Failures are collected and raised
        together (VSS_E_UNEXPECTED); if the watchdog had to thaw, VSS_E_HOLD_WRITES_TIMEOUT."""
        self._stop()
        errors = self._thaw_all()
        fired = self.watchdog_fired
        self._release_guard(thawed=not (errors or self.watchdog_errors))
        held = f" after {time.monotonic() - self.frozen_at:.3f} s" if self.frozen_at is not None else ""
        self.frozen_at = None
        if fired:
            extra = "; ".join(self.watchdog_errors + errors)
            raise vss_error(HResult.VSS_E_HOLD_WRITES_TIMEOUT,
                            f"writes were held longer than {self.timeout:g} s; the watchdog thawed "
                            f"{', '.join(self._order)}" + (f"; {extra}" if extra else ""))
        if errors:
            raise vss_error(HResult.VSS_E_UNEXPECTED, "thaw failed: " + "; ".join(errors))
        log.info("writes released%s", held)


class hold_writes:  # noqa: N801 - used like the context manager function it was
    """Hold writes on `mountpoints` for the duration of a `with` block, with a `timeout` s watchdog.

    The thaw guard is started when this is made, before the block, so that its start-up is not
    in the hold: make it right before `with`. If the block fails, its error is raised, unless the
    watchdog fired (then the VSS_E_HOLD_WRITES_TIMEOUT is the cause, raised from the block's
    error); a thaw failure is added to the block's error as a note.
    """

    def __init__(self, mountpoints: Iterable[str], timeout: float = HOLD_WRITES_TIMEOUT, *,
                 freezer: Freezer | None = None) -> None:
        self.mountpoints = list(mountpoints)
        self.freezer = freezer or Freezer(timeout)
        self.freezer.arm(self.mountpoints)

    def __enter__(self) -> Freezer:
        self.freezer.freeze(self.mountpoints)
        return self.freezer

    def __exit__(self, kind: type[BaseException] | None, body: BaseException | None, tb: Any) -> None:
        if body is None:
            self.freezer.thaw()
            return
        try:
            self.freezer.thaw()
        except VssError as e:
            if e.hresult == HResult.VSS_E_HOLD_WRITES_TIMEOUT:
                raise e from body
            body.add_note(f"also: {e}")
