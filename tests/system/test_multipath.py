"""Shadow copies over two SAN paths (issue 16, part 3): host-b runs dm-multipath, host-a does not.
host-b imports host-a's transportable copy as one multipath map per LUN with both paths active,
reads it with one of its SAN links down, and a delete leaves no map, path, session or record.
A map that never forms fails the import within its bound and leaves nothing behind."""
from __future__ import annotations

import json

import pytest

from lab import checks, story
from lab.host_volumes import HostVolumes
from lab.story import shadowlun
from provider.requester.bcd import from_xml

DATA_MIB = 48
# Reads 1 MiB at a time from the device (page cache dropped first) with a pause between, so a
# link taken down a few seconds in is down for most of the read.
SLOW_READ = """
import hashlib, sys, time
h = hashlib.sha256()
with open(sys.argv[1], "rb", buffering=0) as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
        time.sleep(0.3)
print(h.hexdigest())
"""
# open-iscsi notices the dead link (nop-outs, ~10 s), fails the path's I/O after the
# replacement timeout the provider sets (15 s), dm-multipath retries it on the other path;
# the rest of the read is ~15 s. Under emulation, allow several times that.
READ_TIMEOUT_S = 300
PATHS_BACK_S = 180  # iscsid logs in again and multipathd's checker reinstates the path


def mpath_maps(vm) -> dict[str, list[str]]:
    """{dm block name: its paths} of every multipath map, from sysfs."""
    out = vm.run("for d in /sys/block/dm-*; do [ -e $d/dm/uuid ] || continue; "
                 "case $(cat $d/dm/uuid) in mpath-*) echo ${d##*/} $(ls $d/slaves);; esac; done").stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


def path_states(vm, map_name: str) -> dict[str, str]:
    """{path: "dm state/checker state"} of the map's paths, as multipathd sees them."""
    out = vm.run("multipathd show paths raw format '%m %d %t %T'").stdout
    return {f[1]: f"{f[2]}/{f[3]}" for f in map(str.split, out.splitlines()) if len(f) == 4 and f[0] == map_name}


def active_paths(vm, map_name: str) -> int:
    return sum(state == "active/ready" for state in path_states(vm, map_name).values())


def target_disks(vm) -> set[str]:
    return set(vm.run("grep -l LIO-ORG /sys/block/sd*/device/vendor 2>/dev/null || true").stdout.split())


@pytest.fixture
def copy_on_host_a(lab):
    """host-a's volume with data, and a published transportable copy of it: (bcd, sha256)."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["mp"]).create()
    mount = vols.mounts[0]
    try:
        a.run(f"head -c {DATA_MIB}M /dev/urandom > {mount}/data && sync", timeout=300)
        at_snapshot = story.sha256(a, f"{mount}/data")
        shadowlun(a, "create", "--transportable", "--bcd", "/root/mp.xml", mount)
        a.run(f"head -c 1M /dev/urandom | dd of={mount}/data conv=notrunc status=none && sync")
        yield a.run("cat /root/mp.xml").stdout, at_snapshot, vols
    finally:
        assert vols.remove() == []


def test_import_over_both_paths_reads_through_a_link_failure_and_delete_leaves_nothing(lab, copy_on_host_a, timed):
    bcd, at_snapshot, vols = copy_on_host_a
    b = lab.vm("host-b")
    assert b.machine.multipath and not lab.vm("host-a").machine.multipath
    target = vols.api.call("GET", "/v1/target")
    assert len(target["portals"]) == 2  # one on each SAN network
    before = checks.host_objects(b, target["iqn"])
    b.put("/root/mp.xml", bcd)
    b.put("/root/slow_read.py", SLOW_READ)
    with timed("multipath import (2 paths)"):
        imported = shadowlun(b, "import", "/root/mp.xml")
    try:
        (snap,) = imported["snapshots"]
        (disk,) = snap["devices"]
        dm = disk.removeprefix("/dev/")
        maps = mpath_maps(b)
        assert dm in maps and len(maps[dm]) == 2, maps  # the map, not a path, with a path per portal
        name = b.run(f"cat /sys/block/{dm}/dm/name").stdout.strip()
        assert b.run(f"readlink -f /dev/mapper/{name}").stdout.strip() == disk
        assert active_paths(b, name) == 2, path_states(b, name)
        assert len(checks.host_objects(b, target["iqn"])["sessions"]) == 2
        assert snap["flags"] == ["read-only", "shadow-copy", "hidden", "no-drive-letter"]
        for dev in [dm, snap["device"].removeprefix("/dev/"), *maps[dm]]:  # map, partition map, paths
            assert b.run(f"cat /sys/class/block/{dev}/ro").stdout.strip() == "1", dev

        shadowlun(b, "expose", snap["snapshot_id"], "/mnt/mp-shadow")
        b.run("sync; echo 3 > /proc/sys/vm/drop_caches")
        b.run("nohup python3 /root/slow_read.py /mnt/mp-shadow/data > /root/mp-read.out 2> /root/mp-read.err & "
              "echo $! > /root/mp-read.pid")
        b.run("sleep 3; ip link set san1 down")
        try:
            checks.until(lambda: b.run("kill -0 $(cat /root/mp-read.pid)", check=False).returncode != 0,
                         READ_TIMEOUT_S, lambda: f"the read with san1 down did not end within {READ_TIMEOUT_S} s: "
                                                 f"{b.run(f'multipath -ll {name}; cat /root/mp-read.err').stdout}")
            assert b.run("cat /root/mp-read.out").stdout.strip() == at_snapshot, b.run("cat /root/mp-read.err").stdout
            states = path_states(b, name)
            assert sorted(states.values()) == ["active/ready", "failed/faulty"], states  # san0's path alone
        finally:
            b.run("ip link set san1 up")
        checks.until(lambda: active_paths(b, name) == 2, PATHS_BACK_S,
                     lambda: f"the path over san1 did not come back within {PATHS_BACK_S} s: "
                             f"{b.run(f'multipath -ll {name}').stdout}")
        shadowlun(b, "unexpose", snap["snapshot_id"])
    finally:
        b.run("ip link set san1 up", check=False)
        deleted = shadowlun(b, "delete", "--set", imported["set_id"])
    assert deleted["deleted"] == [snap["snapshot_id"]]
    assert mpath_maps(b) == {}
    assert b.run("dmsetup ls --target multipath").stdout.strip() in ("", "No devices found")
    assert target_disks(b) == set()
    assert checks.host_objects(b, target["iqn"]) == {"sessions": set(), "nodes": set(), "wwids": before["wwids"]}


def test_a_map_that_never_forms_fails_the_import_in_bounds_and_leaves_nothing(lab, copy_on_host_a):
    """multipathd told to leave every device alone (as a blacklist or find_multipaths strict
    would): the paths arrive, no map does; the provider fails LocateLuns with VSS_E_MISSING_DISK
    naming the map, and host-b keeps no path, session or node record, the array no mask of host-b's."""
    bcd, _, vols = copy_on_host_a
    b, array = lab.vm("host-b"), lab.vm("array")
    target = vols.api.call("GET", "/v1/target")
    before, array_before = checks.host_objects(b, target["iqn"]), checks.array_objects(array)
    b.put("/root/mp.xml", bcd)
    b.put("/etc/multipath/conf.d/shadowlun-test-blacklist.conf", 'blacklist {\n    wwid ".*"\n}\n')
    b.run("multipathd reconfigure")
    try:
        r = b.run("python3 -m provider.cli --json import /root/mp.xml", check=False, timeout=600)
        assert r.returncode == 1, (r.stdout, r.stderr)  # a runtime error, not the user's
        err = json.loads(r.stderr.strip().splitlines()[-1])
        # LocateLuns may not return VSS_E_MISSING_DISK to the requester: the proxy says whose it was
        assert err["vss"] == "VSS_E_UNEXPECTED_PROVIDER_ERROR", err
        assert "LocateLuns returned VSS_E_MISSING_DISK" in err["message"], err
        assert "no multipath map mpath-3" in err["message"], err
        assert "within 60 s" in err["message"], err
        assert mpath_maps(b) == {} and target_disks(b) == set()
        assert checks.host_objects(b, target["iqn"]) == before
        assert checks.array_objects(array)["acls"] == array_before["acls"]
        assert shadowlun(b, "list")["sets"] == []
    finally:
        b.run("rm -f /etc/multipath/conf.d/shadowlun-test-blacklist.conf && multipathd reconfigure")


# Every extent of a document moved to a byte where no partition starts: the shadow LUNs it
# names are real and their records true, so LocateLuns masks and connects them, and the disks
# match; the volume is then not found on them.
MOVE_EXTENTS = """
import sys
import xml.etree.ElementTree as ET
ns = "urn:shadowlun:backup-components"
ET.register_namespace("", ns)
tree = ET.parse(sys.argv[1])
extents = tree.getroot().findall(f".//{{{ns}}}DISK_EXTENT")
assert extents
for e in extents:
    e.set("offsetBytes", "3584")
tree.write(sys.argv[2], xml_declaration=True, encoding="utf-8")
"""


def test_an_import_that_fails_after_its_luns_arrived_is_released_and_the_set_imports_after(lab, copy_on_host_a):
    """Misuse: a document whose volume extents were altered. The import fails after LocateLuns
    brought the disks (VSS_E_OBJECT_NOT_FOUND: no partition where the document says), and its
    cleanup (ReleaseLuns) leaves host-b and the array as they were: no map, path, session or
    node record, no mask of host-b's, the set claimed by nobody. The true document then
    imports on the same host."""
    bcd, _, vols = copy_on_host_a
    b, array = lab.vm("host-b"), lab.vm("array")
    target = vols.api.call("GET", "/v1/target")
    set_id = str(from_xml(bcd.encode()).set_id)

    def array_state() -> dict:
        return {"acls": checks.array_objects(array)["acls"],
                "masks": {lun["name"]: lun["masks"] for lun in vols.api.call("GET", "/v1/luns")},
                "set": vols.api.call("GET", f"/v1/snapshot-sets/{set_id}")}

    before, array_before = checks.host_objects(b, target["iqn"]), array_state()
    b.put("/root/mp.xml", bcd)
    b.put("/root/move_extents.py", MOVE_EXTENTS)
    b.run("python3 /root/move_extents.py /root/mp.xml /root/mp-moved.xml")
    r = b.run("python3 -m provider.cli --json import /root/mp-moved.xml", check=False, timeout=600)
    assert r.returncode == 2, (r.stdout, r.stderr)  # the document is the caller's
    err = json.loads(r.stderr.strip().splitlines()[-1])
    assert err["vss"] == "VSS_E_OBJECT_NOT_FOUND" and "no partition at byte 3584" in err["message"], err
    assert "its LUNs were released" in r.stderr, r.stderr
    assert mpath_maps(b) == {} and target_disks(b) == set()
    assert checks.host_objects(b, target["iqn"]) == before
    assert array_state() == array_before
    assert shadowlun(b, "list")["sets"] == []

    imported = shadowlun(b, "import", "/root/mp.xml")
    try:
        assert imported["set_id"] == set_id and len(imported["snapshots"]) == 1
    finally:
        shadowlun(b, "delete", "--set", set_id)
    assert mpath_maps(b) == {} and checks.host_objects(b, target["iqn"]) == before
