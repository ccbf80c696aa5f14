#!/usr/bin/python3
"""Data volumes for lab hosts, as an admin and a host would make them, in two halves:

On the array, the admin's half (the admin credential, admin-access.json, never leaves it):
  python3 /shadowlun/vagrant/provision/volume.py make NAME SIZE_MIB HOST_INITIATOR
      an array LUN, masked to that host (the array gives the ACL the host's CHAP credentials)
  python3 /shadowlun/vagrant/provision/volume.py destroy NAME
      the LUN deleted (unmasked everywhere)

On the host, the host's half (its own array-access.json: its token and CHAP credentials):
  python3 /shadowlun/vagrant/provision/volume.py add NAME MOUNT
      logged in over iSCSI (on every portal, through its multipath map, where multipathd runs),
      one GPT partition with ext4, mounted
  python3 /shadowlun/vagrant/provision/volume.py remove NAME MOUNT
      unmounted, the disk released (and the session with the last one)
  python3 /shadowlun/vagrant/provision/volume.py attach NAME...    LUNs masked to it, as raw disks
  python3 /shadowlun/vagrant/provision/volume.py detach NAME...

GPT, because a transportable shadow copy carries its read-only/hidden flags in the GPT
attributes of the volume's partition. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from provider.hardware.iscsi import Initiator, normalize_wwid
from provider.hardware.multipath import Multipath
from provider.hardware.array_client import ADMIN_ACCESS_FILE, ArrayAccess, ArrayClient

MIB = 1 << 20
DISK_WAIT_S = 60.0


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def make(name: str, size_mib: int, host_initiator: str) -> dict:
    admin = ArrayClient(ArrayAccess.load(ADMIN_ACCESS_FILE))
    admin.create_volume(name, size_mib * MIB)
    return admin.mask(name, host_initiator)


def destroy(name: str) -> dict:
    ArrayClient(ArrayAccess.load(ADMIN_ACCESS_FILE)).delete(name)
    return {"name": name, "destroyed": True}


def attach(names: list[str], every_path: bool = False) -> dict[str, str]:
    """Connect the LUNs masked to this host with its CHAP credentials (one login, one scan
    pass, one wait for their disks by WWID): {name: device}. A path each by default (raw disks
    for SCSI commands that belong to one I_T nexus, such as reservations); `every_path`: as the
    provider connects, on a host running multipathd each LUN's multipath map (which claims the
    paths, so a path could not be partitioned or mounted there)."""
    access = ArrayAccess.load()
    array = ArrayClient(access)
    luns = [array.lun(n) for n in names]
    target = array.target()
    unexported = [lun["name"] for lun in luns if lun["lun_id"] is None]
    if unexported:
        raise SystemExit(f"not exported: {', '.join(unexported)}")
    wanted = {lun["lun_id"]: lun["wwid"] for lun in luns}
    if every_path:
        from provider.hardware.hardware_provider import transport

        disks = transport(Initiator()).connect(target["iqn"], target["portals"], access.chap_user,
                                               access.chap_secret, wanted, DISK_WAIT_S)
    else:
        disks = Initiator().connect(target["iqn"], target["portals"][0], access.chap_user, access.chap_secret,
                                    wanted, DISK_WAIT_S)
    return {lun["name"]: "/dev/" + disks[normalize_wwid(lun["wwid"])] for lun in luns}


def first_partition(disk: str) -> str:
    """/dev/sdX1, or for a multipath map the partition map kpartx makes of it (udev runs kpartx
    on the map's change; run here too, with udev's delimiter, so as not to race it)."""
    block = disk.removeprefix("/dev/")
    maps = Multipath()
    if not maps.is_map(block):
        return f"{disk}1"
    sh("kpartx", "-u", "-p", "-part", disk)
    sh("udevadm", "settle")
    part = maps.partition(block, 1)
    if part is None:
        raise SystemExit(f"{disk}: kpartx made no partition map of multipath map {maps.name(block)}")
    return f"/dev/{part}"


def detach(names: list[str]) -> None:
    """Release the disks of these LUNs (and the session with the last one), as the provider
    does: on a multipath host the map first, then its paths on every portal."""
    from provider.hardware.hardware_provider import transport

    array, initiator = ArrayClient(ArrayAccess.load()), transport(Initiator())
    luns, target = [array.lun(n) for n in names], array.target()
    disks = [d for d in (initiator.find_disk(lun["wwid"]) for lun in luns) if d]
    initiator.disconnect(target["iqn"], target["portals"], disks)


def add(name: str, mount: str) -> dict:
    disk = attach([name], every_path=True)[name]
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\n,\n", text=True, check=True)
    sh("udevadm", "settle")
    part = first_partition(disk)
    sh("mkfs.ext4", "-q", part)
    Path(mount).mkdir(parents=True, exist_ok=True)
    sh("mount", part, mount)
    return {"name": name, "disk": disk, "partition": part, "mount": mount}


def remove(name: str, mount: str) -> dict:
    subprocess.run(["umount", mount], check=False, capture_output=True)
    detach([name])
    return {"name": name, "removed": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="on the array (admin): a LUN masked to a host")
    m.add_argument("name")
    m.add_argument("size_mib", type=int)
    m.add_argument("host_initiator")
    sub.add_parser("destroy", help="on the array (admin): delete a LUN").add_argument("name")
    a = sub.add_parser("add", help="on the host: log in, partition, format, mount")
    a.add_argument("name")
    a.add_argument("mount")
    r = sub.add_parser("remove", help="on the host: unmount and release the disk")
    r.add_argument("name")
    r.add_argument("mount")
    for command in ("attach", "detach"):
        sub.add_parser(command, help="on the host: raw disks").add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "make":
        out = make(args.name, args.size_mib, args.host_initiator)
    elif args.command == "destroy":
        out = destroy(args.name)
    elif args.command == "add":
        out = add(args.name, args.mount)
    elif args.command == "remove":
        out = remove(args.name, args.mount)
    elif args.command == "attach":
        out = attach(args.names)
    else:
        detach(args.names)
        out = {"detached": args.names}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
