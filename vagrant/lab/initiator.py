"""Host-side iSCSI for lab tests: one open-iscsi node record per (target, portal), logged in
with CHAP and node.session.scan=manual, LUNs scanned one by one and found by WWID in sysfs.

Test tooling, not the product (the provider has its own initiator code)."""
from __future__ import annotations

import json

from .vm import VM

PORT = 3260
GUEST = "/shadowlun/vagrant/lab/guest"


class Node:
    """One open-iscsi node record on a host VM (target + portal), made and removed by us."""

    def __init__(self, vm: VM, target: str, portal: str) -> None:
        self.vm, self.target, self.portal = vm, target, f"{portal}:{PORT}"

    def iscsiadm(self, *args: str, check: bool = True):
        return self.vm.run(["iscsiadm", "-m", "node", "-T", self.target, "-p", self.portal, *args],
                           check=check, timeout=120)

    def create(self, chap_user: str, chap_password: str) -> None:
        self.iscsiadm("-o", "new")
        for name, value in [("node.startup", "manual"), ("node.session.scan", "manual"),
                            ("node.session.auth.authmethod", "CHAP"),
                            ("node.session.auth.username", chap_user),
                            ("node.session.auth.password", chap_password)]:
            self.iscsiadm("-o", "update", "-n", name, "-v", value)

    def login(self) -> bool:
        return self.iscsiadm("--login", check=False).ok

    def remove(self) -> None:
        """Drop the host's disk first (os-brick order), then log out, then forget the record."""
        self.vm.run(f"for s in /sys/class/iscsi_session/session*; do "
                    f"[ \"$(cat $s/targetname 2>/dev/null)\" = {self.target} ] || continue; "
                    f"for d in $(readlink -f $s/device)/target*/*/delete; do "
                    f"[ -e \"$d\" ] && echo 1 > \"$d\"; done; done", check=False)
        self.iscsiadm("--logout", check=False)
        self.iscsiadm("-o", "delete", check=False)

    def scan(self, lun: int, wwid: str, timeout: float = 60) -> dict:
        """Scan one LUN of this node's session; the disk found by its WWID (device, identity)."""
        return json.loads(self.vm.run(["python3", f"{GUEST}/iscsi_lun.py", "scan", "--target", self.target,
                                       "--lun", str(lun), "--wwid", wwid, "--timeout", str(timeout)]).stdout)


def sessions_to(vm: VM, target: str) -> str:
    return vm.run(f"grep -lx {target} /sys/class/iscsi_session/session*/targetname || true").stdout.strip()
