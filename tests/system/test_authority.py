"""Who may do what on the array, on the real stack: each host calls the agent with its own
token, and host-a, trying each action that once passed against host-b's objects, is refused with
E_ACCESSDENIED (403) every time and changes nothing: LIO's ACLs and their CHAP, the LVs and the
agent's store are as before, and host-b's mounted volume still reads and writes."""
from __future__ import annotations

import urllib.parse
import uuid

import pytest

from lab import checks
from lab.agent_api import AgentApi
from lab.host_volumes import HostVolumes, initiator
from provider.contract.hresult import HResult, VssError

STORE_DUMP = ("import sqlite3; db = sqlite3.connect('file:/var/lib/shadowlun/array.db?mode=ro', uri=True); "
              "print('\\n'.join(db.iterdump()))")
ACL_CHAP = ("for a in /sys/kernel/config/target/iscsi/*/tpgt_1/acls/*; do "
            "echo $a $(cat $a/auth/userid) $(cat $a/auth/password); ls $a | grep lun_; done")


def array_state(array) -> dict:
    """Everything a refused call must leave as it was, read from the kernel and the store."""
    return {
        "objects": checks.array_objects(array),
        "acls_and_chap": array.run(ACL_CHAP).stdout,
        "lvs": array.run("lvs --reportformat json -o lv_name,lv_size,lv_tags,lv_attr shadowlun").stdout,
        "store": array.run(["python3", "-c", STORE_DUMP]).stdout,
    }


@pytest.fixture
def host_b_objects(lab):
    """host-b: a mounted volume, and a committed (not transportable) snapshot set of it made
    with host-b's own token."""
    b = lab.vm("host-b")
    vols = HostVolumes(lab, b, ["own"]).create()
    mine = AgentApi(b)
    set_id = str(uuid.uuid4())
    try:
        mine.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
            {"snapshot_id": str(uuid.uuid4()), "lun": vols.names[0]}]})
        committed = mine.call("POST", f"/v1/snapshot-sets/{set_id}/commit")
        mine.call("POST", f"/v1/snapshot-sets/{set_id}/publish")
        yield {"volume": vols.names[0], "mount": vols.mounts[0], "snapshot": committed["snapshots"][0]}
    finally:
        AgentApi.admin(lab).call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        assert vols.remove() == []


def test_a_host_cannot_touch_another_hosts_objects(lab, host_b_objects):
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.array
    vol, snap = host_b_objects["volume"], host_b_objects["snapshot"]
    iqn_a, iqn_b = initiator(a), initiator(b)
    third = "iqn.2026-11.lab.shadowlun:host-c"
    admin = AgentApi.admin(lab)
    admin.call("PUT", f"/v1/hosts/{third}", {"name": "host-c"})
    as_a = AgentApi(a)
    q = lambda iqn: urllib.parse.quote(iqn, safe="")  # noqa: E731
    attempts = {
        "mask host-b's LUN to itself": ("PUT", f"/v1/luns/{vol}/masks", {"initiator": iqn_a}),
        "reset host-b's ACL (and CHAP)": ("PUT", f"/v1/luns/{vol}/masks", {"initiator": iqn_b}),
        "claim host-b's set for a third host": ("POST", "/v1/imports", {"serials": [snap["serial"]], "host": third}),
        "copy host-b's LUN": ("POST", f"/v1/luns/{vol}/copy", {"target": f"stolen-{uuid.uuid4().hex[:6]}"}),
        "mask host-b's shadow LUN to itself": ("PUT", f"/v1/luns/{snap['target']}/masks", {"initiator": iqn_a}),
        "resync host-b's LUN": ("POST", f"/v1/luns/{vol}/resync", {"snapshot": snap["target"]}),
        "unmask host-b": ("DELETE", f"/v1/luns/{vol}/masks/{q(iqn_b)}", None),
        "delete host-b's LUN": ("DELETE", f"/v1/luns/{vol}", None),
        "register a new initiator": ("PUT", f"/v1/hosts/{q('iqn.2026-11.lab.shadowlun:intruder')}",
                                     {"name": "intruder"}),
        "create a production volume": ("POST", "/v1/luns", {"name": "intruder", "size_bytes": 1 << 24}),
        "take host-b's token": ("POST", f"/v1/hosts/{q(iqn_b)}/token", None),
    }
    try:
        before = array_state(array)
        answers = {}
        for what, (method, path, body) in attempts.items():
            try:
                answers[what] = f"answered {as_a.call(method, path, body)!r}"
            except VssError as e:
                answers[what] = e.hresult
        assert answers == {what: HResult.E_ACCESSDENIED for what in attempts}
        assert array_state(array) == before
    finally:
        admin.call("DELETE", f"/v1/hosts/{third}")
    mount = host_b_objects["mount"]  # host-b's access is intact
    b.run(f"head -c 1M /dev/urandom > {mount}/after && sync && cmp {mount}/after {mount}/after")
    assert b.run(f"stat -c %s {mount}/after").stdout.strip() == str(1 << 20)


def test_an_unknown_or_missing_token_gets_nothing(lab):
    a = lab.vm("host-a")
    r = a.run("python3 -c \"import json, sys; d = json.load(open('/etc/shadowlun/array-access.json')); "
              "d['token'] = 'not-' + d['token']; json.dump(d, open('/tmp/wrong.json', 'w'))\" && "
              "python3 -m provider.hardware.array_client --access /tmp/wrong.json GET /v1/luns; rc=$?; rm -f /tmp/wrong.json; exit $rc",
              check=False)
    assert r.returncode == 2 and "E_ACCESSDENIED" in r.stderr
