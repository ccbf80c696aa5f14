#!/usr/bin/python3
"""Lab smoke helper, run on the array VM: export one block device as an iSCSI LUN with
rtslib-fb, masked to one initiator with CHAP, or take that export down again.

  lio_export.py export --name N --dev /dev/X --serial HEX --iqn TARGET --portal IP
                       --initiator IQN --chap-user U --chap-password P
  lio_export.py unexport --name N --iqn TARGET

This is the lab's proof that the kernel target works, not the product: the array agent
(targets/) owns LIO in the product.
"""
from __future__ import annotations

import argparse
import json

from rtslib_fb import (
    LUN,
    BlockStorageObject,
    FabricModule,
    MappedLUN,
    NetworkPortal,
    NodeACL,
    RTSLibNotInCFS,
    Target,
    TPG,
)


def export(a: argparse.Namespace) -> dict:
    so = BlockStorageObject(a.name, dev=a.dev, wwn=a.serial)
    target = Target(FabricModule("iscsi"), a.iqn, mode="create")
    tpg = TPG(target, 1, mode="create")
    tpg.set_attribute("authentication", "1")
    tpg.set_attribute("generate_node_acls", "0")
    NetworkPortal(tpg, a.portal, 3260, mode="create")
    lun = LUN(tpg, 0, so)
    acl = NodeACL(tpg, a.initiator, mode="create")
    acl.chap_userid = a.chap_user
    acl.chap_password = a.chap_password
    MappedLUN(acl, 0, lun, write_protect=True)
    tpg.enable = True
    return {"serial": so.wwn, "target": target.wwn, "initiators": [n.node_wwn for n in tpg.node_acls]}


def unexport(a: argparse.Namespace) -> dict:
    removed = []
    try:
        Target(FabricModule("iscsi"), a.iqn, mode="lookup").delete()
        removed.append(a.iqn)
    except RTSLibNotInCFS:
        pass
    try:
        BlockStorageObject(a.name).delete()
        removed.append(a.name)
    except RTSLibNotInCFS:
        pass
    return {"removed": removed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    for opt in ("name", "dev", "serial", "iqn", "portal", "initiator", "chap-user", "chap-password"):
        e.add_argument(f"--{opt}", required=True)
    e.set_defaults(func=export)
    u = sub.add_parser("unexport")
    u.add_argument("--name", required=True)
    u.add_argument("--iqn", required=True)
    u.set_defaults(func=unexport)
    a = p.parse_args()
    print(json.dumps(a.func(a)))


if __name__ == "__main__":
    main()
