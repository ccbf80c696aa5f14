"""Unit tests of targets.agent (the HTTP API, through FastAPI's TestClient, over a real Array on
the fakes of targets_fakes) and provider.hardware.array_client (error mapping with urlopen replaced, and the
client against the agent app with urlopen bridged to the TestClient). No network, no TLS server."""
from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import targets.jobs as jobs_mod
from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError, http_status, vss_error
from provider.polling import poll
import targets.agent as agent_mod
from targets.agent import build_array, create_app, hand_out_access
from provider.hardware.array_client import SET_TIMEOUT_S, ArrayAccess, ArrayClient
from targets.lio import LioStateError, naa_wwid
from targets_fakes import HOSTS, IQN1, IQN2, STRANGER, FakeLio, FakeLvm, MiB, make_config

# httpx 0.27 deprecates the app= shortcut Starlette 0.27's TestClient uses; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The 'app' shortcut is now deprecated:DeprecationWarning")

TOKEN = "t0ken-for-unit-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cret-secret"

# Every route of the API (method, path): the client has one operation per route.
ROUTES = {
    ("GET", "/v1/pool"),
    ("GET", "/v1/target"),
    ("GET", "/v1/luns"),
    ("POST", "/v1/luns"),
    ("GET", "/v1/luns/{name}"),
    ("DELETE", "/v1/luns/{name}"),
    ("PUT", "/v1/luns/{name}/masks"),
    ("DELETE", "/v1/luns/{name}/masks/{initiator}"),
    ("POST", "/v1/luns/{name}/detach"),
    ("POST", "/v1/identity-reverts"),
    ("GET", "/v1/hosts"),
    ("PUT", "/v1/hosts/{initiator}"),
    ("POST", "/v1/hosts/{initiator}/token"),
    ("DELETE", "/v1/hosts/{initiator}"),
    ("POST", "/v1/snapshot-sets"),
    ("GET", "/v1/snapshot-sets/{set_id}"),
    ("POST", "/v1/snapshot-sets/{set_id}/commit"),
    ("POST", "/v1/snapshot-sets/{set_id}/publish"),
    ("POST", "/v1/snapshot-sets/{set_id}/hand-out"),
    ("POST", "/v1/snapshot-sets/{set_id}/plex"),
    ("POST", "/v1/snapshot-sets/{set_id}/abort"),
    ("POST", "/v1/imports"),
    ("POST", "/v1/imports/attach"),
    ("POST", "/v1/imports/release"),
    ("POST", "/v1/luns/{name}/copy"),
    ("POST", "/v1/luns/{name}/resync"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/health"),
    ("POST", "/v1/store/confirm"),
    ("DELETE", "/v1/set-aside/{lv}"),
}

# A well-formed request for each route (the objects need not exist).
SET_ID = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
REQUESTS = {
    ("GET", "/v1/pool"): ("/v1/pool", None),
    ("GET", "/v1/target"): ("/v1/target", None),
    ("GET", "/v1/luns"): ("/v1/luns", None),
    ("POST", "/v1/luns"): ("/v1/luns", {"name": "vol1", "size_bytes": 64 * MiB}),
    ("GET", "/v1/luns/{name}"): ("/v1/luns/vol1", None),
    ("DELETE", "/v1/luns/{name}"): ("/v1/luns/vol1", None),
    ("PUT", "/v1/luns/{name}/masks"): ("/v1/luns/vol1/masks",
                                       {"initiator": IQN1}),
    ("DELETE", "/v1/luns/{name}/masks/{initiator}"): ("/v1/luns/vol1/masks/" + urllib.parse.quote(IQN1, safe=""),
                                                      None),
    ("POST", "/v1/luns/{name}/detach"): ("/v1/luns/vol1/detach", None),
    ("POST", "/v1/identity-reverts"): ("/v1/identity-reverts", {"luns": ["vol1"]}),
    ("GET", "/v1/hosts"): ("/v1/hosts", None),
    ("PUT", "/v1/hosts/{initiator}"): ("/v1/hosts/" + urllib.parse.quote(STRANGER, safe=""), {"name": "stranger"}),
    ("POST", "/v1/hosts/{initiator}/token"): ("/v1/hosts/" + urllib.parse.quote(IQN1, safe="") + "/token", None),
    ("DELETE", "/v1/hosts/{initiator}"): ("/v1/hosts/" + urllib.parse.quote(IQN1, safe=""), None),
    ("POST", "/v1/snapshot-sets"): ("/v1/snapshot-sets",
                                    {"set_id": SET_ID, "snapshots": [{"snapshot_id": SET_ID, "lun": "vol1"}]}),
    ("GET", "/v1/snapshot-sets/{set_id}"): (f"/v1/snapshot-sets/{SET_ID}", None),
    ("POST", "/v1/snapshot-sets/{set_id}/commit"): (f"/v1/snapshot-sets/{SET_ID}/commit", None),
    ("POST", "/v1/snapshot-sets/{set_id}/publish"): (f"/v1/snapshot-sets/{SET_ID}/publish", None),
    ("POST", "/v1/snapshot-sets/{set_id}/hand-out"): (f"/v1/snapshot-sets/{SET_ID}/hand-out", None),
    ("POST", "/v1/snapshot-sets/{set_id}/plex"): (f"/v1/snapshot-sets/{SET_ID}/plex", None),
    ("POST", "/v1/snapshot-sets/{set_id}/abort"): (f"/v1/snapshot-sets/{SET_ID}/abort", None),
    ("POST", "/v1/imports"): ("/v1/imports", {"serials": ["ab" * 16], "host": IQN1}),
    ("POST", "/v1/imports/attach"): ("/v1/imports/attach", {"serials": ["ab" * 16], "host": IQN1}),
    ("POST", "/v1/imports/release"): ("/v1/imports/release", {"serials": ["ab" * 16], "host": IQN1}),
    ("POST", "/v1/luns/{name}/copy"): ("/v1/luns/vol1/copy", {"target": "full1"}),
    ("POST", "/v1/luns/{name}/resync"): ("/v1/luns/vol1/resync", {"snapshot": "snap-x"}),
    ("GET", "/v1/jobs/{job_id}"): ("/v1/jobs/abc", None),
    ("POST", "/v1/jobs/{job_id}/cancel"): ("/v1/jobs/abc/cancel", None),
    ("GET", "/v1/health"): ("/v1/health", None),
    ("POST", "/v1/store/confirm"): ("/v1/store/confirm", None),
    ("DELETE", "/v1/set-aside/{lv}"): ("/v1/set-aside/lun-stray", None),
}


@pytest.fixture
def client(arr):
    return TestClient(create_app(arr, TOKEN))


@pytest.fixture
def copies(monkeypatch):
    calls = []

    def fake(src, dst, size, progress=None, only_changed=False):
        calls.append((src, dst, size, only_changed))
        if progress:
            progress(size)
        return size

    monkeypatch.setattr(jobs_mod, "copy_blocks", fake)
    return calls


def vss_body(r, code: HResult) -> dict:
    body = r.json()
    assert set(body) == {"hresult", "vss", "message"}, body
    assert body["hresult"] == code.hex and body["vss"] == code.name, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def sid() -> str:
    return str(uuid.uuid4())


# --- the API description -----------------------------------------------------------------------

def test_app_routes_are_the_api(arr):
    app = create_app(arr, TOKEN)
    have = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert have == ROUTES


def test_openapi_lists_every_route(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == ROUTES
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("security") == [{"HTTPBearer": []}], (method, path)


# --- authorization -----------------------------------------------------------------------------

@pytest.mark.parametrize("route", sorted(ROUTES), ids=" ".join)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"},
                                     {"Authorization": "Bearer "}],
                         ids=["none", "wrong", "basic", "longer", "empty"])
def test_unauthorized(client, arr, lvm, route, headers):
    path, body = REQUESTS[route]
    r = client.request(route[0], path, json=body, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    vss_body(r, HResult.E_ACCESSDENIED)
    assert arr.store.luns() == [] and lvm.calls == []
    assert {h.initiator for h in arr.store.hosts()} == set(HOSTS)


def test_unauthorized_before_validation(client):
    r = client.post("/v1/luns", json={"name": 5})
    assert r.status_code == 401


def test_openapi_needs_no_token(client):
    assert client.get("/openapi.json").status_code == 200


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"name": "vol1"},
    {"size_bytes": 64 * MiB},
    {"name": "vol1", "size_bytes": "big"},
    {"name": "vol1", "size_bytes": None},
    [],
    "vol1",
])
def test_malformed_body_is_400_invalidarg(client, arr, body):
    r = client.post("/v1/luns", json=body, headers=AUTH)
    assert r.status_code == 400
    assert "malformed request" in vss_body(r, HResult.E_INVALIDARG)["message"]
    assert arr.store.luns() == []


def test_body_that_is_not_json_is_400(client):
    r = client.post("/v1/luns", content=b"name=vol1", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    vss_body(r, HResult.E_INVALIDARG)


@pytest.mark.parametrize("path, body", [
    ("/v1/snapshot-sets", {"set_id": SET_ID}),
    ("/v1/snapshot-sets", {"set_id": SET_ID, "snapshots": "vol1"}),
    ("/v1/snapshot-sets", {"set_id": SET_ID, "snapshots": [{"lun": "vol1"}]}),
    ("/v1/luns/vol1/copy", {}),
    ("/v1/luns/vol1/resync", {"target": "x"}),
])
def test_other_malformed_bodies(client, path, body):
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 400
    vss_body(r, HResult.E_INVALIDARG)


@pytest.mark.parametrize("body", [{"read_only": True}, {"initiator": IQN1, "readOnly": True},
                                  {"initiator": IQN1, "read_only": "yes"}, {"initiator": IQN1, "read_only": 1},
                                  {"initiator": IQN1, "chap_user": "u", "chap_secret": SECRET}])
def test_mask_malformed_body(client, body):
    """Strict: a missing, unknown or loosely typed field is an error (`readOnly` must not give
    a read-write mask; a host no longer brings its own CHAP credentials)."""
    r = client.put("/v1/luns/vol1/masks", json=body, headers=AUTH)
    assert r.status_code == 400
    vss_body(r, HResult.E_INVALIDARG)


def test_array_user_errors_keep_their_code_and_status(client, lvm):
    cases = [
        (client.get("/v1/luns/nope", headers=AUTH), HResult.VSS_E_OBJECT_NOT_FOUND, 404),
        (client.post("/v1/luns", json={"name": "Bad_Name", "size_bytes": 64 * MiB}, headers=AUTH),
         HResult.E_INVALIDARG, 400),
        (client.get(f"/v1/snapshot-sets/{SET_ID}", headers=AUTH), HResult.VSS_E_OBJECT_NOT_FOUND, 404),
        (client.get("/v1/jobs/nope", headers=AUTH), HResult.VSS_E_OBJECT_NOT_FOUND, 404),
    ]
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    cases.append((client.post("/v1/luns", json={"name": "vol1", "size_bytes": 128 * MiB}, headers=AUTH),
                  HResult.VSS_E_OBJECT_ALREADY_EXISTS, 409))
    cases.append((client.post("/v1/snapshot-sets", json={
        "set_id": sid(), "snapshots": [{"snapshot_id": sid(), "lun": "vol1"}] * 65}, headers=AUTH),
        HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, 422))
    lvm.data_percent = 95.0
    cases.append((client.post("/v1/luns", json={"name": "vol2", "size_bytes": 64 * MiB}, headers=AUTH),
                  HResult.VSS_E_INSUFFICIENT_STORAGE, 507))
    for r, code, status in cases:
        assert r.status_code == status == http_status(code), (code, r.text)
        vss_body(r, code)


def test_array_runtime_error_is_500_with_its_code(client, lio):
    lio.inject("export", OSError("configfs went away"))
    r = client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    assert r.status_code == 500
    assert "configfs went away" in vss_body(r, HResult.VSS_E_PROVIDER_VETO)["message"]


def test_unexpected_exception_is_500_with_a_vss_body(arr, lvm):
    client = TestClient(create_app(arr, TOKEN), raise_server_exceptions=False)
    lvm.inject("pool_status", LookupError("no thin pool 'pool'"))
    r = client.get("/v1/pool", headers=AUTH)
    assert r.status_code == 500
    body = r.json()
    assert VssError.from_dict(body).hresult != HResult.VSS_E_UNEXPECTED  # a readable VSS error
    assert isinstance(VssError.from_dict(body), VssRuntimeError)


class StubArray:
    """Raises the error it is given from every operation."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name):
        def op(*a, **kw):
            raise self.error
        return op


@pytest.mark.parametrize("code", [HResult.VSS_E_BAD_STATE, HResult.VSS_E_VOLUME_IN_USE,
                                  HResult.VSS_E_RESYNC_IN_PROGRESS, HResult.VSS_E_UNSUPPORTED_CONTEXT,
                                  HResult.VSS_E_UNEXPECTED, HResult.E_FAIL])
def test_any_vss_error_becomes_its_status_and_body(code):
    client = TestClient(create_app(StubArray(vss_error(code, "from the stub")), TOKEN))
    r = client.get("/v1/luns/vol1", headers=AUTH)
    assert r.status_code == http_status(code)
    assert vss_body(r, code)["message"] == "from the stub"


# --- happy path --------------------------------------------------------------------------------

def test_create_get_list_delete(client, lvm, lio):
    r = client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    assert r.status_code == 201
    created = r.json()
    assert (created["name"], created["kind"], created["size_bytes"], created["state"]) == (
        "vol1", "volume", 64 * MiB, "ready")
    assert created["wwid"] == naa_wwid(created["serial"])
    assert created["vendor"] == "LIO-ORG" and created["product"] == "IBLOCK"
    assert created["lun_id"] == lio.exports()["lun-vol1"].lun and created["masks"] == []
    assert client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH).json() == created

    r = client.get("/v1/luns/vol1", headers=AUTH)
    assert r.status_code == 200 and r.json() == created
    assert client.get("/v1/luns", headers=AUTH).json() == [created]

    r = client.delete("/v1/luns/vol1", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert "lun-vol1" not in lvm.lvs and "lun-vol1" not in lio.exports()
    assert client.get("/v1/luns/vol1", headers=AUTH).status_code == 404
    assert client.get("/v1/luns", headers=AUTH).json() == []


def test_pool(client, lvm):
    lvm.data_percent, lvm.metadata_percent = 12.5, 3.0
    p = client.get("/v1/pool", headers=AUTH).json()
    assert p["data_percent"] == 12.5 and p["metadata_percent"] == 3.0 and p["full_percent"] == 90.0
    assert p["used_bytes"] + p["free_bytes"] == p["size_bytes"] == lvm.pool_size


def test_mask_and_unmask(client, lio):
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    r = client.put("/v1/luns/vol1/masks", json={"initiator": IQN1,
                                                "read_only": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["masks"] == [{"initiator": IQN1, "read_only": True}]
    assert lio.mappings("lun-vol1")[IQN1].read_only is True
    r = client.delete("/v1/luns/vol1/masks/" + urllib.parse.quote(IQN1, safe=""), headers=AUTH)
    assert r.status_code == 200 and r.json()["masks"] == []
    assert lio.mappings("lun-vol1") == {}


def test_mask_invalid_initiator(client):
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    r = client.put("/v1/luns/vol1/masks", json={"initiator": IQN1 + "\n"}, headers=AUTH)
    assert r.status_code == 400
    vss_body(r, HResult.E_INVALIDARG)


def test_snapshot_set_prepare_commit_abort(client, lvm, lio):
    for n in ("vol1", "vol2"):
        client.post("/v1/luns", json={"name": n, "size_bytes": 64 * MiB}, headers=AUTH)
    set_id = sid()
    body = {"set_id": set_id, "snapshots": [{"snapshot_id": sid(), "lun": "vol1"},
                                            {"snapshot_id": sid(), "lun": "vol2"}]}
    r = client.post("/v1/snapshot-sets", json=body, headers=AUTH)
    assert r.status_code == 201
    prep = r.json()
    assert prep["state"] == "prepared" and [s["lun"] for s in prep["snapshots"]] == ["vol1", "vol2"]
    assert client.get(f"/v1/snapshot-sets/{set_id}", headers=AUTH).json() == prep

    r = client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    assert r.status_code == 200
    committed = r.json()
    assert committed["state"] == "committed" and committed["commit_window_s"] == lvm.window
    assert committed["snapshots"] == prep["snapshots"]
    assert len(lvm.called("create_snapshots")) == 1
    snap = prep["snapshots"][0]
    view = client.get(f"/v1/luns/{snap['target']}", headers=AUTH).json()
    assert view["serial"] == snap["serial"] and view["kind"] == "snapshot" and view["origin"] == "vol1"

    r = client.post(f"/v1/snapshot-sets/{set_id}/abort", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "aborted"
    assert not {s["target"] for s in prep["snapshots"]} & set(lio.exports())
    r = client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    assert r.status_code == 409
    vss_body(r, HResult.VSS_E_BAD_STATE)


def test_a_sets_publish_and_its_abort_each_change_lio_in_one_batch(client, lio):
    """LIO's file is saved once per batch: a publish (or abort) of many LUNs rewrote it between
    two LUNs whenever the debounce's timer fired, most of a 64-LUN abort's time."""
    names = [f"vol{i}" for i in range(3)]
    for n in names:
        client.post("/v1/luns", json={"name": n, "size_bytes": 64 * MiB}, headers=AUTH)
    set_id = sid()
    prep = client.post("/v1/snapshot-sets", json={"set_id": set_id, "snapshots": [
        {"snapshot_id": sid(), "lun": n} for n in names]}, headers=AUTH).json()
    client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    before = set(lio.exports())
    lio.batches.clear()
    assert client.post(f"/v1/snapshot-sets/{set_id}/publish", headers=AUTH).status_code == 200
    assert len(prep["snapshots"]) == 3 and [set(b) for b in lio.batches] == [set(lio.exports()) - before]
    lio.batches.clear()
    assert client.post(f"/v1/snapshot-sets/{set_id}/abort", headers=AUTH).status_code == 200
    assert [len(b) for b in lio.batches] == [3] and not set(lio.exports()) & set(lio.batches[0])


def test_copy_and_resync_jobs(client, copies):
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    r = client.post("/v1/luns/vol1/copy", json={"target": "full1"}, headers=AUTH)
    assert r.status_code == 202
    job = r.json()
    assert job["kind"] == "copy" and job["state"] == "running" and "percent" in job
    job = _wait(client, job["job_id"])
    assert job["state"] == "done" and job["percent"] == 100.0
    assert client.get("/v1/luns/full1", headers=AUTH).json()["kind"] == "copy"

    set_id = sid()
    prep = client.post("/v1/snapshot-sets", json={"set_id": set_id, "snapshots": [
        {"snapshot_id": sid(), "lun": "vol1"}]}, headers=AUTH).json()
    client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    target = prep["snapshots"][0]["target"]
    r = client.post("/v1/luns/vol1/resync", json={"snapshot": target}, headers=AUTH)
    assert r.status_code == 202
    job = _wait(client, r.json()["job_id"])
    assert (job["kind"], job["source"], job["target"], job["state"]) == ("resync", target, "lun-vol1", "done")
    assert copies[-1][3] is True


def host_path(initiator: str) -> str:
    return "/v1/hosts/" + urllib.parse.quote(initiator, safe="")


def test_hosts(client):
    r = client.get("/v1/hosts", headers=AUTH)
    assert r.status_code == 200
    assert {h["initiator"]: h["name"] for h in r.json()} == HOSTS  # the config's, registered at start
    r = client.put(host_path(STRANGER), json={"name": "stranger"}, headers=AUTH)
    assert r.status_code == 200
    host = r.json()
    assert (host["initiator"], host["name"], host["luns"]) == (STRANGER, "stranger", [])
    assert set(host.pop("credentials")) == {"initiator", "name", "token", "chap_user", "chap_secret"}
    assert client.put(host_path(STRANGER), json={"name": "stranger"}, headers=AUTH).json() == host  # a retry
    assert host in client.get("/v1/hosts", headers=AUTH).json()
    r = client.put(host_path(STRANGER), json={"name": "someone-else"}, headers=AUTH)
    assert r.status_code == 409
    vss_body(r, HResult.VSS_E_OBJECT_ALREADY_EXISTS)
    r = client.delete(host_path(STRANGER), headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    r = client.delete(host_path(STRANGER), headers=AUTH)
    assert r.status_code == 404
    vss_body(r, HResult.VSS_E_OBJECT_NOT_FOUND)
    assert STRANGER not in {h["initiator"] for h in client.get("/v1/hosts", headers=AUTH).json()}


@pytest.mark.parametrize("path, body", [
    (host_path("not-an-iqn"), {"name": "x"}),
    (host_path(STRANGER), {"name": "Not_A_Name"}),
    (host_path(STRANGER), {}),
    (host_path(STRANGER), {"name": None}),
])
def test_register_host_invalid_is_400(client, arr, path, body):
    r = client.put(path, json=body, headers=AUTH)
    assert r.status_code == 400
    vss_body(r, HResult.E_INVALIDARG)
    assert STRANGER not in {h.initiator for h in arr.store.hosts()}


def test_unregister_a_host_with_masks_is_409(client):
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    client.put("/v1/luns/vol1/masks", json={"initiator": IQN1},
               headers=AUTH)
    r = client.delete(host_path(IQN1), headers=AUTH)
    assert r.status_code == 409
    assert "vol1" in vss_body(r, HResult.VSS_E_BAD_STATE)["message"]
    assert {h["initiator"]: h["luns"] for h in client.get("/v1/hosts", headers=AUTH).json()}[IQN1] == ["vol1"]


def test_an_initiator_that_is_not_a_host_is_403_not_401(client, arr, lio):
    """Policy (E_ACCESSDENIED for an unregistered initiator) is 403; 401 is only the bearer token's."""
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    r = client.put("/v1/luns/vol1/masks", json={"initiator": STRANGER},
                   headers=AUTH)
    assert r.status_code == 403 == http_status(HResult.E_ACCESSDENIED)
    assert "WWW-Authenticate" not in r.headers
    assert "PUT /v1/hosts/" in vss_body(r, HResult.E_ACCESSDENIED)["message"]
    assert arr.store.masks() == [] and lio.mappings("lun-vol1") == {}
    set_id = sid()
    prep = client.post("/v1/snapshot-sets", json={"set_id": set_id, "snapshots": [
        {"snapshot_id": sid(), "lun": "vol1"}]}, headers=AUTH).json()
    client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    r = client.post("/v1/imports", json={"serials": [prep["snapshots"][0]["serial"]], "host": STRANGER},
                    headers=AUTH)
    assert r.status_code == 403
    vss_body(r, HResult.E_ACCESSDENIED)
    assert client.get(f"/v1/snapshot-sets/{set_id}", headers=AUTH).json()["imported_by"] is None


def test_detach(client, lio):
    client.post("/v1/luns", json={"name": "vol1", "size_bytes": 64 * MiB}, headers=AUTH)
    set_id = sid()
    prep = client.post("/v1/snapshot-sets", json={"set_id": set_id, "snapshots": [
        {"snapshot_id": sid(), "lun": "vol1"}]}, headers=AUTH).json()
    client.post(f"/v1/snapshot-sets/{set_id}/commit", headers=AUTH)
    client.post(f"/v1/snapshot-sets/{set_id}/publish", headers=AUTH)
    target = prep["snapshots"][0]["target"]
    before = client.get(f"/v1/luns/{target}", headers=AUTH).json()
    r = client.post(f"/v1/luns/{target}/detach", headers=AUTH)
    assert r.status_code == 200
    view = r.json()
    assert view == {**before, "kind": "volume", "set_id": None, "snapshot_id": None}
    assert view["origin"] == "vol1" and client.get(f"/v1/luns/{target}", headers=AUTH).json() == view
    for path, code, status in ((f"/v1/luns/{target}/detach", HResult.VSS_E_BAD_STATE, 409),
                               ("/v1/luns/vol1/detach", HResult.VSS_E_BAD_STATE, 409),
                               ("/v1/luns/nope/detach", HResult.VSS_E_OBJECT_NOT_FOUND, 404)):
        r = client.post(path, headers=AUTH)
        assert r.status_code == status
        vss_body(r, code)


# --- the agent's start -------------------------------------------------------------------------

@pytest.fixture
def kernel(monkeypatch):
    """build_array on this machine: SAN portals found, LVM and LIO faked (one of each, kept
    across restarts, as the kernel's objects are)."""
    lvm, lio = FakeLvm(), FakeLio()
    monkeypatch.setattr(agent_mod, "san_portals", lambda cidrs: ["10.87.0.10"])
    monkeypatch.setattr(agent_mod, "Lvm", lambda vg, pool: lvm)
    monkeypatch.setattr(agent_mod, "Lio", lambda iqn, portals: lio)
    return lvm, lio


def access_config(tmp_path, **hosts):
    cert = tmp_path / "agent.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    return make_config(state_dir=str(tmp_path / "state"), access_dir=str(tmp_path / "access"),
                       cert_file=str(cert), listen="10.88.0.10", port=8443, hosts=hosts)


def test_the_configured_hosts_get_their_own_access_files(kernel, tmp_path):
    """Registered at the first start, each host's access file (its token and CHAP) is written,
    root's only; a restart writes nothing new; a missing file is made again with a new token."""
    config = access_config(tmp_path, **{IQN1: "host1", IQN2: "host2"})
    arr = build_array(config)
    written = hand_out_access(arr, config)
    assert sorted(p.name for p in written) == ["host1.json", "host2.json"]
    assert (tmp_path / "access").stat().st_mode & 0o777 == 0o700
    one = json.loads((tmp_path / "access" / "host1.json").read_text())
    assert (tmp_path / "access" / "host1.json").stat().st_mode & 0o777 == 0o600
    assert one["url"] == "https://10.88.0.10:8443" and one["initiator"] == IQN1
    assert arr.caller_for(one["token"]).initiator == IQN1
    assert one["chap_secret"] == arr.store.host(IQN1).chap_secret
    again = build_array(config)  # a restart on the same database: nothing new, nothing lost
    assert hand_out_access(again, config) == [] and len(again.hosts()) == 2
    (tmp_path / "access" / "host1.json").unlink()
    assert [p.name for p in hand_out_access(again, config)] == ["host1.json"]
    new = json.loads((tmp_path / "access" / "host1.json").read_text())
    assert new["token"] != one["token"] and again.caller_for(one["token"]) is None
    assert again.caller_for(new["token"]).initiator == IQN1 and new["chap_secret"] == one["chap_secret"]


def test_a_bad_host_in_the_config_is_refused_before_any_is_registered(kernel, tmp_path):
    config = access_config(tmp_path, **{IQN1: "host1", "host2": "host2"})
    arr = build_array(config)
    with pytest.raises(VssUserError, match="not an iSCSI name"):
        hand_out_access(arr, config)
    assert arr.hosts() == [] and not (tmp_path / "access").exists()


def test_the_agent_refuses_to_start_without_lios_reservation_directory(kernel, tmp_path):
    _, lio = kernel
    lio.inject("check_state_dirs", LioStateError("LIO's state directories /etc/target/pr are missing"))
    with pytest.raises(SystemExit, match="/etc/target/pr are missing"):
        build_array(access_config(tmp_path))
    assert not (tmp_path / "state").exists()  # refused before the store is opened


def _wait(client, job_id: str, timeout: float = 5.0) -> dict:
    return poll(lambda: client.get(f"/v1/jobs/{job_id}", headers=AUTH).json(), lambda job: job["state"] == "running",
                timeout, f"job {job_id}", interval_s=0.01)


# --- the client --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> str:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a throwaway certificate")
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1",
                    "-subj", "/CN=array.test"], check=True, capture_output=True, timeout=30)
    return (d / "cert.pem").read_text()


@pytest.fixture
def access(certificate) -> ArrayAccess:
    return ArrayAccess("https://array.test:8443/", TOKEN, certificate)


def _http_error(code: int, body: bytes) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("https://array.test:8443/v1/luns/x", code, "error", {}, io.BytesIO(body))


def _raising(exc):
    def urlopen(req, timeout=None, context=None):
        raise exc
    return urlopen


def test_access_load(tmp_path, certificate):
    p = tmp_path / "array-access.json"
    p.write_text(json.dumps({"url": "https://a:8443", "token": "t", "certificate": certificate}))
    assert ArrayAccess.load(p) == ArrayAccess("https://a:8443", "t", certificate)


def test_client_pins_the_certificate(access):
    ctx = ArrayClient(access)._ssl
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1 and ctx.get_ca_certs()[0]["subject"] == ((("commonName", "array.test"),),)


def test_client_request(access, monkeypatch):
    seen = {}

    def urlopen(req, timeout=None, context=None):
        seen.update(url=req.full_url, method=req.get_method(), data=req.data, timeout=timeout, context=context,
                    headers=dict(req.header_items()))
        return io.BytesIO(b'{"name": "vol1"}')

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    client = ArrayClient(access, timeout=7.5)
    assert client.create_volume("vol1", 64 * MiB) == {"name": "vol1"}
    assert seen["url"] == "https://array.test:8443/v1/luns" and seen["method"] == "POST"
    assert json.loads(seen["data"]) == {"name": "vol1", "size_bytes": 64 * MiB}
    assert seen["timeout"] == 7.5 and seen["context"] is client._ssl
    assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"
    client.unmask("vol1", IQN1)
    assert seen["url"].endswith("/v1/luns/vol1/masks/iqn.1991-05.com.microsoft%3Ahost1.lab")
    assert seen["method"] == "DELETE" and seen["data"] is None
    client.register_host(IQN1, "host1")
    assert seen["url"].endswith("/v1/hosts/iqn.1991-05.com.microsoft%3Ahost1.lab")
    assert seen["method"] == "PUT" and json.loads(seen["data"]) == {"name": "host1"}
    client.unregister_host(IQN1)
    assert seen["url"].endswith("/v1/hosts/iqn.1991-05.com.microsoft%3Ahost1.lab") and seen["method"] == "DELETE"
    client.detach("snap-x")
    assert seen["url"].endswith("/v1/luns/snap-x/detach") and seen["method"] == "POST" and seen["data"] is None


def test_client_waits_longer_for_calls_that_grow_with_the_set(access, monkeypatch):
    """A 64-LUN prepare took more than the client's minute on a TCG array: the calls whose work is
    one snapshot, activation or removal per LUN wait SET_TIMEOUT_S, every other call the client's."""
    waited = {}

    def urlopen(req, timeout=None, context=None):
        waited[(req.get_method(), req.full_url.split("/v1/", 1)[1])] = timeout
        return io.BytesIO(b"{}")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    client = ArrayClient(access, timeout=7.5)
    client.prepare_set("s1", [{"snapshot_id": "x", "lun": "vol1"}])
    client.publish_set("s1")
    client.plex_set("s1")
    client.abort_set("s1")
    client.attach_import(["SER1"], IQN1)
    client.release_import(["SER1"], IQN1)
    client.commit_set("s1")
    client.hand_out_set("s1")
    client.mask("vol1", IQN1)
    assert waited == {
        ("POST", "snapshot-sets"): SET_TIMEOUT_S, ("POST", "snapshot-sets/s1/publish"): SET_TIMEOUT_S,
        ("POST", "snapshot-sets/s1/plex"): SET_TIMEOUT_S, ("POST", "snapshot-sets/s1/abort"): SET_TIMEOUT_S,
        ("POST", "imports/attach"): SET_TIMEOUT_S, ("POST", "imports/release"): SET_TIMEOUT_S,
        ("POST", "snapshot-sets/s1/commit"): 7.5, ("POST", "snapshot-sets/s1/hand-out"): 7.5,
        ("PUT", "luns/vol1/masks"): 7.5}
    assert ArrayClient(access, timeout=2000.0).call("GET", "/v1/pool") == {} and waited[("GET", "pool")] == 2000.0
    assert ArrayClient(access, timeout=2000.0).publish_set("s1") == {}
    assert waited[("POST", "snapshot-sets/s1/publish")] == 2000.0  # never shorter than the client's own


def test_client_empty_answer_is_none(access, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None, context=None: io.BytesIO(b""))
    assert ArrayClient(access).delete("vol1") is None


@pytest.mark.parametrize("code, cls, status", [
    (HResult.VSS_E_OBJECT_NOT_FOUND, VssUserError, 404),
    (HResult.E_INVALIDARG, VssUserError, 400),
    (HResult.VSS_E_INSUFFICIENT_STORAGE, VssUserError, 507),
    (HResult.E_ACCESSDENIED, VssUserError, 401),
    (HResult.E_ACCESSDENIED, VssUserError, 403),
    (HResult.VSS_E_PROVIDER_VETO, VssRuntimeError, 500),
])
def test_client_raises_the_agents_error(access, monkeypatch, code, cls, status):
    body = json.dumps(vss_error(code, "said the array").to_dict()).encode()
    monkeypatch.setattr(urllib.request, "urlopen", _raising(_http_error(status, body)))
    with pytest.raises(cls) as e:
        ArrayClient(access).lun("x")
    assert e.value.hresult == code and e.value.message == "said the array"


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway</body></html>", b"", b"\xff\xfe"])
def test_client_non_json_error_is_unexpected(access, monkeypatch, body):
    monkeypatch.setattr(urllib.request, "urlopen", _raising(_http_error(502, body)))
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).lun("x")
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED
    assert "502" in e.value.message


def test_client_error_body_not_utf8_is_unexpected(access, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _raising(_http_error(502, b"\x80 bad gateway")))
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).lun("x")
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED


def test_client_success_body_not_json_is_unexpected(access, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda req, timeout=None, context=None: io.BytesIO(b"<html>portal login</html>"))
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).luns()
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED


def test_client_json_error_that_is_not_vss_is_unexpected(access, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _raising(_http_error(404, b'{"detail": "Not Found"}')))
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).lun("x")
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED and "Not Found" in e.value.message


@pytest.mark.parametrize("exc", [urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
                                 urllib.error.URLError(ssl.SSLCertVerificationError("certificate verify failed")),
                                 TimeoutError("timed out"),
                                 ConnectionResetError(104, "Connection reset by peer")])
def test_client_unreachable_is_veto(access, monkeypatch, exc):
    monkeypatch.setattr(urllib.request, "urlopen", _raising(exc))
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).pool()
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    assert "https://array.test:8443/" in e.value.message


def test_wait_job_is_bounded(access, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None, context=None: io.BytesIO(
        b'{"state": "running", "percent": 12.5}'))
    monkeypatch.setattr("provider.polling.time.sleep", lambda s: None)
    with pytest.raises(VssRuntimeError) as e:
        ArrayClient(access).wait_job("j1", timeout=0.05)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO and "job j1 still running" in e.value.message
    assert e.value.last["percent"] == 12.5


# --- the client against the agent (urlopen bridged to the TestClient) --------------------------

@pytest.fixture
def bridged(access, client, monkeypatch) -> ArrayClient:
    def urlopen(req, timeout=None, context=None):
        assert timeout and isinstance(context, ssl.SSLContext)
        url = urllib.parse.urlsplit(req.full_url)
        r = client.request(req.get_method(), url.path, content=req.data, headers=dict(req.header_items()))
        if r.status_code >= 400:
            raise urllib.error.HTTPError(req.full_url, r.status_code, r.reason_phrase, r.headers,
                                         io.BytesIO(r.content))
        return io.BytesIO(r.content)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return ArrayClient(access)


def test_client_and_agent_together(bridged, lio, copies):
    created = bridged.create_volume("vol1", 64 * MiB)
    assert bridged.lun("vol1") == created and bridged.luns() == [created]
    assert bridged.mask("vol1", IQN1, read_only=True)["masks"] == [
        {"initiator": IQN1, "read_only": True}]
    assert bridged.unmask("vol1", IQN1)["masks"] == []
    set_id = sid()
    prep = bridged.prepare_set(set_id, [{"snapshot_id": sid(), "lun": "vol1"}])
    assert bridged.snapshot_set(set_id) == prep
    assert bridged.commit_set(set_id)["state"] == "committed"
    job = bridged.start_copy("vol1", "full1")
    assert bridged.wait_job(job["job_id"], timeout=5)["state"] == "done"
    job = bridged.start_resync("vol1", prep["snapshots"][0]["target"])
    assert bridged.wait_job(job["job_id"], timeout=5)["state"] == "done"
    assert bridged.abort_set(set_id)["state"] == "aborted"
    assert bridged.delete("full1") is None
    assert bridged.pool()["full_percent"] == 90.0
    assert bridged.register_host(STRANGER, "stranger")["name"] == "stranger"
    assert {h["initiator"]: h["name"] for h in bridged.hosts()} == {**HOSTS, STRANGER: "stranger"}
    assert bridged.mask("vol1", STRANGER)["masks"] == [
        {"initiator": STRANGER, "read_only": False}]
    assert bridged.unmask("vol1", STRANGER)["masks"] == []
    assert bridged.unregister_host(STRANGER) is None
    set_id = sid()
    prep = bridged.prepare_set(set_id, [{"snapshot_id": sid(), "lun": "vol1"}])
    bridged.commit_set(set_id)
    detached = bridged.detach(prep["snapshots"][0]["target"])
    assert (detached["kind"], detached["set_id"], detached["serial"]) == ("volume", None, prep["snapshots"][0]["serial"])


def test_client_gets_the_agents_errors(bridged, access, monkeypatch):
    with pytest.raises(VssUserError) as e:
        bridged.lun("nope")
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND and "nope" in e.value.message
    with pytest.raises(VssUserError) as e:
        bridged.create_volume("Bad_Name", MiB)
    assert e.value.hresult == HResult.E_INVALIDARG
    with pytest.raises(VssUserError) as e:
        ArrayClient(ArrayAccess(access.url, "wrong", access.certificate)).luns()
    assert e.value.hresult == HResult.E_ACCESSDENIED
    bridged.create_volume("vol1", MiB)
    with pytest.raises(VssUserError) as e:
        bridged.mask("vol1", STRANGER)
    assert e.value.hresult == HResult.E_ACCESSDENIED and "not a host of this array" in e.value.message
    with pytest.raises(VssUserError) as e:
        bridged.detach("vol1")
    assert e.value.hresult == HResult.VSS_E_BAD_STATE
    with pytest.raises(VssError) as e:
        bridged.call("GET", "/v1/no-such-route")
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND  # no such route: a VSS error too


@pytest.mark.parametrize("method, path, content, status", [
    ("GET", "/v1/nothing-here", None, 404), ("PATCH", "/v1/luns", None, 405),
    ("POST", "/v1/luns", b"[" * 5000, 400)])
def test_errors_outside_the_routes_are_in_the_vss_form_too(client, method, path, content, status):
    r = client.request(method, path, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status
    assert set(r.json()) == {"hresult", "vss", "message"}
