"""Unit tests of targets.dm: the ioctl numbers and buffers against linux/dm-ioctl.h, and how
errors come back. The ioctl itself is faked; the lab runs the real one at every commit."""
from __future__ import annotations

import errno
import struct

import pytest

from targets import dm
from targets.dm import DmControl, DmError

# From the kernel's uapi header, as compiled by C (_IOWR(0xfd, nr, struct dm_ioctl), 312 bytes).
DM_DEV_SUSPEND = 0xC138FD06
DM_TARGET_MSG = 0xC138FD0E
DM_DEV_STATUS = 0xC138FD07


def test_ioctl_numbers_and_header_size_are_the_kernels():
    assert dm.HEADER.size == 312
    assert (dm.DEV_SUSPEND, dm.TARGET_MSG, dm.DEV_STATUS) == (DM_DEV_SUSPEND, DM_TARGET_MSG, DM_DEV_STATUS)
    assert (dm.SUSPEND_FLAG, dm.INACTIVE_PRESENT_FLAG) == (2, 64)  # DM_SUSPEND_FLAG, DM_INACTIVE_PRESENT_FLAG


def fields(buf: bytes) -> dict:
    v0, v1, v2, size, start, targets, opens, flags, event, _pad, dev, name, uuid, _ = dm.HEADER.unpack_from(buf)
    return {"version": (v0, v1, v2), "size": size, "start": start, "flags": flags,
            "name": name.rstrip(b"\0").decode(), "uuid": uuid.rstrip(b"\0"), "len": len(buf)}


class Recorder:
    def __init__(self, err: int = 0) -> None:
        self.calls: list[tuple[int, int, bytes]] = []
        self.err = err

    def __call__(self, fd: int, request: int, buf: bytearray) -> int:
        self.calls.append((fd, request, bytes(buf)))
        if self.err:
            raise OSError(self.err, "fake")
        return 0


def control(rec: Recorder) -> DmControl:
    return DmControl(ioctl=rec, opener=lambda path: -1)


def test_suspend_and_resume_are_dev_suspend_with_and_without_the_flag():
    rec = Recorder()
    with control(rec) as c:
        c.suspend("shadowlun-lun--a")
        c.resume("shadowlun-lun--a")
    (_, r1, b1), (_, r2, b2) = rec.calls
    assert r1 == r2 == DM_DEV_SUSPEND
    assert fields(b1) == {"version": (4, 0, 0), "size": 312, "start": 312, "flags": 2,
                          "name": "shadowlun-lun--a", "uuid": b"", "len": 312}
    assert fields(b2)["flags"] == 0 and fields(b2)["name"] == "shadowlun-lun--a"


def test_a_message_carries_sector_and_nul_terminated_text_after_the_header():
    rec = Recorder()
    with control(rec) as c:
        c.message("shadowlun-pool-tpool", "create_snap 7 1")
    _, request, buf = rec.calls[0]
    f = fields(buf)
    assert request == DM_TARGET_MSG and f["start"] == 312 and f["size"] == len(buf) == f["len"]
    (sector,) = struct.unpack_from("=Q", buf, 312)
    text = buf[320:].split(b"\0", 1)[0]
    assert (sector, text) == (0, b"create_snap 7 1")
    assert len(buf) - 320 - len(text) > 1  # room left for the target's answer


def test_status_returns_the_flags_the_kernel_wrote_into_the_header():
    def kernel(fd: int, request: int, buf: bytearray) -> int:
        assert request == DM_DEV_STATUS and fields(buf)["name"] == "shadowlun-lun--a"
        struct.pack_into("=I", buf, 28, dm.SUSPEND_FLAG | 1 << 5)  # `flags`, after 7 u32 fields
        return 0

    with DmControl(ioctl=kernel, opener=lambda path: -1) as c:
        assert c.status("shadowlun-lun--a") == dm.SUSPEND_FLAG | 1 << 5


@pytest.mark.parametrize("name", ["", "x" * 128, "a\0b"])
def test_names_the_kernel_would_refuse_are_refused_before_any_ioctl(name):
    rec = Recorder()
    with control(rec) as c, pytest.raises(ValueError):
        c.suspend(name)
    assert rec.calls == []


def test_a_failed_ioctl_is_a_dm_error_with_the_operation_device_and_errno():
    with control(Recorder(errno.ENODATA)) as c, pytest.raises(DmError) as raised:
        c.message("shadowlun-pool-tpool", "delete 9")
    e = raised.value
    assert (e.what, e.device, e.errno) == ("message 'delete 9'", "shadowlun-pool-tpool", errno.ENODATA)
    assert "ENODATA" in str(e) and "kernel log" in str(e)


def test_outside_with_nothing_is_sent():
    rec = Recorder()
    with pytest.raises(RuntimeError):
        control(rec).resume("x")
    assert rec.calls == []


def test_the_real_control_opens_the_device_and_fails_clearly_without_device_mapper(tmp_path):
    with pytest.raises(OSError):
        with DmControl(path=str(tmp_path / "no-control")):
            pass
