"""What exists now on the array and on a host: the objects a test expects made, or gone.
Read straight from the kernel and the tools (configfs, lvs, iscsiadm, sysfs), never from the
product's own bookkeeping."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from .vm import VM


def array_objects(array: VM) -> dict[str, set[str]]:
    """Owned LVs, LIO block backstores, and the ACLs (initiators) of the array's target."""
    lvs = json.loads(array.run("lvs --reportformat json -o lv_name,lv_tags shadowlun").stdout)["report"][0]["lv"]
    return {
        "lvs": {lv["lv_name"] for lv in lvs if "shadowlun" in lv["lv_tags"].split(",")},
        "backstores": set(array.run("ls /sys/kernel/config/target/core/ | grep ^iblock_ | "
                                    "while read d; do ls /sys/kernel/config/target/core/$d; done | "
                                    "grep -v -e hba_info -e hba_mode || true").stdout.split()),
        "acls": set(array.run("ls /sys/kernel/config/target/iscsi/*/tpgt_1/acls 2>/dev/null || true").stdout.split()),
    }


def host_objects(vm: VM, target_iqn: str) -> dict[str, set[str]]:
    """A host's iSCSI sessions and node records to the target, and the WWIDs of its SCSI disks."""
    sessions = vm.run(f"grep -lx {target_iqn} /sys/class/iscsi_session/session*/targetname 2>/dev/null || true")
    nodes = vm.run("iscsiadm -m node 2>/dev/null || true")
    return {
        "sessions": set(sessions.stdout.split()),
        "nodes": {line for line in nodes.stdout.splitlines() if target_iqn in line},
        "wwids": set(vm.run("cat /sys/block/sd*/device/wwid 2>/dev/null || true").stdout.split()),
    }


def until(condition: Callable[[], bool], timeout: float, why: Callable[[], str], interval: float = 1.0) -> None:
    """Poll `condition` until it holds; past `timeout` s, TimeoutError with `why()` (called then,
    so it can show what the VM says at that moment)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(why())
        time.sleep(interval)


def wait_for_agent(vm: VM, timeout: float = 90, access: str | None = None) -> None:
    """Until the array agent answers `vm` (after a restart or a reboot of the array), bounded;
    with the VM's own access file, or `access` (e.g. the admin's, on the array)."""
    argv = ["python3", "-m", "provider.hardware.array_client"] + (["--access", access] if access else []) + ["GET", "/v1/pool"]
    until(lambda: vm.run(argv, check=False).ok, timeout,
          lambda: f"the array agent did not answer {vm.name} within {timeout:g} s")


def whole_disk(vm, device: str) -> str:
    """The disk a partition device is on: /dev/sdb for /dev/sdb1, and on a multipath host the
    map (/dev/dm-11) for the partition map kpartx made of it (/dev/dm-2)."""
    name = device.removeprefix("/dev/")
    slaves = vm.run(f"ls /sys/class/block/{name}/slaves 2>/dev/null || true").stdout.split()
    if slaves:  # a device-mapper device: the partition map's one slave is its map
        (parent,) = slaves
        return f"/dev/{parent}"
    return "/dev/" + vm.run(f"basename $(readlink -f /sys/class/block/{name}/..)").stdout.strip()


def scsi_disks(vm, device: str) -> list[str]:
    """The SCSI disks under a block device: a partition's disk, or the paths of a multipath map
    (or of the partition map kpartx made of it), from lsblk's inverse tree."""
    rows = [line.split() for line in vm.run(["lsblk", "-s", "-n", "-r", "-o", "NAME,TYPE", device]).stdout.splitlines()]
    return sorted({f"/dev/{r[0]}" for r in rows if len(r) == 2 and r[1] == "disk"})
