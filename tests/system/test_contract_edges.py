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
from lab.provider_call import provider_call

@pytest.fixture(scope="module")
def edge_volumes(lab):
    """Two host-a volumes with data, made once for this file's tests (each costs half a minute
    to make and remove under TCG)."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["edge0", "edge1"]).create()
    try:
        for m in vols.mounts:
            a.run(f"head -c 4M /dev/urandom > {m}/data && sync")
        yield vols
    finally:
        assert vols.remove() == []


@pytest.fixture
def two_volumes(edge_volumes):
    """The two volumes; after each test, every LUN derived from them is deleted."""
    yield edge_volumes
    assert edge_volumes.clear_derived() == []


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


def test_a_delete_cut_short_after_the_array_deleted_the_lun_finishes_when_run_again(lab, two_volumes):
    """OnLunEmpty done (the host's disk removed, the LUN deleted on the array), then the
    requester stopped before its catalog forgot the copy: `delete` run again finishes instead of
    failing on a LUN the array no longer has, and changes nothing else."""
    a, vols = lab.vm("host-a"), two_volumes
    made = story.shadowlun(a, "create", "--context", "app_rollback", vols.mounts[0])  # imported here
    try:
        snap = story.imported_snapshot(a, made["set_id"])
        disk = snap["disks"][0].removeprefix("/dev/")
        assert provider_call(a, "on_lun_empty", device=f"/dev/{disk}", disk=disk) == {"ok": None}
        before = world(lab, vols)
        out = story.shadowlun(a, "delete", "--set", made["set_id"])
        assert out["deleted"] == [snap["snapshot_id"]], out
        assert world(lab, vols) == before
        assert made["set_id"] not in [s["set_id"] for s in story.shadowlun(a, "list")["sets"]]
    finally:
        story.forget_set(a, made)
