"""Contexts on the real stack (issue 13, point 4): a backup set (non-persistent, auto-release) is
imported on the creating host, lives while its requester runs, and leaves nothing once it ends,
even when the requester is killed (`recover`); a persistent set stays, in `list`, until
`delete --all`."""
from __future__ import annotations

import json

import pytest

from lab import checks, story
from lab.checks import until
from lab.host_volumes import HostVolumes, initiator

SHADOWLUN = "python3 -m provider.cli --json"


@pytest.fixture(scope="module")
def ctx_volumes(lab):
    """One host-a volume with data, made once for this file's tests (half a minute to make and
    remove under TCG)."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["ctx"]).create()
    try:
        a.run(f"head -c 4M /dev/urandom > {vols.mounts[0]}/data && sync")
        yield vols
    finally:
        assert vols.remove() == []


@pytest.fixture
def ctx_volume(lab, ctx_volumes):
    """The volume; after each test, what the test's sets left is recovered and deleted, and
    every LUN derived from the volume is gone."""
    a = lab.vm("host-a")
    try:
        yield ctx_volumes
    finally:
        a.run("pkill -KILL -f '[s]leep 3600'; true")
        a.run(f"{SHADOWLUN} recover; {SHADOWLUN} delete --all", check=False, timeout=600)
        # A killed requester's provider server (its own session) outlives it; later tests start theirs.
        a.run("pkill -f '[p]rovider.hosting.server --socket'; true")
        assert ctx_volumes.clear_derived() == []


def shadow_luns(api, origin: str) -> list[dict]:
    return [lun for lun in api.call("GET", "/v1/luns") if lun["kind"] == "snapshot" and lun["origin"] == origin]


def snapshot_lvs(array) -> set[str]:
    return {lv for lv in checks.array_objects(array)["lvs"] if lv.startswith("snap-")}


def test_a_backup_set_lives_while_its_command_runs_and_leaves_nothing(lab, ctx_volume):
    a, array, api = lab.vm("host-a"), lab.vm("array"), ctx_volume.api
    mount, [name] = ctx_volume.mounts[0], ctx_volume.names
    at_snapshot = story.sha256(a, f"{mount}/data")
    target = api.call("GET", "/v1/target")["iqn"]
    lvs_before, host_before = snapshot_lvs(array), checks.host_objects(a, target)
    # The requester's command reads the shadow copy (mounted read-only without journal replay)
    # while it exists, and the original changes meanwhile.
    cmd = ("mkdir -p /mnt/ctx-shadow && mount -o ro,noload $SHADOWLUN_DEVICES /mnt/ctx-shadow && "
           f"head -c 6M /dev/urandom > {mount}/data && sync && "
           "sha256sum /mnt/ctx-shadow/data | cut -c1-64 > /tmp/ctx-read; umount /mnt/ctx-shadow")
    r = a.run(f"{SHADOWLUN} create --exec '{cmd}' {mount}", timeout=600)  # quoted: expanded by --exec's shell
    out = json.loads(r.stdout)
    assert out["exec_status"] == 0 and len(out["released"]) == 1, out
    assert a.run("cat /tmp/ctx-read").stdout.strip() == at_snapshot != story.sha256(a, f"{mount}/data")
    # The requester ended: nothing of the set on the array or on host-a.
    assert api.call("GET", f"/v1/snapshot-sets/{out['set_id']}")["state"] == "committed"
    assert shadow_luns(api, name) == [] and snapshot_lvs(array) == lvs_before
    assert checks.host_objects(a, target) == host_before
    assert json.loads(a.run(f"{SHADOWLUN} list").stdout)["sets"] == []


def test_a_backup_set_whose_requester_was_killed_is_released_by_recover(lab, ctx_volume):
    a, array, api = lab.vm("host-a"), lab.vm("array"), ctx_volume.api
    mount, [name] = ctx_volume.mounts[0], ctx_volume.names
    lvs_before = snapshot_lvs(array)
    a.run(f"setsid sh -c '{SHADOWLUN} create --exec \"sleep 3600\" {mount} > /tmp/ctx-killed.out 2>&1' "
          "< /dev/null > /dev/null 2>&1 &")
    until(lambda: a.run("pgrep -f '^sleep 3600'", check=False).ok, 300,
          lambda: f"the command never started: {a.run('cat /tmp/ctx-killed.out', check=False).stdout}")
    [lun] = shadow_luns(api, name)  # imported on host-a while the command runs
    assert [m["initiator"] for m in lun["masks"]] == [initiator(a)]
    a.run("pkill -KILL -f '^python3 -m provider[.]cli'; pkill -KILL -f '^sleep 3600'; true")
    assert shadow_luns(api, name) == [lun]  # a killed requester releases nothing itself
    released = json.loads(a.run(f"{SHADOWLUN} recover", timeout=600).stdout)["aborted"]
    assert lun["set_id"] in released
    assert shadow_luns(api, name) == [] and snapshot_lvs(array) == lvs_before
    assert json.loads(a.run(f"{SHADOWLUN} list").stdout)["sets"] == []


def test_a_persistent_set_is_listed_here_and_stays_until_delete_all(lab, ctx_volume):
    a, array, api = lab.vm("host-a"), lab.vm("array"), ctx_volume.api
    mount, [name] = ctx_volume.mounts[0], ctx_volume.names
    lvs_before = snapshot_lvs(array)
    out = json.loads(a.run(f"{SHADOWLUN} create --context app_rollback {mount}", timeout=600).stdout)
    assert "released" not in out
    [listed] = json.loads(a.run(f"{SHADOWLUN} list").stdout)["sets"]
    assert listed["set_id"] == out["set_id"] and listed["snapshots"][0]["read_only"] is True
    assert len(shadow_luns(api, name)) == 1
    a.run(f"{SHADOWLUN} recover", timeout=600)  # a persistent set is no crash's leftover
    assert len(shadow_luns(api, name)) == 1
    a.run(f"{SHADOWLUN} delete --all", timeout=600)
    assert shadow_luns(api, name) == [] and snapshot_lvs(array) == lvs_before
