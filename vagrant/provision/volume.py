#!/usr/bin/python3
"""A data volume for a lab host, as its admin would make one: an array LUN (through the agent's
API) masked to this host with its CHAP credentials, logged in over iSCSI, one GPT partition
with ext4, mounted. Run as root on a host VM (Vagrant or the QEMU lab), from the checkout:

  python3 /shadowlun/vagrant/provision/volume.py add NAME SIZE_MIB MOUNT
  python3 /shadowlun/vagrant/provision/volume.py remove NAME MOUNT
  python3 /shadowlun/vagrant/provision/volume.py attach NAME...    existing LUNs, as raw disks
  python3 /shadowlun/vagrant/provision/volume.py detach NAME...

GPT, because a transportable shadow copy carries its read-only/hidden flags in the GPT
attributes of the volume's partition. `remove` unmounts, releases the disk (and the session if
it was the last), and deletes the LUN on the array. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from provider.iscsi import Initiator, initiator_name
from targets.client import ArrayAccess, ArrayClient

HOST_FILE = Path("/etc/shadowlun/host.json")
MIB = 1 << 20
DISK_WAIT_S = 60.0


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def attach(names: list[str]) -> dict[str, str]:
    """Mask existing LUNs to this host, log in (once), scan each and wait for its disk by WWID."""
    array, initiator = ArrayClient(ArrayAccess.load()), Initiator()
    chap = json.loads(HOST_FILE.read_text())
    luns = [array.mask(n, initiator_name(), chap["chap_user"], chap["chap_secret"]) for n in names]
    target = array.target()
    host = initiator.login(target["iqn"], target["portals"][0], chap["chap_user"], chap["chap_secret"])
    for lun in luns:
        initiator.scan_lun(host, lun["lun_id"])
    return {lun["name"]: "/dev/" + initiator.wait_for_disk(lun["wwid"], DISK_WAIT_S) for lun in luns}


def detach(names: list[str]) -> None:
    """Release the disks of these LUNs (and the session with the last one), then unmask them."""
    array, initiator = ArrayClient(ArrayAccess.load()), Initiator()
    luns, target = [array.lun(n) for n in names], array.target()
    disks = [d for d in (initiator.find_disk(lun["wwid"]) for lun in luns) if d]
    initiator.disconnect(target["iqn"], target["portals"][0], disks)
    for n in names:
        array.unmask(n, initiator_name())


def add(name: str, size_mib: int, mount: str) -> dict:
    ArrayClient(ArrayAccess.load()).create_volume(name, size_mib * MIB)
    disk = attach([name])[name]
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\n,\n", text=True, check=True)
    sh("udevadm", "settle")
    sh("mkfs.ext4", "-q", f"{disk}1")
    Path(mount).mkdir(parents=True, exist_ok=True)
    sh("mount", f"{disk}1", mount)
    return {"name": name, "disk": disk, "partition": f"{disk}1", "mount": mount}


def remove(name: str, mount: str) -> dict:
    subprocess.run(["umount", mount], check=False, capture_output=True)
    detach([name])
    ArrayClient(ArrayAccess.load()).delete(name)
    return {"name": name, "removed": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add")
    a.add_argument("name")
    a.add_argument("size_mib", type=int)
    a.add_argument("mount")
    r = sub.add_parser("remove")
    r.add_argument("name")
    r.add_argument("mount")
    for command in ("attach", "detach"):
        sub.add_parser(command).add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "add":
        out = add(args.name, args.size_mib, args.mount)
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
