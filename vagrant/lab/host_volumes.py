"""Volumes on a lab host as an admin would set them up: array LUNs (made through the agent's API)
masked to the host with its CHAP credentials, logged in, each with a GPT partition holding ext4
mounted at /mnt/<name>. Test and demo tooling, not the product.

`remove()` takes down what `create()` made, and every LUN the array derived from those volumes
(snapshots, and snapshots a break turned into ordinary LUNs), collecting errors.
"""
from __future__ import annotations

import json
import uuid

from .agent_api import AgentApi
from .errors import LabError
from .initiator import Node
from .vm import VM

MIB = 1 << 20


def host_chap(vm: VM) -> tuple[str, str]:
    h = json.loads(vm.run("cat /etc/shadowlun/host.json").stdout)
    return h["chap_user"], h["chap_secret"]


def initiator(vm: VM) -> str:
    return vm.run("sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi").stdout.strip()


class HostVolumes:
    def __init__(self, vm: VM, labels: list[str], size_bytes: int = 64 * MIB,
                 mounts: list[str] | None = None) -> None:
        self.vm, self.api = vm, AgentApi(vm)
        tag = uuid.uuid4().hex[:6]
        self.names = [f"{label}-{tag}" for label in labels]  # unique on the array, run after run
        self.mounts = mounts or [f"/mnt/{n}" for n in self.names]
        self.size_bytes = size_bytes
        self.disks: dict[str, str] = {}  # name -> /dev/sdX
        target = self.api.call("GET", "/v1/target")
        self.target_iqn = target["iqn"]
        self.node = Node(vm, target["iqn"], target["portals"][0].split(":")[0])

    def create(self) -> HostVolumes:
        chap = host_chap(self.vm)
        self.node.create(*chap)
        for n in self.names:
            self.api.call("POST", "/v1/luns", {"name": n, "size_bytes": self.size_bytes})
            self.api.call("PUT", f"/v1/luns/{n}/masks",
                          {"initiator": initiator(self.vm), "chap_user": chap[0], "chap_secret": chap[1]})
        if not self.node.login():
            raise LabError(f"{self.vm.name}: login to {self.target_iqn} failed")
        for n, mount in zip(self.names, self.mounts):
            lun = self.api.call("GET", f"/v1/luns/{n}")
            disk = self.node.scan(lun["lun_id"], lun["wwid"])["device"]
            self.disks[n] = disk
            self.vm.run(f"printf 'label: gpt\\n,\\n' | sfdisk -q {disk} && udevadm settle && "
                        f"mkfs.ext4 -q {disk}1 && mkdir -p {mount} && mount {disk}1 {mount}")
        return self

    def remove(self) -> list[str]:
        errors = []
        for mount in self.mounts:
            r = self.vm.run(f"fsfreeze -u {mount} 2>/dev/null; umount {mount}; rmdir {mount}", check=False)
            if r.returncode and "not mounted" not in r.stderr:
                errors.append(f"umount {mount}: {r.stderr.strip()}")
        self.node.remove()
        try:
            derived = [lun for lun in self.api.call("GET", "/v1/luns") if lun["origin"] in self.names]
            for lun in derived + [{"name": n} for n in self.names]:
                self.api.call("DELETE", f"/v1/luns/{lun['name']}")
        except Exception as e:  # noqa: BLE001 - collected and reported, the rest is still cleaned
            errors.append(f"deleting LUNs: {e}")
        return errors
