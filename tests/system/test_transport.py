"""Transportable shadow copies end to end on the real stack (issue: transport): an import the
array refuses, reboots between create and import, delete, and resync. The demo story itself
(`make demo`'s) is checked on Vagrant's machines, in test_vagrant.py: the same story, run once."""
from __future__ import annotations

import json

import pytest

from lab import checks, story
from lab.agent_api import install_credentials
from lab.host_volumes import HostVolumes, initiator
from lab.story import PausedCreate, shadowlun

MIB = 1 << 20
SHADOW_ATTRS = "GUID:60,61,62,63"


def refused(vm, *args: str) -> dict:
    """The CLI refusing: exit 2 and the error object it printed."""
    r = vm.run(f"python3 -m provider.cli --json {' '.join(args)}", check=False, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stderr.strip().splitlines()[-1])


def partition_attrs(vm, disk: str) -> str:
    table = json.loads(vm.run(f"sfdisk --json {disk}").stdout)["partitiontable"]
    return table["partitions"][0].get("attrs", "")


@pytest.fixture
def one_volume(lab):
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["tr"]).create()
    a.run(f"head -c 6M /dev/urandom > {vols.mounts[0]}/data && sync")
    try:
        yield vols
    finally:
        assert vols.remove() == []


def test_refused_import_exposes_nothing_and_reboots_keep_the_flags(lab, one_volume):
    """host-b, not a host of the array, is refused with nothing exposed; once registered, and
    after the array and host-b rebooted between create and import, it imports: the flags came
    with the LUN, udev and the coordinator made it read-only and hidden. Delete then leaves no
    LV, LIO object, ACL, node record or session."""
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
    api, mount = one_volume.api, one_volume.mounts[0]
    at_snapshot = story.sha256(a, f"{mount}/data")
    out = shadowlun(a, "create", "--transportable", "--bcd", "/root/tr.xml", mount)
    a.run(f"head -c 6M /dev/urandom > {mount}/data && sync")
    b.put("/root/tr.xml", a.run("cat /root/tr.xml").stdout)
    target = api.call("GET", "/v1/target")["iqn"]
    array_before, host_before = checks.array_objects(array), checks.host_objects(b, target)
    iqn_b = initiator(b)
    (shadow,) = [lun["name"] for lun in api.call("GET", "/v1/luns") if lun["set_id"] == out["set_id"]]
    assert shadow in array_before["lvs"] and iqn_b not in array_before["acls"]

    api.call("DELETE", f"/v1/hosts/{iqn_b}")
    try:
        err = refused(b, "import", "/root/tr.xml")  # its token went with its registration
        assert err["vss"] == "E_ACCESSDENIED" and "bearer token" in err["message"], err
        assert checks.array_objects(array) == array_before
        assert checks.host_objects(b, target) == host_before
        assert api.call("GET", f"/v1/snapshot-sets/{out['set_id']}")["imported_by"] is None
        assert shadowlun(b, "list")["sets"] == []
    finally:  # registered again: new credentials, which the admin hands to host-b alone
        install_credentials(b, api.call("PUT", f"/v1/hosts/{iqn_b}", {"name": "host-b"})["credentials"])

    array.reboot()
    checks.wait_for_agent(a)
    assert checks.array_objects(array) == array_before  # the shadow LUN's LV and export, and the ACLs
    b.reboot()
    imported = shadowlun(b, "import", "/root/tr.xml")
    try:
        (snap,) = imported["snapshots"]
        disk, part = snap["devices"][0], snap["device"]
        assert snap["flags"] == ["read-only", "shadow-copy", "hidden", "no-drive-letter"]
        assert partition_attrs(b, disk) == SHADOW_ATTRS  # on the LUN itself, through both reboots
        for dev in (disk, part):
            assert b.run(f"cat /sys/class/block/{dev.removeprefix('/dev/')}/ro").stdout.strip() == "1", dev
        udev = b.run(f"udevadm info --query=property {part}").stdout
        assert "UDISKS_IGNORE=1" in udev and "UDISKS_AUTO=0" in udev and "SHADOWLUN_READ_ONLY=1" in udev
        shadowlun(b, "expose", snap["snapshot_id"], "/mnt/tr-shadow")
        assert story.sha256(b, "/mnt/tr-shadow/data") == at_snapshot
        assert b.run("touch /mnt/tr-shadow/x", check=False).returncode != 0
        shadowlun(b, "unexpose", snap["snapshot_id"])
    finally:
        deleted = shadowlun(b, "delete", "--set", imported["set_id"])
    assert deleted["deleted"] == [snap["snapshot_id"]]
    assert checks.array_objects(array) == {"lvs": array_before["lvs"] - {shadow},
                                           "backstores": array_before["backstores"] - {shadow},
                                           "acls": array_before["acls"]}
    assert checks.host_objects(b, target) == {"sessions": set(), "nodes": set(),
                                              "wwids": host_before["wwids"]}
    assert b.run("ls /mnt/tr-shadow").stdout.strip() == ""  # unmounted


def test_resync_restores_the_source_bytes(lab, one_volume):
    """The volume is rewritten after the snapshot; a resync from its shadow copy (on the array)
    brings back the bytes of snapshot time, and the original carries no shadow-copy flag."""
    a = lab.vm("host-a")
    mount = one_volume.mounts[0]
    disk = one_volume.disks[one_volume.names[0]]
    at_snapshot = story.sha256(a, f"{mount}/data")
    # Persistent: a backup-context set would be released when `create` ends (auto-release).
    out = shadowlun(a, "create", "--context", "app_rollback", "--bcd", "/root/rs.xml", mount)
    a.run(f"head -c 6M /dev/urandom > {mount}/data && sync")
    assert story.sha256(a, f"{mount}/data") != at_snapshot

    err = refused(a, "resync", "--bcd", "/root/rs.xml")
    assert err["vss"] == "VSS_E_VOLUME_IN_USE" and mount in err["message"]
    err = refused(a, "resync", "--bcd", "/root/rs.xml", "--snapshot", "11111111-2222-4333-8444-555555555555")
    assert err["vss"] == "VSS_E_SNAPSHOT_NOT_IN_SET"

    a.run(f"umount {mount}")
    done = a.run("COLUMNS=120 python3 -m provider.cli resync --bcd /root/rs.xml", timeout=600)
    assert out["set_id"] in done.stdout and disk in done.stdout
    a.run(f"mount {disk}1 {mount}")
    assert story.sha256(a, f"{mount}/data") == at_snapshot
    assert partition_attrs(a, disk) == ""
    assert a.run(f"cat /sys/class/block/{disk.removeprefix('/dev/')}1/ro").stdout.strip() == "0"
    a.run(f"touch {mount}/writable-again")
    assert len(shadowlun(a, "delete", "--all")["deleted"]) == 1  # the copy auto-imported here


def test_each_snapshot_holds_what_was_written_up_to_the_freeze(lab, one_volume):
    """The array makes the snapshots when the set is prepared and makes them again in the commit
    window: what host-a writes after the prepare, before the freeze, is in the shadow copy; what
    it writes after the commit is not."""
    a, b = lab.vm("host-a"), lab.vm("host-b")
    mount = one_volume.mounts[0]
    create = PausedCreate(a, f"--transportable --bcd /root/fz.xml {mount}", pause_s=15, name="fz")
    create.wait_paused()
    # Prepared: the snapshot exists on the array already. Written now, before the freeze:
    a.run(f"head -c 2M /dev/urandom > {mount}/after-prepare && sync")
    in_copy = story.sha256(a, f"{mount}/after-prepare")
    assert create.wait_done() == 0, create.stderr()
    a.run(f"head -c 2M /dev/urandom > {mount}/after-prepare && touch {mount}/after-commit && sync")
    b.put("/root/fz.xml", a.run("cat /root/fz.xml").stdout)
    imported = shadowlun(b, "import", "/root/fz.xml")
    try:
        snap = imported["snapshots"][0]["snapshot_id"]
        shadowlun(b, "expose", snap, "/mnt/fz-shadow")
        assert story.sha256(b, "/mnt/fz-shadow/after-prepare") == in_copy
        assert b.run("test -e /mnt/fz-shadow/after-commit", check=False).returncode != 0
    finally:
        shadowlun(b, "delete", "--set", imported["set_id"])
