#!/usr/bin/python3
"""A data volume for a lab host, as its admin would make one: an array LUN (through the agent's
API) masked to this host with its CHAP credentials, logged in over iSCSI, one GPT partition
with ext4, mounted. Run as root on a host VM (Vagrant or the QEMU lab), from the checkout:

  python3 /shadowlun/vagrant/provision/volume.py add NAME SIZE_MIB MOUNT
  python3 /shadowlun/vagrant/provision/volume.py remove NAME MOUNT

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


def add(name: str, size_mib: int, mount: str) -> dict:
    array, initiator = ArrayClient(ArrayAccess.load()), Initiator()
    chap = json.loads(HOST_FILE.read_text())
    array.create_volume(name, size_mib * MIB)
    lun = array.mask(name, initiator_name(), chap["chap_user"], chap["chap_secret"])
    target = array.target()
    host = initiator.login(target["iqn"], target["portals"][0], chap["chap_user"], chap["chap_secret"])
    initiator.scan_lun(host, lun["lun_id"])
    disk = "/dev/" + initiator.wait_for_disk(lun["wwid"], DISK_WAIT_S)
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\n,\n", text=True, check=True)
    sh("udevadm", "settle")
    sh("mkfs.ext4", "-q", f"{disk}1")
    Path(mount).mkdir(parents=True, exist_ok=True)
    sh("mount", f"{disk}1", mount)
    return {"name": name, "disk": disk, "partition": f"{disk}1", "mount": mount, "wwid": lun["wwid"]}


def remove(name: str, mount: str) -> dict:
    array, initiator = ArrayClient(ArrayAccess.load()), Initiator()
    subprocess.run(["umount", mount], check=False, capture_output=True)
    lun, target = array.lun(name), array.target()
    disk = initiator.find_disk(lun["wwid"])
    initiator.disconnect(target["iqn"], target["portals"][0], [disk] if disk else [])
    array.delete(name)
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
    args = parser.parse_args(argv)
    out = add(args.name, args.size_mib, args.mount) if args.command == "add" else remove(args.name, args.mount)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
