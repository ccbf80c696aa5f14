"""The array agent's API as the tests use it, with targets.client run inside a VM (the machine
running the tests is not on the lab's networks, exactly like a real management LAN).

`AgentApi.admin(lab)` is the admin (on the array, with admin-access.json): provisioning and
admin tools. `AgentApi(host_vm)` is that host, with its own access file: what its provider may do.
"""
from __future__ import annotations

import json

from provider.hresult import VssError

from .errors import CommandFailed
from .vm import VM

ADMIN_ACCESS = "/etc/shadowlun/admin-access.json"
HOST_ACCESS = "/etc/shadowlun/array-access.json"


class AgentApi:
    def __init__(self, vm: VM, access: str = HOST_ACCESS) -> None:
        self.vm, self.access = vm, access

    @classmethod
    def admin(cls, lab) -> AgentApi:
        return cls(lab.array, ADMIN_ACCESS)

    def call(self, method: str, path: str, body: dict | None = None):
        argv = ["python3", "-m", "targets.client", "--access", self.access, method, path]
        if body is not None:
            argv.append(json.dumps(body))
        r = self.vm.run(argv, check=False, timeout=180)
        if r.returncode == 0:
            return json.loads(r.stdout) if r.stdout.strip() else None
        if r.returncode == 2 and r.stderr.strip():
            raise VssError.from_dict(json.loads(r.stderr.strip().splitlines()[-1]))
        raise CommandFailed(self.vm.name, " ".join(argv), r.returncode, r.stdout, r.stderr)


def install_credentials(host: VM, credentials: dict) -> None:
    """A host's access file with new credentials (a registration, a new token), as an admin
    copies them to that host alone."""
    access = json.loads(host.run(f"cat {HOST_ACCESS}").stdout)
    host.put(HOST_ACCESS, json.dumps({**access, **credentials}, indent=2) + "\n", mode="0600")
