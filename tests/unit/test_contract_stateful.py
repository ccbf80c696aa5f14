"""The VSS hardware-provider contract at its edges, as a stateful property test (issue 13).

A hypothesis RuleBasedStateMachine drives random sequences of every provider method and of the
coordinator's operations from two hosts, host-a and host-b, each with its own ShadowLunProvider
(over the in-process Array as that host's token: `InProcessArray(array, Caller(...))`), its own
initiator (its disks) and its own coordinator (catalog, GPT flags). Between any two calls a
host's provider may be restarted (a new instance that holds nothing, as the CLI's provider
server is after each command). Calls come out of order, twice, for the wrong LUN (production
records, the other host's LUNs, unknown records) and with the wrong set ids.

After every step:
- no production LUN (those the admin made: a1, a2 for host-a; b1, b2 for host-b; c1 for host-c,
  which no provider runs on) changed: store row, masks in the store and in LIO, LV, export; no
  block was copied onto one except by a resync its own host asked for, and never from one
  (data changes are modelled by the calls of `targets.jobs.copy_blocks`, recorded);
- no imported set lost: once host X located a shadow LUN it stays on the array, held by X (and
  masked to X unless X broke it with DO_MASK_LUNS) until X deletes it; no set handed out to
  its requester (PostFinalCommitSnapshots) is ever aborted;
- the store, the LVM fake and the LIO fake agree (no LV, export or mapping without its row, and
  the reverse; a committed snapshot, or a broken one, is exported only at publish or first mask,
  and the pre-made snapshot LVs of a prepared set have no row in `luns` but are members of the set);
- every refused call (VssError) changed nothing: store (every table), LVs with tags, exports with
  mappings, CHAP, each host's disks, GPT flags and catalog compared before and after. The one
  change a refusal may make is the one the contract asks for: an out-of-sequence creation call
  aborts the set that provider instance held in creation or created but not yet handed out
  (spec §7.2 "✗ = VETO + abort"), and a failed coordinator create aborts the set it made; the
  sets so aborted are left out of the comparison and must be gone completely. A coordinator
  delete stops at the first copy it cannot delete and keeps the rest (documented): only its
  refusals before the first copy are held to "nothing changed".

At least 2,000 steps a run (the test counts them); the answers of every call are printed with
-s. CONTRACT_NO_SHRINK=1 reports a failure without shrinking it (quicker while developing).

The five product bugs the machine first found are fixed; each has a regression test at the end
of this file, and the machine walks those paths again: a break (OnLunStateChange) or a resync of
several LUNs of any kind, one twice, the other host's, is all or nothing; a BeginPrepareSnapshot
may reuse the held set's id, also a created set's handed out and imported; aborts (late, by a
restarted provider, a discard by the state machine) reach sets any host imported, which the
array refuses to delete (the import invariant below holds them). Two later bugs are fixed and
pinned too: a second refused BeginPrepareSnapshot reusing a handed-out set's id kept the set
only once, and a resync onto a smaller destination started the earlier pairs (the machine's
LUNs all have one size, so only its regression test reaches that path).

Only hypothesis APIs of 6.36 (Debian's) are used. The falsifying example is printed as a
sequence of steps, with the blob to reproduce it (`print_blob=True`).
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import provider.requester.coordinator as coordinator_module
import provider.hardware.hardware_provider as hp
import targets.jobs as jobs_module
import targets.luns as luns_module
from provider.requester import bcd
from provider.requester.coordinator import Coordinator
from provider.hardware.hardware_provider import PROVIDER_ID, HostIdentity, ShadowLunProvider
from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.lio_target import predict_lio_lun_info
from provider.contract.state_machine import ProviderState
from provider.requester.volumes import Extent
from provider.contract.vss_types import HardwareOptions, SnapshotContext, VolumeSnapshotAttributes
from targets.authority import Caller
from targets.lio import naa_wwid
from targets_fakes import HOST_A, HOST_B, HOST_C, FakeLio, FakeLvm, make_array
from test_coordinator import PART_START, FakeGpt, FakeRunner
from test_hardware_provider import FakeInitiator, InProcessArray

MIB = 1 << 20
A_ = VolumeSnapshotAttributes
BACKUP = int(SnapshotContext.VSS_CTX_BACKUP)
TRANSPORTABLE = int(A_.VSS_VOLSNAP_ATTR_TRANSPORTABLE)
SUPPORTED_CONTEXTS = [
    BACKUP, BACKUP | TRANSPORTABLE,
    int(SnapshotContext.VSS_CTX_FILE_SHARE_BACKUP), int(SnapshotContext.VSS_CTX_FILE_SHARE_BACKUP) | TRANSPORTABLE,
    int(SnapshotContext.VSS_CTX_NAS_ROLLBACK), int(SnapshotContext.VSS_CTX_NAS_ROLLBACK) | TRANSPORTABLE,
    int(SnapshotContext.VSS_CTX_APP_ROLLBACK), int(SnapshotContext.VSS_CTX_APP_ROLLBACK) | TRANSPORTABLE,
]
OTHER_CONTEXTS = [BACKUP | int(A_.VSS_VOLSNAP_ATTR_PLEX), int(SnapshotContext.VSS_CTX_CLIENT_ACCESSIBLE),
                  BACKUP | int(A_.VSS_VOLSNAP_ATTR_HARDWARE_ASSISTED), 0x12345678]
CONTEXTS = st.one_of(st.sampled_from(SUPPORTED_CONTEXTS), st.sampled_from(SUPPORTED_CONTEXTS),
                     st.sampled_from(SUPPORTED_CONTEXTS), st.sampled_from(OTHER_CONTEXTS))
H = HardwareOptions
STATE_CHANGE_FLAGS = [0, int(H.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE), int(H.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS),
                      int(H.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS | H.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE),
                      int(H.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY),
                      int(H.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY)]

HOSTS = {"a": ("host-a", HOST_A), "b": ("host-b", HOST_B)}
HOST_KEYS = st.sampled_from(sorted(HOSTS))
PRODUCTION = {"a1": HOST_A, "a2": HOST_A, "b1": HOST_B, "b2": HOST_B, "c1": HOST_C}
UNKNOWN_SERIALS = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]
SYSFS = Path("/nonexistent/shadowlun-test-sysfs")
CREATION_STEPS = ["end_prepare_snapshots", "pre_commit_snapshots", "commit_snapshots", "post_commit_snapshots",
                  "get_target_luns", "pre_final_commit_snapshots", "post_final_commit_snapshots"]
SET_ID_METHODS = ["end_prepare_snapshots", "pre_commit_snapshots", "commit_snapshots", "post_commit_snapshots",
                  "pre_final_commit_snapshots", "post_final_commit_snapshots", "abort_snapshots"]

CURRENT: list = [None]  # the machine running now (the patched module functions find it here)
STEPS = itertools.count()  # calls made (provider and coordinator) in this process
RULES = itertools.count()  # state machine steps (rules run) in this process: at least 2,000 a run
OUTCOMES: collections.Counter = collections.Counter()  # (call, answer) over the run, printed at its end


# -- host-side fakes --------------------------------------------------------------------------------

class HostInitiator(FakeInitiator):
    """FakeInitiator whose new disks never reuse a name still in use (its base names a new disk
    after the count of disks, which repeats once one is gone)."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self._names = (f"sd{host}{i}" for i in itertools.count())

    def new_disk(self, wwid: str) -> str:
        return next(self._names)


def fake_read_lun_info(block: Path):
    """FillInLunInfo's sysfs read: the record of the host's disk (from its initiator's disks and
    the serial the array gave that WWID); an absent disk raises as the real read does."""
    m = CURRENT[0]
    host = block.parent.name
    disks = {d: w for w, d in m.inits[host].disks.items()} if host in m.inits else {}
    wwid = disks.get(block.name)
    if wwid is not None and wwid not in m.serial_by_wwid:
        m.refresh()  # a LUN located by a direct call, outside provider_call's bookkeeping
    if wwid is None or wwid not in m.serial_by_wwid:
        raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{block}/device/type: no such file")
    return predict_lio_lun_info(m.serial_by_wwid[wwid])


def fake_copy_blocks(src, dst, size, progress=None, only_changed=False):
    """The array copies no bytes in this test; which LUN was written, from which, is recorded."""
    m = CURRENT[0]
    name = lambda dev: dev.rsplit("/", 1)[-1]  # noqa: E731
    src_lun = m.arr.store.lun(name(src))
    with m.copies_lock:
        m.copies.append((name(src), src_lun.kind if src_lun else None, name(dst)))
    if progress:
        progress(size)
    return size


class CoordinatorProvider:
    """What provider.hosting.proxy gives the coordinator: here the host's current provider instance,
    with the machine's bookkeeping of what was located, deleted and broken."""

    provider_id = str(PROVIDER_ID)

    def __init__(self, machine, host: str) -> None:
        self.m, self.host = machine, host

    def call(self, method, timeout=None, /, **params):
        return self.m.provider_call(self.host, method, **params)


class ReplayableUuid:
    """The `uuid` module as the array and the coordinator see it here: uuid4() drawn from the
    machine's counter (well spread, as serials must differ early), so that a replay of a step
    sequence meets the same names, serials and ids, and hypothesis can shrink and reproduce."""

    UUID, uuid5 = uuid.UUID, uuid.uuid5

    @staticmethod
    def uuid4() -> uuid.UUID:
        n = next(CURRENT[0]._random_ids)
        return uuid.UUID(bytes=hashlib.sha256(b"contract-%d" % n).digest()[:16], version=4)


@contextmanager
def no_freeze(mountpoints, timeout):
    yield


# -- the machine ------------------------------------------------------------------------------------

class ContractMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        CURRENT[0] = self
        self.lvm, self.lio = FakeLvm(), FakeLio()
        self.arr = make_array(lvm=self.lvm, lio=self.lio)
        self.copies: list[tuple[str, str | None, str]] = []
        self.copies_lock = threading.Lock()
        self.checked_copies = 0
        self.resync_hosts: set[str] = set()      # initiators that asked for a resync in this step
        self.tmp = Path(tempfile.mkdtemp(prefix="contract-"))
        self.serial_by_wwid: dict[str, str] = {}
        self.name_by_serial: dict[str, str] = {}
        self.shadow_serials: list[str] = []      # every shadow LUN serial a set ever had (any state)
        self.located: dict[str, str] = {}        # shadow LUN name -> the initiator that located it
        self.mask_dropped: set[str] = set()      # located LUNs their host broke with DO_MASK_LUNS
        self.docs: list[tuple[str, bytes]] = []  # (creating host, Backup Components Document)
        self._ids = itertools.count(1)
        self._random_ids = itertools.count(1)
        self.inits = {h: HostInitiator(h) for h in HOSTS}
        self.gpts = {h: FakeGpt() for h in HOSTS}
        self.records: dict[str, dict] = {}
        for name, initiator in PRODUCTION.items():
            view = self.arr.create_volume(name, 64 * MIB)
            self.arr.mask(name, initiator)
            self.records[name] = predict_lio_lun_info(view.serial).to_dict()
            for h, (_, ini) in HOSTS.items():
                if ini == initiator:  # the host has its production disk attached
                    self.inits[h].disks[view.wwid] = f"prod-{name}"
        self.refresh()
        self.production = self.production_state()
        self.identities = {}
        for h, (host_name, ini) in HOSTS.items():
            host = self.arr.store.host(ini)
            self.identities[h] = HostIdentity(ini, host.chap_user, host.chap_secret)
        self.providers = {h: self.new_provider(h) for h in HOSTS}
        self.coords = {h: self.new_coordinator(h) for h in HOSTS}

    def teardown(self) -> None:
        self.settle()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- construction ---------------------------------------------------------------------------

    def new_provider(self, h: str) -> ShadowLunProvider:
        host_name, ini = HOSTS[h]
        return ShadowLunProvider(InProcessArray(self.arr, Caller(host_name, ini)), self.inits[h],
                                 self.identities[h], sysfs_block=SYSFS / h)

    def new_coordinator(self, h: str) -> Coordinator:
        own = {f"/mnt/{n}": n for n, ini in PRODUCTION.items()}

        def resolve(volume):
            name = own.get(volume)
            wwid = naa_wwid(self.arr.store.lun("lun-" + name).serial) if name else None
            if wwid is None or wwid not in self.inits[h].disks:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no volume {volume} on host-{h}")
            return [self.inits[h].disks[wwid]]

        return Coordinator(
            [CoordinatorProvider(self, h)], state_dir=self.tmp / h, resolve=resolve,
            filesystems_on=lambda disks: [], hold_writes=no_freeze,
            read_record=lambda disk: fake_read_lun_info(SYSFS / h / disk).to_dict(),
            extents=lambda volume: [Extent(resolve(volume)[0], PART_START, 63 * MIB, 1)],
            flags=self.gpts[h], runner=FakeRunner(), list_disks=lambda: sorted(self.inits[h].disks.values()),
            originals_dir=self.tmp / h / "originals")

    def new_id(self) -> str:
        """A fresh GUID, the same in a replay (hypothesis shrinks and reproduces exactly)."""
        return str(uuid.UUID(int=(0x5eed << 112) + next(self._ids)))

    # -- bookkeeping ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Learn every serial the array gave (records for the rules, FillInLunInfo's reads)."""
        serials = [lun.serial for lun in self.arr.store.luns()]
        for s in self.arr.store.sets():
            for m in s.members:
                serials.append(m.serial)
                if m.serial not in self.name_by_serial:
                    self.shadow_serials.append(m.serial)
                self.name_by_serial[m.serial] = m.name
        for lun in self.arr.store.luns():
            self.name_by_serial[lun.serial] = lun.name
        for s in serials:
            self.serial_by_wwid[naa_wwid(s)] = s

    def settle(self) -> None:
        """Wait until no resync job runs (the fake copy is instant; its thread finishes soon)."""
        deadline = time.monotonic() + 10
        while self.arr.store.jobs("running"):
            assert time.monotonic() < deadline, "a resync job never finished"
            time.sleep(0.001)

    def provider_call(self, h: str, method: str, **params):
        """One provider call by host h's current instance, with the model's bookkeeping."""
        ini = HOSTS[h][1]
        prov = self.providers[h]
        if method in ("locate_luns", "fill_in_lun_info"):
            self.refresh()  # a set made within this step (a create's auto-import) has new serials
        if method == "resync_luns":
            self.resync_hosts.add(ini)
            params = {**params, "wait": False}
        serials = [r.get("serial_number") for key in ("luns", "snapshot_luns") for r in params.get(key) or ()]
        if method == "on_lun_empty":
            serials = [params["lun_info"].get("serial_number")]
        names = [self.name_by_serial.get(s) for s in serials]
        out = getattr(prov, method)(**params)
        if method == "locate_luns":
            for d in out:
                lun = self.arr.store.lun(d["lun"])
                self.located.setdefault(lun.name, ini)
                self.mask_dropped.discard(lun.name)
        elif method == "on_lun_empty":
            if names[0] and self.located.get(names[0]) == ini:
                del self.located[names[0]]
        elif method == "on_lun_state_change" and params["flags"] & H.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS:
            self.mask_dropped.update(n for n in names if n and self.located.get(n) == ini)
        elif method == "resync_luns":
            self.settle()
        return out

    # -- the whole state, and a call that must change nothing when refused --------------------------

    def snapshot(self) -> dict:
        db = self.arr.store._db
        with self.arr.store._lock:
            dump = list(db.iterdump())
            tables = {}
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
                cur = db.execute(f"SELECT * FROM {table}")
                cols = [c[0] for c in cur.description]
                tables[table] = sorted((dict(zip(cols, row)) for row in cur.fetchall()), key=repr)
        return {
            "dump": dump,
            "tables": tables,
            "lvs": {n: (lv.size_bytes, lv.attr, lv.origin, tuple(sorted(lv.tags))) for n, lv in self.lvm.lvs.items()},
            "exports": {n: (e.device, e.serial, e.lun, tuple(sorted((m.initiator, m.mapped_lun, m.read_only)
                                                                     for m in e.mappings)))
                        for n, e in self.lio._exports.items()},
            "chap": dict(self.lio.chap),
            "disks": {h: dict(i.disks) for h, i in self.inits.items()},
            "gpt": {h: ({d: {n: a for n, a in t.items() if a} for d, t in g.attrs.items() if any(t.values())},
                        {k for k, v in g.read_only.items() if v}) for h, g in self.gpts.items()},
            "catalog": {h: sorted((p.name, p.read_text()) for p in (self.tmp / h / "imports").glob("*.json"))
                        for h in HOSTS},
        }

    @staticmethod
    def without(state: dict, sets: set[str], other: dict) -> dict:
        """The state with everything of `sets` left out (their rows, LVs, exports, masks)."""
        if not sets:
            return {k: v for k, v in state.items()}
        members = {m["name"] for s in (state, other) for m in s["tables"]["set_members"] if m["set_id"] in sets}
        lun_rows = {r["name"]: r for s in (state, other) for r in s["tables"]["luns"]}
        dropped = {n for n, r in lun_rows.items() if r["set_id"] in sets}
        dropped |= {n for n in members if n not in lun_rows}
        t = dict(state["tables"])
        t["luns"] = [r for r in t["luns"] if r["set_id"] not in sets]
        t["masks"] = [r for r in t["masks"] if r["lun"] not in dropped]
        for table in ("sets", "set_members", "imports"):
            t[table] = [r for r in t[table] if r["set_id"] not in sets]
        tagged = {f"shadowlun.set={s}" for s in sets}
        return {**state, "dump": None, "tables": t,
                "lvs": {n: v for n, v in state["lvs"].items() if n not in dropped and not tagged & set(v[3])},
                "exports": {n: v for n, v in state["exports"].items() if n not in dropped}}

    def checked(self, what: str, fn, discardable=lambda before, after: set(), strict: bool = True):
        """Run one call; a refusal (VssError) must have changed nothing but `discardable` sets."""
        next(STEPS)
        before = self.snapshot()
        try:
            out = fn()
            OUTCOMES[(what, "S_OK")] += 1
            return out
        except VssError as e:
            OUTCOMES[(what, e.hresult.name)] += 1
            self.settle()
            after = self.snapshot()
            # Of the sets the refusal may abort, those it did abort (it may also keep them, e.g. a
            # set handed out) are left out of the comparison and must be gone altogether.
            alive = {r["set_id"] for r in after["tables"]["sets"] if r["state"] != "aborted"}
            sets = discardable(before, after) - alive
            if strict is True or (callable(strict) and strict(e)):
                b, a = self.without(before, sets, after), self.without(after, sets, before)
                for key in b:
                    assert b[key] == a[key], f"refused {what} ({e}) changed the {key}:\n" \
                                             f"before {diff(b[key], a[key])}\nafter  {diff(a[key], b[key])}"
            for s in sets:  # what a refusal aborted is gone altogether
                assert not [lv for lv, v in after["lvs"].items() if f"shadowlun.set={s}" in v[3]], (what, s)
                assert not [r for r in after["tables"]["luns"] if r["set_id"] == s], (what, s)
            return e
        finally:
            self.refresh()

    def held_before(self, h: str):
        """The set host h's provider instance holds now, if a refusal may abort it: one in
        creation, or created but not handed out yet (spec §7.1 l.695-696, §7.2 "✗ = VETO +
        abort"). A set handed out by GetTargetLuns is never the provider's to delete."""
        sm = self.providers[h].sm
        held = sm.set_id
        ok = held is not None and (sm.state.in_progress or (sm.state is ProviderState.CREATED and not sm.handed_out))
        return lambda before, after: {str(held)} if ok else set()

    # -- drawing arguments ------------------------------------------------------------------------

    def draw_records(self, data, h: str, shadow_bias: bool = True, max_size: int = 2) -> list[dict]:
        """LUN records: the host's own production LUNs, anybody's, unknown serials, and shadow
        LUNs (those alive on the array now, mostly, and any a set ever had)."""
        own = [n for n, ini in PRODUCTION.items() if ini == HOSTS[h][1]]
        pools = [st.sampled_from(own), st.sampled_from(sorted(PRODUCTION)),
                 st.sampled_from(UNKNOWN_SERIALS).map(lambda s: ("serial", s))]
        live = [x for x in self.shadow_serials if (lun := self.arr.store.lun_by_serial(x)) and lun.state == "ready"]
        if self.shadow_serials:
            pools.append(st.sampled_from(self.shadow_serials[-12:]).map(lambda s: ("serial", s)))
        if live:
            pools += [st.sampled_from(live).map(lambda s: ("serial", s))] * (4 if shadow_bias else 1)
        picks = data.draw(st.lists(st.one_of(*pools), min_size=1, max_size=max_size))
        return [predict_lio_lun_info(p[1]).to_dict() if isinstance(p, tuple) else self.records[p] for p in picks]

    def draw_committed_set(self, data) -> list[dict] | None:
        """The shadow LUN records of one committed set (what its document names), or None."""
        sets = [s for s in self.arr.store.sets("committed")]
        if not sets:
            return None
        s = data.draw(st.sampled_from(sets[-6:]))
        return [predict_lio_lun_info(m.serial).to_dict() for m in s.members]

    def draw_set_id(self, data, h: str) -> str:
        held = self.providers[h].sm.set_id
        known = [s.set_id for s in self.arr.store.sets()]
        options = [st.builds(self.new_id)]
        if held is not None:
            options += [st.just(str(held))] * 3
        if known:
            options.append(st.sampled_from(known[-6:]))
        kept = [s.set_id for s in self.arr.store.sets() if s.handed_out or self.arr.store.import_of(s.set_id)]
        if kept:  # the sets an abort must never lose: handed out to their requester, or imported
            options += [st.sampled_from(kept[-6:])] * 2
        return data.draw(st.one_of(*options))

    def device_of(self, h: str, record: dict) -> str:
        serial = record.get("serial_number", "")
        disk = self.inits[h].disks.get(naa_wwid(serial)) if serial.isalnum() else None
        return f"/dev/{disk}" if disk else "/dev/sdzz"

    # -- rules: the provider, call by call -----------------------------------------------------------

    @rule(h=HOST_KEYS, context=CONTEXTS, data=st.data())
    def are_luns_supported(self, h, context, data):
        recs = self.draw_records(data, h, shadow_bias=False)
        self.checked("AreLunsSupported", lambda: self.provider_call(
            h, "are_luns_supported", context=context, devices=[self.device_of(h, r) for r in recs], luns=recs))

    @rule(h=HOST_KEYS, data=st.data())
    def fill_in_lun_info(self, h, data):
        disks = sorted(self.inits[h].disks.values()) + ["sdzz"]
        disk = data.draw(st.sampled_from(disks))
        self.checked("FillInLunInfo", lambda: self.provider_call(h, "fill_in_lun_info", device=f"/dev/{disk}"))

    @rule(h=HOST_KEYS, context=CONTEXTS, new_set=st.booleans(), data=st.data())
    def begin_prepare_snapshot(self, h, context, new_set, data):
        sm = self.providers[h].sm
        held = sm.set_id
        # The held set's id again, whatever its state (also a created set handed out, even
        # imported: a refusal then keeps it, see
        # test_a_refused_begin_prepare_reusing_the_created_sets_id_keeps_that_set), or a new one.
        reuse = not new_set and held is not None
        set_id = str(held) if reuse else self.new_id()
        recs = self.draw_records(data, h, shadow_bias=False)
        self.checked("BeginPrepareSnapshot", lambda: self.provider_call(
            h, "begin_prepare_snapshot", set_id=set_id, snapshot_id=self.new_id(), context=context,
            devices=[self.device_of(h, r) for r in recs], luns=recs), self.held_before(h))

    @rule(h=HOST_KEYS, method=st.sampled_from(SET_ID_METHODS), restart=st.integers(0, 3), data=st.data())
    def creation_call(self, h, method, restart, data):
        """A creation call with a set id (the held set's, another known set's, a new one), at
        times by a provider server restarted just before (which holds nothing)."""
        set_id = self.draw_set_id(data, h)
        if restart == 0:
            self.providers[h] = self.new_provider(h)
        params = {"set_id": set_id}
        if method == "post_commit_snapshots":
            params["snapshot_count"] = 1
        self.checked(method, lambda: self.provider_call(h, method, **params), self.held_before(h))

    @rule(h=HOST_KEYS, restart=st.booleans(), data=st.data())
    def late_abort(self, h, restart, data):
        """AbortSnapshots of a set VSS no longer holds: an imported one, mostly, by a restarted
        provider server or by the instance that now holds another set."""
        known = [x.set_id for x in self.arr.store.sets()]
        kept = [x.set_id for x in self.arr.store.sets() if x.handed_out or self.arr.store.import_of(x.set_id)]
        if not known:
            return
        set_id = data.draw(st.sampled_from(kept[-6:] if kept and data.draw(st.integers(0, 3)) else known[-6:]))
        if restart:
            self.providers[h] = self.new_provider(h)
        self.checked("abort_snapshots", lambda: self.provider_call(h, "abort_snapshots", set_id=set_id),
                     self.held_before(h))

    @rule(h=HOST_KEYS, data=st.data())
    def get_target_luns(self, h, data):
        recs = self.draw_records(data, h, shadow_bias=False)
        self.checked("GetTargetLuns", lambda: self.provider_call(
            h, "get_target_luns", devices=[self.device_of(h, r) for r in recs], source_luns=recs),
            self.held_before(h))

    @rule(h=HOST_KEYS, context=st.sampled_from(SUPPORTED_CONTEXTS), stop=st.integers(0, len(CREATION_STEPS)),
          two_volumes=st.booleans(), data=st.data())
    def creation_sequence(self, h, context, stop, two_volumes, data):
        """The section-6 sequence from BeginPrepare on, stopped after `stop` steps (or at the first
        refusal): sets in every state, committed ones to import."""
        own = [n for n, ini in PRODUCTION.items() if ini == HOSTS[h][1]]
        names = data.draw(st.lists(st.sampled_from(own), min_size=1, max_size=2, unique=True))
        volumes = [names] if not two_volumes or len(names) < 2 else [[names[0]], [names[1]]]
        set_id = self.new_id()
        for vol in volumes:
            recs = [self.records[n] for n in vol]
            out = self.checked("BeginPrepareSnapshot", lambda: self.provider_call(
                h, "begin_prepare_snapshot", set_id=set_id, snapshot_id=self.new_id(), context=context,
                devices=[self.device_of(h, r) for r in recs], luns=recs), self.held_before(h))
            if isinstance(out, VssError):
                return
        for method in CREATION_STEPS[:stop]:
            if method == "get_target_luns":
                recs = [self.records[n] for n in names]
                out = self.checked("GetTargetLuns", lambda: self.provider_call(
                    h, "get_target_luns", devices=[self.device_of(h, r) for r in recs], source_luns=recs),
                    self.held_before(h))
            else:
                params = {"snapshot_count": len(volumes)} if method == "post_commit_snapshots" else {}
                out = self.checked(method, lambda: self.provider_call(h, method, set_id=set_id, **params),
                                   self.held_before(h))
            if isinstance(out, VssError):
                return

    @rule(h=HOST_KEYS, data=st.data())
    def locate_luns(self, h, data):
        """LocateLuns: the import of shadow LUNs (any set's, the other host's, or wrong records)."""
        recs = self.draw_records(data, h, max_size=3)
        self.checked("LocateLuns", lambda: self.provider_call(h, "locate_luns", luns=recs))

    @rule(h=HOST_KEYS, data=st.data())
    def import_set(self, h, data):
        """LocateLuns of a whole committed set's LUNs, as VSS imports a document (the creating
        host's own set, or the other host's, transportable or not)."""
        recs = self.draw_committed_set(data)
        if recs is not None:
            self.checked("LocateLuns (a set)", lambda: self.provider_call(h, "locate_luns", luns=recs))

    @rule(h=HOST_KEYS, data=st.data())
    def on_lun_empty(self, h, data):
        rec = self.draw_records(data, h, max_size=1)[0]
        device = self.device_of(h, rec)
        self.checked("OnLunEmpty", lambda: self.provider_call(h, "on_lun_empty", device=device, lun_info=rec))

    @rule(h=HOST_KEYS, flags=st.sampled_from(STATE_CHANGE_FLAGS), data=st.data())
    def on_lun_state_change(self, h, flags, data):
        mine = sorted(n for n, ini in self.located.items() if ini == HOSTS[h][1])
        if mine and data.draw(st.booleans()):  # LUNs this host imported (a break that may succeed)
            picks = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=3))
            snaps = [predict_lio_lun_info(self.arr.store.lun(n).serial).to_dict() for n in picks]
            if data.draw(st.booleans()):  # and one more of any kind: if refused, none may be broken
                snaps += self.draw_records(data, h, max_size=1)
        else:
            snaps = self.draw_records(data, h)
        originals = self.draw_records(data, h, shadow_bias=False, max_size=len(snaps))
        # Several LUNs of any kind, the same one twice, the other host's: a break is all or
        # nothing (test_a_refused_break_of_two_luns_breaks_neither).
        self.checked(f"OnLunStateChange({flags:#x})", lambda: self.provider_call(
            h, "on_lun_state_change", snapshot_luns=snaps, original_luns=originals, flags=flags))

    @rule(h=HOST_KEYS, data=st.data())
    def resync_luns(self, h, data):
        own = [n for n, ini in PRODUCTION.items() if ini == HOSTS[h][1]]
        own_snaps = [lun.serial for lun in self.arr.store.luns()
                     if lun.kind == "snapshot" and lun.origin in {"lun-" + n for n in own}]
        if own_snaps and data.draw(st.booleans()):  # shadow copies of this host's LUNs
            sources = [predict_lio_lun_info(x).to_dict()
                       for x in data.draw(st.lists(st.sampled_from(own_snaps[-8:]), min_size=1, max_size=2))]
        else:
            sources = self.draw_records(data, h)
        targets = data.draw(st.lists(st.sampled_from(own * 3 + sorted(PRODUCTION)), min_size=len(sources),
                                     max_size=len(sources)))
        how = data.draw(st.integers(0, 2))
        if how == 0:  # sometimes onto shadow LUNs or unknown records
            targets = [r for r in self.draw_records(data, h, max_size=len(sources))]
            targets = (targets * len(sources))[:len(sources)]
        elif how == 1:  # each shadow LUN onto its origin (a resync that may succeed), else as drawn
            origins = [(lun := self.arr.store.lun_by_serial(r.get("serial_number"))) and lun.origin for r in sources]
            targets = [self.records[o[len("lun-"):]] if o and o[len("lun-"):] in PRODUCTION else self.records[n]
                       for o, n in zip(origins, targets)]
        else:
            targets = [self.records[n] for n in targets]
        # Several pairs of any LUNs, one twice, a LUN both source and target: all pairs are
        # checked before any starts (test_a_refused_resync_of_two_pairs_starts_neither).

        def resync():
            started = self.provider_call(h, "resync_luns", source_luns=sources, target_luns=targets)
            return self.providers[h].query_status(started["handle"])

        self.checked("ResyncLuns", resync)

    @rule(h=HOST_KEYS, recover=st.booleans())
    def restart_provider(self, h, recover):
        """The provider server restarts (or the CLI starts a new one): a fresh instance; and
        perhaps `shadowlun recover` after it, as after a crash."""
        next(STEPS)
        self.providers[h] = self.new_provider(h)
        self.checked("GetProviderCapabilities", lambda: self.provider_call(h, "get_provider_capabilities"))
        if recover:
            self.checked("coordinator recover", lambda: self.coords[h].recover())

    @rule(h=HOST_KEYS)
    def on_unload(self, h):
        self.checked("OnUnload", lambda: self.provider_call(h, "on_unload"), self.held_before(h))

    # -- rules: the coordinator ---------------------------------------------------------------------

    @rule(h=HOST_KEYS, context=st.one_of(CONTEXTS, st.sampled_from(SUPPORTED_CONTEXTS[1::2])), data=st.data())
    def coordinator_create(self, h, context, data):
        own = [n for n, ini in PRODUCTION.items() if ini == HOSTS[h][1]]
        names = data.draw(st.lists(st.sampled_from(own * 4 + ["b1" if h == "a" else "a1"]),
                                   min_size=1, max_size=2, unique=True))
        held = self.held_before(h)

        def made_or_held(before, after):
            known = {r["set_id"] for r in before["tables"]["sets"]}
            return {r["set_id"] for r in after["tables"]["sets"] if r["set_id"] not in known} | held(before, after)

        out = self.checked("coordinator create", lambda: self.coords[h].create(
            [f"/mnt/{n}" for n in names], context), made_or_held)
        if not isinstance(out, VssError):
            self.docs.append((h, bcd.to_xml(out[0])))

    @rule(h=HOST_KEYS, context=st.sampled_from(SUPPORTED_CONTEXTS[1::2]), data=st.data())
    def coordinator_transport(self, h, context, data):
        """The transportable round trip: a create on host h, the import of its document on the
        other host (later steps expose, break, delete or resync it)."""
        own = [n for n, ini in PRODUCTION.items() if ini == HOSTS[h][1]]
        names = data.draw(st.lists(st.sampled_from(own), min_size=1, max_size=2, unique=True))
        held = self.held_before(h)
        out = self.checked("coordinator create", lambda: self.coords[h].create([f"/mnt/{n}" for n in names], context),
                           lambda before, after: {r["set_id"] for r in after["tables"]["sets"]} - {
                               r["set_id"] for r in before["tables"]["sets"]} | held(before, after))
        if isinstance(out, VssError):
            return
        xml = bcd.to_xml(out[0])
        self.docs.append((h, xml))
        other = sorted(set(HOSTS) - {h})[0]
        self.checked("coordinator import", lambda: self.coords[other].import_document(xml))

    @rule(h=HOST_KEYS, data=st.data())
    def coordinator_import(self, h, data):
        if not self.docs:
            return
        movable = [x for _, x in self.docs if bcd.from_xml(x).context & TRANSPORTABLE
                   and not self.arr.store.import_of(bcd.from_xml(x).set_id)]
        xml = data.draw(st.sampled_from(movable[-6:])) if movable and data.draw(st.integers(0, 3)) else \
            data.draw(st.sampled_from(self.docs[-6:]))[1]
        self.checked("coordinator import", lambda: self.coords[h].import_document(xml))

    def draw_catalog_set(self, h, data) -> tuple[str, str]:
        """(host, set id): mostly a set in a host's catalog (the host given, else the other one
        if it has one), else a set it did not import or an unknown one."""
        for host in (h, *sorted(set(HOSTS) - {h})):
            mine = [x.set_id for x in self.coords[host].catalog.sets()]
            if mine and data.draw(st.integers(0, 3)):
                return host, data.draw(st.sampled_from(sorted(mine)))
        others = [bcd.from_xml(x).set_id for _, x in self.docs[-4:]] + [self.new_id()]
        return h, data.draw(st.sampled_from(others))

    @rule(h=HOST_KEYS, writable=st.booleans(), mask=st.booleans(), data=st.data())
    def coordinator_break(self, h, writable, mask, data):
        h, set_id = self.draw_catalog_set(h, data)
        if mask and not writable:  # MASK_LUNS: the host no longer holds a mask of them
            self.mask_dropped.update(n for n, ini in self.located.items() if ini == HOSTS[h][1]
                                     and (lun := self.arr.store.lun(n)) and lun.set_id == set_id)
        self.checked(f"coordinator break (writable={writable}, mask={mask})",
                     lambda: self.coords[h].break_set(set_id, writable=writable, mask=mask))

    @rule(h=HOST_KEYS, data=st.data())
    def coordinator_delete(self, h, data):
        h, set_id = self.draw_catalog_set(h, data)
        # Delete goes copy by copy and stops at the first failure, keeping what was not deleted
        # (documented): only a refusal before the first copy is held to "nothing changed".
        self.checked("coordinator delete", lambda: self.coords[h].delete(set_id=set_id),
                     strict=lambda e: "deleted 0 shadow copies" in e.message)

    @rule(h=HOST_KEYS, data=st.data())
    def coordinator_resync(self, h, data):
        if not self.docs:
            return
        own = [x for creator, x in self.docs if creator == h]
        xml = data.draw(st.sampled_from(own[-6:])) if own and data.draw(st.integers(0, 3)) else \
            data.draw(st.sampled_from(self.docs[-6:]))[1]
        self.checked("coordinator resync", lambda: self.coords[h].resync(xml))

    # -- invariants ------------------------------------------------------------------------------

    def production_state(self) -> dict:
        out = {}
        for name in PRODUCTION:
            lv = "lun-" + name
            row = self.arr.store.lun(lv)
            export = self.lio._exports.get(lv)
            out[name] = {
                "row": None if row is None else (row.kind, row.size_bytes, row.serial, row.origin, row.set_id,
                                                 row.snapshot_id, row.state, row.created, row.holder),
                "masks": sorted((m.initiator, m.read_only) for m in self.arr.store.masks(lv)),
                "lv": (lambda v: None if v is None else (v.size_bytes, v.uuid, tuple(sorted(v.tags))))(
                    self.lvm.lvs.get(lv)),
                "export": None if export is None else (export.device, export.serial, export.lun, tuple(sorted(
                    (m.initiator, m.read_only) for m in export.mappings))),
            }
        return out

    @invariant()
    def contract_holds(self) -> None:
        next(RULES)
        self.settle()
        self.check_production()
        self.check_imports()
        self.check_consistency()
        self.resync_hosts = set()

    def check_production(self) -> None:
        now = self.production_state()
        for name in PRODUCTION:
            assert now[name] == self.production[name], \
                f"production LUN {name} changed:\nwas {self.production[name]}\nnow {now[name]}"
        with self.copies_lock:
            new, self.checked_copies = self.copies[self.checked_copies:], len(self.copies)
        prod_lvs = {"lun-" + n: ini for n, ini in PRODUCTION.items()}
        for src, src_kind, dst in new:
            assert src not in prod_lvs and src_kind == "snapshot", \
                f"blocks copied from {src} ({src_kind}), which is no shadow copy, onto {dst}"
            if dst in prod_lvs:
                assert prod_lvs[dst] in self.resync_hosts, \
                    f"production LUN {dst} of {prod_lvs[dst]} written by a resync only " \
                    f"{sorted(self.resync_hosts) or 'nobody'} asked for"

    def check_imports(self) -> None:
        for name, ini in self.located.items():
            lun = self.arr.store.lun(name)
            assert lun is not None and lun.state == "ready", \
                f"shadow LUN {name} located by {ini} is gone, and {ini} did not delete it"
            assert name in self.lvm.lvs, f"located LUN {name}: its LV is gone"
            assert lun.holder == ini, f"located LUN {name}: held by {lun.holder}, not by {ini} who located it"
            if name not in self.mask_dropped:
                assert ini in {m.initiator for m in self.arr.store.masks(name)}, \
                    f"located LUN {name} is no longer masked to {ini}"

    def check_consistency(self) -> None:
        store, lvs, exports = self.arr.store, self.lvm.lvs, self.lio._exports
        luns = {lun.name: lun for lun in store.luns()}
        sets = {s.set_id: s for s in store.sets()}
        premade = {m.name: s.set_id for s in sets.values() if s.state == "prepared" for m in s.members}
        hosts = {h.initiator: h for h in store.hosts()}
        for name, lun in luns.items():
            assert lun.state == "ready", f"{name} left in state {lun.state}"
            lv = lvs.get(name)
            assert lv is not None, f"store row {name} has no LV"
            assert lv.owned and lv.tag("shadowlun.kind") == lun.kind, f"{name}: LV tags {lv.tags} for a {lun.kind}"
            if lun.kind == "snapshot":
                assert lv.tag("shadowlun.set") == lun.set_id and lv.tag("shadowlun.snapshot") == lun.snapshot_id, \
                    f"{name}: LV tags {lv.tags} for snapshot {lun.snapshot_id} of set {lun.set_id}"
                s = sets.get(lun.set_id)
                assert s is not None and s.state == "committed", f"{name} is a snapshot of a set that is {s and s.state}"
            else:
                assert lv.tag("shadowlun.set") is None and lv.tag("shadowlun.snapshot") is None, \
                    f"{name} ({lun.kind}) still carries snapshot tags {lv.tags}"
                # A broken shadow copy (a volume with an origin) that was never published nor
                # masked is exported at its first mask, as the committed snapshot it was.
                assert name in exports or lun.origin, f"{name} ({lun.kind}) is not exported"
            export = exports.get(name)
            masks = {m.initiator: m.read_only for m in store.masks(name)}
            if export is None:
                assert not masks, f"{name} is masked to {sorted(masks)} but not exported"
            else:
                assert export.serial == lun.serial and export.device == self.lvm.device(name), \
                    f"{name}: exported as {export}, stored serial {lun.serial}"
                mapped = {m.initiator: m.read_only for m in export.mappings}
                assert mapped == masks, f"{name}: LIO maps {mapped}, the store masks {masks}"
            for ini in masks:
                assert ini in hosts and self.lio.chap.get(ini) == (hosts[ini].chap_user, hosts[ini].chap_secret), \
                    f"{name} masked to {ini}, not a host with its CHAP credentials in LIO"
        for name, lv in lvs.items():
            if name in luns:
                continue
            assert name in premade, f"LV {name} ({lv.tags}) has no store row and is no pre-made snapshot"
            assert lv.tag("shadowlun.set") == premade[name], f"pre-made {name} tagged {lv.tags}"
        for name in exports:
            assert name in luns, f"LIO export {name} has no store row"
        for set_id, s in sets.items():
            assert s.state in ("prepared", "committed", "aborted"), f"set {set_id} left {s.state}"
            if s.state == "aborted":
                assert not [lv for lv in lvs.values() if lv.tag("shadowlun.set") == set_id], \
                    f"aborted set {set_id} still has LVs"
                assert s.handed_out is None, f"set {set_id}, handed out to its requester, was aborted"
            imported = store.import_of(set_id)
            if imported:
                for m in s.members:
                    lun = luns.get(m.name)
                    if lun is not None and lun.set_id == set_id:
                        assert lun.holder == imported[0], f"{m.name} of set {set_id} imported by " \
                                                          f"{imported[0]} is held by {lun.holder}"


def diff(a, b):
    """What of `a` is not in `b` (for readable failure messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: (diff(v, b[k]) if k in b else v) for k, v in a.items() if b.get(k) != v}
    if isinstance(a, list) and isinstance(b, list):
        return [x for x in a if x not in b]
    return a


# ~2,000+ steps per run: examples x steps (hypothesis may end an example early; the test counts).
CONTRACT = settings(max_examples=60, stateful_step_count=50, deadline=None, print_blob=True,
                    derandomize=False,
                    # CONTRACT_NO_SHRINK=1: report the first failure at once (while developing)
                    phases=[Phase.explicit, Phase.reuse, Phase.generate] + (
                        [] if os.environ.get("CONTRACT_NO_SHRINK") else [Phase.shrink]),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])
MIN_STEPS = 2000


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(hp, "read_lun_info", fake_read_lun_info)
    monkeypatch.setattr(jobs_module, "copy_blocks", fake_copy_blocks)
    monkeypatch.setattr(coordinator_module, "ASYNC_POLL_S", 0.001)
    monkeypatch.setattr(coordinator_module, "uuid", ReplayableUuid)
    monkeypatch.setattr(luns_module, "uuid", ReplayableUuid)
    monkeypatch.setattr(jobs_module, "uuid", ReplayableUuid)
    yield
    CURRENT[0] = None


def test_contract_holds_for_random_call_sequences_from_two_hosts(patched):
    first_call, first_step = next(STEPS), next(RULES)
    OUTCOMES.clear()
    run_state_machine_as_test(ContractMachine, settings=CONTRACT)
    calls, steps = next(STEPS) - first_call - 1, next(RULES) - first_step - 1
    print(f"contract state machine: {steps} steps (invariants checked after each), {calls} calls; answers:")
    for (what, answer), n in sorted(OUTCOMES.items()):
        print(f"  {n:5d}  {what}: {answer}")
    assert steps >= MIN_STEPS, f"only {steps} steps ran; raise max_examples or stateful_step_count"


# -- regression tests of the product bugs the machine found (fixed; the machine walks these paths) --

@pytest.fixture
def lab(patched):
    return ContractMachine()


def full_create(m: ContractMachine, h: str, names: list[str], context: int = BACKUP) -> tuple[str, list[dict]]:
    """The whole creation sequence on host h's provider, GetTargetLuns included."""
    p, set_id = m.providers[h], m.new_id()
    recs = [m.records[n] for n in names]
    devices = [m.device_of(h, r) for r in recs]
    p.begin_prepare_snapshot(set_id, m.new_id(), context, devices, recs)
    for step in (p.end_prepare_snapshots, p.pre_commit_snapshots, p.commit_snapshots):
        step(set_id)
    p.post_commit_snapshots(set_id, 1)
    targets = p.get_target_luns(devices, recs)
    p.pre_final_commit_snapshots(set_id)
    p.post_final_commit_snapshots(set_id)
    return set_id, targets


def shadow_luns(m: ContractMachine) -> list[tuple[str, str]]:
    return sorted((lun.name, lun.kind) for lun in m.arr.store.luns() if lun.origin)


def test_a_refused_break_of_two_luns_breaks_neither(lab):
    """host-b imported its own set (b1); host-a made a transportable set (a1), not imported.
    host-b breaks both shadow LUNs in one call: refused (host-b has not imported a1's), and
    neither is broken: OnLunStateChange checks every LUN before it detaches any."""
    _, mine = full_create(lab, "b", ["b1"])
    lab.providers["b"].locate_luns(mine)
    _, theirs = full_create(lab, "a", ["a1"], BACKUP | TRANSPORTABLE)
    before = shadow_luns(lab)
    with pytest.raises(VssError):
        lab.providers["b"].on_lun_state_change([mine[0], theirs[0]], [lab.records["b1"], lab.records["a1"]], 0)
    assert shadow_luns(lab) == before  # both still kind 'snapshot'


def test_a_refused_begin_prepare_reusing_the_created_sets_id_keeps_that_set(lab):
    """host-a creates a set (GetTargetLuns done: handed out) and locates its LUNs. A
    BeginPrepareSnapshot with the same set id and a LUN not of this array is refused
    (VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER), and the created set, which VSS has in its
    document and the host imported, is kept: the failed call discards nothing of it."""
    set_id, targets = full_create(lab, "a", ["a1"])
    lab.providers["a"].locate_luns(targets)
    before = shadow_luns(lab)
    unknown = predict_lio_lun_info(UNKNOWN_SERIALS[0]).to_dict()
    with pytest.raises(VssError) as e:
        lab.providers["a"].begin_prepare_snapshot(set_id, lab.new_id(), BACKUP, ["/dev/sdzz"], [unknown])
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER
    assert shadow_luns(lab) == before
    assert lab.arr.store.snapshot_set(set_id).state == "committed"


def test_abort_by_a_fresh_provider_keeps_a_set_its_host_imported(lab):
    """host-a creates a set and locates it (imports it on the creating host); its provider
    server restarts; VSS's AbortSnapshots of that set (S_OK) changes nothing: the array refuses
    the abort of an imported set (by any host, its own too), the provider logs it. The imported
    LUN stays, held by and masked to host-a."""
    set_id, targets = full_create(lab, "a", ["a1"])
    disks = lab.providers["a"].locate_luns(targets)
    before = lab.snapshot()
    lab.new_provider("a").abort_snapshots(set_id)
    lun = lab.arr.store.lun(disks[0]["lun"])
    assert lun is not None and lun.holder == HOST_A
    assert HOST_A in {m.initiator for m in lab.arr.store.masks(lun.name)}
    assert lab.snapshot() == before


def test_late_abort_of_an_old_set_keeps_it_when_imported(lab):
    """A late AbortSnapshots of an old set that host-a imported, from the instance that now
    holds a newer set (issue 13 #2): S_OK, and it changes nothing (the array refuses the abort
    of an imported set; the newer set is not touched either)."""
    old, targets = full_create(lab, "a", ["a1"])
    disks = lab.providers["a"].locate_luns(targets)
    full_create(lab, "a", ["a2"])
    before = lab.snapshot()
    lab.providers["a"].abort_snapshots(old)  # S_OK, a no-op for the state machine (OTHER set)
    assert lab.arr.store.lun(disks[0]["lun"]) is not None
    assert lab.snapshot() == before


def slow_copies(monkeypatch) -> tuple[threading.Event, list]:
    """The array's block copies held until the event is set; the destinations they started on."""
    release, written = threading.Event(), []

    def slow_copy(src, dst, size, progress=None, only_changed=False):
        written.append(dst)
        release.wait(5)
        return size

    monkeypatch.setattr(jobs_module, "copy_blocks", slow_copy)
    return release, written


def test_a_refused_resync_of_two_pairs_starts_neither(lab, monkeypatch):
    """host-a resyncs its shadow copy of a1 onto a1 twice in one call (two pairs, one target):
    refused, and no resync was started (no job row, no block written): ResyncLuns checks every
    pair before it starts any."""
    release, written = slow_copies(monkeypatch)
    _, targets = full_create(lab, "a", ["a1"])
    try:
        with pytest.raises(VssError):
            lab.providers["a"].resync_luns([targets[0], targets[0]], [lab.records["a1"]] * 2, wait=False)
        deadline = time.monotonic() + 1
        while not written and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lab.arr.store.jobs() == [] and written == []
    finally:
        release.set()
        lab.settle()


def test_a_second_refused_begin_prepare_reusing_the_created_sets_id_keeps_that_set(lab):
    """host-a creates a set (GetTargetLuns done: handed out, committed, not imported yet).
    BeginPrepareSnapshot with the same set id and a LUN not of this array, twice: both refused
    (VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER), and the set stays (VSS has it in its document):
    the provider remembers which sets it handed out, whatever state a refusal left it in."""
    set_id, _ = full_create(lab, "a", ["a1"])
    before = shadow_luns(lab)
    unknown = predict_lio_lun_info(UNKNOWN_SERIALS[0]).to_dict()
    for _ in range(2):
        with pytest.raises(VssError) as e:
            lab.providers["a"].begin_prepare_snapshot(set_id, lab.new_id(), BACKUP, ["/dev/sdzz"], [unknown])
        assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER
    assert shadow_luns(lab) == before  # got: [] after the second refusal
    assert lab.arr.store.snapshot_set(set_id).state == "committed"  # got: 'aborted'


def test_a_resync_refused_for_a_smaller_destination_starts_no_pair(lab, monkeypatch):
    """host-a has a third production LUN a3 of 32 MiB (the machine's LUNs are all 64 MiB, so it
    cannot reach this). It resyncs its shadow copies of a1 and a2 (64 MiB) onto a1 and a3 in one
    call: refused (a3 is smaller than its source) before any pair starts."""
    release, written = slow_copies(monkeypatch)
    small = lab.arr.create_volume("a3", 32 * MIB)
    lab.arr.mask("a3", HOST_A)
    _, targets = full_create(lab, "a", ["a1", "a2"])
    try:
        with pytest.raises(VssError):
            lab.providers["a"].resync_luns(targets, [lab.records["a1"], predict_lio_lun_info(small.serial).to_dict()],
                                           wait=False)
        deadline = time.monotonic() + 1
        while not written and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lab.arr.store.jobs() == [] and written == []  # got: a resync job onto lun-a1, copying
    finally:
        release.set()
        lab.settle()
