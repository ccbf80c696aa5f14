"""Volumes on a lab host as an admin and the host would set them up, with
`provision/volume.py` (the same script the README gives Vagrant users): the admin makes array
LUNs masked to the host (on the array), the host logs in and gives each a GPT partition holding
ext4, mounted. Test and demo tooling.

`remove()` takes down what `create()` made, and every LUN the array derived from those volumes
(snapshots, and snapshots a break turned into ordinary LUNs), collecting errors.
"""
from __future__ import annotations

import json
import uuid

from .agent_api import AgentApi, host_access
from .vm import VM

MIB = 1 << 20
VOLUME = "/shadowlun/vagrant/provision/volume.py"


def host_chap(vm: VM) -> tuple[str, str]:
    access = host_access(vm)
    return access["chap_user"], access["chap_secret"]


def initiator(vm: VM) -> str:
    return vm.run("sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi").stdout.strip()


class HostVolumes:
    def __init__(self, lab, vm: VM, labels: list[str], size_bytes: int = 64 * MIB,
                 mounts: list[str] | None = None) -> None:
        self.array, self.vm, self.api = lab.array, vm, AgentApi.admin(lab)
        tag = uuid.uuid4().hex[:6]
        self.names = [f"{label}-{tag}" for label in labels]  # unique on the array, run after run
        self.mounts = mounts or [f"/mnt/{n}" for n in self.names]
        self.size_bytes = size_bytes
        self.disks: dict[str, str] = {}  # name -> /dev/sdX (/dev/dm-N, a map, on a multipath host)

    def create(self) -> HostVolumes:
        """Each volume made, masked, logged in to, formatted and mounted. A failed create undoes
        itself (remove() of every name, made or not), so no session or LUN of it is left for the
        tests after."""
        iqn = initiator(self.vm)
        try:
            for n, mount in zip(self.names, self.mounts):
                self.array.run(["python3", VOLUME, "make", n, str(self.size_bytes // MIB), iqn], timeout=300)
                made = json.loads(self.vm.run(["python3", VOLUME, "add", n, mount], timeout=300).stdout)
                self.disks[n] = made["disk"]
        except BaseException:
            self.remove()
            raise
        return self

    def clear_derived(self) -> list[str]:
        """Back to the volumes alone: their filesystems thawed, and every LUN the array derived
        from them (snapshots, broken copies) deleted. Errors are collected and returned."""
        errors = []
        for mount in self.mounts:
            self.vm.run(f"fsfreeze -u {mount} 2>/dev/null; true", check=False)
        try:
            for lun in self.api.call("GET", "/v1/luns"):
                if lun["origin"] in self.names:
                    self.api.call("DELETE", f"/v1/luns/{lun['name']}")
        except Exception as e:  # noqa: BLE001 - collected and reported, the rest is still cleaned
            errors.append(f"deleting derived LUNs: {e}")
        return errors

    def remove(self) -> list[str]:
        errors = self.clear_derived()
        for n, mount in zip(self.names, self.mounts):
            for vm, argv in ((self.vm, ["python3", VOLUME, "remove", n, mount]),
                             (self.array, ["python3", VOLUME, "destroy", n])):
                r = vm.run(argv, check=False, timeout=300)
                if r.returncode:
                    errors.append(f"{vm.name}: volume.py {argv[2]} {n}: {r.stderr.strip()[-500:]}")
            self.vm.run(f"rmdir {mount} 2>/dev/null; true", check=False)
        return errors
