"""One provider method called on a host through its registered provider server, as the
coordinator calls it (started, loaded, unloaded, stopped like the CLI does): for system tests
that give the contract what a requester might, right or wrong."""
from __future__ import annotations

import json

from .vm import VM

# One provider call through the registered provider server (started, loaded, unloaded, stopped
# as the CLI does), printing its answer or its error as JSON. argv: method, params as JSON;
# a "disk" param is replaced by that disk's FillInLunInfo record as "lun_info" or "luns".
CALL = r"""
import json, sys
from pathlib import Path
from provider.cli import providers
from provider.contract.hresult import VssError
from provider.hardware.lun_info import read_lun_info
method, params = sys.argv[1], json.loads(sys.argv[2])
for key in [k for k in params if k.endswith("_disks")]:
    params[key.removesuffix("_disks") + "_luns"] = [read_lun_info(Path("/sys/block") / d).to_dict()
                                                    for d in params.pop(key)]
if "disk" in params:
    params["lun_info"] = read_lun_info(Path("/sys/block") / params.pop("disk")).to_dict()
[p] = providers()
p.start()
try:
    print(json.dumps({"ok": p.call(method, **params)}))
except VssError as e:
    print(json.dumps({"error": e.to_dict()}))
finally:
    p.on_unload(True)
    p.stop()
"""


def provider_call(vm: VM, method: str, **params) -> dict:
    """{'ok': answer} or {'error': the VssError as a dict}."""
    vm.put("/root/provider_call.py", CALL)
    r = vm.run(["sh", "-c", 'cd /shadowlun && python3 /root/provider_call.py "$0" "$1"', method, json.dumps(params)],
               timeout=600)
    return json.loads(r.stdout.strip().splitlines()[-1])
