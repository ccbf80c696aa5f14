"""BreakSnapshotSetEx options on the real stack (issue 13): MASK_LUNS hides the broken LUNs from
the importing host and keeps them on the array; a break refused while a copy is in use changes
nothing."""
from __future__ import annotations

import json

from lab import checks
from lab.host_volumes import HostVolumes, initiator
from lab.story import shadowlun

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
