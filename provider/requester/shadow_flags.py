"""The shadow-copy flags that travel with a LUN, and their enforcement on a host.

VSS keeps "this volume is a shadow copy, read-only, hidden, no drive letter" in the GPT
attributes of the volume's partition (bits 60-63, spec 3.10 and 13), not on the array: the
coordinator sets them on the original partitions just before the commit, the snapshot captures
them, and they are cleared on the originals right after. So every shadow LUN carries its flags
in its own partition table, through reboots of the array and of any host, until a break clears
them. We do the same with sfdisk (util-linux), which writes both GPT copies and their CRCs.

Linux does not read these bits by itself. A udev rule (`UDEV_RULE`, installed on hosts) turns
them into behaviour whenever a partition appears (or, on a multipath map, the partition map
kpartx makes of it, which blkid describes the same way and which is activated, not added): READ_ONLY sets the partition and its disk
read-only in the kernel (BLKROSET, so even root's writes fail), HIDDEN keeps udisks and desktops
away (UDISKS_IGNORE), NO_DRIVE_LETTER disables auto-mounting (UDISKS_AUTO=0). The coordinator
applies the same read-only setting itself right after an import, without waiting for udev.

The MBR equivalent ("hidden sectors") is undocumented, and a filesystem written straight onto a
disk has no place for the bits at all; transportable sets therefore need GPT partitions
(refused with VSS_E_VOLUME_NOT_SUPPORTED otherwise).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provider.contract.hresult import HResult, vss_error
from provider.commands import DEFAULT_RUNNER, Runner, run_checked
from provider.hardware.iscsi import block_name
from provider.hardware.multipath import Multipath
from provider.contract.vss_types import GptAttributes

log = logging.getLogger("shadowlun.flags")

READ_ONLY = int(GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_READ_ONLY)
SHADOW_COPY = int(GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_SHADOW_COPY)
HIDDEN = int(GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_HIDDEN)
NO_DRIVE_LETTER = int(GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_NO_DRIVE_LETTER)
SHADOW_FLAGS = READ_ONLY | SHADOW_COPY | HIDDEN | NO_DRIVE_LETTER
NAMES = {READ_ONLY: "read-only", SHADOW_COPY: "shadow-copy", HIDDEN: "hidden", NO_DRIVE_LETTER: "no-drive-letter"}

# sfdisk names the three defined low bits; bits 48-63 (type-specific) it writes as GUID:<bit>.
_NAMED_BITS = {"RequiredPartition": 0, "NoBlockIOProtocol": 1, "LegacyBIOSBootable": 2}

UDEV_RULE_PATH = Path("/etc/udev/rules.d/61-shadowlun-shadow-copy.rules")
# While the coordinator has the flags on an original disk (around a commit), a file named after
# the disk here tells the rule to leave it alone: writing the table makes udev re-read it when
# no partition is in use, and the originals' partitions must not come back read-only.
ORIGINALS_DIR = Path("/run/shadowlun/originals")
# After 60-persistent-storage.rules (its blkid builtin sets ID_PART_ENTRY_*), before udisks' 80-.
# The first hex digit of the 64-bit flags holds bits 60-63.
UDEV_RULE = """\
# shadowlun: shadow copies stay read-only and hidden while their GPT attributes say so
# (bit 60 read-only, 61 shadow copy, 62 hidden, 63 no drive letter). Installed by
# `shadowlun register-provider`; see provider/requester/shadow_flags.py.
SUBSYSTEM!="block", GOTO="shadowlun_end"
ENV{DM_UUID}=="part[0-9]*-mpath-*", GOTO="shadowlun_flags"
ENV{DEVTYPE}!="partition", GOTO="shadowlun_end"
TEST=="/run/shadowlun/originals/$parent", GOTO="shadowlun_end"
LABEL="shadowlun_flags"
ENV{ID_PART_ENTRY_SCHEME}!="gpt", GOTO="shadowlun_end"
ENV{ID_PART_ENTRY_FLAGS}=="0x[13579bdf]???????????????", ENV{SHADOWLUN_READ_ONLY}="1"
ENV{ID_PART_ENTRY_FLAGS}=="0x[4567cdef]???????????????", ENV{UDISKS_IGNORE}="1"
ENV{ID_PART_ENTRY_FLAGS}=="0x[89abcdef]???????????????", ENV{UDISKS_AUTO}="0"
ACTION=="add", ENV{DEVTYPE}=="partition", ENV{SHADOWLUN_READ_ONLY}=="1", RUN+="/usr/sbin/blockdev --setro /dev/$parent $devnode"
ENV{DM_ACTIVATION}=="1", ENV{SHADOWLUN_READ_ONLY}=="1", RUN+="/usr/sbin/blockdev --setro $devnode"
LABEL="shadowlun_end"
"""


def parse_attrs(text: str) -> int:
    """sfdisk's attribute text ('RequiredPartition GUID:60,61') as the 64-bit value."""
    bits = 0
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        if word in _NAMED_BITS:
            bits |= 1 << _NAMED_BITS[word]
        elif word.startswith("GUID:"):
            bits |= 1 << int(word[5:])
        elif word.isdigit():  # continuation of a GUID: list
            bits |= 1 << int(word)
        else:
            raise ValueError(f"unknown GPT attribute {word!r}")
    return bits


def attrs_text(bits: int) -> str:
    """The 64-bit value as sfdisk --part-attrs takes it (bits 3-47 are reserved and dropped)."""
    words = [name for name, bit in _NAMED_BITS.items() if bits >> bit & 1]
    high = [str(b) for b in range(48, 64) if bits >> b & 1]
    if high:
        words.append("GUID:" + ",".join(high))
    return ",".join(words)


def describe(bits: int) -> list[str]:
    return [name for flag, name in NAMES.items() if bits & flag]


@dataclass(frozen=True)
class Partition:
    number: int
    start_bytes: int
    length_bytes: int
    attrs: int


BLKROSET = 0x125D  # _IO(0x12, 93): the kernel's read-only flag of a block device (blockdev --setro)
_GPT_SIGNATURE = b"EFI PART"


def blk_set_ro(path: str, read_only: bool) -> None:
    """BLKROSET on the block device at `path`, as `blockdev --setro/--setrw` does, in-process."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", int(read_only)))
    finally:
        os.close(fd)


def read_gpt(path: str) -> dict[int, Partition] | None:
    """The partitions of the primary GPT of the disk (or image) at `path`, read in-process, with
    header and entry CRCs checked; None when LBA 1 (of 512 or 4096-byte sectors) holds no GPT
    header. ValueError when the header or entries are damaged (sfdisk then reads the backup)."""
    with open(path, "rb") as f:
        for sector in (512, 4096):
            f.seek(sector)
            header = f.read(sector)
            if header[:8] == _GPT_SIGNATURE:
                break
        else:
            return None
        size = int.from_bytes(header[12:16], "little")
        if not 92 <= size <= sector or zlib.crc32(header[:16] + bytes(4) + header[20:size]) != \
                int.from_bytes(header[16:20], "little"):
            raise ValueError(f"{path}: primary GPT header CRC mismatch")
        entries_lba, count, entry_size = (int.from_bytes(header[72:80], "little"),
                                          int.from_bytes(header[80:84], "little"),
                                          int.from_bytes(header[84:88], "little"))
        if not 128 <= entry_size <= 4096 or count > 1024:
            raise ValueError(f"{path}: {count} GPT entries of {entry_size} bytes")
        f.seek(entries_lba * sector)
        entries = f.read(count * entry_size)
    if len(entries) != count * entry_size or zlib.crc32(entries) != int.from_bytes(header[88:92], "little"):
        raise ValueError(f"{path}: GPT entries CRC mismatch")
    found = {}
    for i in range(count):
        e = entries[i * entry_size:(i + 1) * entry_size]
        if e[:16] == bytes(16):  # unused entry (type GUID zero)
            continue
        first, last = int.from_bytes(e[32:40], "little"), int.from_bytes(e[40:48], "little")
        found[i + 1] = Partition(i + 1, first * sector, (last - first + 1) * sector, int.from_bytes(e[48:56], "little"))
    return found


class GptFlags:
    """Reads and writes the shadow-copy bits of a disk's GPT partitions, and sets the kernel's
    read-only state that enforces them. `runner` runs commands and `set_ro` sets a device's
    read-only flag (tests pass fakes)."""

    def __init__(self, runner: Runner = DEFAULT_RUNNER, dev_root: Path = Path("/dev"),
                 set_ro: Callable[[str, bool], None] = blk_set_ro, sysfs_root: Path = Path("/sys")) -> None:
        self.runner, self.dev_root, self.set_ro = runner, Path(dev_root), set_ro
        self.multipath = Multipath(runner, sysfs_root)

    def partition_device(self, disk: str, number: int) -> str:
        """The block name of partition `number` of `disk`: 'sdb1', or for a multipath map the
        partition map kpartx made of it ('dm-4'; a map's partitions are no kernel partitions)."""
        name = block_name(disk)
        if self.multipath.is_map(name):
            part = self.multipath.partition(name, number)
            if part is None:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                f"multipath map {self.multipath.name(name)} ({name}) has no partition map for "
                                f"partition {number} (kpartx makes them as udev sees the map)")
            return part
        return partition_name(name, number)

    def _dev(self, disk: str) -> str:
        return str(self.dev_root / block_name(disk))

    def _run(self, argv: list[str], tolerated: str | None = None) -> str | None:
        return run_checked(self.runner, argv, tolerated=tolerated)

    def partitions(self, disk: str) -> dict[int, Partition] | None:
        """The disk's GPT partitions by number; None when the disk has no GPT (none, or MBR).
        Read in-process (an import reads every disk's table, and an sfdisk process costs about
        half a second under emulation); a damaged primary table is left to sfdisk."""
        try:
            return read_gpt(self._dev(disk))
        except ValueError as e:
            log.warning("%s; asking sfdisk", e)
        except OSError as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"reading the partition table of {self._dev(disk)}: "
                                                      f"{e.strerror or e}") from None
        out = self._run(["sfdisk", "--json", self._dev(disk)],
                        tolerated="does not contain a recognized partition table")
        if out is None:
            return None
        table = json.loads(out)["partitiontable"]
        if table.get("label") != "gpt":
            return None
        sector = int(table.get("sectorsize", 512))
        found = {}
        for p in table.get("partitions", []):
            number = int(re.search(r"(\d+)$", p["node"]).group(1))
            found[number] = Partition(number, int(p["start"]) * sector, int(p["size"]) * sector,
                                      parse_attrs(p.get("attrs", "")))
        return found

    def gpt_partition(self, disk: str, offset_bytes: int) -> Partition | None:
        """The GPT partition that starts at `offset_bytes` (a volume's extent), if any."""
        parts = self.partitions(disk) or {}
        return next((p for p in parts.values() if p.start_bytes == offset_bytes), None)

    def _write(self, disk: str, number: int, bits: int) -> None:
        # No re-read: the kernel keeps no attributes, and a mounted disk could not re-read anyway.
        self._run(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", "--part-attrs",
                   self._dev(disk), str(number), attrs_text(bits)])

    def set(self, disk: str, numbers: list[int], flags: int = SHADOW_FLAGS) -> None:
        parts = self.partitions(disk) or {}
        for n in numbers:
            if n not in parts:
                raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED, f"{disk} has no GPT partition {n}")
            if parts[n].attrs & flags != flags:
                self._write(disk, n, parts[n].attrs | flags)
        self._run(["blockdev", "--flushbufs", self._dev(disk)])

    def clear(self, disk: str, numbers: list[int] | None = None, flags: int = SHADOW_FLAGS) -> list[int]:
        """Clear `flags` on the given partitions (None: every partition that has any of them);
        returns the partitions changed."""
        parts = self.partitions(disk) or {}
        changed = []
        for n, p in sorted(parts.items()):
            if (numbers is None or n in numbers) and p.attrs & flags:
                self._write(disk, n, p.attrs & ~flags)
                changed.append(n)
        if changed:
            self._run(["blockdev", "--flushbufs", self._dev(disk)])
        return changed

    def set_read_only(self, disk: str, numbers: list[int], read_only: bool) -> None:
        """The kernel's read-only state (BLKROSET) of the disk and the given partitions; of a
        multipath map, of its paths too, so that no path is a way around it."""
        name = block_name(disk)
        paths = self.multipath.paths(name) if self.multipath.is_map(name) else []
        for node in ([self._dev(name)] + [self._dev(self.partition_device(name, n)) for n in numbers]
                     + [self._dev(p) for p in paths]):
            try:
                self.set_ro(node, read_only)
            except OSError as e:
                raise vss_error(HResult.VSS_E_UNEXPECTED, f"making {node} {'read-only' if read_only else 'writable'}: "
                                                          f"{e.strerror or e}") from None


def partition_name(disk: str, number: int) -> str:
    """sdb + 1 -> sdb1; nvme0n1 + 1 -> nvme0n1p1 (the kernel's rule: 'p' after a digit)."""
    disk = block_name(disk)
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def install_udev_rule(path: Path = UDEV_RULE_PATH, runner: Runner = DEFAULT_RUNNER) -> bool:
    """Install (or update) the rule and have udev reload its rules; True when it changed."""
    if path.exists() and path.read_text() == UDEV_RULE:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(UDEV_RULE)
    runner(["udevadm", "control", "--reload"], check=False)
    log.info("installed %s", path)
    return True
