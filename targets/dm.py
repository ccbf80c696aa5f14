"""Device-mapper ioctls on /dev/mapper/control, issued from the agent's own process.

The commit window suspends the origins, sends thin-pool messages and resumes the origins. With
dmsetup that is 2N+2 process start-ups inside the window, plus a wait for udev at each resume;
that, not the kernel's work, made the window grow by a quarter of a second per LUN in the lab.
No maintained Python binding of these ioctls exists (libblockdev's dm plugin has neither suspend
nor message), so the few we need are here, on the kernel's stable ABI (linux/dm-ioctl.h,
interface version 4). Like `dmsetup --noudevsync`, nothing waits for udev: the window does not
create or remove device nodes.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

CONTROL = "/dev/mapper/control"

# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags, event_nr,
# padding (u32 each), dev (u64), name[128], uuid[129], data[7] -> 312 bytes.
HEADER = struct.Struct("=3IIIIiIII Q 128s 129s 7s")
NAME_MAX = 127  # name[128], NUL-terminated
VERSION = (4, 0, 0)  # the kernel accepts any minor up to its own within major 4

SUSPEND_FLAG = 1 << 1  # DM_SUSPEND_FLAG: with DEV_SUSPEND, suspend; without it, resume
INACTIVE_PRESENT_FLAG = 1 << 6  # DM_INACTIVE_PRESENT_FLAG: a loaded table waits for a resume
FLAGS_FIELD = 7  # index of `flags` in HEADER's fields


def _iowr(nr: int) -> int:
    """_IOWR(DM_IOCTL = 0xfd, nr, struct dm_ioctl)."""
    return (3 << 30) | (HEADER.size << 16) | (0xFD << 8) | nr


DEV_SUSPEND = _iowr(6)
DEV_STATUS = _iowr(7)
TARGET_MSG = _iowr(14)


class DmError(RuntimeError):
    """A device-mapper ioctl failed: which one, on which device, and the kernel's errno."""

    def __init__(self, what: str, device: str, err: int, also: Sequence[str] = ()) -> None:
        self.what, self.device, self.errno = what, device, err
        super().__init__(f"device-mapper {what} of {device} failed: {os.strerror(err)} "
                         f"({errno.errorcode.get(err, err)}; see the kernel log)"
                         + (f"; also: {'; '.join(also)}" if also else ""))


def pack(name: str, flags: int = 0, payload: bytes = b"") -> bytearray:
    """The ioctl buffer: the header, then `payload` (data_start is the header's size)."""
    raw = name.encode()
    if not raw or len(raw) > NAME_MAX or b"\0" in raw:
        raise ValueError(f"not a device-mapper name: {name!r}")
    header = HEADER.pack(*VERSION, HEADER.size + len(payload), HEADER.size, 0, 0, flags, 0, 0, 0,
                         raw, b"", b"")
    return bytearray(header + payload)


def target_message(sector: int, text: str, room: int = 256) -> bytes:
    """struct dm_target_msg (sector, then the NUL-terminated text), with `room` bytes after it
    for whatever the target answers."""
    return struct.pack("=Q", sector) + text.encode() + b"\0" * (1 + room)


Ioctl = Callable[[int, int, bytearray], object]


class Control(Protocol):
    def suspend(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def message(self, name: str, text: str, sector: int = 0) -> None: ...
    def status(self, name: str) -> int: ...


class DmControl:
    """/dev/mapper/control, opened once per use. `ioctl` is injectable for unit tests."""

    def __init__(self, path: str = CONTROL, ioctl: Ioctl | None = None,
                 opener: Callable[[str], int] | None = None) -> None:
        self.path = path
        self._ioctl: Ioctl = ioctl or (lambda fd, req, buf: fcntl.ioctl(fd, req, buf, True))
        self._open = opener or (lambda p: os.open(p, os.O_RDWR | os.O_CLOEXEC))
        self._fd: int | None = None

    def __enter__(self) -> DmControl:
        self._fd = self._open(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def _call(self, what: str, request: int, buf: bytearray, name: str) -> None:
        if self._fd is None:
            raise RuntimeError("DmControl is used inside `with`")
        try:
            self._ioctl(self._fd, request, buf)
        except OSError as e:
            raise DmError(what, name, e.errno or errno.EIO) from e

    def suspend(self, name: str) -> None:
        """Flush the device's in-flight I/O and hold new I/O (as `dmsetup suspend`)."""
        self._call("suspend", DEV_SUSPEND, pack(name, SUSPEND_FLAG), name)

    def resume(self, name: str) -> None:
        self._call("resume", DEV_SUSPEND, pack(name), name)

    def status(self, name: str) -> int:
        """The device's flags (as `dmsetup info`): SUSPEND_FLAG, INACTIVE_PRESENT_FLAG, ..."""
        buf = pack(name)
        self._call("status", DEV_STATUS, buf, name)
        return HEADER.unpack_from(buf)[FLAGS_FIELD]

    def message(self, name: str, text: str, sector: int = 0) -> None:
        """A target message (as `dmsetup message NAME SECTOR TEXT`); the thin pool commits its
        metadata after each one."""
        self._call(f"message '{text}'", TARGET_MSG, pack(name, 0, target_message(sector, text)), name)
