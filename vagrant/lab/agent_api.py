"""The array agent's API as the tests use it, with provider.hardware.array_client run inside a VM (the machine
running the tests is not on the lab's networks, exactly like a real management LAN).

`AgentApi.admin(lab)` is the admin (on the array, with admin-access.json): provisioning and
admin tools. `AgentApi(host_vm)` is that host, with its own access file: what its provider may do.
"""
from __future__ import annotations

import json

from provider.contract.hresult import VssError
from provider.hardware.array_client import ACCESS_FILE, ADMIN_ACCESS_FILE

from .errors import CommandFailed
from .vm import VM

ADMIN_ACCESS = str(ADMIN_ACCESS_FILE)
HOST_ACCESS = str(ACCESS_FILE)


class AgentApi:
    def __init__(self, vm: VM, access: str = HOST_ACCESS) -> None:
        self.vm, self.access = vm, access

    @classmethod
    def admin(cls, lab) -> AgentApi:
        return cls(lab.array, ADMIN_ACCESS)

    def call(self, method: str, path: str, body: dict | None = None):
        argv = ["python3", "-m", "provider.hardware.array_client", "--access", self.access, method, path]
        if body is not None:
            argv.append(json.dumps(body))
        r = self.vm.run(argv, check=False, timeout=180)
        if r.returncode == 0:
            return json.loads(r.stdout) if r.stdout.strip() else None
        if r.returncode == 2 and r.stderr.strip():
            raise VssError.from_dict(json.loads(r.stderr.strip().splitlines()[-1]))
        raise CommandFailed(self.vm.name, " ".join(argv), r.returncode, r.stdout, r.stderr)


def host_access(host: VM) -> dict:
    """The host's own array access: its initiator, token and CHAP credentials."""
    return json.loads(host.run(f"cat {HOST_ACCESS}").stdout)


def install_credentials(host: VM, credentials: dict) -> None:
    """A host's access file with new credentials (a registration, a new token), as an admin
    copies them to that host alone."""
    access = host_access(host)
    host.put(HOST_ACCESS, json.dumps({**access, **credentials}, indent=2) + "\n", mode="0600")
