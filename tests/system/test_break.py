"""BreakSnapshotSetEx options on the real stack (issue 13): MASK_LUNS hides the broken LUNs from
the importing host and keeps them on the array; REVERT_IDENTITY_ALL gives them their originals'
page 0x83 identity; a break refused (a copy in use, an original on the host) changes nothing."""
from __future__ import annotations

import json

import pytest

from lab import checks
from lab.host_volumes import VOLUME, HostVolumes, initiator
from lab.story import shadowlun
from provider.contract.hresult import HResult, VssError

SHADOWLUN = "python3 -m provider.cli --json"


def test_break_with_mask_keeps_the_luns_on_the_array_and_hides_them_from_the_host(lab):
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
    vols = HostVolumes(lab, a, ["bm"]).create()
    try:
        mount, [name] = vols.mounts[0], vols.names
        a.run(f"head -c 4M /dev/urandom > {mount}/data && sync")
        out = shadowlun(a, "create", "--transportable", "--bcd", "/root/bm.xml", mount)
        b.put("/root/bm.xml", a.run("cat /root/bm.xml").stdout)
        target = vols.api.call("GET", "/v1/target")["iqn"]
        host_before = checks.host_objects(b, target)
        imported = shadowlun(b, "import", "/root/bm.xml")
        snap = imported["snapshots"][0]["snapshot_id"]
        shadowlun(b, "expose", snap, "/mnt/bm-shadow")
        # In use: refused, nothing changed (still exposed, still a shadow copy, still masked).
        r = b.run(f"{SHADOWLUN} break --mask {out['set_id']}", check=False, timeout=600)
        assert r.returncode == 2 and json.loads(r.stderr.strip().splitlines()[-1])["vss"] == "VSS_E_VOLUME_IN_USE"
        [lun] = [x for x in vols.api.call("GET", "/v1/luns") if x["origin"] == name]
        assert lun["kind"] == "snapshot" and [m["initiator"] for m in lun["masks"]] == [initiator(b)]
        assert b.run("mountpoint -q /mnt/bm-shadow", check=False).ok
        shadowlun(b, "unexpose", snap)
        broken = shadowlun(b, "break", "--mask", out["set_id"])
        assert broken["masked"] is True
        [lun] = [x for x in vols.api.call("GET", "/v1/luns") if x["origin"] == name]
        assert lun["kind"] == "volume" and lun["masks"] == [] and lun["set_id"] is None
        assert lun["name"] in checks.array_objects(array)["lvs"]
        assert checks.host_objects(b, target) == host_before  # no disk, session or node record left
        assert json.loads(b.run(f"{SHADOWLUN} list").stdout)["sets"] == []
    finally:
        assert vols.remove() == []


def _lu_identity(vm, disk: str) -> str:
    """The logical unit's designators of the device identification VPD page (0x83) as an
    independent SCSI client reads them (sg3_utils); the target port's designators are left out:
    LIO numbers each exported LUN's relative port, which is no part of the LUN's identity."""
    return vm.run(["sg_vpd", "--page=di_lu", disk], timeout=60).stdout


def test_break_with_revert_identity_gives_the_copies_the_originals_identity(lab):
    a, b = lab.vm("host-a"), lab.vm("host-b")
    vols = HostVolumes(lab, a, ["ri"]).create()
    shadow = None
    try:
        mount, [name] = vols.mounts[0], vols.names
        a.run(f"head -c 4M /dev/urandom > {mount}/data && sync")
        digest = a.run(f"sha256sum < {mount}/data").stdout.split()[0]
        original = vols.api.call("GET", f"/v1/luns/{name}")
        original_identity = _lu_identity(a, vols.disks[name])
        out = shadowlun(a, "create", "--transportable", "--bcd", "/root/ri.xml", mount)
        b.put("/root/ri.xml", a.run("cat /root/ri.xml").stdout)
        shadowlun(b, "import", "/root/ri.xml")
        [shadow] = [x for x in vols.api.call("GET", "/v1/luns") if x["origin"] == name]
        assert shadow["serial"] != original["serial"]

        def state() -> tuple:
            luns = {x["name"]: (x["kind"], x["serial"], x["masks"]) for x in vols.api.call("GET", "/v1/luns")
                    if name in (x["name"], x["origin"])}
            return luns, checks.host_objects(b, vols.api.call("GET", "/v1/target")["iqn"]), b.run(
                f"{SHADOWLUN} list").stdout

        # Misuse: the original is presented to host-b too (masked by the admin). Refused with the
        # spec's code; nothing changed: the copy is still a shadow copy, its disk still there.
        vols.api.call("PUT", f"/v1/luns/{name}/masks", {"initiator": initiator(b), "read_only": True})
        before = state()
        r = b.run(f"{SHADOWLUN} break --writable --revert-identity {out['set_id']}", check=False, timeout=600)
        assert json.loads(r.stderr.strip().splitlines()[-1])["vss"] == "VSS_E_BREAK_REVERT_ID_FAILED", r.stderr
        assert state() == before
        vols.api.call("DELETE", f"/v1/luns/{name}/masks/{initiator(b)}")
        # A masked break cannot revert identities: the caller's error, nothing changed.
        before = state()
        r = b.run(f"{SHADOWLUN} break --mask --revert-identity {out['set_id']}", check=False, timeout=600)
        assert r.returncode == 2 and json.loads(r.stderr.strip().splitlines()[-1])["vss"] == "E_INVALIDARG"
        assert state() == before

        broken = shadowlun(b, "break", "--writable", "--revert-identity", out["set_id"])
        assert broken["identity_reverted"] is True
        lun = vols.api.call("GET", f"/v1/luns/{shadow['name']}")
        assert (lun["kind"], lun["serial"], lun["wwid"], lun["identity_of"]) == (
            "volume", original["serial"], original["wwid"], name)
        device = broken["volumes"][0]["device"]
        disk = checks.whole_disk(b, device)  # sdX, or the multipath map on a multipath host
        for path in checks.scsi_disks(b, disk):  # the disk itself, or each path of the map
            assert b.run(f"cat /sys/block/{path.removeprefix('/dev/')}/device/wwid").stdout.strip() == original["wwid"]
            assert _lu_identity(b, path) == original_identity  # what any SCSI client reads: the original's
        assert original["serial"] in original_identity
        assert b.run(f"blockdev --getro {disk}").stdout.strip() == "0"  # MAKE_READ_WRITE as well
        b.run(f"mkdir -p /mnt/ri-broken && mount {device} /mnt/ri-broken")
        try:
            assert b.run("sha256sum < /mnt/ri-broken/data").stdout.split()[0] == digest
        finally:
            b.run("umount /mnt/ri-broken")
        # The original cannot be shown to host-b now: it would see two disks with one identity.
        with pytest.raises(VssError) as refused:
            vols.api.call("PUT", f"/v1/luns/{name}/masks", {"initiator": initiator(b)})
        assert refused.value.hresult == HResult.VSS_E_BAD_STATE
        assert [m["initiator"] for m in vols.api.call("GET", f"/v1/luns/{name}")["masks"]] == [initiator(a)]
    finally:
        if shadow is not None:  # host-b's disk of the copy (and its session, when it was the last)
            b.run("umount /mnt/ri-broken 2>/dev/null; true", check=False)
            b.run(f"{SHADOWLUN} delete --set {out['set_id']} 2>/dev/null; true", check=False, timeout=600)
            b.run(["python3", VOLUME, "detach", shadow["name"]], check=False, timeout=300)
        assert vols.remove() == []
