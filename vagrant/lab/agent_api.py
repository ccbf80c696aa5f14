"""The array agent's API as the tests use it: called from a host VM with targets.client (the
machine running the tests is not on the lab's networks, exactly like a real management LAN)."""
from __future__ import annotations

import json

from provider.hresult import VssError

from .errors import CommandFailed
from .vm import VM


class AgentApi:
    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def call(self, method: str, path: str, body: dict | None = None):
        argv = ["python3", "-m", "targets.client", method, path]
        if body is not None:
            argv.append(json.dumps(body))
        r = self.vm.run(argv, check=False, timeout=180)
        if r.returncode == 0:
            return json.loads(r.stdout) if r.stdout.strip() else None
        if r.returncode == 2 and r.stderr.strip():
            raise VssError.from_dict(json.loads(r.stderr.strip().splitlines()[-1]))
        raise CommandFailed(self.vm.name, " ".join(argv), r.returncode, r.stdout, r.stderr)
