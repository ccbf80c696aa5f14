"""The shadow-copy flags in GPT attributes: real sfdisk on an image file, and the udev rule's
patterns checked against every combination of the four bits."""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess

import pytest

from provider.contract.hresult import HResult, VssError
from provider.commands import SubprocessRunner
from provider.requester.shadow_flags import (
    HIDDEN,
    NO_DRIVE_LETTER,
    READ_ONLY,
    SHADOW_COPY,
    SHADOW_FLAGS,
    UDEV_RULE,
    GptFlags,
    attrs_text,
    describe,
    parse_attrs,
    partition_name,
)

MIB = 1 << 20


class FilesRunner:
    """sfdisk for real on image files, every command recorded; blockdev and BLKROSET (ioctls on
    block devices only) recorded, not run."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.read_only: list[tuple[str, bool]] = []
        self.real = SubprocessRunner()

    def __call__(self, argv, check=True):
        self.commands.append(list(argv))
        if argv[0] == "blockdev":
            return subprocess.CompletedProcess(argv, 0, "", "")
        return self.real(argv, check)

    def set_ro(self, path: str, read_only: bool) -> None:
        self.read_only.append((path, read_only))


@pytest.fixture
def disk(tmp_path):
    image = tmp_path / "sdx"
    image.write_bytes(b"")
    subprocess.run(["truncate", "-s", str(64 * MIB), str(image)], check=True)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: gpt\n,32M\n,\n", text=True, check=True)
    runner = FilesRunner()
    return GptFlags(runner, dev_root=tmp_path, set_ro=runner.set_ro), runner


def test_attribute_text_both_ways():
    assert parse_attrs("RequiredPartition GUID:60,61,62,63") == 1 | SHADOW_FLAGS
    assert parse_attrs("") == 0
    assert attrs_text(1 | SHADOW_FLAGS) == "RequiredPartition,GUID:60,61,62,63"
    assert parse_attrs(attrs_text(HIDDEN | 1 << 48)) == HIDDEN | 1 << 48
    assert describe(SHADOW_FLAGS) == ["read-only", "shadow-copy", "hidden", "no-drive-letter"]
    with pytest.raises(ValueError):
        parse_attrs("Bogus")


def test_partition_names():
    assert partition_name("sdb", 1) == "sdb1" and partition_name("/dev/nvme0n1", 2) == "nvme0n1p2"


def test_set_and_clear_on_a_real_gpt(disk):
    gpt, runner = disk
    parts = gpt.partitions("sdx")
    assert sorted(parts) == [1, 2] and parts[1].start_bytes == MIB and parts[2].start_bytes == 33 * MIB
    assert gpt.gpt_partition("sdx", 33 * MIB).number == 2 and gpt.gpt_partition("sdx", 5) is None
    gpt.set("sdx", [2])
    assert {n: p.attrs for n, p in gpt.partitions("sdx").items()} == {1: 0, 2: SHADOW_FLAGS}
    assert gpt.clear("sdx", None, SHADOW_COPY) == [2]
    assert gpt.partitions("sdx")[2].attrs == READ_ONLY | HIDDEN | NO_DRIVE_LETTER
    assert gpt.clear("sdx", [1]) == []  # partition 1 has none
    assert gpt.clear("sdx") == [2] and gpt.partitions("sdx")[2].attrs == 0
    # sfdisk keeps both copies of the table valid: it reads the result back without complaint.
    check = subprocess.run(["sfdisk", "--verify", str(gpt.dev_root / "sdx")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with pytest.raises(VssError) as e:
        gpt.set("sdx", [7])
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED


def test_no_table_and_mbr_are_not_gpt(tmp_path):
    raw = tmp_path / "raw"
    subprocess.run(["truncate", "-s", str(8 * MIB), str(raw)], check=True)
    gpt = GptFlags(FilesRunner(), dev_root=tmp_path)
    assert gpt.partitions("raw") is None
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: dos\n,\n", text=True, check=True)
    assert gpt.partitions("raw") is None


def test_read_only_is_set_on_the_disk_and_the_volume_partition(disk):
    gpt, runner = disk
    gpt.set_read_only("sdx", [2], True)
    gpt.set_read_only("sdx", [], False)
    root = str(gpt.dev_root)
    assert runner.read_only == [(f"{root}/sdx", True), (f"{root}/sdx2", True), (f"{root}/sdx", False)]


def test_tables_are_read_in_process_as_sfdisk_reads_them(disk):
    """An import reads every shadow disk's table: no sfdisk process for that, the same answer."""
    gpt, runner = disk
    gpt.set("sdx", [2], HIDDEN | 1 << 48)
    runner.commands.clear()
    ours = gpt.partitions("sdx")
    assert runner.commands == []
    table = json.loads(subprocess.run(["sfdisk", "--json", str(gpt.dev_root / "sdx")], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert {n: (p.start_bytes, p.length_bytes) for n, p in ours.items()} == {
        int(p["node"][-1]): (p["start"] * 512, p["size"] * 512) for p in table["partitions"]}
    assert ours[2].attrs == HIDDEN | 1 << 48 and ours[1].attrs == 0


def test_a_damaged_primary_table_is_left_to_sfdisk(disk):
    gpt, runner = disk
    image = gpt.dev_root / "sdx"
    data = bytearray(image.read_bytes())
    data[1024] ^= 0xFF  # the first partition entry (LBA 2): the entries' CRC no longer matches
    image.write_bytes(bytes(data))
    runner.commands.clear()
    gpt.partitions("sdx")  # sfdisk reads the backup table, or says what is wrong
    assert runner.commands[0][:2] == ["sfdisk", "--json"]


def _rule_pattern(env: str) -> str:
    return re.search(r'ENV\{ID_PART_ENTRY_FLAGS\}=="([^"]+)", ENV\{' + env, UDEV_RULE).group(1)


@pytest.mark.parametrize("bits", range(16))
def test_udev_patterns_match_exactly_their_bit(bits):
    """blkid writes ID_PART_ENTRY_FLAGS as 0x%llx: with any of bits 60-63 set, 16 hex digits."""
    value = (bits << 60) | 0x1  # a low bit too, which must not matter
    text = f"0x{value:x}"
    assert fnmatch.fnmatchcase(text, _rule_pattern("SHADOWLUN_READ_ONLY")) == bool(value & READ_ONLY)
    assert fnmatch.fnmatchcase(text, _rule_pattern("UDISKS_IGNORE")) == bool(value & HIDDEN)
    assert fnmatch.fnmatchcase(text, _rule_pattern("UDISKS_AUTO")) == bool(value & NO_DRIVE_LETTER)


def test_udev_rule_acts_on_add_only_for_read_only():
    """Only an arriving partition is set read-only: the originals carry the flags for a moment
    during a commit, and the 'change' events of that write must not touch them. A multipath
    map's partition map arrives by activation (a 'change' event with DM_ACTIVATION=1)."""
    run = [line for line in UDEV_RULE.splitlines() if "RUN+=" in line]
    assert run == ['ACTION=="add", ENV{DEVTYPE}=="partition", ENV{SHADOWLUN_READ_ONLY}=="1", '
                   'RUN+="/usr/sbin/blockdev --setro /dev/$parent $devnode"',
                   'ENV{DM_ACTIVATION}=="1", ENV{SHADOWLUN_READ_ONLY}=="1", RUN+="/usr/sbin/blockdev --setro $devnode"']


def test_udev_rule_reads_the_flags_of_a_multipath_maps_partition_maps_only():
    lines = UDEV_RULE.splitlines()
    jump = 'ENV{DM_UUID}=="part[0-9]*-mpath-*", GOTO="shadowlun_flags"'
    assert fnmatch.fnmatchcase("part1-mpath-36001405aa", "part[0-9]*-mpath-*")
    assert not fnmatch.fnmatchcase("LVM-abc", "part[0-9]*-mpath-*")
    assert not fnmatch.fnmatchcase("mpath-36001405aa", "part[0-9]*-mpath-*")  # the map itself: a disk
    assert lines.index(jump) < lines.index('ENV{DEVTYPE}!="partition", GOTO="shadowlun_end"')
    assert lines.index('LABEL="shadowlun_flags"') < min(i for i, x in enumerate(lines) if "ID_PART_ENTRY_FLAGS" in x)


def test_udev_rule_leaves_originals_alone_while_the_coordinator_has_flags_on_them():
    from provider.requester.shadow_flags import ORIGINALS_DIR

    lines = UDEV_RULE.splitlines()
    skip = f'TEST=="{ORIGINALS_DIR}/$parent", GOTO="shadowlun_end"'
    assert skip in lines and lines.index(skip) < min(i for i, x in enumerate(lines) if "ID_PART_ENTRY_FLAGS" in x)
