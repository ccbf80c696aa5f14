"""The contract's edges on the real stack (issue 13, points 1-3), through the registered provider
server as the coordinator calls it: a production LUN's record given to OnLunEmpty,
OnLunStateChange(DO_MASK_LUNS) or as a ResyncLuns source is refused and nothing changes (LVs,
LIO objects, masks, the host's disks and sessions, the volume's bytes); a late AbortSnapshots
from a fresh provider instance keeps a set that was handed out, and one another host imported."""
from __future__ import annotations

import json

import pytest

from lab import checks, story
from lab.host_volumes import HostVolumes

# One provider call through the registered provider server (started, loaded, unloaded, stopped
# as the CLI does), printing its answer or its error as JSON. argv: method, params as JSON;
# a "disk" param is replaced by that disk's FillInLunInfo record as "lun_info" or "luns".
CALL = r"""
import json, sys
from pathlib import Path
from provider.cli import providers
from provider.hresult import VssError
from provider.lun_info import read_lun_info
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


def provider_call(vm, method: str, **params) -> dict:
    vm.put("/root/provider_call.py", CALL)
    r = vm.run(["sh", "-c", 'cd /shadowlun && python3 /root/provider_call.py "$0" "$1"', method, json.dumps(params)],
               timeout=600)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_volumes(lab):
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["edge0", "edge1"]).create()
    for m in vols.mounts:
        a.run(f"head -c 4M /dev/urandom > {m}/data && sync")
    try:
        yield vols
    finally:
        assert vols.remove() == []


def world(lab, vols) -> dict:
    """Everything a refused call must leave as it was."""
    a, array = lab.vm("host-a"), lab.vm("array")
    target = vols.api.call("GET", "/v1/target")["iqn"]
    return {
        "array": checks.array_objects(array),
        "luns": sorted((x["name"], x["kind"], x["size_bytes"], json.dumps(x["masks"], sort_keys=True))
                       for x in vols.api.call("GET", "/v1/luns")),
        "host": checks.host_objects(a, target),
        "bytes": [story.sha256(a, f"{m}/data") for m in vols.mounts],
    }


def test_production_luns_are_never_the_object_of_a_shadow_copy_call(lab, two_volumes):
    a, vols = lab.vm("host-a"), two_volumes
    d0, d1 = (vols.disks[n].removeprefix("/dev/") for n in vols.names)
    before = world(lab, vols)
    refused = {
        "OnLunEmpty": provider_call(a, "on_lun_empty", device=f"/dev/{d0}", disk=d0),
        "DO_MASK_LUNS": provider_call(a, "on_lun_state_change", snapshot_disks=[d0], original_disks=[d0],
                                      flags=0x800),
        "break": provider_call(a, "on_lun_state_change", snapshot_disks=[d0], original_disks=[d0], flags=0),
        "ResyncLuns": provider_call(a, "resync_luns", source_disks=[d0], target_disks=[d1]),
    }
    for what, answer in refused.items():
        assert "error" in answer, (what, answer)
        assert answer["error"]["vss"] in ("E_INVALIDARG", "VSS_E_PROVIDER_VETO"), (what, answer)
        assert "not a shadow copy" in answer["error"]["message"], (what, answer)
    assert world(lab, vols) == before
    a.run(f"touch {vols.mounts[0]}/still-writable {vols.mounts[1]}/still-writable")


def test_a_late_abort_keeps_a_handed_out_set_and_an_imported_one(lab, two_volumes):
    a, b, vols = lab.vm("host-a"), lab.vm("host-b"), two_volumes
    kept = story.shadowlun(a, "create", "--transportable", "--context", "app_rollback", vols.mounts[0])
    moved = story.shadowlun(a, "create", "--transportable", "--bcd", "/root/edge.xml", vols.mounts[1])
    b.put("/root/edge.xml", a.run("cat /root/edge.xml").stdout)
    story.shadowlun(b, "import", "/root/edge.xml")
    try:
        before = world(lab, vols)
        for set_id in (kept["set_id"], moved["set_id"]):  # each CLI call is a fresh provider server
            assert provider_call(a, "abort_snapshots", set_id=set_id) == {"ok": None}
            assert vols.api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "committed"
        assert world(lab, vols) == before
    finally:
        story.shadowlun(b, "delete", "--all")
