#!/usr/bin/python3
"""Lab smoke helper, run on a host VM: after a login with node.session.scan=manual, scan one
LUN of one target's session and find its disk by WWID in sysfs (never by-path, which races).

  iscsi_lun.py scan --target IQN --lun 0 --wwid naa.6001405... [--timeout 60]

Prints {"device": "/dev/sdX", "wwid": ..., "vendor": ..., "model": ..., "serial": ...}.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

SYS = Path("/sys")


def session_host(target: str) -> int:
    """The SCSI host number of the (single) session logged in to `target`."""
    for sess in sorted((SYS / "class/iscsi_session").glob("session*")):
        if (sess / "targetname").read_text().strip() == target:
            m = re.search(r"/host(\d+)/", str(sess.resolve()))
            if m:
                return int(m.group(1))
    raise SystemExit(f"no iSCSI session to {target}")


def disk_with_wwid(wwid: str) -> Path | None:
    for blk in (SYS / "block").glob("sd*"):
        f = blk / "device/wwid"
        if f.exists() and f.read_text().strip() == wwid:
            return blk
    return None


def scan(a: argparse.Namespace) -> dict:
    host = session_host(a.target)
    (SYS / f"class/scsi_host/host{host}/scan").write_text(f"- - {a.lun}\n")
    deadline = time.monotonic() + a.timeout
    while (blk := disk_with_wwid(a.wwid)) is None:
        if time.monotonic() > deadline:
            seen = {b.name: (b / "device/wwid").read_text().strip()
                    for b in (SYS / "block").glob("sd*") if (b / "device/wwid").exists()}
            raise SystemExit(f"no disk with WWID {a.wwid} on host{host} after {a.timeout} s; seen {seen}")
        time.sleep(0.2)
    dev = blk / "device"
    vpd80 = (dev / "vpd_pg80").read_bytes() if (dev / "vpd_pg80").exists() else b""
    return {
        "device": f"/dev/{blk.name}",
        "wwid": a.wwid,
        "vendor": (dev / "vendor").read_text().strip(),
        "model": (dev / "model").read_text().strip(),
        # VPD page 0x80: 4-byte header, then the unit serial number.
        "serial": vpd80[4:].decode(errors="replace").strip("\0 "),
        "read_only": (blk / "ro").read_text().strip() == "1",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan")
    s.add_argument("--target", required=True)
    s.add_argument("--lun", type=int, default=0)
    s.add_argument("--wwid", required=True)
    s.add_argument("--timeout", type=float, default=60)
    s.set_defaults(func=scan)
    a = p.parse_args()
    print(json.dumps(a.func(a)))


if __name__ == "__main__":
    sys.exit(main())
