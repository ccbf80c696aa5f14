"""Property tests of the array agent against malformed and hostile requests (hypothesis).

Why: the agent is the array's only management door, and its contract is that bad input is
refused *before anything changes* (targets.array's first rule) and that an unexpected failure
(a 500) never comes from what a caller sent. Hand-written cases cover the shapes someone thought
of; these generate wrong types, huge and negative sizes, bools for ints, hostile names and
initiators, unknown and missing fields, non-JSON and oversized bodies, missing and foreign
tokens, and odd path parameters, for every route.

Each example runs against a fresh array (the fakes of targets_fakes) holding volumes masked to
hosts A and B, snapshot sets (committed, prepared, transportable and imported) and a finished
copy job, so that "another host's object" is a real object. The whole state (the store's SQL
dump, the fake LVM's LVs, the fake LIO's exports with mappings and CHAP) is compared before and
after every request that is not answered 2xx. Runs: ROUTE_EXAMPLES per route (22 routes) plus
the authority and gate properties: 1,310 requests in all.
Only hypothesis APIs of 6.36 (Debian's) are used.
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import targets.jobs as jobs_mod
from provider.contract.hresult import HResult, http_status
from targets.agent import MAX_BODY_BYTES, create_app
from targets.array import Array
from targets.store import Store
from targets_fakes import HOST_A, HOST_B, HOST_C, IQN1, STRANGER, TARGET_IQN, MiB, assert_consistent, make_array

# httpx 0.27 deprecates the app= shortcut Starlette 0.27's TestClient uses; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The 'app' shortcut is now deprecated:DeprecationWarning")

ROUTE_EXAMPLES = 50    # per route: 22 routes -> 1,100 requests
AUTHORITY_EXAMPLES = 150
GATE_EXAMPLES = 60
FUZZ = settings(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])

ADMIN_TOKEN = "admin-token-for-the-fuzz-tests"
SET_A = "a0000000-0000-4000-8000-00000000000a"      # host A's, committed and published, on va
SNAP_A = "a0000000-0000-4000-8000-0000000000a1"
SET_B = "b0000000-0000-4000-8000-00000000000b"      # host B's, prepared only, on vb
SNAP_B = "b0000000-0000-4000-8000-0000000000b1"
SET_T = "c0000000-0000-4000-8000-00000000000c"      # host B's, transportable, committed, imported by C
SNAP_T = "c0000000-0000-4000-8000-0000000000c1"
UNKNOWN_GUID = "d0000000-0000-4000-8000-00000000000d"


# --- the world each example runs against --------------------------------------------------------

@dataclass
class World:
    """A fresh array behind the app, with the objects the requests aim at."""

    arr: Array
    client: TestClient
    tokens: dict[str, str]                         # "admin", "a", "b", "c" -> bearer token
    refs: dict[str, str] = field(default_factory=dict)  # symbolic name -> value made at run time


@dataclass(frozen=True)
class Ref:
    """A value known only once the world is built (a job id, a serial, a token)."""

    key: str


def _join_jobs() -> None:
    """Copy and resync jobs run in threads: wait (bounded) for them before looking at state."""
    for t in threading.enumerate():
        if t.name.startswith("job-"):
            t.join(timeout=5)
            assert not t.is_alive(), f"job thread {t.name} still running after 5 s"


def _fake_copy(src: str, dst: str, size: int, progress=None, only_changed: bool = False) -> int:
    if progress:
        progress(size)
    return size


@pytest.fixture(scope="module", autouse=True)
def _no_block_copies() -> Iterator[None]:
    """Jobs copy nothing (there are no devices); module-scoped so hypothesis sees no
    function-scoped fixture. The agent's logging of refusals is silenced for the run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs_mod, "copy_blocks", _fake_copy)
        logging.getLogger("shadowlun").disabled = True
        try:
            yield
        finally:
            logging.getLogger("shadowlun").disabled = False
            while _template:
                _template.pop().client.__exit__(None, None, None)


class ArrayProxy:
    """The array the app serves, swapped per example: FastAPI's route setup costs tens of
    milliseconds, so the app (and its TestClient) is made once and each example gets a fresh
    copy of the same world behind it."""

    def __init__(self) -> None:
        self.current: Array | None = None

    def __getattr__(self, name: str):
        return getattr(self.current, name)


PROXY = ArrayProxy()


def _make_world() -> World:
    """The objects the requests aim at, made through the Array API as admin and as hosts."""
    arr = make_array()
    arr.lio.target_iqn, arr.lio.portals = TARGET_IQN, ["10.87.0.1"]  # what GET /v1/target reads of LIO
    tokens = {"admin": ADMIN_TOKEN, "a": arr.issue_token(HOST_A)["token"],
              "b": arr.issue_token(HOST_B)["token"], "c": arr.issue_token(HOST_C)["token"]}
    a, b, c = (arr.caller_for(tokens[k]) for k in "abc")
    for name, masks in (("va", [(HOST_A, False)]), ("vb", [(HOST_B, True)]),
                        ("vshared", [(HOST_A, False), (HOST_B, False)]), ("vfree", [])):
        arr.create_volume(name, 64 * MiB)
        for initiator, read_only in masks:
            arr.mask(name, initiator, read_only)
    arr.prepare_set(SET_A, [{"snapshot_id": SNAP_A, "lun": "va"}], a)
    arr.commit_set(SET_A, a)
    arr.publish_set(SET_A, a)
    arr.mask(f"snap-{SNAP_A}", HOST_A, True, a)
    arr.prepare_set(SET_B, [{"snapshot_id": SNAP_B, "lun": "vb"}], b)
    arr.prepare_set(SET_T, [{"snapshot_id": SNAP_T, "lun": "vshared"}], b, transportable=True)
    arr.commit_set(SET_T, b)
    serial_t = arr.store.lun(f"snap-{SNAP_T}").serial
    arr.claim_import([serial_t], HOST_C, c)
    job = arr.start_copy("va", "acopy", a)
    _join_jobs()
    assert arr.store.job(job.job_id).state == "done"
    assert_consistent(arr)
    refs = {"job_a": job.job_id, "serial_a": arr.store.lun(f"snap-{SNAP_A}").serial, "serial_t": serial_t,
            "serial_va": arr.store.lun("lun-va").serial}
    client = TestClient(create_app(PROXY, ADMIN_TOKEN), raise_server_exceptions=False)
    client.__enter__()  # one event loop for the module's requests (left in _no_block_copies)
    return World(arr, client, tokens, refs)


_template: list[World] = []


def _clone(t: Array) -> Array:
    """A fresh array in the template's state: the store copied by SQLite's backup, the fakes deep-copied."""
    store = Store(":memory:")
    with t.store._lock:
        t.store._db.backup(store._db)
    return Array(t.config, store, copy.deepcopy(t.backend), copy.deepcopy(t.lio))


def build_world() -> World:
    """The world for one example: the template's state in a new array, served by the one app."""
    if not _template:
        _template.append(_make_world())
    t = _template[0]
    arr = _clone(t.arr)
    PROXY.current = arr
    return World(arr, t.client, t.tokens, t.refs)


def resolve(value, world: World):
    """Replace every Ref in a (JSON-like) value by what the world made."""
    if isinstance(value, Ref):
        return world.refs[value.key]
    if isinstance(value, list):
        return [resolve(v, world) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, world) for k, v in value.items()}
    return value


# --- what "nothing changed" and "consistent" mean --------------------------------------------------

def state_of(arr: Array) -> dict:
    """Everything a request could change: the store in full, the LVs, the exports with their
    mappings, the CHAP credentials LIO was given, the sets whose snapshots are pre-made."""
    with arr.store._lock:
        dump = list(arr.store._db.iterdump())
    return {
        "store": dump,
        "lvm": sorted((lv.name, lv.uuid, lv.size_bytes, lv.attr, lv.origin, tuple(sorted(lv.tags)))
                      for lv in arr.backend.lvm.lvs.values()),
        "lio": sorted((e.name, e.device, e.serial, e.lun,
                       tuple(sorted((m.initiator, m.mapped_lun, m.read_only) for m in e.mappings)))
                      for e in arr.lio.exports().values()),
        "chap": dict(arr.lio.chap),
        "orphans": sorted(arr.lio.orphans),
        "premade": sorted(arr.backend.premade),
    }


def changes(before: dict, after: dict) -> dict:
    """What differs between two states, briefly (for the failure message)."""
    out = {}
    for key in before:
        b, a = before[key], after[key]
        if b != a:
            out[key] = ({"gone": [x for x in b if x not in a][:5], "new": [x for x in a if x not in b][:5]}
                        if isinstance(b, list) else (b, a))
    return out


# --- hostile values ------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\x00", "va\x00", "va\n", "\n", "\r\n", "\t", "VA", "Va", "vä", "é", "１２３", "٣٣", "😀",
    "a" * 300, "a" * 49, "-va", "va-", "_va", "v_a", "../va", "..", ".", "va/..", "%00", "%2F", "va%0A",
    "lun-va", "snap-", "snap-va", f"snap-{UNKNOWN_GUID}", f"lun-snap-{SNAP_A}", "null", "true", "0",
    "{}", "[]", "' OR 1=1 --", "\"; DROP TABLE luns; --", "${jndi:x}", "\\", "\u202e", "\ufeffva",
    "\ud800", "va\udcff",  # lone surrogates: a JSON "\ud800" escape decodes to one, and SQLite cannot store it
]
INITIATORS = [HOST_A, HOST_B, HOST_C, IQN1, STRANGER]
BAD_INITIATORS = [
    HOST_A.upper(), HOST_B.upper(),                                   # accepted, lower-cased
    HOST_A + "\n", HOST_A + "\x00", "\x00" + HOST_A, HOST_A.replace("host-a", "host_a"),
    "iqn.2026-11.lab.shadowlun:" + "x" * 200, "iqn.2026-11." + "a" * 230,  # over 223 bytes
    "iqn.２０２６-11.lab:x", "iqn.٢٠٢٦-11.lab:x", "iqn.2026-13.lab:x", "iqn.2026-00.lab:x", "iqn.26-11.lab:x",
    "iqn.2026-11.-lab:x", "iqn.2026-11.lab:x y", "iqn.2026-11.lab:é", "eui.0123456789abcde",
    "eui.0123456789abcdefg", "EUI.0123456789ABCDEF", "naa.0123456789abcdef0123", "naa." + "f" * 32,
    "iqn", "iqn.", ":", "IQN.2026-11.LAB.SHADOWLUN:HOST-A\n",
]
KNOWN_LUNS = ["va", "vb", "vshared", "vfree", "acopy", f"snap-{SNAP_A}", f"snap-{SNAP_T}", f"snap-{SNAP_B}",
              "nosuch"]
KNOWN_SETS = [SET_A, SET_B, SET_T, UNKNOWN_GUID, SET_A.upper(), "{" + SET_A + "}", SET_A.replace("-", ""),
              "urn:uuid:" + SET_A, SET_A + "\n", SET_A + "\x00", SNAP_A]
SIZES = [0, 1, -1, 512, MiB - 512, MiB, MiB + 1, MiB + 512, 64 * MiB, 2 ** 31, 2 ** 32, 2 ** 53 + 1,
         2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63), -(2 ** 63) - 1, 10 ** 30, 16 << 40, (16 << 40) + 512,
         1000 << 40]

BAD_SERIALS = st.sampled_from(["\ud800", "\udfff" * 32, "00" * 16 + "\n", "AB" * 16, "ab" * 17, "0" * 31, "\x00" * 32,
                              "０" * 32, "g" * 32, ""])
hostile_text = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=60),
                         st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-ABZ_.:", max_size=70))
initiators = st.one_of(st.sampled_from(INITIATORS), st.sampled_from(BAD_INITIATORS), hostile_text)
sizes = st.one_of(st.sampled_from(SIZES), st.integers(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70))
scalars = st.one_of(st.none(), st.booleans(), sizes, st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([1.0, 1048576.0, 1e308, -0.0]), hostile_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=8)
guids = st.one_of(st.sampled_from(KNOWN_SETS), st.uuids().map(str), hostile_text)


def plausible(kind: str):
    """What a body field might hold: mostly the right type aimed at some real object."""
    return {
        "name": st.one_of(st.sampled_from(["newvol", "va", "acopy", "snap-x", "a" * 48]), hostile_text),
        "size_bytes": sizes,
        "initiator": st.one_of(st.sampled_from(INITIATORS), initiators),
        "read_only": st.one_of(st.booleans(), st.sampled_from([0, 1, "true", "false", None, "yes"])),
        "host": st.one_of(st.none(), st.sampled_from(INITIATORS), initiators),
        "snapshot_id": guids,
        "lun": st.one_of(st.sampled_from(KNOWN_LUNS), hostile_text),
        "set_id": guids,
        "transportable": st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None])),
        "snapshots": st.lists(st.fixed_dictionaries({"snapshot_id": guids, "lun": st.sampled_from(KNOWN_LUNS)}),
                              max_size=3),
        "serials": st.one_of(
            st.lists(st.sampled_from([Ref("serial_a"), Ref("serial_t"), Ref("serial_va")]), min_size=1, max_size=3),
            st.lists(st.one_of(st.sampled_from([Ref("serial_a"), Ref("serial_t")]), BAD_SERIALS, hostile_text),
                     min_size=1, max_size=4),
            st.sampled_from([[], ["00" * 16] * 257])),
        "target": st.one_of(st.sampled_from(["newcopy", "va", "acopy", "snap-y"]), hostile_text),
        "snapshot": st.one_of(st.sampled_from(KNOWN_LUNS), hostile_text),
        "luns": st.one_of(st.lists(st.one_of(st.sampled_from(KNOWN_LUNS), hostile_text), max_size=4),
                          st.sampled_from([["va"] * 300, "va", None])),
    }[kind]


# --- the routes ----------------------------------------------------------------------------------

BODY_FIELDS = {
    "volume": ("name", "size_bytes"),
    "mask": ("initiator", "read_only"),
    "host": ("name",),
    "set": ("set_id", "snapshots", "transportable"),
    "import": ("serials", "host"),
    "copy": ("target",),
    "resync": ("snapshot",),
    "identity": ("luns",),
}
PATH_PARAMS = {
    "name": st.one_of(st.sampled_from(KNOWN_LUNS), hostile_text),
    "initiator": initiators,
    "set_id": guids,
    "job_id": st.one_of(st.just(Ref("job_a")), st.sampled_from(["abc", "0" * 32, "0" * 65]), hostile_text),
    "lv": st.one_of(st.sampled_from(["lun-vol-a", "snap-x", "pool", "lun-" + "a" * 200]), hostile_text),
}
ROUTES = [  # (method, path template, body kind): every route of create_app
    ("GET", "/v1/pool", None),
    ("GET", "/v1/target", None),
    ("GET", "/v1/luns", None),
    ("POST", "/v1/luns", "volume"),
    ("GET", "/v1/luns/{name}", None),
    ("DELETE", "/v1/luns/{name}", None),
    ("POST", "/v1/luns/{name}/detach", None),
    ("POST", "/v1/identity-reverts", "identity"),
    ("PUT", "/v1/luns/{name}/masks", "mask"),
    ("DELETE", "/v1/luns/{name}/masks/{initiator}", None),
    ("GET", "/v1/hosts", None),
    ("PUT", "/v1/hosts/{initiator}", "host"),
    ("POST", "/v1/hosts/{initiator}/token", None),
    ("DELETE", "/v1/hosts/{initiator}", None),
    ("POST", "/v1/snapshot-sets", "set"),
    ("GET", "/v1/snapshot-sets/{set_id}", None),
    ("POST", "/v1/snapshot-sets/{set_id}/commit", None),
    ("POST", "/v1/snapshot-sets/{set_id}/publish", None),
    ("POST", "/v1/snapshot-sets/{set_id}/hand-out", None),
    ("POST", "/v1/snapshot-sets/{set_id}/plex", None),
    ("POST", "/v1/snapshot-sets/{set_id}/abort", None),
    ("POST", "/v1/imports", "import"),
    ("POST", "/v1/imports/attach", "import"),
    ("POST", "/v1/imports/release", "import"),
    ("POST", "/v1/luns/{name}/copy", "copy"),
    ("POST", "/v1/luns/{name}/resync", "resync"),
    ("GET", "/v1/jobs/{job_id}", None),
    ("POST", "/v1/jobs/{job_id}/cancel", None),
    ("GET", "/v1/health", None),
    ("POST", "/v1/store/confirm", None),
    ("DELETE", "/v1/set-aside/{lv}", None),
]


@dataclass
class Req:
    method: str
    path: str
    auth: str | bytes | None          # the Authorization header, None: none
    content: bytes | None
    content_type: str | None = "application/json"
    chunked: bool = False             # sent without Content-Length, in pieces

    def __repr__(self) -> str:
        body = self.content if self.content is None or len(self.content) < 300 else \
            self.content[:200] + b"...(%d bytes)" % len(self.content)
        return (f"Req({self.method} {self.path!r} auth={self.auth!r} type={self.content_type!r} "
                f"chunked={self.chunked} body={body!r})")


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def bodies(draw, kind: str | None):
    """A body for the route: a valid-shaped one mutated (wrong type, missing or unknown field),
    or something else entirely (not an object, not JSON, empty, for a route without a body)."""
    shape = draw(st.sampled_from(["mutated"] * 6 + ["other-json", "not-json", "empty", "none"]))
    if kind is None and shape == "mutated":
        shape = draw(st.sampled_from(["other-json", "none", "none"]))
    if shape == "none":
        return None
    if shape == "empty":
        return b""
    if shape == "not-json":
        return draw(st.one_of(st.binary(max_size=40), st.sampled_from(
            [b"name=va", b"{", b"{'name': 'va'}", b"\xff\xfe", b"[" * 5000, b"{\"a\":" * 3000, b"\x00",
             b'{"name": "va", "size_bytes": 1048576}garbage', b"NaN", b"1e400", b"\"\\ud800\""])))
    if shape == "other-json":
        return _dumps(draw(st.one_of(json_values, st.lists(json_values, max_size=3))))
    body = {f: draw(plausible(f)) for f in BODY_FIELDS[kind]}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        how = draw(st.sampled_from(["type", "drop", "unknown"]))
        if how == "type":
            body[draw(st.sampled_from(BODY_FIELDS[kind]))] = draw(json_values)
        elif how == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(st.sampled_from(["readOnly", "read_only", "size", "Name", "name ", "holder", "owner",
                                       "admin", "token", "__proto__", ""]))] = draw(json_values)
    return body  # resolved (Refs) and encoded when sent


AUTHS = st.sampled_from(  # a bad Authorization in about one request of three
    ["admin"] * 8 + ["a"] * 5 + ["b"] * 5 + ["c"] * 2
    + [None, "Bearer", "Bearer ", "Bearer wrong", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN}x",
       f"Bearer {ADMIN_TOKEN[:-1]}", f"Bearer {ADMIN_TOKEN}\x00", b"Bearer \xff" + ADMIN_TOKEN.encode(),
       "token_a:plain"])


@st.composite
def requests(draw, route):
    method, template, kind = route
    path = template
    for param in ("name", "initiator", "set_id", "job_id"):
        if "{" + param + "}" in path:
            path = path.replace("{" + param + "}", _quoted(draw(PATH_PARAMS[param])))
    auth = draw(AUTHS)
    body = draw(bodies(kind))
    content_type = draw(st.sampled_from(["application/json"] * 6 + [None, "text/plain",
                                                                  "application/x-www-form-urlencoded"]))
    return method, path, auth, body, content_type, draw(st.booleans()) and draw(st.booleans())


def _quoted(value: str | Ref) -> str:
    """A path parameter URL-quoted; a Ref stays a placeholder until the world is built."""
    if isinstance(value, Ref):
        return "{ref:%s}" % value.key
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def materialize(world: World, method: str, path: str, auth, body, content_type, chunked) -> Req:
    """The request as sent: Refs resolved, path parameters quoted, body encoded."""
    for key, value in world.refs.items():
        path = path.replace("{ref:%s}" % key, urllib.parse.quote(value, safe=""))
    if auth in world.tokens:
        auth = f"Bearer {world.tokens[auth]}"
    elif auth == "token_a:plain":
        auth = world.tokens["a"]  # a host token without its scheme
    if isinstance(body, dict):
        body = _dumps(resolve(body, world))
    return Req(method, path, auth, body, content_type, chunked)


def send(world: World, req: Req):
    headers = {}
    if req.auth is not None:
        headers["Authorization"] = req.auth
    if req.content_type is not None and req.content is not None:
        headers["Content-Type"] = req.content_type
    content = req.content
    if req.chunked and content is not None:
        data = content

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(data), 64 << 10):
                yield data[i:i + (64 << 10)]
        content = pieces()
    r = world.client.request(req.method, req.path, content=content, headers=headers)
    _join_jobs()
    return r


def check(world: World, req: Req) -> None:
    """The properties: no 500; a refusal changes nothing and says why in JSON; the state stays
    consistent whatever the answer."""
    before = state_of(world.arr)
    r = send(world, req)
    assert r.status_code != 500, f"{req}: {r.status_code} {r.text[:500]}"
    assert r.status_code < 500 or r.status_code == 507, f"{req}: {r.status_code} {r.text[:500]}"
    if not 200 <= r.status_code < 300:
        changed = changes(before, state_of(world.arr))
        assert not changed, f"{req}: answered {r.status_code} {r.text[:300]} but changed {changed}"
        body = r.json()
        assert isinstance(body, dict), f"{req}: {r.text[:300]}"
        if "hresult" in body:  # the VSS form: status per its code (the gate's 401 and 413 aside)
            assert set(body) == {"hresult", "vss", "message"}, body
            assert r.status_code in (401, 405, 413) or http_status(HResult[body["vss"]]) == r.status_code, (req, r.text)
    tokens_ok = isinstance(req.auth, str) and req.auth in {f"Bearer {t}" for t in world.tokens.values()}
    if not tokens_ok:
        assert r.status_code == 401, f"{req}: {r.status_code} {r.text[:300]}"
        assert r.json()["vss"] == "E_ACCESSDENIED" and r.headers.get("www-authenticate") == "Bearer"
    else:
        assert r.status_code != 401, f"{req}: {r.status_code} {r.text[:300]}"
    assert_consistent(world.arr)


# --- the properties ------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_hostile_requests_never_500_and_refusals_change_nothing(route) -> None:
    @settings(FUZZ, max_examples=ROUTE_EXAMPLES)
    @given(spec=requests(route))
    def prop(spec) -> None:
        world = build_world()
        check(world, materialize(world, *spec))

    prop()


# Requests well-formed in every way but the caller: host B (or C) aiming at what host A holds or
# sees, or at what only the admin may do. Expected: 403 E_ACCESSDENIED, nothing changed.
FOREIGN = [
    ("GET", "/v1/luns/va", None), ("DELETE", "/v1/luns/va", None), ("DELETE", "/v1/luns/vshared", None),
    ("DELETE", "/v1/luns/acopy", None), ("DELETE", f"/v1/luns/snap-{SNAP_A}", None),
    ("POST", f"/v1/luns/snap-{SNAP_A}/detach", None), ("POST", "/v1/luns/va/detach", None),
    ("POST", "/v1/identity-reverts", {"luns": [f"snap-{SNAP_A}"]}), ("POST", "/v1/identity-reverts", {"luns": ["va"]}),
    ("PUT", "/v1/luns/va/masks", {"initiator": "{me}", "read_only": False}),
    ("PUT", "/v1/luns/vshared/masks", {"initiator": "{me}", "read_only": True}),
    ("PUT", "/v1/luns/vfree/masks", {"initiator": "{me}"}),
    ("PUT", "/v1/luns/vshared/masks", {"initiator": HOST_A, "read_only": True}),
    ("DELETE", "/v1/luns/vshared/masks/{me}", None), ("DELETE", "/v1/luns/vshared/masks/" + HOST_A, None),
    ("DELETE", "/v1/luns/va/masks/" + HOST_A, None),
    ("POST", "/v1/luns/va/copy", {"target": "stolen"}), ("POST", "/v1/luns/acopy/copy", {"target": "stolen"}),
    ("POST", "/v1/luns/va/resync", {"snapshot": f"snap-{SNAP_A}"}),
    ("POST", "/v1/luns/vshared/resync", {"snapshot": f"snap-{SNAP_A}"}),
    ("GET", "/v1/jobs/{job_a}", None), ("POST", "/v1/jobs/{job_a}/cancel", None),
    ("GET", f"/v1/snapshot-sets/{SET_A}", None), ("POST", f"/v1/snapshot-sets/{SET_A}/commit", None),
    ("POST", f"/v1/snapshot-sets/{SET_A}/publish", None), ("POST", f"/v1/snapshot-sets/{SET_A}/abort", None),
    ("POST", f"/v1/snapshot-sets/{SET_T}/abort", "c"), ("POST", f"/v1/snapshot-sets/{SET_T}/publish", "c"),
    ("POST", f"/v1/snapshot-sets/{SET_A}/hand-out", None), ("POST", f"/v1/snapshot-sets/{SET_T}/hand-out", "c"),
    ("POST", f"/v1/snapshot-sets/{SET_A}/plex", None), ("POST", f"/v1/snapshot-sets/{SET_T}/plex", "c"),
    ("POST", "/v1/snapshot-sets", {"set_id": UNKNOWN_GUID, "snapshots": [{"snapshot_id": SNAP_B, "lun": "va"}]}),
    ("POST", "/v1/snapshot-sets",
     {"set_id": UNKNOWN_GUID, "snapshots": [{"snapshot_id": UNKNOWN_GUID, "lun": "vfree"}]}),
    ("POST", "/v1/imports", {"serials": ["{serial_a}"]}),
    ("POST", "/v1/imports", {"serials": ["{serial_va}"], "host": HOST_A}),
    ("POST", "/v1/imports", {"serials": ["{serial_t}"], "host": HOST_A}),
    ("POST", "/v1/imports/attach", {"serials": ["{serial_a}"]}),
    ("POST", "/v1/imports/attach", {"serials": ["{serial_va}"], "host": HOST_A}),
    ("POST", "/v1/imports/attach", {"serials": ["{serial_t}"], "host": HOST_A}),
    ("POST", "/v1/imports/release", {"serials": ["{serial_t}"], "host": HOST_A}),
    ("POST", "/v1/luns", {"name": "mine", "size_bytes": 64 * MiB}),
    ("PUT", "/v1/hosts/" + STRANGER, {"name": "stranger"}), ("PUT", "/v1/hosts/{me}", {"name": "renamed"}),
    ("POST", "/v1/hosts/{me}/token", None), ("POST", "/v1/hosts/" + HOST_A + "/token", None),
    ("DELETE", "/v1/hosts/" + HOST_A, None), ("DELETE", "/v1/hosts/" + STRANGER, None),
]


@settings(FUZZ, max_examples=AUTHORITY_EXAMPLES)
@given(which=st.sampled_from(FOREIGN), who=st.sampled_from(["b", "c"]), upper=st.booleans(),
       quote=st.booleans())
def test_another_hosts_token_is_refused_403(which, who, upper, quote) -> None:
    """A host's token reaches nothing that is not its own, however the initiators are spelled."""
    method, template, body = which
    if body == "c":  # only host C (not the set's owner B, which may) is refused these
        who, body = "c", None
    world = build_world()
    me = {"b": HOST_B, "c": HOST_C}[who]
    subst = {"me": me.upper() if upper else me, **world.refs}
    path = template
    for key, value in subst.items():
        path = path.replace("{" + key + "}", urllib.parse.quote(value, safe="") if quote else value)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{me}", subst["me"]).replace("{serial_a}", subst["serial_a"])
                          .replace("{serial_va}", subst["serial_va"]).replace("{serial_t}", subst["serial_t"]))
    req = Req(method, path, f"Bearer {world.tokens[who]}", None if body is None else _dumps(body))
    before = state_of(world.arr)
    r = send(world, req)
    assert r.status_code == 403, f"{who}: {req}: {r.status_code} {r.text[:300]}"
    assert r.json()["vss"] == "E_ACCESSDENIED"
    changed = changes(before, state_of(world.arr))
    assert not changed, f"{who}: {req}: refused but changed {changed}"
    assert_consistent(world.arr)


@settings(FUZZ, max_examples=GATE_EXAMPLES)
@given(route=st.sampled_from(ROUTES), over=st.integers(1, 4096), chunked=st.booleans(),
       auth=st.sampled_from(["admin", "a", "b", None, "Bearer wrong"]),
       length=st.sampled_from([None, "abc", "-1", "1e3", " 5", str(MAX_BODY_BYTES + 1), str(10 ** 30)]))
def test_gate_bounds_the_body_before_the_app(route, over, chunked, auth, length) -> None:
    """Over 1 MiB (announced, or sent in pieces without a length), or a bad Content-Length:
    401 without a token, else 413; either way nothing changed."""
    world = build_world()
    method, template, _ = route
    path = template.replace("{name}", "va").replace("{initiator}", urllib.parse.quote(HOST_A, safe="")) \
        .replace("{set_id}", SET_A).replace("{job_id}", world.refs["job_a"])
    content = b'{"name": "va", "size_bytes": 67108864' + b" " * (MAX_BODY_BYTES + over) + b"}"
    before = state_of(world.arr)
    headers = {}
    if auth is not None:
        headers["Authorization"] = f"Bearer {world.tokens[auth]}" if auth in world.tokens else auth
    if length is not None:  # a lying or broken Content-Length over a small body
        headers["Content-Length"] = length
        r = world.client.request(method, path, content=b"{}", headers=headers)
    elif chunked:
        r = world.client.request(method, path, headers=headers,
                                 content=iter([content[i:i + (256 << 10)] for i in range(0, len(content), 256 << 10)]))
    else:
        r = world.client.request(method, path, content=content, headers=headers)
    _join_jobs()
    assert r.status_code == (401 if auth not in world.tokens else 413), (route, auth, length, r.status_code, r.text)
    changed = changes(before, state_of(world.arr))
    assert not changed, (route, auth, length, changed)


def test_every_route_is_fuzzed_and_the_budget_is_kept() -> None:
    """A route added to the agent is added here too, and a run stays over 1,000 requests."""
    app = create_app(make_array(), ADMIN_TOKEN)
    app = getattr(app, "app", app)  # inside the Gate
    have = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert have == {(m, p) for m, p, _ in ROUTES}
    assert len(ROUTES) * ROUTE_EXAMPLES + AUTHORITY_EXAMPLES + GATE_EXAMPLES >= 1000


# --- bugs the properties found, pinned -----------------------------------------------------------

def test_lone_surrogate_serial_is_refused() -> None:
    """A serial from a JSON "\\ud800" escape reached SQLite, which cannot encode it: a 500."""
    world = build_world()
    before = state_of(world.arr)
    r = world.client.post("/v1/imports", content=b'{"serials": ["\\ud800"], "host": "%s"}' % HOST_A.encode(),
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    assert r.status_code in (400, 404), r.text
    assert not changes(before, state_of(world.arr))


@pytest.mark.parametrize("name", ["snap-x", f"snap-{UNKNOWN_GUID}", f"snap-{SNAP_A}"])
def test_a_volume_created_is_reachable_by_its_name(name: str) -> None:
    """POST /v1/luns took a volume named snap-*, which GET and DELETE /v1/luns/{name} then
    looked up as a snapshot: a volume nobody could reach (or one shadowing a snapshot's name)."""
    world = build_world()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = world.client.post("/v1/luns", json={"name": name, "size_bytes": 64 * MiB}, headers=auth)
    if r.status_code == 400:
        return  # refusing such names is a fix too
    assert r.status_code == 201, r.text
    assert world.client.get(f"/v1/luns/{r.json()['name']}", headers=auth).status_code == 200
