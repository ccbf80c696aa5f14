"""Unit tests of the array's authority rules (targets.authority, applied by targets.array):
each host acts with its own token, on its own LUNs and imports only; everything it may not do
is E_ACCESSDENIED with nothing changed. Over the HTTP app, so the caller really comes from the
token (Gate), over a real Array on the fakes of targets_fakes."""
from __future__ import annotations

import urllib.parse
import uuid

import pytest
from fastapi.testclient import TestClient

import targets.jobs as jobs_mod
from targets.agent import create_app
from targets_fakes import HOST_A, HOST_B, HOST_C, MiB

pytestmark = pytest.mark.filterwarnings("ignore:The 'app' shortcut is now deprecated:DeprecationWarning")

ADMIN_TOKEN = "admin-token-for-unit-tests"


def q(iqn: str) -> str:
    return urllib.parse.quote(iqn, safe="")


class As:
    """Calls as one caller (a bearer token), answering (status, json)."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    def __call__(self, method: str, path: str, body=None):
        r = self.client.request(method, path, json=body, headers=self.headers)
        return r.status_code, (r.json() if r.content else None)

    def ok(self, method: str, path: str, body=None):
        status, answer = self(method, path, body)
        assert status < 300, (method, path, status, answer)
        return answer


def state(arr, lvm, lio) -> tuple:
    return ("\n".join(arr.store._db.iterdump()), sorted((lv.name, tuple(lv.tags)) for lv in lvm.lvs.values()),
            sorted((n, e.serial, e.mappings) for n, e in lio.exports().items()), dict(lio.chap))


@pytest.fixture
def world(arr, lvm, lio, monkeypatch):
    """host-a and host-b each with a volume masked to it; host-b with a committed set of its
    volume that is not transportable."""
    monkeypatch.setattr(jobs_mod, "copy_blocks", lambda *a, **k: None)
    client = TestClient(create_app(arr, ADMIN_TOKEN))
    admin = As(client, ADMIN_TOKEN)
    hosts = {i: As(client, arr.issue_token(i)["token"]) for i in (HOST_A, HOST_B, HOST_C)}
    for name, host in (("vol-a", HOST_A), ("vol-b", HOST_B)):
        admin.ok("POST", "/v1/luns", {"name": name, "size_bytes": 64 * MiB})
        admin.ok("PUT", f"/v1/luns/{name}/masks", {"initiator": host})
    set_b = str(uuid.uuid4())
    prepared = hosts[HOST_B].ok("POST", "/v1/snapshot-sets", {"set_id": set_b, "snapshots": [
        {"snapshot_id": str(uuid.uuid4()), "lun": "vol-b"}]})
    hosts[HOST_B].ok("POST", f"/v1/snapshot-sets/{set_b}/commit")
    return {"admin": admin, "a": hosts[HOST_A], "b": hosts[HOST_B], "c": hosts[HOST_C], "set_b": set_b,
            "snap_b": prepared["snapshots"][0], "arr": arr, "lvm": lvm, "lio": lio}


def test_every_action_on_another_hosts_objects_is_refused_and_changes_nothing(world):
    a, snap = world["a"], world["snap_b"]
    attempts = [
        ("PUT", "/v1/luns/vol-b/masks", {"initiator": HOST_A}),           # mask host-b's LUN to itself
        ("PUT", "/v1/luns/vol-b/masks", {"initiator": HOST_B}),           # reset host-b's ACL and CHAP
        ("PUT", "/v1/luns/vol-a/masks", {"initiator": HOST_B}),           # mask its own LUN to another
        ("POST", "/v1/imports", {"serials": [snap["serial"]], "host": HOST_C}),  # claim for a third host
        ("POST", "/v1/imports", {"serials": [snap["serial"]]}),          # import a set not transportable
        ("POST", "/v1/imports/attach", {"serials": [snap["serial"]]}),   # ...claimed and masked in one call
        ("POST", "/v1/imports/attach", {"serials": [snap["serial"]], "host": HOST_B}),  # for another host
        ("POST", "/v1/imports/release", {"serials": [snap["serial"]], "host": HOST_B}),  # undo another's
        ("POST", "/v1/luns/vol-b/copy", {"target": "stolen"}),            # copy host-b's LUN
        ("PUT", f"/v1/luns/{snap['target']}/masks", {"initiator": HOST_A}),  # mask its shadow LUN
        ("POST", "/v1/luns/vol-b/resync", {"snapshot": snap["target"]}),  # resync host-b's LUN
        ("POST", "/v1/luns/vol-a/resync", {"snapshot": snap["target"]}),  # ...or its own from host-b's
        ("DELETE", f"/v1/luns/vol-b/masks/{q(HOST_B)}", None),            # unmask host-b
        ("DELETE", f"/v1/luns/vol-a/masks/{q(HOST_A)}", None),            # unmask itself from production
        ("DELETE", "/v1/luns/vol-b", None),                               # delete host-b's LUN
        ("DELETE", "/v1/luns/vol-a", None),                               # delete its own production LUN
        ("PUT", f"/v1/hosts/{q('iqn.2026-11.lab.shadowlun:intruder')}", {"name": "intruder"}),
        ("DELETE", f"/v1/hosts/{q(HOST_B)}", None),
        ("POST", f"/v1/hosts/{q(HOST_B)}/token", None),
        ("POST", "/v1/luns", {"name": "intruder", "size_bytes": 64 * MiB}),
        ("POST", f"/v1/snapshot-sets/{world['set_b']}/abort", None),
        ("POST", f"/v1/snapshot-sets/{world['set_b']}/publish", None),
        ("POST", "/v1/luns/vol-b/detach", None),
        ("POST", "/v1/identity-reverts", {"luns": ["vol-b"]}),
        ("GET", "/v1/luns/vol-b", None),
        ("POST", "/v1/snapshot-sets", {"set_id": str(uuid.uuid4()), "snapshots": [
            {"snapshot_id": str(uuid.uuid4()), "lun": "vol-b"}]}),
    ]
    before = state(world["arr"], world["lvm"], world["lio"])
    for method, path, body in attempts:
        status, answer = a(method, path, body)
        assert (status, answer["vss"]) == (403, "E_ACCESSDENIED"), (method, path, body, answer)
    assert state(world["arr"], world["lvm"], world["lio"]) == before


def test_a_host_sees_its_own_and_what_it_may_import(world):
    a, b = world["a"], world["b"]
    assert {x["name"] for x in a.ok("GET", "/v1/luns")} == {"vol-a"}
    assert {x["name"] for x in b.ok("GET", "/v1/luns")} == {"vol-b", world["snap_b"]["target"]}
    assert [h["initiator"] for h in a.ok("GET", "/v1/hosts")] == [HOST_A]
    world["admin"].ok("PUT", "/v1/luns/vol-b/masks", {"initiator": HOST_A})
    seen = a.ok("GET", "/v1/luns/vol-b")  # masked to both: each sees only its own mask
    assert seen["masks"] == [{"initiator": HOST_A, "read_only": False}]


def published_transportable_set(host) -> tuple[str, dict]:
    """A transportable set of vol-a that `host` prepared, committed and published: (its id, its
    shadow LUN's description)."""
    set_id = str(uuid.uuid4())
    prepared = host.ok("POST", "/v1/snapshot-sets", {"set_id": set_id, "transportable": True, "snapshots": [
        {"snapshot_id": str(uuid.uuid4()), "lun": "vol-a"}]})
    host.ok("POST", f"/v1/snapshot-sets/{set_id}/commit")
    host.ok("POST", f"/v1/snapshot-sets/{set_id}/publish")
    return set_id, prepared["snapshots"][0]


def test_a_transportable_set_moves_to_another_host_which_then_holds_it(world):
    a, b, admin = world["a"], world["b"], world["admin"]
    set_id, shadow = published_transportable_set(a)
    assert shadow["target"] in {x["name"] for x in b.ok("GET", "/v1/luns")}  # importable by host-b
    status, answer = b("PUT", f"/v1/luns/{shadow['target']}/masks", {"initiator": HOST_B})
    assert (status, answer["vss"]) == (403, "E_ACCESSDENIED")  # claim first
    assert b.ok("POST", "/v1/imports", {"serials": [shadow["serial"]]})["sets"][0]["host"] == HOST_B
    assert b.ok("PUT", f"/v1/luns/{shadow['target']}/masks", {"initiator": HOST_B})["masks"] == [
        {"initiator": HOST_B, "read_only": False}]
    status, answer = a("POST", f"/v1/snapshot-sets/{set_id}/abort")  # imported: not host-a's to undo
    assert (status, answer["vss"]) == (409, "VSS_E_BAD_STATE")
    status, answer = a("DELETE", f"/v1/luns/{shadow['target']}")
    assert (status, answer["vss"]) == (403, "E_ACCESSDENIED")
    b.ok("POST", f"/v1/luns/{shadow['target']}/detach")  # host-b breaks it, then deletes it
    b.ok("DELETE", f"/v1/luns/{shadow['target']}")
    assert shadow["target"] not in {x["name"] for x in admin.ok("GET", "/v1/luns")}


def test_a_host_copies_and_resyncs_its_own(world):
    a, b = world["a"], world["b"]
    job = a.ok("POST", "/v1/luns/vol-a/copy", {"target": "copy-a"})
    assert a.ok("GET", f"/v1/jobs/{job['job_id']}")["target"] == "lun-copy-a"
    status, answer = b("GET", f"/v1/jobs/{job['job_id']}")
    assert (status, answer["vss"]) == (403, "E_ACCESSDENIED")
    a.ok("PUT", "/v1/luns/copy-a/masks", {"initiator": HOST_A})  # the copy is host-a's
    a.ok("DELETE", "/v1/luns/copy-a")
    job = b.ok("POST", "/v1/luns/vol-b/resync", {"snapshot": world["snap_b"]["target"]})
    assert job["kind"] == "resync"


def test_a_resync_source_must_be_a_shadow_copy(world):
    admin = world["admin"]
    admin.ok("POST", "/v1/luns", {"name": "vol-c", "size_bytes": 64 * MiB})
    status, answer = admin("POST", "/v1/luns/vol-c/resync", {"snapshot": "vol-a"})
    assert (status, answer["vss"]) == (400, "E_INVALIDARG")


def test_token_and_size_are_checked_before_the_body_is_read(world):
    client = world["a"].client
    big = b"{" + b" " * (2 << 20) + b"}"
    r = client.post("/v1/luns", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # no token: refused whatever the body
    r = client.post("/v1/luns", content=big, headers={**world["admin"].headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["vss"] == "E_INVALIDARG"


@pytest.mark.parametrize("size", [True, 2 ** 63, 2 ** 64, -1, 1.5e9, "1073741824", 16 * (1 << 40) + 512])
def test_sizes_are_bounded_integers(world, size):
    status, answer = world["admin"]("POST", "/v1/luns", {"name": "big", "size_bytes": size})
    assert status == 400 and answer["vss"] == "E_INVALIDARG", answer


def test_thin_overcommit_is_bounded(world):
    arr, admin = world["arr"], world["admin"]
    pool = arr.backend.use().size_bytes
    too_much = (int(arr.config.overcommit_ratio * pool) // (1 << 20)) * (1 << 20)
    status, answer = admin("POST", "/v1/luns", {"name": "huge", "size_bytes": too_much})
    assert status == 507 and answer["vss"] == "VSS_E_INSUFFICIENT_STORAGE", answer


def test_running_copies_reserve_what_they_will_write(world, monkeypatch):
    """Five overlapping copies of a big LUN on a pool that can take two: the rest are refused."""
    arr, admin = world["arr"], world["admin"]
    pool = arr.backend.use()
    size = (pool.size_bytes * 35 // 100) // (1 << 20) * (1 << 20)
    admin.ok("POST", "/v1/luns", {"name": "big", "size_bytes": size})
    release = __import__("threading").Event()
    monkeypatch.setattr(jobs_mod, "copy_blocks", lambda *a, **k: release.wait(5))
    answers = [admin("POST", "/v1/luns/big/copy", {"target": f"big-copy{i}"})[0] for i in range(5)]
    release.set()
    assert answers[:2] == [202, 202] and set(answers[2:]) == {507}, answers


def test_an_import_in_one_call_and_its_undo(world):
    """POST /v1/imports/attach claims the set and masks its shadow LUN to the caller in one call,
    with the target to log in to; only the importer gives it back (POST /v1/imports/release),
    after which nothing is left of the import and another host may import the set."""
    a, b, c = world["a"], world["b"], world["c"]
    world["lio"].target_iqn, world["lio"].portals = "iqn.2026-11.lab.shadowlun:array", ["10.87.0.1"]
    set_id, shadow = published_transportable_set(a)
    before = state(world["arr"], world["lvm"], world["lio"])
    world["lio"].batches.clear()
    attached = b.ok("POST", "/v1/imports/attach", {"serials": [shadow["serial"]]})
    assert [b for b in world["lio"].batches if b] == [[f"{shadow['target']} to {HOST_B}"]]  # one save
    assert attached["sets"][0]["host"] == HOST_B and attached["masked"] == [shadow["serial"]]
    [lun] = attached["luns"]
    assert lun["masks"] == [{"initiator": HOST_B, "read_only": False}] and lun["wwid"] == shadow["wwid"]
    assert lun["lun_id"] is not None and attached["target"]["portals"]
    again = b.ok("POST", "/v1/imports/attach", {"serials": [shadow["serial"]]})  # a retry
    assert again["masked"] == [] and again["sets"] == attached["sets"]
    status, answer = c("POST", "/v1/imports/attach", {"serials": [shadow["serial"]]})
    assert (status, answer["vss"]) == (409, "VSS_E_BAD_STATE")  # imported once
    status, answer = c("POST", "/v1/imports/release", {"serials": [shadow["serial"]]})
    assert (status, answer["vss"]) == (403, "E_ACCESSDENIED")  # not host-c's import
    world["lio"].batches.clear()
    released = b.ok("POST", "/v1/imports/release", {"serials": [shadow["serial"]]})
    assert released == {"unmasked": [shadow["serial"]], "unclaimed": [set_id]}
    assert world["lio"].batches == [[f"{shadow['target']} from {HOST_B}"]]
    assert state(world["arr"], world["lvm"], world["lio"]) == before
    status, answer = b("POST", "/v1/imports/release", {"serials": [shadow["serial"]]})
    assert (status, answer["vss"]) == (409, "VSS_E_BAD_STATE")  # nothing imported to give back
    assert c.ok("POST", "/v1/imports/attach", {"serials": [shadow["serial"]]})["sets"][0]["host"] == HOST_C
