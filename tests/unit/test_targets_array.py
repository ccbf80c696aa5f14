"""Unit tests of targets.array: the Array's rules over a real in-memory Store and fake LVM/LIO
(tests/unit/targets_fakes.py): validation before anything is made, idempotent retries, the
hosts allowed, the snapshot-set protocol, detach (break), undo on failure, and the reconcile at
start. The `arr` fixture is the agent just started: the hosts of targets_fakes.HOSTS (IQN1, IQN2,
host-a/b/c) are registered by its config; STRANGER is not."""
from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

import pytest

import targets.jobs as jobs_mod
import targets.luns as luns_mod
import targets.snapshot_sets as sets_mod
from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError
from targets.array import Array
from targets.luns import LunView
from provider.contract.lio_target import LIO_PRODUCT, LIO_VENDOR
from provider.polling import poll
from provider.contract.vss_types import MAX_LUNS_PER_SET
from targets.lio import Mapping, naa_wwid
from targets.lvm import LvmError
from targets.lvm_thin import LvmThin
from targets.reconcile import Reconciler
from targets.store import Mask
from targets_fakes import HOST_B, HOSTS, IQN1, IQN2, STRANGER, GiB, MiB, FakeLio, FakeLvm, make_array

SECRET = "s3cret-secret"  # 13 characters


def expect(code: HResult, cls=VssUserError):
    """pytest.raises for a VssError with this code and class."""
    class _Expect:
        def __enter__(self):
            self._cm = pytest.raises(cls)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._cm.__exit__(*exc)
            assert self.info.value.hresult == code, repr(self.info.value)
            return suppressed

    return _Expect()


def nothing_made(arr, lvm: FakeLvm, lio: FakeLio) -> None:
    assert lvm.names() == set()
    assert lio.exports() == {}
    assert arr.store.luns() == []
    assert lvm.called("create_volume") == [] and lio.called("export") == []


def sid() -> str:
    return str(uuid.uuid4())


def fake_uuid4(monkeypatch, hexes) -> None:
    """uuid.uuid4 as the array sees it (targets.luns for serials, targets.jobs for job ids, only
    there) returns these, in order."""
    seq = iter(hexes)
    fake = SimpleNamespace(UUID=uuid.UUID, uuid4=lambda: uuid.UUID(next(seq)))
    for module in (luns_mod, jobs_mod):
        monkeypatch.setattr(module, "uuid", fake)


def make_volumes(arr, *names, size=64 * MiB):
    return [arr.create_volume(n, size) for n in names]


# --- volumes -----------------------------------------------------------------------------------

def test_create_volume(arr, lvm, lio):
    view = arr.create_volume("vol1", 64 * MiB)
    assert isinstance(view, LunView)
    assert (view.name, view.kind, view.size_bytes, view.state) == ("vol1", "volume", 64 * MiB, "ready")
    assert (view.vendor, view.product) == (LIO_VENDOR, LIO_PRODUCT)
    assert view.wwid == naa_wwid(view.serial)
    assert view.masks == [] and view.origin is None
    assert lvm.called("create_volume") == [("lun-vol1", 64 * MiB, {"shadowlun.kind": "volume"})]
    assert lvm.lvs["lun-vol1"].owned
    export = lio.exports()["lun-vol1"]
    assert export.serial == view.serial and export.device == "/dev/shadowlun/lun-vol1"
    assert export.mappings == ()  # masked to nobody
    assert view.lun_id == export.lun
    assert arr.store.lun("lun-vol1").state == "ready"


@pytest.mark.parametrize("name", ["", "Vol", "-vol", "vol_1", "vol 1", "a" * 49, "vol/1", "snap.x", None, 7])
def test_create_volume_bad_name(arr, lvm, lio, name):
    with expect(HResult.E_INVALIDARG):
        arr.create_volume(name, 64 * MiB)
    nothing_made(arr, lvm, lio)


@pytest.mark.parametrize("size", [0, -MiB, MiB - 512, MiB + 1, 64 * MiB + 100, "67108864", 64.0 * MiB, None])
def test_create_volume_bad_size(arr, lvm, lio, size):
    with expect(HResult.E_INVALIDARG):
        arr.create_volume("vol1", size)
    nothing_made(arr, lvm, lio)


def test_create_volume_limits_accepted(arr):
    assert arr.create_volume("a" * 48, MiB).size_bytes == MiB
    assert arr.create_volume("0-x", MiB + 512).size_bytes == MiB + 512


def test_create_volume_retry_returns_the_same_lun(arr, lvm, lio):
    first = arr.create_volume("vol1", 64 * MiB)
    again = arr.create_volume("vol1", 64 * MiB)
    assert again == first
    assert len(lvm.called("create_volume")) == 1 and len(lio.called("export")) == 1


def test_create_volume_other_size_exists(arr, lvm):
    arr.create_volume("vol1", 64 * MiB)
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.create_volume("vol1", 128 * MiB)
    assert arr.store.lun("lun-vol1").size_bytes == 64 * MiB
    assert len(lvm.called("create_volume")) == 1


@pytest.mark.parametrize("data, meta", [(90.0, 0.0), (95.5, 10.0), (10.0, 90.0), (0.0, 99.0)])
def test_create_volume_pool_full(arr, lvm, lio, data, meta):
    lvm.data_percent, lvm.metadata_percent = data, meta
    with expect(HResult.VSS_E_INSUFFICIENT_STORAGE):
        arr.create_volume("vol1", 64 * MiB)
    nothing_made(arr, lvm, lio)


def test_create_volume_just_below_the_limit(arr, lvm):
    lvm.data_percent, lvm.metadata_percent = 89.9, 89.9
    assert arr.create_volume("vol1", 64 * MiB).state == "ready"


def test_pool_full_percent_is_configurable(store, lvm, lio):
    arr = make_array(store, lvm, lio, pool_full_percent=50.0)
    lvm.data_percent = 50.0
    with expect(HResult.VSS_E_INSUFFICIENT_STORAGE):
        arr.create_volume("vol1", 64 * MiB)


def test_create_volume_lv_failure_leaves_nothing(arr, lvm, lio):
    lvm.inject("create_volume", LvmError(["lvcreate"], 5, "Insufficient free space"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.create_volume("vol1", 64 * MiB)
    assert "Insufficient free space" in e.value.message
    assert lvm.names() == set() and lio.exports() == {} and arr.store.luns() == []


def test_create_volume_export_failure_leaves_nothing(arr, lvm, lio):
    lio.inject("export", OSError("configfs: no such device"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError):
        arr.create_volume("vol1", 64 * MiB)
    assert lvm.names() == set() and lio.exports() == {} and arr.store.luns() == []
    lio.clear_failures()
    assert arr.create_volume("vol1", 64 * MiB).state == "ready"  # and it can be made again


def test_unknown_lun(arr):
    arr.create_volume("vol1", 64 * MiB)
    for call in (lambda: arr.lun("nope"), lambda: arr.delete("nope"), lambda: arr.unmask("nope", IQN1),
                 lambda: arr.mask("nope", IQN1), lambda: arr.lun("lun-vol1"),
                 lambda: arr.lun("snap-" + sid())):
        with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
            call()


def test_a_lun_still_creating_is_not_found(arr, store):
    store.add_lun("lun-half", "volume", MiB, "ab" * 16)
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.lun("half")
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):  # nor can its name be taken meanwhile
        arr.create_volume("half", MiB)


def test_serials_are_32_hex_and_unique_in_their_first_25(arr):
    views = make_volumes(arr, *[f"v{i}" for i in range(40)], size=MiB)
    for v in views:
        assert re.fullmatch(r"[0-9a-f]{32}", v.serial)
        assert v.wwid == "naa.6001405" + v.serial[:25]
    assert len({v.serial[:25] for v in views}) == len(views)


def test_new_serial_skips_a_25_digit_prefix_in_use(arr, monkeypatch):
    first = "a" * 25 + "0000000"
    same_prefix = "a" * 25 + "1234567"
    other = "b" * 32
    seq = iter([first, first, same_prefix, other])
    fake_uuid4(monkeypatch, seq)
    assert arr.create_volume("vol1", MiB).serial == first
    assert arr.create_volume("vol2", MiB).serial == other


def test_inventory_and_pool(arr, lvm):
    make_volumes(arr, "b", "a")
    assert [v.name for v in arr.inventory()] == ["a", "b"]
    lvm.data_percent, lvm.metadata_percent = 25.0, 5.0
    p = arr.pool()
    assert p["size_bytes"] == lvm.pool_size and p["used_bytes"] == lvm.pool_size // 4
    assert p["free_bytes"] == lvm.pool_size - lvm.pool_size // 4
    assert (p["data_percent"], p["metadata_percent"], p["full_percent"]) == (25.0, 5.0, 90.0)


# --- delete ------------------------------------------------------------------------------------

def test_delete_removes_export_lv_and_row(arr, lvm, lio):
    arr.create_volume("vol1", 64 * MiB)
    arr.mask("vol1", IQN1)
    arr.delete("vol1")
    assert "lun-vol1" not in lvm.lvs and "lun-vol1" not in lio.exports()
    assert arr.store.lun("lun-vol1") is None and arr.store.masks() == []
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.delete("vol1")


def test_delete_refused_while_in_a_running_job(arr, lvm):
    arr.create_volume("vol1", 64 * MiB)
    arr.store.add_job("j1", "resync", "snap-x", "lun-vol1", 64 * MiB)
    with expect(HResult.VSS_E_VOLUME_IN_USE):
        arr.delete("vol1")
    assert "lun-vol1" in lvm.lvs and arr.store.lun("lun-vol1").state == "ready"


def test_delete_failure_is_reported_and_left_for_reconcile(arr, lvm, lio):
    arr.create_volume("vol1", 64 * MiB)
    lvm.inject("remove", LvmError(["lvremove"], 5, "Logical volume in use"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.delete("vol1")
    assert "in use" in e.value.message
    assert "lun-vol1" not in lio.exports() and "lun-vol1" in lvm.lvs
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):  # gone for the API...
        arr.lun("vol1")
    lun = arr.store.lun("lun-vol1")
    assert lun is None or lun.state == "deleting"
    lvm.clear_failures()
    reconcile(restarted(arr))  # ...and for good at the next start
    assert "lun-vol1" not in lvm.lvs and arr.store.lun("lun-vol1") is None


# --- masking -----------------------------------------------------------------------------------

def test_mask_and_unmask(arr, lio):
    arr.create_volume("vol1", 64 * MiB)
    view = arr.mask("vol1", IQN1, read_only=True)
    assert view.masks == [{"initiator": IQN1, "read_only": True}]
    assert lio.mappings("lun-vol1") == {IQN1: Mapping(IQN1, view.lun_id, True)}
    host = arr.store.host(IQN1)  # the ACL gets the CHAP credentials the array made for the host
    assert lio.chap[IQN1] == (host.chap_user, host.chap_secret) and len(host.chap_secret) >= 24
    assert arr.store.masks("lun-vol1") == [Mask("lun-vol1", IQN1, True)]
    view = arr.mask("vol1", IQN1, read_only=False)  # changes in place
    assert view.masks == [{"initiator": IQN1, "read_only": False}]
    arr.mask("vol1", IQN2)
    view = arr.unmask("vol1", IQN1)
    assert view.masks == [{"initiator": IQN2, "read_only": False}]
    assert set(lio.mappings("lun-vol1")) == {IQN2}
    arr.unmask("vol1", IQN1)  # again: nothing to do, no error


@pytest.mark.parametrize("initiator", [
    "host1", "iqn.91-05.com.microsoft:host1", "iqn.1991-13.com.microsoft:host1", "", None, 7,
    IQN1 + "\n", IQN1 + "\0", "iqn.1991-05.com.micro_soft:host1", "iqn.1991-05.com.microsoft:host_1",
    "iqn.1991-05.com.microsoft:" + "a" * 200, "iqn.\u0661\u0669\u0669\u0661-05.com.microsoft:h",
    "eui.02004567A425678", "naa.123",
])
def test_mask_validation(arr, lio, initiator):
    arr.create_volume("vol1", 64 * MiB)
    with expect(HResult.E_INVALIDARG):
        arr.mask("vol1", initiator)
    assert arr.store.masks() == [] and lio.called("mask") == []


def test_an_upper_case_initiator_is_the_lower_case_one_as_lio_keeps_it(arr, lio):
    arr.create_volume("vol1", 64 * MiB)
    arr.mask("vol1", IQN1.upper())
    assert set(lio.mappings("lun-vol1")) == {IQN1} and [m.initiator for m in arr.store.masks()] == [IQN1]
    arr.unmask("vol1", IQN1.upper())  # and unmasking by the upper-case name really unmasks
    assert lio.mappings("lun-vol1") == {} and arr.store.masks() == []


def test_mask_failing_in_lio_leaves_no_store_row(arr, lio):
    arr.create_volume("vol1", 64 * MiB)
    lio.inject("mask", ValueError("LIO refused the initiator"))
    with pytest.raises(ValueError):
        arr.mask("vol1", IQN1)
    assert arr.store.masks() == []


def test_mask_validates_before_looking_up_the_lun(arr):
    with expect(HResult.E_INVALIDARG):
        arr.mask("nope", "bad")


# --- hosts allowed by the array ----------------------------------------------------------------

def test_config_hosts_are_registered_at_start(store, lvm, lio):
    arr = make_array(store, lvm, lio, hosts={IQN2: "host2", IQN1: "host1"})
    hosts = arr.hosts()
    assert [(h["initiator"], h["name"], h["luns"]) for h in hosts] == [(IQN1, "host1", []), (IQN2, "host2", [])]
    assert all(isinstance(h["added"], float) for h in hosts)
    again = make_array(store, lvm, lio, hosts={IQN2: "host2", IQN1: "host1"})  # a restart: nothing new
    assert again.register_configured_hosts() == {} and again.hosts() == hosts


def test_config_hosts_only_add_and_do_not_rename(store, lvm, lio, caplog):
    make_array(store, lvm, lio, hosts={IQN1: "host1", IQN2: "host2"})
    arr = make_array(store, lvm, lio, hosts={IQN1: "renamed"})
    assert {h["initiator"]: h["name"] for h in arr.hosts()} == {IQN1: "host1", IQN2: "host2"}
    assert "renamed" in caplog.text


@pytest.mark.parametrize("hosts", [{IQN1: "host1", "host2": "host2"}, {IQN1: "host1", IQN2: "Host_2"}])
def test_config_hosts_are_all_checked_before_any_is_registered(store, lvm, lio, hosts):
    with expect(HResult.E_INVALIDARG):
        make_array(store, lvm, lio, hosts=hosts)
    assert store.hosts() == []


def test_no_config_hosts(store, lvm, lio):
    assert make_array(store, lvm, lio, hosts={}).hosts() == []


def test_register_host_is_create_or_lookup(store, lvm, lio):
    arr = make_array(store, lvm, lio, hosts={})
    first = arr.register_host(STRANGER, "stranger")
    assert (first["initiator"], first["name"], first["luns"]) == (STRANGER, "stranger", [])
    creds = first.pop("credentials")  # shown once: the token, and CHAP secret of >= 96 bits
    assert arr.caller_for(creds["token"]).initiator == STRANGER and len(creds["chap_secret"]) * 4 >= 96
    assert arr.register_host(STRANGER, "stranger") == first  # a retry: the same host, no secret again
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS) as e:
        arr.register_host(STRANGER, "other-name")
    assert "stranger" in e.value.message
    assert arr.hosts() == [first]


@pytest.mark.parametrize("initiator, name", [
    ("stranger", "stranger"), ("iqn.91-05.com.microsoft:x", "x"), ("", "x"), (None, "x"),
    (STRANGER, ""), (STRANGER, "Stranger"), (STRANGER, "a b"), (STRANGER, "a" * 49), (STRANGER, None),
])
def test_register_host_validation(arr, initiator, name):
    before = arr.hosts()
    with expect(HResult.E_INVALIDARG):
        arr.register_host(initiator, name)
    assert arr.hosts() == before


def test_hosts_show_their_luns(arr):
    make_volumes(arr, "vol1", "vol2")
    arr.mask("vol2", IQN1)
    arr.mask("vol1", IQN1)
    arr.mask("vol1", IQN2)
    luns = {h["initiator"]: h["luns"] for h in arr.hosts()}
    assert luns[IQN1] == ["vol1", "vol2"] and luns[IQN2] == ["vol1"] and luns[HOST_B] == []


def test_unregister_host(arr):
    arr.register_host(STRANGER, "stranger")
    arr.unregister_host(STRANGER)
    assert STRANGER not in {h["initiator"] for h in arr.hosts()}
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.unregister_host(STRANGER)
    with expect(HResult.E_INVALIDARG):
        arr.unregister_host("not an iqn")
    assert {h["initiator"] for h in arr.hosts()} == set(HOSTS)


def test_unregister_a_host_with_masks_is_refused(arr, lio):
    make_volumes(arr, "vol1", "vol2")
    arr.mask("vol1", IQN1)
    arr.mask("vol2", IQN1)
    with expect(HResult.VSS_E_BAD_STATE) as e:
        arr.unregister_host(IQN1)
    assert "vol1, vol2" in e.value.message and "host1" in e.value.message
    assert IQN1 in {h["initiator"] for h in arr.hosts()}
    assert set(lio.mappings("lun-vol1")) == {IQN1} and len(arr.store.masks()) == 2
    arr.unmask("vol1", IQN1)
    arr.unmask("vol2", IQN1)
    arr.unregister_host(IQN1)
    assert IQN1 not in {h["initiator"] for h in arr.hosts()}


def test_mask_to_an_initiator_that_is_not_a_host_is_refused(arr, lvm, lio):
    make_volumes(arr, "vol1")
    set_id, prep = prepared(arr, "vol2")
    arr.commit_set(set_id)  # committed, not published: a mask would export it first
    target = prep["snapshots"][0]["target"]
    exports = lio.exports()
    lio.calls.clear()
    for lun in ("vol1", target):
        with expect(HResult.E_ACCESSDENIED) as e:
            arr.mask(lun, STRANGER)
        assert f"initiator {STRANGER} is not a host of this array" in e.value.message
        assert f"PUT /v1/hosts/{STRANGER}" in e.value.message
    assert arr.store.masks() == [] and lio.exports() == exports
    assert lio.called("mask") == [] and lio.called("export") == [] and lvm.called("activate") == []
    arr.register_host(STRANGER, "stranger")
    assert arr.mask("vol1", STRANGER).masks == [{"initiator": STRANGER, "read_only": False}]


def test_mask_to_an_unregistered_host_is_refused(arr):
    make_volumes(arr, "vol1")
    arr.register_host(STRANGER, "stranger")
    arr.unregister_host(STRANGER)
    with expect(HResult.E_ACCESSDENIED):
        arr.mask("vol1", STRANGER)


# --- snapshot sets: prepare --------------------------------------------------------------------

def members(*luns):
    return [{"snapshot_id": sid(), "lun": lun} for lun in luns]


def test_prepare_set(arr, lvm, lio):
    make_volumes(arr, "vol1", "vol2")
    set_id, snaps = sid(), members("vol1", "vol2")
    view = arr.prepare_set(set_id, snaps)
    assert view["set_id"] == set_id and view["state"] == "prepared" and view["commit_window_s"] is None
    assert [s["snapshot_id"] for s in view["snapshots"]] == [s["snapshot_id"] for s in snaps]
    assert [s["lun"] for s in view["snapshots"]] == ["vol1", "vol2"]
    for s in view["snapshots"]:
        assert s["target"] == "snap-" + s["snapshot_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", s["serial"])
        assert s["wwid"] == naa_wwid(s["serial"])
        assert (s["vendor"], s["product"]) == (LIO_VENDOR, LIO_PRODUCT)
    serials = [s["serial"] for s in view["snapshots"]] + [v.serial for v in arr.inventory()]
    assert len({s[:25] for s in serials}) == 4
    # The snapshots are made now, in one batch, inactive and unexported; the commit makes them
    # again at the freeze point (see the commit tests). They are no LUNs yet.
    (batch,) = lvm.called("create_snapshots")
    assert [n for _, n, _ in batch[0]] == [s["target"] for s in view["snapshots"]]
    assert all(not lvm.lvs[s["target"]].active for s in view["snapshots"])
    assert set(lio.exports()) == {"lun-vol1", "lun-vol2"}
    assert {lun.name for lun in arr.store.luns()} == {"lun-vol1", "lun-vol2"}
    assert arr.set_view(set_id) == view


def test_prepare_that_cannot_make_a_snapshot_aborts_and_leaves_nothing(arr, lvm, lio):
    make_volumes(arr, "vol1", "vol2", "vol3")
    set_id, snaps = sid(), members("vol1", "vol2", "vol3")
    lvm.inject("create_snapshots", None, name="snap-" + snaps[1]["snapshot_id"])
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.prepare_set(set_id, snaps)
    assert "could not be prepared" in e.value.message
    assert arr.set_view(set_id)["state"] == "aborted"
    assert not [n for n in lvm.names() if n.startswith("snap-")]


def test_prepare_set_normalizes_guids(arr):
    make_volumes(arr, "vol1")
    set_id, snap = uuid.uuid4(), uuid.uuid4()
    view = arr.prepare_set("{" + str(set_id).upper() + "}", [{"snapshot_id": snap.hex, "lun": "vol1"}])
    assert view["set_id"] == str(set_id) and view["snapshots"][0]["snapshot_id"] == str(snap)


def test_prepare_set_retry_is_idempotent(arr):
    make_volumes(arr, "vol1", "vol2")
    set_id, snaps = sid(), members("vol1", "vol2")
    first = arr.prepare_set(set_id, snaps)
    assert arr.prepare_set(set_id, snaps) == first
    assert arr.prepare_set(set_id.upper(), [dict(s, snapshot_id=s["snapshot_id"].upper()) for s in snaps]) == first
    assert len(arr.store.sets()) == 1


@pytest.mark.parametrize("change", ["other_lun", "other_id", "fewer", "reordered"])
def test_prepare_set_again_with_other_members_exists(arr, change):
    make_volumes(arr, "vol1", "vol2", "vol3")
    set_id, snaps = sid(), members("vol1", "vol2")
    first = arr.prepare_set(set_id, snaps)
    other = {
        "other_lun": [snaps[0], dict(snaps[1], lun="vol3")],
        "other_id": [snaps[0], dict(snaps[1], snapshot_id=sid())],
        "fewer": snaps[:1],
        "reordered": snaps[::-1],
    }[change]
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.prepare_set(set_id, other)
    assert arr.set_view(set_id) == first


def _prepare_refused(arr, lvm, lio, set_id, snaps, code):
    before_lvs, before_exports = lvm.names(), lio.exports()
    with expect(code):
        arr.prepare_set(set_id, snaps)
    assert arr.store.sets() == []
    assert lvm.names() == before_lvs and lio.exports() == before_exports
    assert [lun.name for lun in arr.store.luns()] == sorted(before_lvs)


def test_prepare_set_validation(arr, lvm, lio):
    make_volumes(arr, "vol1", "vol2")
    bad = HResult.E_INVALIDARG
    one = members("vol1")
    _prepare_refused(arr, lvm, lio, "not-a-guid", one, bad)
    _prepare_refused(arr, lvm, lio, "", one, bad)
    _prepare_refused(arr, lvm, lio, sid(), [], bad)
    _prepare_refused(arr, lvm, lio, sid(), [{"snapshot_id": "x", "lun": "vol1"}], bad)
    _prepare_refused(arr, lvm, lio, sid(), [{"snapshot_id": sid()}], bad)
    _prepare_refused(arr, lvm, lio, sid(), [{"snapshot_id": sid(), "lun": "vol1", "extra": 1}], bad)
    _prepare_refused(arr, lvm, lio, sid(), ["vol1"], bad)
    dup_id = sid()
    _prepare_refused(arr, lvm, lio, sid(), [{"snapshot_id": dup_id, "lun": "vol1"},
                                            {"snapshot_id": dup_id, "lun": "vol2"}], bad)
    _prepare_refused(arr, lvm, lio, sid(), members("vol1", "vol1"), bad)
    _prepare_refused(arr, lvm, lio, sid(), members("vol1", "nope"), HResult.VSS_E_OBJECT_NOT_FOUND)


def test_prepare_set_at_most_64_luns(arr, lvm, lio):
    make_volumes(arr, "vol1")
    _prepare_refused(arr, lvm, lio, sid(), members(*["vol1"] * (MAX_LUNS_PER_SET + 1)),
                     HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED)


def test_prepare_set_of_64_luns(arr):
    names = [f"v{i}" for i in range(MAX_LUNS_PER_SET)]
    make_volumes(arr, *names, size=MiB)
    view = arr.prepare_set(sid(), members(*names))
    assert len(view["snapshots"]) == 64
    assert len({s["serial"][:25] for s in view["snapshots"]}) == 64


def test_prepare_set_pool_full(arr, lvm, lio):
    make_volumes(arr, "vol1")
    lvm.metadata_percent = 92.0
    _prepare_refused(arr, lvm, lio, sid(), members("vol1"), HResult.VSS_E_INSUFFICIENT_STORAGE)


def test_prepare_set_snapshot_id_already_a_lun(arr):
    make_volumes(arr, "vol1", "vol2")
    snaps = members("vol1")
    arr.commit_set(arr.prepare_set(sid(), snaps)["set_id"])
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.prepare_set(sid(), [dict(snaps[0], lun="vol2")])


def test_a_snapshot_id_in_a_prepared_set_cannot_be_prepared_again(arr):
    make_volumes(arr, "vol1")
    snaps = members("vol1")
    first = arr.prepare_set(sid(), snaps)
    with pytest.raises(Exception):
        arr.prepare_set(sid(), snaps)
    assert [s.set_id for s in arr.store.sets()] == [first["set_id"]]


def test_a_snapshot_id_in_a_prepared_set_is_already_exists(arr):
    make_volumes(arr, "vol1")
    snaps = members("vol1")
    arr.prepare_set(sid(), snaps)
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.prepare_set(sid(), snaps)


def test_set_member_serials_unique_in_their_first_25(arr, monkeypatch):
    make_volumes(arr, "vol1", "vol2")
    seq = iter(["c" * 25 + "0000000", "c" * 25 + "1111111", "d" * 32, "e" * 32])
    fake_uuid4(monkeypatch, seq)
    view = arr.prepare_set(sid(), members("vol1", "vol2"))
    wwids = [s["wwid"] for s in view["snapshots"]]
    assert len(set(wwids)) == 2, wwids


def test_volume_serial_avoids_the_prefix_of_a_prepared_snapshot(arr, monkeypatch):
    make_volumes(arr, "vol1")
    seq = iter(["c" * 25 + "0000000", "c" * 25 + "1111111", "d" * 32])
    fake_uuid4(monkeypatch, seq)
    view = arr.prepare_set(sid(), members("vol1"))
    vol = arr.create_volume("vol2", MiB)
    assert vol.wwid != view["snapshots"][0]["wwid"]


# --- snapshot sets: commit ---------------------------------------------------------------------

def prepared(arr, *luns):
    make_volumes(arr, *luns)
    set_id = sid()
    return set_id, arr.prepare_set(set_id, members(*luns))


def test_commit_makes_every_snapshot_in_one_batch(arr, lvm, lio):
    """Prepare made the snapshots with lvcreate (tags, thin ids in LVM's metadata); the commit
    only makes them again from the origins' current blocks, all in one batch in the pool."""
    set_id, prep = prepared(arr, "vol1", "vol2", "vol3")
    (made,) = lvm.called("create_snapshots")
    for (_, _, tags), s in zip(made[0], prep["snapshots"]):
        assert tags["shadowlun.set"] == set_id and tags["shadowlun.snapshot"] == s["snapshot_id"]
        assert tags["shadowlun.kind"] == "snapshot"
    lvm.window = 0.375
    lvm.calls.clear()
    view = arr.commit_set(set_id)
    assert lvm.called("repoint_snapshots") == [([("lun-" + s["lun"], s["target"]) for s in prep["snapshots"]],)]
    assert lvm.called("create_snapshots") == [] and lvm.called("thin_devices") == []  # looked up at prepare
    assert view["state"] == "committed" and view["commit_window_s"] == 0.375
    assert view["snapshots"] == prep["snapshots"]  # identities chosen at prepare are kept
    # The commit made only the snapshots (the window writes are held); publish exports them.
    assert not {s["target"] for s in prep["snapshots"]} & set(lio.exports())
    assert lvm.called("activate") == []
    assert arr.publish_set(set_id) == view
    exports = lio.exports()
    for s in prep["snapshots"]:
        assert exports[s["target"]].serial == s["serial"]
        assert exports[s["target"]].device == "/dev/shadowlun/" + s["target"]
        assert exports[s["target"]].mappings == ()
        assert lvm.lvs[s["target"]].active  # thin snapshots need activation
        lun = arr.lun(s["target"])
        assert (lun.kind, lun.state, lun.origin, lun.set_id, lun.snapshot_id) == (
            "snapshot", "ready", s["lun"], set_id, s["snapshot_id"])
        assert lun.wwid == s["wwid"] and lun.size_bytes == 64 * MiB


def test_the_commit_reads_and_writes_the_store_as_often_for_64_luns_as_for_1():
    """The hosts' writes are held for the whole commit call: its store work is a few statements
    for the set, not a few per LUN (at 64 LUNs, per-LUN statements cost a tenth of a second on
    the lab's array)."""
    class Counted:
        """The store's connection, counting the calls made into SQLite (executemany is one)."""
        def __init__(self, db, ran: list[str]) -> None:
            self.db, self.ran = db, ran

        def execute(self, sql, *args):
            self.ran.append(sql)
            return self.db.execute(sql, *args)

        def executemany(self, sql, rows):
            self.ran.append(sql)
            return self.db.executemany(sql, rows)

        def __getattr__(self, name):
            return getattr(self.db, name)

    def statements(count: int) -> list[str]:
        arr = make_array()
        set_id, _ = prepared(arr, *[f"v{i}" for i in range(count)])
        ran: list[str] = []
        arr.store._db = Counted(arr.store._db, ran)
        arr.commit_set(set_id)
        luns = arr.store.luns()
        assert len([x for x in luns if x.kind == "snapshot" and x.state == "ready"]) == count
        return ran

    assert len(statements(MAX_LUNS_PER_SET)) == len(statements(1))


def test_commit_retry_returns_the_same(arr, lvm, lio):
    set_id, _ = prepared(arr, "vol1", "vol2")
    first = arr.commit_set(set_id)
    assert arr.commit_set(set_id) == first
    assert len(lvm.called("create_snapshots")) == 1
    assert [c for c in lio.called("export") if c[0].startswith("snap-")] == []
    arr.publish_set(set_id)
    arr.publish_set(set_id)  # idempotent
    assert len(lio.exports()) == 4


def test_commit_unknown_set(arr):
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.commit_set(sid())
    with expect(HResult.E_INVALIDARG):
        arr.commit_set("nope")


def test_commit_of_an_aborted_set(arr, lvm):
    set_id, prep = prepared(arr, "vol1")
    assert arr.abort_set(set_id)["state"] == "aborted"
    assert prep["snapshots"][0]["target"] not in lvm.names()  # the snapshot made in advance went
    with expect(HResult.VSS_E_BAD_STATE):
        arr.commit_set(set_id)
    assert lvm.called("repoint_snapshots") == []


def _assert_set_undone(arr, lvm, lio, set_id, prep):
    assert arr.set_view(set_id)["state"] == "aborted"
    targets = {s["target"] for s in prep["snapshots"]}
    assert not targets & lvm.names()
    assert not targets & set(lio.exports())
    assert not targets & {lun.name for lun in arr.store.luns()}
    origins = {"lun-" + s["lun"] for s in prep["snapshots"]}
    assert origins <= lvm.names() and origins <= set(lio.exports())  # origins untouched


def test_commit_failure_in_the_snapshot_batch(arr, lvm, lio):
    set_id, prep = prepared(arr, "vol1", "vol2", "vol3")
    failing = prep["snapshots"][1]["target"]
    lvm.inject("repoint_snapshots", LvmError(["bash"], 1, f"create_snap of {failing} failed"), name=failing)
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.commit_set(set_id)
    assert failing in e.value.message
    _assert_set_undone(arr, lvm, lio, set_id, prep)
    with expect(HResult.VSS_E_BAD_STATE):
        arr.commit_set(set_id)


def test_commit_failure_of_the_whole_batch(arr, lvm, lio):
    set_id, prep = prepared(arr, "vol1", "vol2")
    lvm.inject("repoint_snapshots", LvmError(["bash"], 1, "device-mapper: message ioctl failed"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError):
        arr.commit_set(set_id)
    _assert_set_undone(arr, lvm, lio, set_id, prep)


@pytest.mark.parametrize("which", [0, 1])
def test_publish_failure_in_export_keeps_the_committed_set(arr, lvm, lio, which):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    lio.inject("export", OSError("configfs busy"), name=prep["snapshots"][which]["target"])
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.publish_set(set_id)
    assert "configfs busy" in e.value.message
    assert arr.set_view(set_id)["state"] == "committed"
    assert {s["target"] for s in prep["snapshots"]} <= lvm.names()
    lio.clear_failures()
    arr.publish_set(set_id)  # a retry (or the next reconcile) finishes it
    assert {s["target"] for s in prep["snapshots"]} <= set(lio.exports())


def test_publish_failure_in_activation_keeps_the_committed_set(arr, lvm, lio):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    lvm.inject("activate", LvmError(["lvchange"], 5, "activation failed"), name=prep["snapshots"][1]["target"])
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError):
        arr.publish_set(set_id)
    lvm.clear_failures()
    reconcile(arr)  # after a restart: ready snapshots are activated and exported
    assert {s["target"] for s in prep["snapshots"]} <= set(lio.exports())


def test_publish_needs_a_committed_set(arr):
    set_id, _ = prepared(arr, "vol1")
    with expect(HResult.VSS_E_BAD_STATE):
        arr.publish_set(set_id)
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.publish_set(sid())


def test_mask_publishes_a_committed_snapshot_first(arr, lio):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    target = prep["snapshots"][0]["target"]
    view = arr.mask(target, "iqn.2026-11.lab.shadowlun:host-b")
    assert view.lun_id is not None and lio.exports()[target].serial == prep["snapshots"][0]["serial"]


def test_commit_after_an_origin_was_deleted_is_refused_before_anything_changes(arr, lvm):
    set_id, _ = prepared(arr, "vol1", "vol2")
    arr.delete("vol1")
    before = (arr.store.luns(), arr.store.snapshot_set(set_id), sorted(lvm.names()))
    lvm.calls.clear()
    with pytest.raises(VssError) as e:
        arr.commit_set(set_id)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND and "vol1" in e.value.message
    assert (arr.store.luns(), arr.store.snapshot_set(set_id), sorted(lvm.names())) == before
    assert lvm.called("repoint_snapshots") == [] and lvm.called("create_snapshots") == []


def test_abort_prepared_set(arr, lvm):
    set_id, prep = prepared(arr, "vol1")
    assert prep["snapshots"][0]["target"] in lvm.names()
    assert arr.abort_set(set_id)["state"] == "aborted"
    assert not [n for n in lvm.names() if n.startswith("snap-")]
    assert arr.abort_set(set_id)["state"] == "aborted"  # again: fine


def test_commit_after_a_restart_finds_the_snapshots_made_in_advance(arr, lvm, lio):
    """A new agent process knows nothing of the prepare: it looks the thin ids up."""
    set_id, prep = prepared(arr, "vol1", "vol2")
    again = Array(arr.config, arr.store, LvmThin(lvm), lio)
    lvm.calls.clear()
    assert again.commit_set(set_id)["state"] == "committed"
    assert len(lvm.called("thin_devices")) == 1 and len(lvm.called("repoint_snapshots")) == 1
    assert lvm.called("create_snapshots") == []


def test_a_restart_keeps_the_snapshots_made_in_advance_for_the_commit(arr, lvm, lio):
    """A prepared set's snapshots are the store's (its members): the reconcile of a restarted
    agent keeps them, and the commit makes them again in the pool as usual."""
    set_id, prep = prepared(arr, "vol1", "vol2")
    again = Array(arr.config, arr.store, LvmThin(lvm), lio)
    done = reconcile(again)
    assert {s["target"] for s in prep["snapshots"]} <= lvm.names() and done["set_aside"] == []
    lvm.calls.clear()
    assert again.commit_set(set_id)["state"] == "committed"
    assert len(lvm.called("repoint_snapshots")) == 1 and lvm.called("create_snapshots") == []


def test_commit_without_the_snapshots_made_in_advance_makes_them(arr, lvm, lio):
    """Snapshots made in advance and lost since (removed behind the agent's back): the commit
    makes them with lvcreate, as consistent though slower."""
    set_id, prep = prepared(arr, "vol1", "vol2")
    for s in prep["snapshots"]:
        del lvm.lvs[s["target"]]
    again = Array(arr.config, arr.store, LvmThin(lvm), lio)
    lvm.calls.clear()
    assert again.commit_set(set_id)["state"] == "committed"
    assert lvm.called("repoint_snapshots") == [] and len(lvm.called("create_snapshots")) == 1
    assert {s["target"] for s in prep["snapshots"]} <= lvm.names()


def test_abort_after_commit_removes_the_snapshots(arr, lvm, lio):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    target = prep["snapshots"][0]["target"]
    arr.mask(target, IQN1, read_only=True)
    view = arr.abort_set(set_id)
    assert view["state"] == "aborted"
    _assert_set_undone(arr, lvm, lio, set_id, prep)
    assert arr.store.masks() == []


def test_abort_unknown_set(arr):
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.abort_set(sid())


def test_set_view_unknown(arr):
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.set_view(sid())


def test_a_snapshot_is_deleted_like_a_volume(arr, lvm, lio):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    target = prep["snapshots"][0]["target"]
    arr.delete(target)
    assert target not in lvm.lvs and target not in lio.exports() and arr.store.lun(target) is None


# --- detach (break) ----------------------------------------------------------------------------

def committed(arr, *luns, publish=True):
    set_id, prep = prepared(arr, *luns)
    arr.commit_set(set_id)
    if publish:
        arr.publish_set(set_id)
    return set_id, [s["target"] for s in prep["snapshots"]]


def test_detach_makes_an_ordinary_lun(arr, lvm, lio):
    set_id, (target, other) = committed(arr, "vol1", "vol2")
    arr.mask(target, IQN1, read_only=True)
    before, export = arr.lun(target), lio.exports()[target]
    lio.calls.clear()
    view = arr.detach(target)
    assert (view.kind, view.origin, view.set_id, view.snapshot_id) == ("volume", "vol1", None, None)
    assert (view.name, view.serial, view.wwid, view.lun_id, view.masks, view.state) == (
        before.name, before.serial, before.wwid, before.lun_id, before.masks, "ready")
    assert arr.lun(target) == view
    assert lio.exports()[target] == export  # the export and its mapping untouched
    assert [c[0] for c in lio.calls if c[0] not in ("exports", "lun_number")] == []
    tags = lvm.lvs[target].tags
    assert "shadowlun" in tags and "shadowlun.kind=volume" in tags
    assert not [t for t in tags if t.startswith(("shadowlun.set=", "shadowlun.snapshot=", "shadowlun.kind=snap"))]
    assert arr.lun(other).kind == "snapshot" and arr.lun(other).set_id == set_id  # the rest of the set stays
    assert lvm.lvs[other].tag("shadowlun.set") == set_id
    assert arr.set_view(set_id)["state"] == "committed"


def test_detach_refused(arr, lvm, copies):
    make_volumes(arr, "vol1")
    _, (target,) = committed(arr, "vol2")
    wait_job(arr, arr.start_copy("vol1", "full1").job_id)
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.detach("nope")
    for name in ("vol1", "full1"):
        with expect(HResult.VSS_E_BAD_STATE) as e:
            arr.detach(name)
        assert "not a shadow copy" in e.value.message
    arr.detach(target)
    with expect(HResult.VSS_E_BAD_STATE):  # twice
        arr.detach(target)
    assert len(lvm.called("retag")) == 1
    assert arr.lun("vol1").kind == "volume" and arr.lun("full1").kind == "copy"


def test_detach_of_a_snapshot_not_published_yet(arr, lvm, lio):
    set_id, (target, other) = committed(arr, "vol1", "vol2", publish=False)
    arr.detach(target)
    assert target not in lio.exports()  # exported as any LUN: at its first mask, or at start
    arr.publish_set(set_id)  # the set's own snapshots only
    assert other in lio.exports() and target not in lio.exports()
    assert arr.mask(target, IQN1).lun_id is not None
    assert lio.exports()[target].serial == arr.lun(target).serial


def test_a_detached_lun_is_no_shadow_copy_of_its_set(arr, lvm, lio):
    set_id, (target, other) = committed(arr, "vol1", "vol2")
    arr.mask(target, IQN1)
    arr.mask(other, IQN1)
    serial = arr.detach(target).serial
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):  # no import of it as a shadow copy
        arr.claim_import([serial], HOST_B)
    assert arr.abort_set(set_id)["state"] == "aborted"  # removes the set's shadow copies only
    assert other not in lvm.lvs and other not in lio.exports() and arr.store.lun(other) is None
    assert target in lvm.lvs and set(lio.mappings(target)) == {IQN1}
    assert arr.lun(target).masks == [{"initiator": IQN1, "read_only": False}]
    assert len(arr.set_view(set_id)["snapshots"]) == 2  # the set as it was made
    arr.unmask(target, IQN1)
    arr.delete(target)  # deleted like any LUN
    assert target not in lvm.lvs and arr.store.lun(target) is None


def test_a_detached_snapshot_id_is_not_taken_again(arr):
    set_id, (target,) = committed(arr, "vol1")
    arr.detach(target)
    snapshot_id = arr.set_view(set_id)["snapshots"][0]["snapshot_id"]
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.prepare_set(sid(), [{"snapshot_id": snapshot_id, "lun": "vol1"}])


def test_detach_when_the_tags_cannot_be_changed_changes_nothing(arr, lvm, lio):
    set_id, (target,) = committed(arr, "vol1")
    before, tags = arr.lun(target), lvm.lvs[target].tags
    lvm.inject("retag", LvmError(["lvchange"], 5, "metadata update failed"))
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.detach(target)
    assert "metadata update failed" in e.value.message
    assert arr.lun(target) == before and lvm.lvs[target].tags == tags
    lvm.clear_failures()
    assert arr.detach(target).kind == "volume"  # a retry does it


def test_a_detached_lun_stays_a_volume_after_a_restart(arr, lvm, lio):
    _, (target,) = committed(arr, "vol1")
    arr.mask(target, IQN1)
    view = arr.detach(target)
    lvm.calls.clear(), lio.calls.clear()
    again = restarted(arr)
    done = reconcile(again)
    assert all(v == [] for v in done.values()), done
    assert again.lun(target) == view
    assert lvm.called("remove") == [] and lvm.called("retag") == [] and lio.called("unexport") == []


def test_reconcile_finishes_an_interrupted_detach(arr, lvm, lio, crash_at):
    _, (target,) = committed(arr, "vol1")
    crash_at("detach-after-store")
    with pytest.raises(Crash):
        arr.detach(target)
    assert arr.store.lun(target).kind == "volume" and lvm.lvs[target].tag("shadowlun.set")
    crash_at(None)
    done = reconcile(restarted(arr))
    assert f"{target} tags" in done["rebuilt"]
    lv = lvm.lvs[target]
    assert lv.tag("shadowlun.set") is None and lv.tag("shadowlun.snapshot") is None
    assert lv.tag("shadowlun.kind") == "volume" and lv.owned
    assert target in lio.exports() and arr.lun(target).kind == "volume"
    assert all(v == [] for v in reconcile(restarted(arr)).values())


def test_reconcile_reports_tags_it_cannot_change(arr, lvm, crash_at):
    _, (target,) = committed(arr, "vol1")
    crash_at("detach-after-store")
    with pytest.raises(Crash):
        arr.detach(target)
    lvm.inject("retag", LvmError(["lvchange"], 5, "metadata update failed"))
    done = reconcile(restarted(arr))
    assert any(target in e and "metadata update failed" in e for e in done["errors"])
    assert arr.store.lun(target).kind == "volume"


# --- jobs --------------------------------------------------------------------------------------

def wait_job(arr, job_id, timeout=5.0):
    return poll(lambda: arr.job(job_id), lambda job: job.state == "running", timeout, f"job {job_id}",
                interval_s=0.01)


@pytest.fixture
def copies(monkeypatch):
    """targets.jobs.copy_blocks replaced: records its calls, reports progress, returns."""
    calls = []

    def fake(src, dst, size, progress=None, only_changed=False):
        calls.append((src, dst, size, only_changed))
        if progress:
            progress(size // 2)
            progress(size)
        return size

    monkeypatch.setattr(jobs_mod, "copy_blocks", fake)
    return calls


def test_copy(arr, lvm, lio, copies):
    make_volumes(arr, "vol1")
    job = arr.start_copy("vol1", "full1")
    assert (job.kind, job.source, job.target, job.total_bytes) == ("copy", "lun-vol1", "lun-full1", 64 * MiB)
    job = wait_job(arr, job.job_id)
    assert job.state == "done" and job.done_bytes == 64 * MiB and job.percent == 100.0
    assert copies == [("/dev/shadowlun/lun-vol1", "/dev/shadowlun/lun-full1", 64 * MiB, False)]
    view = arr.lun("full1")
    assert (view.kind, view.origin, view.state, view.size_bytes) == ("copy", "vol1", "ready", 64 * MiB)
    assert lio.exports()["lun-full1"].serial == view.serial != arr.lun("vol1").serial
    assert lvm.called("create_volume")[-1] == ("lun-full1", 64 * MiB, {"shadowlun.kind": "copy"})


def test_copy_activates_an_inactive_source(arr, lvm, copies):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    target = prep["snapshots"][0]["target"]
    lvm.add_lv(target, 64 * MiB, active=False, origin="lun-vol1")
    wait_job(arr, arr.start_copy(target, "full1").job_id)
    assert lvm.lvs[target].active


def test_copy_failure(arr, lvm, lio, monkeypatch):
    make_volumes(arr, "vol1")

    def broken(*a, **kw):
        raise OSError("short read from /dev/shadowlun/lun-vol1 at 0")

    monkeypatch.setattr(jobs_mod, "copy_blocks", broken)
    job = wait_job(arr, arr.start_copy("vol1", "full1").job_id)
    assert job.state == "failed" and "short read" in job.error
    assert "lun-full1" not in lvm.lvs and "lun-full1" not in lio.exports() and arr.store.lun("lun-full1") is None


def test_a_cancelled_copy_leaves_no_lun_and_only_its_requester_or_the_admin_cancels(arr, lvm, lio, monkeypatch):
    import threading

    from targets.authority import Caller

    make_volumes(arr, "vol1")
    go = threading.Event()

    def slow(src, dst, size, progress=None, only_changed=False):
        while not go.is_set():
            progress(size // 2)
            go.wait(0.01)
        return size

    monkeypatch.setattr(jobs_mod, "copy_blocks", slow)
    job = arr.start_copy("vol1", "full1")
    stranger = Caller("host-b", next(iter(h.initiator for h in arr.store.hosts())))
    with expect(HResult.E_ACCESSDENIED):
        arr.cancel_job(job.job_id, stranger)
    assert arr.job(job.job_id).state == "running"
    cancelled = arr.cancel_job(job.job_id)
    assert cancelled.state == "cancelled" and cancelled.error is None
    assert "lun-full1" not in lvm.lvs and "lun-full1" not in lio.exports() and arr.store.lun("lun-full1") is None
    assert arr.cancel_job(job.job_id).state == "cancelled"  # again: answered as it is
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.cancel_job("nope")


def test_copy_validation(arr, lvm, copies):
    make_volumes(arr, "vol1", "vol2")
    with expect(HResult.E_INVALIDARG):
        arr.start_copy("vol1", "Bad_Name")
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.start_copy("nope", "full1")
    with expect(HResult.VSS_E_OBJECT_ALREADY_EXISTS):
        arr.start_copy("vol1", "vol2")
    assert arr.store.jobs() == [] and copies == []


def test_copy_refused_when_it_would_fill_the_pool(arr, lvm, copies):
    lvm.pool_size = 1 * GiB
    make_volumes(arr, "vol1", size=512 * MiB)
    lvm.data_percent = 50.0
    lvm.add_lv("lun-vol1", 512 * MiB, data_percent=100.0)  # fully mapped: a copy needs 512 MiB
    with expect(HResult.VSS_E_INSUFFICIENT_STORAGE):
        arr.start_copy("vol1", "full1")
    assert arr.store.jobs() == [] and arr.store.lun("lun-full1") is None and "lun-full1" not in lvm.lvs


def test_copy_lv_failure_leaves_nothing(arr, lvm, lio, copies):
    make_volumes(arr, "vol1")
    lvm.inject("create_volume", LvmError(["lvcreate"], 5, "Insufficient free space"), name="lun-full1")
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.start_copy("vol1", "full1")
    assert "Insufficient free space" in e.value.message
    assert arr.store.lun("lun-full1") is None and "lun-full1" not in lvm.lvs and "lun-full1" not in lio.exports()
    assert [j.state for j in arr.store.jobs()] in ([], ["failed"])  # no job left running
    assert copies == []
    lvm.clear_failures()
    assert wait_job(arr, arr.start_copy("vol1", "full1").job_id).state == "done"  # the name is free again


def test_resync(arr, lvm, copies):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    snap = prep["snapshots"][0]["target"]
    job = arr.start_resync(snap, "vol1")
    assert (job.kind, job.source, job.target) == ("resync", snap, "lun-vol1")
    assert wait_job(arr, job.job_id).state == "done"
    assert copies == [("/dev/shadowlun/" + snap, "/dev/shadowlun/lun-vol1", 64 * MiB, True)]
    # The snapshot was committed but never published: the resync had to activate it to read it.
    assert (snap,) in lvm.called("activate") and lvm.lvs[snap].active


def test_resync_refused_onto_a_smaller_target(arr, copies):
    make_volumes(arr, "small", size=MiB)
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    with expect(HResult.E_INVALIDARG):
        arr.start_resync(prep["snapshots"][0]["target"], "small")
    assert copies == []


def test_resync_refused_while_the_target_is_in_a_job(arr, store, copies):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    store.add_job("j-old", "resync", "snap-x", "lun-vol1", 1)
    with expect(HResult.VSS_E_RESYNC_IN_PROGRESS):
        arr.start_resync(prep["snapshots"][0]["target"], "vol1")
    assert copies == []


def test_unknown_job(arr):
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.job("nope")


# --- identity revert (BreakSnapshotSetEx REVERT_IDENTITY_ALL) -------------------------------------

def whole(arr) -> tuple:
    """Everything the array holds: store rows, LV tags, LIO exports with serials and mappings."""
    return ("\n".join(arr.store._db.iterdump()), sorted((lv.name, tuple(lv.tags)) for lv in arr.backend.lvm.lvs.values()),
            sorted((n, e.serial, e.mappings) for n, e in arr.lio.exports().items()))


def imported_elsewhere(arr, *volumes):
    """Volumes masked to host 1, a committed set of them whose shadow LUNs host 2 imported."""
    make_volumes(arr, *volumes)
    for v in volumes:
        arr.mask(v, IQN1)
    set_id, targets = committed(arr, *volumes)
    for t in targets:
        arr.mask(t, IQN2)
    return set_id, targets


def test_a_broken_copy_takes_its_originals_identity(arr, lio):
    _, (t1, t2) = imported_elsewhere(arr, "vol1", "vol2")
    arr.detach(t1)  # broken already, or still a shadow copy: both may take the identity
    views = arr.take_identity([t1, t2, t1])
    for view, origin in zip(views, ("vol1", "vol2")):
        orig = arr.lun(origin)
        assert (view.serial, view.wwid, view.identity_of) == (orig.serial, orig.wwid, origin)
        assert lio.exports()[view.name].serial == orig.serial  # what hosts read now
        assert lio.mappings(view.name) == {IQN2: Mapping(IQN2, view.lun_id, False)}  # masks kept
    assert arr.store.lun(t1).serial != arr.lun("vol1").serial  # its own serial is kept in the store
    calls = len(lio.called("change_serial"))
    assert arr.take_identity([t1, t2]) == [arr.lun(t1), arr.lun(t2)]  # again: nothing to do
    assert len(lio.called("change_serial")) == calls
    assert arr.luns.new_serial() not in {arr.lun("vol1").serial, arr.lun("vol2").serial}


def test_a_copy_no_host_sees_takes_the_identity_in_the_store_and_shows_it_when_masked(arr, lio):
    """Not exported yet (no host was given it): no LIO object to change; the identity is the
    store's, and the export made for a mask later carries it (found by the fuzz suite: this
    was a 500 VSS_E_PROVIDER_VETO, 'not exported')."""
    make_volumes(arr, "vol1")
    arr.mask("vol1", IQN1)
    _, (t1,) = committed(arr, "vol1", publish=False)
    assert t1 not in lio.exports()
    [view] = arr.take_identity([t1])
    assert (view.serial, view.identity_of) == (arr.lun("vol1").serial, "vol1")
    assert lio.called("change_serial") == []
    arr.mask(t1, IQN2)
    assert lio.exports()[t1].serial == arr.lun("vol1").serial


def test_an_identity_revert_that_would_show_a_host_two_luns_with_one_identity_changes_nothing(arr):
    _, (t1, t2) = imported_elsewhere(arr, "vol1", "vol2")
    arr.mask("vol2", IQN2)  # the second original is presented to the importing host too
    before = whole(arr)
    with expect(HResult.VSS_E_BREAK_REVERT_ID_FAILED) as e:
        arr.take_identity([t1, t2])
    assert "vol2" in e.value.message
    assert whole(arr) == before  # not even the first LUN's identity changed
    arr.unmask("vol2", IQN2)
    arr.take_identity([t1, t2])
    before = whole(arr)
    for lun, host in (("vol1", IQN2), (t1, IQN1)):  # and no mask may make it so later
        with expect(HResult.VSS_E_BAD_STATE):
            arr.mask(lun, host)
    assert whole(arr) == before


def test_an_identity_revert_is_refused_for_what_is_no_shadow_copy_or_has_lost_its_original(arr, copies):
    _, (t1,) = imported_elsewhere(arr, "vol1")
    make_volumes(arr, "vol3")
    wait_job(arr, arr.start_copy("vol3", "full3").job_id)
    before = whole(arr)
    for names, code in ((["vol1"], HResult.E_INVALIDARG), (["full3"], HResult.E_INVALIDARG),
                        ([t1, "vol3"], HResult.E_INVALIDARG), (["nope"], HResult.VSS_E_OBJECT_NOT_FOUND),
                        ([], HResult.E_INVALIDARG), ("vol1", HResult.E_INVALIDARG), ([7], HResult.E_INVALIDARG)):
        with expect(code):
            arr.take_identity(names)
        assert whole(arr) == before, names
    arr.unmask("vol1", IQN1)
    arr.delete("vol1")
    before = whole(arr)
    with expect(HResult.VSS_E_BREAK_REVERT_ID_FAILED) as e:
        arr.take_identity([t1])
    assert "no longer on this array" in e.value.message and whole(arr) == before


def test_an_identity_revert_only_by_the_host_holding_the_copies(arr):
    _, (t1,) = imported_elsewhere(arr, "vol1")
    arr.claim_import([arr.lun(t1).serial], IQN2)  # host 2 holds the copy now
    one, two = (arr.caller_for(arr.issue_token(i)["token"]) for i in (IQN1, IQN2))
    before = whole(arr)
    with pytest.raises(VssError) as e:
        arr.take_identity([t1], caller=one)
    assert e.value.hresult == HResult.E_ACCESSDENIED and whole(arr) == before
    arr.take_identity([t1], caller=two)
    assert arr.lun(t1).identity_of == "vol1"


def test_a_failed_identity_revert_puts_back_what_it_changed(arr, lio):
    _, (t1, t2) = imported_elsewhere(arr, "vol1", "vol2")
    before = whole(arr)
    lio.inject("change_serial", OSError("configfs: device busy"), name=t2)
    with expect(HResult.VSS_E_PROVIDER_VETO, VssError) as e:
        arr.take_identity([t1, t2])
    assert "nothing was reverted" in e.value.message
    assert whole(arr) == before  # the first LUN has its own identity again


def test_a_crash_inside_an_identity_revert_is_finished_by_the_reconcile(arr, lio, crash_at):
    _, (t1,) = imported_elsewhere(arr, "vol1")
    crash_at("take-identity-after-store")
    with pytest.raises(Crash):
        arr.take_identity([t1])
    assert lio.exports()[t1].serial != arr.lun("vol1").serial  # LIO not changed yet
    crash_at(None)
    again = restarted(arr)
    reconcile(again)
    assert lio.exports()[t1].serial == arr.lun("vol1").serial == again.lun(t1).serial
    assert set(lio.mappings(t1)) == {IQN2}


# --- reconcile ---------------------------------------------------------------------------------

class Crash(BaseException):
    """Stands for the SIGKILL of crash_point: no except-Exception cleanup runs."""


@pytest.fixture
def crash_at(monkeypatch):
    def arm(point: str | None) -> None:
        """Crash at `point` from now on (None: no more crashes)."""
        def crash(name: str) -> None:
            if name == point:
                raise Crash(name)

        for module in (luns_mod, sets_mod, jobs_mod):  # where the array's crash points are
            monkeypatch.setattr(module, "crash_point", crash)

    return arm


def reconcile(arr) -> dict:
    """The agent's reconcile at start (targets.reconcile), over this array."""
    return Reconciler(arr).reconcile()


def restarted(arr):
    """The agent again, after a restart: the same store, kernel state and config."""
    return make_array(arr.store, arr.backend.lvm, arr.lio)


def plexed_until(arr, monkeypatch, point: str | None, copy_crashes: bool = False) -> tuple[str, str]:
    """A committed set of vol1, exported, whose PLEX copy job the agent's death stops at
    `point` (or inside the copy); returns (the shadow LUN, its copy's LV)."""
    def copy(src, dst, size, progress=None, only_changed=False):
        if copy_crashes:
            raise Crash("copy")
        return size

    monkeypatch.setattr(jobs_mod, "copy_blocks", copy)
    _, (target,) = committed(arr, "vol1")
    set_id = arr.store.lun(target).set_id
    [job] = arr.plex_set(set_id)
    arr.jobs.threads[job.job_id].join(5)
    assert arr.store.job(job.job_id).state == "running"  # what a SIGKILL leaves
    return target, job.target


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the job thread's "SIGKILL"
@pytest.mark.parametrize("point", ["plex-copied", "plex-swap"])
def test_a_crash_after_a_full_copy_is_finished_by_the_reconcile(arr, lvm, lio, monkeypatch, crash_at, point):
    """Killed once the copy was made (tagged as the snapshot it replaces), or between the
    snapshot's removal and the copy's rename: the next start swaps the copy in."""
    crash_at(point)
    target, plex = plexed_until(arr, monkeypatch, point)
    crash_at(None)
    done = reconcile(restarted(arr))
    assert plex not in lvm.lvs and lvm.lvs[target].origin == ""  # the copy, no snapshot any more
    assert lvm.lvs[target].tag("shadowlun.snapshot") == arr.store.lun(target).snapshot_id
    assert lio.exports()[target].serial == arr.store.lun(target).serial
    assert [j.state for j in arr.store.jobs()] == ["done"] and done["failed_jobs"] == []
    assert done["set_aside"] == [] and done["errors"] == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the job thread's "SIGKILL"
def test_a_crash_inside_a_full_copy_removes_the_copy_and_keeps_the_snapshot(arr, lvm, lio, monkeypatch, crash_at):
    target, plex = plexed_until(arr, monkeypatch, None, copy_crashes=True)
    snapshot = lvm.lvs[target]
    done = reconcile(restarted(arr))
    assert plex not in lvm.lvs and lvm.lvs[target] == snapshot and target in lio.exports()
    assert [j.state for j in arr.store.jobs()] == ["failed"] and done["set_aside"] == []


def test_reconcile_of_a_clean_array_does_nothing(arr, lvm, lio):
    make_volumes(arr, "vol1")
    arr.mask("vol1", IQN1)
    done = reconcile(arr)
    assert all(v == [] for v in done.values()), done
    assert lio.called("unexport") == [] and lvm.called("remove") == []


def test_reconcile_removes_a_creating_lun_with_its_lv(arr, lvm, lio, crash_at):
    crash_at("volume-lv-created")
    with pytest.raises(Crash):
        arr.create_volume("vol1", 64 * MiB)
    assert "lun-vol1" in lvm.lvs and arr.store.lun("lun-vol1").state == "creating"
    done = reconcile(restarted(arr))
    assert "lun-vol1" in done["removed"]
    assert "lun-vol1" not in lvm.lvs and arr.store.lun("lun-vol1") is None and "lun-vol1" not in lio.exports()
    crash_at(None)
    assert restarted(arr).create_volume("vol1", 64 * MiB).state == "ready"


def test_reconcile_removes_a_creating_lun_without_its_lv(arr, lvm, store):
    store.add_lun("lun-vol1", "volume", MiB, "ab" * 16)
    done = reconcile(arr)
    assert "lun-vol1" in done["removed"] and done["errors"] == []
    assert store.lun("lun-vol1") is None


def test_reconcile_removes_a_deleting_lun(arr, lvm, lio, store):
    make_volumes(arr, "vol1")
    store.set_lun_state("lun-vol1", "deleting")
    reconcile(arr)
    assert "lun-vol1" not in lvm.lvs and "lun-vol1" not in lio.exports() and store.lun("lun-vol1") is None


@pytest.mark.parametrize("point", ["commit-before-snapshots", "commit-after-snapshots"])
def test_reconcile_aborts_a_committing_set(arr, lvm, lio, crash_at, point):
    set_id, prep = prepared(arr, "vol1", "vol2")
    crash_at(point)
    with pytest.raises(Crash):
        arr.commit_set(set_id)
    assert arr.set_view(set_id)["state"] == "committing"
    done = reconcile(restarted(arr))
    assert done["aborted_sets"] == [set_id]
    _assert_set_undone(arr, lvm, lio, set_id, prep)
    assert {lun.name for lun in arr.store.luns()} == {"lun-vol1", "lun-vol2"}


def test_reconcile_sets_aside_owned_lvs_not_in_the_store(arr, lvm, lio):
    """Tagged as ours, unknown to the store: reported, not removed, and an export they already
    have is left (a host may be using it)."""
    make_volumes(arr, "vol1")
    lvm.add_lv("lun-stray", owned=True)
    lvm.add_lv("snap-stray", tags={"shadowlun.set": "x"}, owned=True, origin="lun-vol1")
    lio.plant("lun-stray", "/dev/shadowlun/lun-stray", "ef" * 16, [Mapping(IQN1, 1, False)])
    done = reconcile(arr)
    assert done["set_aside"] == ["lun-stray", "snap-stray"] and done["removed"] == []
    assert lvm.names() == {"lun-vol1", "lun-stray", "snap-stray"} and lvm.called("remove") == []
    assert set(lio.mappings("lun-stray")) == {IQN1} and lio.called("unexport") == []
    assert all(c[0] != "lun-stray" for c in lio.called("export"))
    assert [lun.name for lun in arr.inventory()] == ["vol1"]


def test_reconcile_leaves_unowned_lvs(arr, lvm, lio):
    lvm.add_lv("root", owned=False)
    lvm.add_lv("lun-someone-elses", owned=False)
    done = reconcile(arr)
    assert lvm.names() == {"root", "lun-someone-elses"}
    assert lvm.called("remove") == [] and done["removed"] == []


def test_reconcile_unexports_our_exports_not_in_the_store(arr, lio):
    lio.plant("lun-ghost", "/dev/shadowlun/lun-ghost", "ab" * 16)
    lio.plant("other-backstore", "/dev/sdz", "cd" * 16)  # not ours by name: left alone
    lio.orphans |= {"snap-half", "foreign"}
    done = reconcile(arr)
    assert set(lio.exports()) == {"other-backstore"}
    assert lio.orphan_backstores() == ["foreign"]
    assert "LIO lun-ghost" in done["removed"] and "LIO backstore snap-half" in done["removed"]


def test_reconcile_reexports_a_ready_lun_with_its_serial_and_masks(arr, lvm, lio):
    view = arr.create_volume("vol1", 64 * MiB)
    arr.mask("vol1", IQN1, read_only=True)
    arr.mask("vol1", IQN2)
    lio.drop("lun-vol1")
    lio.chap.clear()
    done = reconcile(restarted(arr))
    assert "lun-vol1" in done["rebuilt"]
    export = lio.exports()["lun-vol1"]
    assert export.serial == view.serial and export.device == "/dev/shadowlun/lun-vol1"
    assert {m.initiator: m.read_only for m in export.mappings} == {IQN1: True, IQN2: False}
    assert lio.chap == {i: (arr.store.host(i).chap_user, arr.store.host(i).chap_secret) for i in (IQN1, IQN2)}
    assert arr.lun("vol1").wwid == view.wwid


def test_reconcile_activates_an_inactive_ready_lv(arr, lvm):
    make_volumes(arr, "vol1")
    lvm.add_lv("lun-vol1", 64 * MiB, active=False)
    reconcile(arr)
    assert lvm.lvs["lun-vol1"].active


def test_reconcile_reports_a_ready_lun_whose_lv_is_gone(arr, lvm, store):
    make_volumes(arr, "vol1")
    del lvm.lvs["lun-vol1"]
    done = reconcile(arr)
    assert any("lun-vol1" in e for e in done["errors"])
    assert store.lun("lun-vol1").state == "ready"  # left for an operator, not forgotten


def test_reconcile_unmasks_mappings_not_in_the_store(arr, lio):
    make_volumes(arr, "vol1")
    arr.mask("vol1", IQN1)
    lio.mask("lun-vol1", IQN2, "u", SECRET)
    done = reconcile(arr)
    assert set(lio.mappings("lun-vol1")) == {IQN1}
    assert f"lun-vol1 -> {IQN2}" in done["removed"]
    assert [m.initiator for m in arr.store.masks("lun-vol1")] == [IQN1]


def test_reconcile_fixes_a_mapping_with_the_wrong_access(arr, lio):
    make_volumes(arr, "vol1")
    arr.mask("vol1", IQN1, read_only=True)
    lio.mask("lun-vol1", IQN1, "u", SECRET, read_only=False)
    reconcile(arr)
    assert lio.mappings("lun-vol1")[IQN1].read_only is True


def test_reconcile_reexports_a_lun_with_the_wrong_serial_and_its_masks(arr, lio):
    view = arr.create_volume("vol1", 64 * MiB)
    arr.mask("vol1", IQN1, read_only=True)
    lio.drop("lun-vol1")
    lio.plant("lun-vol1", "/dev/shadowlun/lun-vol1", "00" * 16, [Mapping(IQN1, 0, True)])
    lio.chap.clear()
    done = reconcile(arr)
    assert "lun-vol1" in done["rebuilt"]
    export = lio.exports()["lun-vol1"]
    assert export.serial == view.serial
    assert [(m.initiator, m.read_only) for m in export.mappings] == [(IQN1, True)]
    assert lio.chap[IQN1] == (arr.store.host(IQN1).chap_user, arr.store.host(IQN1).chap_secret)


def test_reconcile_fails_running_jobs(arr, lvm, store):
    make_volumes(arr, "vol1", "vol2")
    store.add_job("j-resync", "resync", "snap-x", "lun-vol1", 100)
    store.add_lun("lun-full1", "copy", 64 * MiB, "ab" * 16, origin="lun-vol2")
    lvm.add_lv("lun-full1", 64 * MiB, {"shadowlun.kind": "copy"})
    store.add_job("j-copy", "copy", "lun-vol2", "lun-full1", 100)
    store.add_job("j-done", "copy", "lun-vol2", "lun-old", 100)
    store.update_job("j-done", state="done")
    done = reconcile(restarted(arr))
    assert sorted(done["failed_jobs"]) == ["j-copy", "j-resync"]
    for j in ("j-resync", "j-copy"):
        job = store.job(j)
        assert job.state == "failed" and "interrupted" in job.error
    assert store.job("j-done").state == "done"
    assert "lun-full1" not in lvm.lvs and store.lun("lun-full1") is None
    assert lvm.names() == {"lun-vol1", "lun-vol2"}  # the resync's target is kept


def test_reconcile_twice_changes_nothing_the_second_time(arr, lvm, lio, crash_at):
    make_volumes(arr, "vol1")
    arr.mask("vol1", IQN1)
    lio.drop("lun-vol1")
    lvm.add_lv("lun-stray")
    reconcile(restarted(arr))
    lvm.calls.clear(), lio.calls.clear()
    done = reconcile(restarted(arr))
    assert done["set_aside"] == ["lun-stray"], done  # reported again: not a change
    assert all(v == [] for k, v in done.items() if k != "set_aside"), done
    assert lio.called("export") == [] and lio.called("mask") == [] and lvm.called("remove") == []


def test_claim_import_once_per_set(arr):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    serials = [s["serial"] for s in prep["snapshots"]]
    a, b = "iqn.2026-11.lab.shadowlun:host-a", "iqn.2026-11.lab.shadowlun:host-b"
    assert arr.claim_import(serials, b)["sets"][0]["host"] == b
    assert arr.claim_import(serials[:1], b)["sets"][0]["host"] == b  # the same host again: a retry
    with expect(HResult.VSS_E_BAD_STATE) as e:
        arr.claim_import(serials, a)
    assert b in e.value.message
    assert arr.set_view(set_id)["imported_by"] == b


def test_claim_import_refuses_unknown_serials_and_claims_nothing(arr):
    set_id, prep = prepared(arr, "vol1")
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):  # prepared only: no shadow LUN yet
        arr.claim_import([prep["snapshots"][0]["serial"]], "iqn.2026-11.lab.shadowlun:host-b")
    arr.commit_set(set_id)
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.claim_import([prep["snapshots"][0]["serial"], "f" * 32], "iqn.2026-11.lab.shadowlun:host-b")
    assert arr.set_view(set_id)["imported_by"] is None
    with expect(HResult.E_INVALIDARG):
        arr.claim_import([prep["snapshots"][0]["serial"]], "not an iqn")


def test_claim_import_by_an_initiator_that_is_not_a_host(arr):
    set_id, prep = prepared(arr, "vol1")
    arr.commit_set(set_id)
    serials = [prep["snapshots"][0]["serial"]]
    with expect(HResult.E_ACCESSDENIED) as e:
        arr.claim_import(serials, STRANGER)
    assert "PUT /v1/hosts/" in e.value.message
    assert arr.set_view(set_id)["imported_by"] is None and arr.store.import_of(set_id) is None
    with expect(HResult.E_ACCESSDENIED):  # refused before the serials are even looked at
        arr.claim_import(["f" * 32], STRANGER)
    arr.register_host(STRANGER, "stranger")
    assert arr.claim_import(serials, STRANGER)["sets"][0]["host"] == STRANGER


def test_publish_activates_in_one_lvchange(arr, lvm, lio):
    """Publishing a big set must not cost one lvs and one lvchange per LUN: a 16-LUN set took
    longer than PostCommitSnapshots' 30 s under TCG that way (LIO saves once per burst itself,
    test_targets_lio)."""
    luns = [f"v{i}" for i in range(16)]
    set_id, _ = prepared(arr, *luns)
    arr.commit_set(set_id)
    lvm.calls.clear()
    lio.calls.clear()
    arr.publish_set(set_id)
    assert len(lvm.called("volumes")) == 1 and [len(c) for c in lvm.called("activate")] == [16]
    assert len(lio.called("export")) == 16
    snaps = [lun for lun in arr.inventory() if lun.kind == "snapshot"]
    assert len(snaps) == 16 and all(lv.active for lv in lvm.volumes() if lv.name.startswith("snap-"))
    assert set(lio.exports()) >= {lun.name for lun in snaps}


def import_state(arr) -> tuple:
    return (sorted((m.lun, m.initiator) for m in arr.store.masks()), sorted(arr.store._rows("SELECT * FROM imports")),
            sorted((lun.name, lun.holder) for lun in arr.store.luns()), sorted(arr.lio.exports().items()))


def test_attach_import_claims_and_masks_the_set_in_one_call_with_one_lvs(arr, lvm):
    set_id, prep = prepared(arr, "vol1", "vol2", "vol3")
    arr.commit_set(set_id)
    arr.publish_set(set_id)
    serials = [s["serial"] for s in prep["snapshots"]]
    lvs_before = len(lvm.called("volumes"))
    attached = arr.attach_import(serials, HOST_B)
    assert len(lvm.called("volumes")) - lvs_before <= 1  # the publish check once, not per LUN
    assert attached["sets"][0]["host"] == HOST_B and attached["masked"] == serials
    assert [v.masks for v in attached["luns"]] == [[{"initiator": HOST_B, "read_only": False}]] * 3
    assert [v.serial for v in attached["luns"]] == serials and all(v.lun_id is not None for v in attached["luns"])
    assert arr.attach_import(serials, HOST_B)["masked"] == []  # a retry masks nothing new


def test_a_mask_refused_by_lio_undoes_the_whole_attach(arr, lio):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    arr.publish_set(set_id)
    serials = [s["serial"] for s in prep["snapshots"]]
    before = import_state(arr)
    lio.inject("mask", RuntimeError("configfs: no space"), name=prep["snapshots"][1]["target"])
    with expect(HResult.VSS_E_PROVIDER_VETO, VssRuntimeError) as e:
        arr.attach_import(serials, HOST_B)
    assert "configfs: no space" in e.value.message and import_state(arr) == before
    lio.clear_failures()
    assert arr.attach_import(serials, HOST_B)["masked"] == serials


def test_release_import_gives_back_only_the_importers_and_keeps_a_claim_with_luns_left(arr):
    set_id, prep = prepared(arr, "vol1", "vol2")
    arr.commit_set(set_id)
    serials = [s["serial"] for s in prep["snapshots"]]
    arr.attach_import(serials, HOST_B)
    with expect(HResult.VSS_E_OBJECT_NOT_FOUND):
        arr.release_import(serials + ["f" * 32], HOST_B)  # all checked first: nothing released
    assert arr.release_import(serials[:1], HOST_B) == {"unmasked": serials[:1], "unclaimed": []}
    assert arr.set_view(set_id)["imported_by"] == HOST_B  # vol2's shadow LUN is still masked to it
    assert arr.release_import(serials[1:], HOST_B) == {"unmasked": serials[1:], "unclaimed": [set_id]}
    assert arr.set_view(set_id)["imported_by"] is None and arr.store.masks() == [
        m for m in arr.store.masks() if not m.lun.startswith("snap-")]
