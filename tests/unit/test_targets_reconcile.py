"""Unit tests of targets.reconcile: the agent's start never destroys what its store does not
know (set aside, reported), detects an empty or foreign store and then cleans nothing up until
an admin confirms, reports a LUN that cannot come up and brings up the rest, resumes origins a
killed commit left suspended, and expires prepared sets; plus the health and admin routes."""
from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

import targets.jobs as jobs_mod
from provider.contract.hresult import HResult, VssRuntimeError, VssUserError
from targets.agent import create_app
from targets.lio import Mapping
from targets.lvm import LvmError
from targets.lvm_thin import ARRAY_TAG
from targets.reconcile import Reconciler
from targets.store import Store
from targets_fakes import IQN1, IQN2, MiB, FakeLio, FakeLvm, make_array

pytestmark = pytest.mark.filterwarnings("ignore:The 'app' shortcut is now deprecated:DeprecationWarning")

SECRET = "s3cret-secret"
TOKEN = "t0ken-for-unit-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def started(arr) -> Reconciler:
    """The agent's start over this array: its reconcile, run."""
    keeper = Reconciler(arr)
    keeper.reconcile()
    return keeper


def restarted(arr, store: Store | None = None):
    """The agent again on the same LVM and LIO, with its store or another."""
    return make_array(store if store is not None else arr.store, arr.backend.lvm, arr.lio)


@pytest.fixture
def running(arr, lvm, lio):
    """An array in use, started once (ids written): two volumes masked, one of them to two hosts."""
    for name in ("vol1", "vol2"):
        arr.create_volume(name, 64 * MiB)
    arr.mask("vol1", IQN1)
    arr.mask("vol2", IQN1)
    arr.mask("vol2", IQN2, read_only=True)
    started(arr)
    lvm.calls.clear(), lio.calls.clear()
    return arr


def expect(code: HResult, cls=VssUserError):
    raised = pytest.raises(cls)

    class _Expect:
        def __enter__(self):
            self.info = raised.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = raised.__exit__(*exc)
            assert self.info.value.hresult == code, repr(self.info.value)
            return suppressed

    return _Expect()


def nothing_destroyed(lvm: FakeLvm, lio: FakeLio) -> None:
    assert lvm.called("remove") == [] and lio.called("unexport") == [] and lio.called("unmask") == []


# --- the store's identity ------------------------------------------------------------------------

def test_the_first_start_writes_one_array_id_to_the_store_and_the_vg(arr, lvm):
    keeper = started(arr)
    array_id = arr.store.array_id()
    assert array_id and lvm.tags == [f"{ARRAY_TAG}={array_id}"]
    assert keeper.health()["store"] == {"trusted": True, "problem": None, "array_id": array_id,
                                        "vg_array_id": array_id}
    started(restarted(arr))
    assert arr.store.array_id() == array_id and lvm.tags == [f"{ARRAY_TAG}={array_id}"]


def test_a_store_from_before_ids_with_its_lvs_is_adopted(arr, lvm, lio):
    arr.create_volume("vol1", 64 * MiB)  # made before this version: no id anywhere
    keeper = started(restarted(arr))
    assert keeper.health()["store"]["trusted"] and arr.store.array_id() is not None


def test_empty_store_removes_nothing_sets_every_lv_aside_and_reports_it(running, lvm, lio):
    before_lvs, before_exports = dict(lvm.lvs), lio.exports()
    again = restarted(running, Store(":memory:"))  # a wrong state directory, a deleted file
    keeper = Reconciler(again)
    done = keeper.reconcile()
    nothing_destroyed(lvm, lio)
    assert lvm.lvs == before_lvs and lio.exports() == before_exports
    assert done["set_aside"] == ["lun-vol1", "lun-vol2"] and done["removed"] == []
    health = keeper.health()
    assert health["ok"] is False and health["store"]["trusted"] is False
    assert "empty" in health["store"]["problem"] and health["store"]["array_id"] is None
    assert [(x["lv"], x["exported"], x["mapped_to"]) for x in health["set_aside"]] == [
        ("lun-vol1", True, [IQN1]), ("lun-vol2", True, [IQN1, IQN2])]
    assert again.store.array_id() is None and len(lvm.tags) == 1  # nothing adopted silently


def test_with_the_right_store_back_every_lun_is_served_as_before(running, lvm, lio):
    started(restarted(running, Store(":memory:")))
    exports = lio.exports()
    keeper = started(restarted(running))
    assert keeper.health()["ok"] is True and lio.exports() == exports
    nothing_destroyed(lvm, lio)


def test_a_foreign_store_is_detected_and_nothing_is_cleaned_up(running, lvm, lio):
    foreign = Store(":memory:")
    foreign.set_array_id("0" * 32)
    foreign.add_lun("lun-vol1", "volume", 64 * MiB, "ab" * 16, state="deleting")  # its own half-deleted vol1
    keeper = started(restarted(running, foreign))
    store = keeper.health()["store"]
    assert store["trusted"] is False and "foreign" in store["problem"] and "0" * 32 in store["problem"]
    assert store["vg_array_id"] == running.store.array_id()
    nothing_destroyed(lvm, lio)
    assert {"lun-vol1", "lun-vol2"} <= lvm.names() and foreign.lun("lun-vol1").state == "deleting"


def test_an_untrusted_store_refuses_what_removes_or_overwrites_data(running, lvm, lio, monkeypatch):
    monkeypatch.setattr(jobs_mod, "copy_blocks", lambda *a, **k: 0)
    set_id = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
    running.prepare_set(set_id, [{"snapshot_id": set_id, "lun": "vol1"}])
    foreign = running.store  # the same rows, but the VG now says another array
    lvm.tags = [f"{ARRAY_TAG}={'f' * 32}"]
    again = restarted(running, foreign)
    keeper = started(again)
    lvm.calls.clear(), lio.calls.clear()
    for refused in (lambda: again.delete("vol1"), lambda: again.abort_set(set_id),
                    lambda: again.start_resync("vol2", "vol1"), lambda: keeper.remove_set_aside("lun-vol1")):
        with expect(HResult.VSS_E_BAD_STATE) as e:
            refused()
        assert "POST /v1/store/confirm" in e.value.message
    assert keeper.expire_sets() == []
    nothing_destroyed(lvm, lio)
    assert again.lun("vol1").name == "vol1" and again.inventory()  # reads are served


def test_confirm_adopts_the_vgs_id_and_allows_cleanup_again(running, lvm, lio):
    vg_id = running.store.array_id()
    fresh = Store(":memory:")
    again = restarted(running, fresh)
    keeper = started(again)
    health = keeper.confirm_store()
    assert fresh.array_id() == vg_id and lvm.tags == [f"{ARRAY_TAG}={vg_id}"]
    assert health["store"]["trusted"] and again.store_trusted
    assert [x["lv"] for x in health["set_aside"]] == ["lun-vol1", "lun-vol2"]  # still only set aside
    nothing_destroyed(lvm, lio)
    keeper.remove_set_aside("lun-vol1")
    assert "lun-vol1" not in lvm.names()
    assert keeper.confirm_store()["store"]["trusted"]  # confirming a trusted store: nothing happens


def test_confirm_leaves_a_copy_running_in_this_process_alone(arr, lvm):
    arr.create_volume("src", 64 * MiB)
    keeper = started(arr)
    release = threading.Event()

    def slow_copy(src, dst, size, progress=None, only_changed=False):
        release.wait(5)
        return size

    arr.store_trusted, keeper.store_problem = False, "pretend"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs_mod, "copy_blocks", slow_copy)
        job = arr.start_copy("src", "full")
        keeper.confirm_store()
        assert arr.store.job(job.job_id).state == "running" and "lun-full" in lvm.names()
        release.set()
        arr.jobs.threads[job.job_id].join(5)
    assert arr.store.job(job.job_id).state == "done" and arr.lun("full").state == "ready"


# --- set aside: never removed by the reconcile, removed by an admin only --------------------------

def test_the_admin_call_removes_only_a_set_aside_lv(running, lvm, lio):
    lvm.add_lv("lun-stray")
    lio.plant("lun-stray", "/dev/shadowlun/lun-stray", "ef" * 16, [Mapping(IQN1, 5, False)])
    lvm.add_lv("root", owned=False)
    keeper = started(restarted(running))
    assert [x["lv"] for x in keeper.health()["set_aside"]] == ["lun-stray"]
    for not_aside in ("lun-vol1", "root", "lun-nothing", "pool"):
        with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
            keeper.remove_set_aside(not_aside)
    assert lvm.called("remove") == []
    keeper.remove_set_aside("lun-stray")
    assert "lun-stray" not in lvm.names() and "lun-stray" not in lio.exports()
    assert lvm.names() == {"lun-vol1", "lun-vol2", "root"} and keeper.health()["ok"] is True


def test_a_failed_removal_of_a_set_aside_lv_is_a_veto(running, lvm):
    lvm.add_lv("lun-stray")
    keeper = started(restarted(running))
    lvm.inject("remove", LvmError(["lvremove"], 5, "Logical volume in use"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        keeper.remove_set_aside("lun-stray")
    assert "in use" in e.value.message


def test_a_new_lun_may_not_take_the_name_of_a_set_aside_lv(running, lvm, lio):
    lvm.add_lv("lun-stray")
    started(restarted(running))
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        running.create_volume("stray", 64 * MiB)
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        running.start_copy("vol1", "stray")
    assert "lun-stray" in lvm.names() and lvm.called("remove") == [] and lvm.called("create_volume") == []


def test_leftovers_of_an_aborted_set_are_its_own_and_removed(running, lvm):
    set_id = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
    prep = running.prepare_set(set_id, [{"snapshot_id": set_id, "lun": "vol1"}])
    target = prep["snapshots"][0]["target"]
    lvm.inject("remove", LvmError(["lvremove"], 5, "Logical volume in use"), name=target)
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError):
        running.abort_set(set_id)
    lvm.clear_failures()
    done = started(restarted(running)).last
    assert target in done["removed"] and target not in lvm.names() and done["set_aside"] == []


# --- thin provisioning on every backstore -------------------------------------------------------

def test_a_backstore_found_with_thin_provisioning_off_gets_it_and_keeps_its_masks(running, lvm, lio):
    """An export an older agent made (emulate_tpu/tpws off): the start turns them on in place,
    without unexporting (hosts keep their sessions) and reports it; the next start does nothing."""
    vol2 = running.store.lun("lun-vol2")
    before = lio.exports()["lun-vol2"]
    lio.plant("lun-vol2", before.device, vol2.serial, before.mappings, thin=False)
    lio.calls.clear()
    done = started(restarted(running)).last
    assert "lun-vol2 thin provisioning" in done["rebuilt"] and "lun-vol1 thin provisioning" not in done["rebuilt"]
    assert lio.not_thin == set() and lio.called("unexport") == [] and lio.called("export") == []
    assert lio.exports()["lun-vol2"].mappings == before.mappings
    again = started(restarted(running)).last
    assert not [r for r in again["rebuilt"] if "thin" in r]


# --- one LUN that cannot come up ---------------------------------------------------------------

@pytest.mark.parametrize("layer, method", [("lvm", "activate"), ("lio", "export"), ("lio", "mask")])
def test_one_lun_that_cannot_come_up_is_reported_and_the_others_come_up(running, lvm, lio, layer, method):
    for name in ("lun-vol1", "lun-vol2"):
        lio.drop(name)
        lvm.add_lv(name, 64 * MiB, {"shadowlun.kind": "volume"}, active=False)
    (lvm if layer == "lvm" else lio).inject(method, RuntimeError("pool is full"), name="lun-vol1")
    keeper = started(restarted(running))
    health = keeper.health()
    assert health["ok"] is False and health["failed_luns"] == [{"lun": "lun-vol1", "error": "pool is full"}]
    assert keeper.last["failed_luns"] == ["lun-vol1"]
    export = lio.exports()["lun-vol2"]
    assert export.serial == running.store.lun("lun-vol2").serial
    assert {m.initiator: m.read_only for m in export.mappings} == {IQN1: False, IQN2: True}
    assert lvm.lvs["lun-vol2"].active
    (lvm if layer == "lvm" else lio).clear_failures()
    assert started(restarted(running)).health()["ok"] is True  # fixed: the next start brings it up


def test_the_agent_answers_with_a_lun_that_cannot_come_up(running, lvm, lio):
    lio.drop("lun-vol1")
    lio.inject("export", RuntimeError("no such device"), name="lun-vol1")
    keeper = started(restarted(running))
    client = TestClient(create_app(running, TOKEN, keeper))
    r = client.get("/v1/health", headers=AUTH)
    assert r.status_code == 200 and r.json()["failed_luns"][0]["lun"] == "lun-vol1"
    assert client.get("/v1/luns/vol2", headers=AUTH).json()["lun_id"] is not None


# --- a killed commit: origins left suspended ----------------------------------------------------

def test_suspended_origins_are_resumed_first_and_the_set_is_aborted(running, lvm, lio):
    set_id = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
    prep = running.prepare_set(set_id, [{"snapshot_id": set_id, "lun": "vol1"}])
    running.store.set_state(set_id, "committing")  # as the commit leaves it when killed in the window
    for m in running.store.snapshot_set(set_id).members:
        running.store.add_lun(m.name, "snapshot", 64 * MiB, m.serial, origin=m.origin, set_id=set_id,
                              snapshot_id=m.snapshot_id)
    lvm.suspended = {"shadowlun-lun--vol1"}
    lvm.calls.clear()
    done = started(restarted(running)).last
    assert done["resumed"] == ["shadowlun-lun--vol1"] and lvm.suspended == set()
    assert lvm.calls[0] == ("resume_suspended",)  # before anything else, even the first lvs
    assert done["aborted_sets"] == [set_id] and running.set_view(set_id)["state"] == "aborted"
    target = prep["snapshots"][0]["target"]
    assert target not in lvm.names() and target not in lio.exports() and running.store.lun(target) is None


def test_origins_are_resumed_even_with_an_untrusted_store(running, lvm):
    lvm.suspended = {"shadowlun-lun--vol1"}
    done = started(restarted(running, Store(":memory:"))).last
    assert done["resumed"] == ["shadowlun-lun--vol1"] and lvm.suspended == set()


# --- prepared sets that are never committed ----------------------------------------------------

def age(arr, set_id: str, seconds: float) -> None:
    with arr.store.tx() as db:
        db.execute("UPDATE sets SET created = ? WHERE set_id = ?", (time.time() - seconds, set_id))


def test_expiry_aborts_a_prepared_set_past_its_age_like_an_abort(running, lvm, lio):
    old, new = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11", "7d2c4d2f-7f1f-4e1d-8b62-4e9b1f1f5c22"
    running.prepare_set(old, [{"snapshot_id": old, "lun": "vol1"}])
    running.prepare_set(new, [{"snapshot_id": new, "lun": "vol2"}])
    age(running, old, running.config.prepared_set_max_age_s + 1)
    keeper = Reconciler(running)  # the agent's, started before the set was prepared
    assert keeper.expire_sets() == [old]
    assert running.set_view(old)["state"] == "aborted" and running.set_view(new)["state"] == "prepared"
    assert f"snap-{old}" not in lvm.names() and f"snap-{new}" in lvm.names()
    assert keeper.expire_sets() == []


def test_expired_sets_are_aborted_at_start_too(running, lvm):
    old = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
    running.prepare_set(old, [{"snapshot_id": old, "lun": "vol1"}])
    age(running, old, running.config.prepared_set_max_age_s + 1)
    done = started(restarted(running)).last
    assert done["expired_sets"] == [old] and f"snap-{old}" not in lvm.names()


def test_the_expiry_check_runs_while_the_agent_serves_and_stops_with_it(store, lvm, lio):
    arr = make_array(store, lvm, lio, prepared_set_max_age_s=0.2)
    arr.create_volume("vol1", 64 * MiB)
    keeper = started(arr)
    set_id = "6c1b3c1e-6f0e-4d0c-9a51-3d8a0e0f4b11"
    with keeper.expiring():
        arr.prepare_set(set_id, [{"snapshot_id": set_id, "lun": "vol1"}])
        deadline = time.monotonic() + 5
        while arr.set_view(set_id)["state"] == "prepared" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert arr.set_view(set_id)["state"] == "aborted"
    assert not [t for t in threading.enumerate() if t.name == "set-expiry"]


# --- the routes --------------------------------------------------------------------------------

def test_health_confirm_and_removal_through_the_api(running, lvm, lio):
    again = restarted(running, Store(":memory:"))
    client = TestClient(create_app(again, TOKEN, started(again)))
    health = client.get("/v1/health", headers=AUTH).json()
    assert health["store"]["trusted"] is False and len(health["set_aside"]) == 2
    r = client.delete("/v1/set-aside/lun-vol1", headers=AUTH)
    assert r.status_code == 409 and r.json()["vss"] == "VSS_E_BAD_STATE" and "lun-vol1" in lvm.names()
    assert client.post("/v1/store/confirm", headers=AUTH).json()["store"]["trusted"] is True
    assert client.delete("/v1/set-aside/lun-vol1", headers=AUTH).status_code == 204
    assert client.delete("/v1/set-aside/lun-vol1", headers=AUTH).status_code == 404
    assert "lun-vol1" not in lvm.names() and "lun-vol2" in lvm.names()
