"""The provider's methods against the real array logic (targets.array.Array) over in-memory LVM
and LIO fakes, through an adapter with the agent client's shape, and a fake host initiator."""
from __future__ import annotations

import uuid
from dataclasses import asdict

import pytest

from provider.hardware import hardware_provider
from provider.hardware.hardware_provider import HostIdentity, ShadowLunProvider, array_snapshot_id
from targets.authority import ADMIN, Caller
from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.lio_target import predict_lio_lun_info
from provider.hardware.lun_info import read_lun_info
from provider.contract.state_machine import ProviderState
from provider.contract.vss_types import HardwareOptions, SnapshotContext, VolumeSnapshotAttributes
from targets_fakes import FakeLvm, make_array

MIB = 1 << 20
BACKUP = int(SnapshotContext.VSS_CTX_BACKUP)
TRANSPORTABLE = BACKUP | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE)
PLEX = BACKUP | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX)
HOST = HostIdentity("iqn.2026-11.lab.shadowlun:host-a", "host-a", "secret-host-a1")


class InProcessArray:
    """provider.hardware.array_client.ArrayClient's methods, answered by an in-process Array as `caller` (the
    admin unless a host is given: what that host's token would get from the agent)."""

    def __init__(self, array, caller=ADMIN) -> None:
        self.a, self.c = array, caller

    def luns(self):
        return [asdict(v) for v in self.a.inventory(self.c)]

    def target(self):
        return {"iqn": "iqn.2026-11.lab.shadowlun:array.target", "portals": ["10.87.0.10:3260"]}

    def pool(self):
        return self.a.pool()

    def prepare_set(self, set_id, snapshots, transportable=False):
        return self.a.prepare_set(set_id, snapshots, self.c, transportable)

    def commit_set(self, set_id):
        return self.a.commit_set(set_id, self.c)

    def attach_import(self, serials, host):
        attached = self.a.attach_import(serials, host, self.c)
        for v in attached["luns"]:  # what LIO will report for these LUNs on the host
            FakeSysfs.records[v.wwid] = predict_lio_lun_info(v.serial)
        return {**attached, "luns": [asdict(v) for v in attached["luns"]], "target": self.target()}

    def release_import(self, serials, host):
        return self.a.release_import(serials, host, self.c)

    def publish_set(self, set_id):
        return self.a.publish_set(set_id, self.c)

    def abort_set(self, set_id):
        return self.a.abort_set(set_id, self.c)

    def hand_out_set(self, set_id):
        return self.a.hand_out_set(set_id, self.c)

    def plex_set(self, set_id):
        return {"jobs": [asdict(j) for j in self.a.plex_set(set_id, self.c)]}

    def mask(self, name, initiator, read_only=False):
        return asdict(self.a.mask(name, initiator, read_only, self.c))

    def unmask(self, name, initiator):
        return asdict(self.a.unmask(name, initiator, self.c))

    def delete(self, name):
        self.a.delete(name, self.c)

    def start_resync(self, name, snapshot):
        return asdict(self.a.start_resync(snapshot, name, self.c))

    def job(self, job_id):
        return asdict(self.a.job(job_id, self.c))

    def cancel_job(self, job_id):
        return asdict(self.a.cancel_job(job_id, self.c))

    def detach(self, name):
        return asdict(self.a.detach(name, self.c))

    def take_identity(self, names):
        return [asdict(v) for v in self.a.take_identity(names, self.c)]

    def wait_job(self, job_id, timeout, on_progress=None):
        import time

        deadline = time.monotonic() + timeout
        while (job := self.a.job(job_id, self.c)).state == "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        return asdict(job)


class FakeSysfs:
    """/sys/block as read_lun_info sees it on the fake hosts: a disk a FakeInitiator made reports
    what LIO reports for the LUN of its WWID (recorded when the array handed that LUN out)."""

    records: dict[str, object] = {}  # WWID -> LunInformation
    disks: dict[str, str] = {}  # block name -> WWID of the latest disk of that name
    foreign: set[str] = set()  # block names that report another LUN's record

    @classmethod
    def read(cls, block, real=read_lun_info):
        if block.name in cls.foreign:
            return predict_lio_lun_info("0" * 32)
        wwid = cls.disks.get(block.name)
        return cls.records[wwid] if wwid in cls.records else real(block)


@pytest.fixture(autouse=True)
def fake_sysfs(monkeypatch):
    FakeSysfs.records, FakeSysfs.disks, FakeSysfs.foreign = {}, {}, set()
    monkeypatch.setattr(hardware_provider, "read_lun_info", FakeSysfs.read)
    return FakeSysfs


class FakeInitiator:
    """The host's initiator: `connect` makes a disk for each LUN on one session, unless its WWID
    is in `missing` (then, as the real one, it undoes what it made and raises)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.disks: dict[str, str] = {}
        self.session = False
        self.missing: set[str] = set()

    def new_disk(self, wwid: str) -> str:
        return f"sd{chr(ord('b') + len(self.disks))}"

    def connect(self, target_iqn, portals, chap_user, chap_secret, luns, timeout):
        self.calls.append(("connect", target_iqn, tuple(portals), chap_user, chap_secret, tuple(sorted(luns))))
        logged_in, self.session = not self.session, True
        made = []
        for lun, wwid in sorted(luns.items()):
            if wwid not in self.disks and wwid not in self.missing:
                self.disks[wwid] = self.new_disk(wwid)
                FakeSysfs.disks[self.disks[wwid]] = wwid
                made.append(wwid)
        lost = [w for w in luns.values() if w not in self.disks]
        if lost:
            for w in made:
                del self.disks[w]
            self.session = self.session and not (logged_in and not self.disks)
            raise vss_error(HResult.VSS_E_MISSING_DISK, f"no disk with WWID {', '.join(lost)} appeared")
        return {w: self.disks[w] for w in luns.values()}

    def find_disk(self, wwid):
        return self.disks.get(wwid)

    def remove_disk(self, disk):
        self.calls.append(("remove", disk))
        self.disks = {w: d for w, d in self.disks.items() if d != disk}

    def disconnect(self, target_iqn, portals, disks):
        self.calls.append(("disconnect", target_iqn, tuple(portals), tuple(disks)))
        for w, d in list(self.disks.items()):
            if d in disks:
                del self.disks[w]
        self.session = bool(self.disks)


@pytest.fixture
def lvm():
    return FakeLvm()


@pytest.fixture
def array(lvm):
    return make_array(lvm=lvm)


@pytest.fixture
def prov(array):
    return ShadowLunProvider(InProcessArray(array), FakeInitiator(), HOST)


def volumes(array, *names):
    """Production LUNs of the host (masked to it), and the record FillInLunInfo reads for each."""
    out = {}
    for n in names:
        view = array.create_volume(n, 64 * MIB)
        array.mask(n, HOST.initiator)
        out[n] = predict_lio_lun_info(view.serial).to_dict()  # what FillInLunInfo reads for it
    return out


def new_id() -> str:
    return str(uuid.uuid4())


def create(prov, luns_by_volume: dict[str, list[dict]], context=BACKUP) -> tuple[str, dict[str, str]]:
    """The section-6 sequence for one provider; returns (set id, snapshot id per volume)."""
    set_id, snaps = new_id(), {}
    for vol, recs in luns_by_volume.items():
        snaps[vol] = new_id()
        prov.begin_prepare_snapshot(set_id, snaps[vol], context, [f"/dev/{vol}"] * len(recs), recs)
    prov.end_prepare_snapshots(set_id)
    prov.pre_commit_snapshots(set_id)
    prov.commit_snapshots(set_id)
    prov.post_commit_snapshots(set_id, len(snaps))
    return set_id, snaps


def test_whole_creation_sequence_and_target_luns_predict_the_array(prov, array):
    recs = volumes(array, "db", "logs", "shared")
    assert prov.are_luns_supported(TRANSPORTABLE, ["/dev/sdb", "/dev/sdc"], [recs["db"], recs["shared"]])["supported"]
    # Two volumes share one LUN: it is snapshotted once.
    set_id, snaps = create(prov, {"v1": [recs["db"], recs["shared"]], "v2": [recs["logs"], recs["shared"]]},
                           TRANSPORTABLE)
    s = array.set_view(set_id)
    assert s["state"] == "committed" and sorted(m["lun"] for m in s["snapshots"]) == ["db", "logs", "shared"]
    assert {m["snapshot_id"] for m in s["snapshots"]} >= {array_snapshot_id(snaps["v1"], "db")}
    targets = prov.get_target_luns(["/dev/sdb", "/dev/sdc"], [recs["db"], recs["shared"]])
    by_lun = {m["lun"]: m["serial"] for m in s["snapshots"]}
    assert targets == [predict_lio_lun_info(by_lun["db"]).to_dict(), predict_lio_lun_info(by_lun["shared"]).to_dict()]
    assert targets[0]["serial_number"] != recs["db"]["serial_number"]
    prov.pre_final_commit_snapshots(set_id)
    prov.post_final_commit_snapshots(set_id)
    assert prov.sm.state is ProviderState.CREATED


def test_unsupported_context_is_false_in_are_luns_supported_and_refused_in_prepare(prov, array, lvm):
    recs = volumes(array, "db")
    client = int(SnapshotContext.VSS_CTX_CLIENT_ACCESSIBLE)
    answer = prov.are_luns_supported(client, ["/dev/sdb"], [recs["db"]])
    assert answer["supported"] is False and "not supported" in answer["reason"]
    assert answer["luns"] == [recs["db"]]  # records (and interconnects) untouched
    assert prov.are_luns_supported(PLEX, ["/dev/sdb"], [recs["db"]])["supported"] is True
    both = PLEX | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_DIFFERENTIAL)
    assert prov.are_luns_supported(both, ["/dev/sdb"], [recs["db"]])["supported"] is False
    with pytest.raises(VssError) as e:
        prov.begin_prepare_snapshot(new_id(), new_id(), client, ["/dev/sdb"], [recs["db"]])
    assert e.value.hresult == HResult.VSS_E_UNSUPPORTED_CONTEXT
    assert prov.are_luns_supported(0x12345678, ["/dev/sdb"], [recs["db"]])["supported"] is False
    assert not [lv for lv in lvm.volumes() if lv.name.startswith("snap-")]


def test_a_plex_set_gets_full_copies_that_take_the_snapshots_place(prov, array, lvm, monkeypatch):
    """PLEX: after the commit the array copies each snapshot into a new thin LV, which then takes
    the snapshot's place under the same LUN name and serial (no longer a thin snapshot of the
    origin); QueryStatus with the set id follows the copies."""
    import time

    import targets.jobs

    copied = []
    monkeypatch.setattr(targets.jobs, "copy_blocks",
                        lambda src, dst, size, progress=None, only_changed=False: copied.append((src, dst)) or size)
    recs = volumes(array, "db", "logs")
    set_id, _ = create(prov, {"v": [recs["db"], recs["logs"]]}, PLEX)
    while (status := prov.query_status(set_id))["status"] == int(HResult.VSS_S_ASYNC_PENDING):
        time.sleep(0.01)
    assert status["status"] == int(HResult.VSS_S_ASYNC_FINISHED) and len(status["jobs"]) == 2
    snaps = [v for v in array.inventory() if v.kind == "snapshot"]
    assert len(snaps) == 2 and {v.set_id for v in snaps} == {set_id}
    for v in snaps:
        lv = lvm.get(v.name)
        assert lv.origin == "" and lv.tag("shadowlun.kind") == "snapshot" and lv.tag("shadowlun.set") == set_id
        assert (f"/dev/shadowlun/{v.name}", f"/dev/shadowlun/plex-{v.name.removeprefix('snap-')}") in copied
        assert array.lio.exports()[v.name].serial == v.serial
    assert not [n for n in lvm.lvs if n.startswith("plex-")]
    finish(prov, [recs["db"], recs["logs"]], set_id)
    with pytest.raises(VssError) as e:  # a handed-out set gets no new copies
        array.plex_set(set_id)
    assert e.value.hresult == HResult.VSS_E_BAD_STATE


def test_foreign_lun_and_full_pool_answer_false(prov, array, lvm):
    recs = volumes(array, "db")
    foreign = predict_lio_lun_info("0123456789abcdef0123456789abcdef").to_dict()
    answer = prov.are_luns_supported(BACKUP, ["/dev/sdb", "/dev/sdc"], [recs["db"], foreign])
    assert answer["supported"] is False and "/dev/sdc" in answer["reason"]
    lvm.data_percent = 99.0
    assert prov.are_luns_supported(BACKUP, ["/dev/sdb"], [recs["db"]])["supported"] is False


def test_commit_out_of_sequence_vetoes_and_leaves_nothing_on_the_array(prov, array, lvm):
    recs = volumes(array, "db")
    set_id = new_id()
    prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdb"], [recs["db"]])
    with pytest.raises(VssError) as e:
        prov.commit_snapshots(set_id)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    assert prov.sm.state is ProviderState.ABORTED
    assert not [lv for lv in lvm.volumes() if lv.name.startswith("snap-")]


def test_abort_after_commit_deletes_the_snapshots(prov, array, lvm):
    recs = volumes(array, "db", "logs")
    set_id, _ = create(prov, {"v1": [recs["db"], recs["logs"]]})
    assert len([lv for lv in lvm.volumes() if lv.name.startswith("snap-")]) == 2
    prov.abort_snapshots(set_id)
    assert not [lv for lv in lvm.volumes() if lv.name.startswith("snap-")]
    assert array.set_view(set_id)["state"] == "aborted"
    prov.abort_snapshots(set_id)  # idempotent


def test_a_new_set_id_discards_the_abandoned_set(prov, array):
    recs = volumes(array, "db")
    first = new_id()
    prov.begin_prepare_snapshot(first, new_id(), BACKUP, ["/dev/sdb"], [recs["db"]])
    prov.end_prepare_snapshots(first)
    assert array.set_view(first)["state"] == "prepared"
    second, _ = create(prov, {"v": [recs["db"]]})
    assert array.set_view(first)["state"] == "aborted"
    assert array.set_view(second)["state"] == "committed"


def test_abort_of_a_set_this_instance_does_not_hold_still_cleans_the_array(array, lvm):
    """A restarted provider server holds nothing; VSS's AbortSnapshots must still delete."""
    recs = volumes(array, "db")
    old = ShadowLunProvider(InProcessArray(array), FakeInitiator(), HOST)
    set_id, _ = create(old, {"v": [recs["db"]]})
    fresh = ShadowLunProvider(InProcessArray(array), FakeInitiator(), HOST)
    fresh.abort_snapshots(set_id)
    assert not [lv for lv in lvm.volumes() if lv.name.startswith("snap-")]


def finish(prov, recs: list[dict], set_id: str) -> None:
    """GetTargetLuns to PostFinalCommitSnapshots: the requester has the set whole."""
    prov.get_target_luns([f"/dev/sd{chr(98 + i)}" for i in range(len(recs))], recs)
    prov.pre_final_commit_snapshots(set_id)
    prov.post_final_commit_snapshots(set_id)


def snapshot_state(array, lvm) -> tuple:
    return (sorted(lv.name for lv in lvm.volumes() if lv.name.startswith("snap-")),
            sorted((v.name, v.state) for v in array.inventory() if v.kind == "snapshot"))


def test_a_late_abort_of_a_handed_out_set_changes_nothing_on_any_instance(array, lvm):
    """Issue 13 point 2: once PostFinalCommitSnapshots told the array, neither the creating
    instance (spec: CREATED + AbortSnapshots is ignored) nor a fresh one (the CLI's next server),
    nor a late abort while that instance prepares a new set, deletes it. S_OK, and logged."""
    recs = volumes(array, "db", "logs")
    old = ShadowLunProvider(InProcessArray(array, Caller("host-a", HOST.initiator)), FakeInitiator(), HOST)
    set_id, _ = create(old, {"v": [recs["db"]]})
    finish(old, [recs["db"]], set_id)
    assert array.set_view(set_id)["handed_out"] is not None
    before = snapshot_state(array, lvm)
    old.abort_snapshots(set_id)
    fresh = ShadowLunProvider(InProcessArray(array, Caller("host-a", HOST.initiator)), FakeInitiator(), HOST)
    fresh.abort_snapshots(set_id)
    second = new_id()
    old.begin_prepare_snapshot(second, new_id(), BACKUP, ["/dev/sdc"], [recs["logs"]])
    old.abort_snapshots(set_id)  # late, while `second` prepares
    assert array.set_view(set_id)["state"] == "committed"
    after = snapshot_state(array, lvm)
    assert set(before[0]) <= set(after[0]) and set(before[1]) <= set(after[1])
    old.end_prepare_snapshots(second)  # the new set goes on untouched
    assert array.set_view(second)["state"] == "prepared"


def test_a_failure_before_the_hand_out_still_aborts_the_set(array, lvm):
    """Point 6: a failure after GetTargetLuns but before the requester has the set cleans up."""
    recs = volumes(array, "db")
    prov = ShadowLunProvider(InProcessArray(array, Caller("host-a", HOST.initiator)), FakeInitiator(), HOST)
    set_id, _ = create(prov, {"v": [recs["db"]]})
    prov.get_target_luns(["/dev/sdb"], [recs["db"]])
    fresh = ShadowLunProvider(InProcessArray(array, Caller("host-a", HOST.initiator)), FakeInitiator(), HOST)
    fresh.abort_snapshots(set_id)  # the coordinator's recover after a crash before PostFinalCommit
    assert array.set_view(set_id)["state"] == "aborted"
    assert snapshot_state(array, lvm) == ([], [])


def test_hand_out_is_its_owners_and_only_of_a_committed_set(array):
    recs = volumes(array, "db")
    owner = Caller("host-a", HOST.initiator)
    prov = ShadowLunProvider(InProcessArray(array, owner), FakeInitiator(), HOST)
    set_id = new_id()
    prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdb"], [recs["db"]])
    prov.end_prepare_snapshots(set_id)
    with pytest.raises(VssError) as e:
        array.hand_out_set(set_id, owner)
    assert e.value.hresult == HResult.VSS_E_BAD_STATE
    prov.pre_commit_snapshots(set_id)
    prov.commit_snapshots(set_id)
    array.register_host("iqn.2026-11.lab.shadowlun:host-b", "host-b")
    with pytest.raises(VssError) as e:
        array.hand_out_set(set_id, Caller("host-b", "iqn.2026-11.lab.shadowlun:host-b"))
    assert e.value.hresult == HResult.E_ACCESSDENIED and array.set_view(set_id)["handed_out"] is None
    first = array.hand_out_set(set_id, owner)["handed_out"]
    assert array.hand_out_set(set_id, owner)["handed_out"] == first  # idempotent: the first time kept
    array.abort_set(set_id)  # the admin still can
    assert array.set_view(set_id)["state"] == "aborted"


def test_locate_luns_is_one_array_call_and_one_connect_carrying_each_disks_record(prov, array):
    recs = volumes(array, "db", "logs")
    create(prov, {"v": [recs["db"], recs["logs"]]})
    targets = prov.get_target_luns(["/dev/sdb", "/dev/sdc"], [recs["db"], recs["logs"]])
    calls = CountingArray.wrap(prov)
    disks = prov.locate_luns(targets)
    assert calls == ["attach_import"]  # no inventory, claim or mask per LUN
    assert [d["wwid"] for d in disks] == ["naa." + t["device_id_descriptor"]["identifiers"][0]["identifier"]
                                          for t in targets]
    assert [d["lun_info"] for d in disks] == targets  # read from sysfs: what GetTargetLuns predicted
    for lun in array.inventory():
        if lun.kind == "snapshot":
            assert lun.masks == [{"initiator": HOST.initiator, "read_only": False}] and lun.lun_id is not None
    lun_ids = tuple(sorted(v.lun_id for v in array.inventory() if v.kind == "snapshot"))
    assert prov.initiator.calls == [("connect", "iqn.2026-11.lab.shadowlun:array.target", ("10.87.0.10:3260",),
                                     "host-a", "secret-host-a1", lun_ids)]


def test_a_set_of_many_volumes_reads_the_inventory_once_and_target_luns_none(prov, array):
    recs = volumes(array, "db", "logs", "shared")
    calls = CountingArray.wrap(prov)
    create(prov, {"v1": [recs["db"]], "v2": [recs["logs"]], "v3": [recs["db"], recs["shared"]]})
    assert calls.count("luns") == 1
    calls.clear()
    targets = prov.get_target_luns(["/dev/sdb", "/dev/sdc"], [recs["db"], recs["logs"]])
    assert calls == [] and len(targets) == 2
    with pytest.raises(VssError) as e:  # a LUN of the array, but not a source of this set
        prov.get_target_luns(["/dev/sdd"], [volumes(array, "other")["other"]])
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO


def test_a_volume_added_to_the_array_meanwhile_is_found_by_reading_the_inventory_again(prov, array):
    recs = volumes(array, "db")
    set_id = new_id()
    prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdb"], [recs["db"]])
    late = volumes(array, "late")["late"]  # not in the inventory the set read first
    calls = CountingArray.wrap(prov)
    prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdc"], [late])
    assert calls.count("luns") == 1
    for step in (prov.end_prepare_snapshots, prov.pre_commit_snapshots, prov.commit_snapshots):
        step(set_id)
    prov.post_commit_snapshots(set_id, 2)
    assert len(prov.get_target_luns(["/dev/sdb", "/dev/sdc"], [recs["db"], late])) == 2


class CountingArray:
    """The provider's array with each call's name recorded."""

    @staticmethod
    def wrap(prov) -> list[str]:
        calls: list[str] = []
        inner = prov.array

        class Counted:
            def __getattr__(self, name):
                calls.append(name)
                return getattr(inner, name)

        prov.array = Counted()
        return calls


def imported_state(array) -> tuple:
    """What an import changes on the array: masks, claims, holders."""
    db = array.store
    return (sorted((m.lun, m.initiator) for m in db.masks()), sorted(db._rows("SELECT set_id, host FROM imports")),
            sorted((lun.name, lun.holder) for lun in db.luns()))


def test_a_disk_that_never_arrives_undoes_the_whole_locate(prov, array):
    """A LUN whose disk does not arrive: the disks that did are removed, the session made for
    them goes, and on the array the masks and the claim are given back; the set can be
    imported again, by this host or another."""
    recs = volumes(array, "db", "logs")
    create(prov, {"v": [recs["db"], recs["logs"]]}, context=TRANSPORTABLE)
    targets = prov.get_target_luns(["/dev/sdb", "/dev/sdc"], [recs["db"], recs["logs"]])
    before = imported_state(array)
    prov.initiator.missing = {"naa." + targets[1]["device_id_descriptor"]["identifiers"][0]["identifier"]}
    with pytest.raises(VssError) as e:
        prov.locate_luns(targets)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK
    assert imported_state(array) == before and prov.initiator.disks == {} and not prov.initiator.session
    prov.initiator.missing = set()
    assert len(prov.locate_luns(targets)) == 2  # importable again


def test_a_failure_after_the_disks_arrived_removes_them_before_giving_the_luns_back(prov, array, monkeypatch):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    before = imported_state(array)

    def unreadable(block):
        raise hardware_provider.vss_error(HResult.VSS_E_PROVIDER_VETO, f"{block}/device/vpd_pg83: I/O error")

    monkeypatch.setattr(hardware_provider, "read_lun_info", unreadable)
    calls = CountingArray.wrap(prov)
    with pytest.raises(VssError, match="vpd_pg83"):
        prov.locate_luns([target])
    assert prov.initiator.calls[-1][0] == "disconnect" and calls == ["attach_import", "release_import"]
    assert imported_state(array) == before and prov.initiator.disks == {}


def test_cleanup_failures_are_added_to_the_error(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    prov.initiator.missing = {"naa." + target["device_id_descriptor"]["identifiers"][0]["identifier"]}
    inner = prov.array

    class ReleaseFails:
        def __getattr__(self, name):
            return getattr(inner, name)

        def release_import(self, serials, host):
            raise hardware_provider.vss_error(HResult.VSS_E_PROVIDER_VETO, "array agent unreachable")

    prov.array = ReleaseFails()
    with pytest.raises(VssError) as e:
        prov.locate_luns([target])
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK and "undoing it: array agent unreachable" in e.value.message


def test_locate_misuse_changes_nothing(array):
    """A record that is no LIO LUN's, a LUN the array does not have, another host's set that is
    not transportable, a set another host imported: a clear VSS code, and nothing changed."""
    recs = volumes(array, "db")
    prov = ShadowLunProvider(InProcessArray(array, Caller("host-a", HOST.initiator)), FakeInitiator(), HOST)
    create(prov, {"v": [recs["db"]]})  # host-a's own set, not transportable
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    before = imported_state(array)
    foreign = dict(target, vendor_id="OTHER")
    host_b = HostIdentity("iqn.2026-11.lab.shadowlun:host-b", "host-b", "secret-host-b1")
    array.register_host(host_b.initiator, "host-b")
    other = ShadowLunProvider(InProcessArray(array, Caller("host-b", host_b.initiator)), FakeInitiator(), host_b)
    for who, luns, code in [(prov, [foreign], HResult.VSS_E_OBJECT_NOT_FOUND),
                            (prov, [target, predict_lio_lun_info("f" * 32).to_dict()], HResult.VSS_E_OBJECT_NOT_FOUND),
                            (other, [target], HResult.E_ACCESSDENIED)]:
        with pytest.raises(VssError) as e:
            who.locate_luns(luns)
        assert e.value.hresult == code and imported_state(array) == before
        assert who.initiator.calls == []
    prov.locate_luns([target])
    assert len(prov.locate_luns([target])) == 1  # the same host again: a retry, nothing new


def test_on_lun_empty_removes_the_disk_then_deletes_the_lun(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    disk = prov.locate_luns([target])[0]
    prov.on_lun_empty(disk["device"], target)
    assert ("disconnect", "iqn.2026-11.lab.shadowlun:array.target", ("10.87.0.10:3260",),
            (disk["device"].removeprefix("/dev/"),)) in prov.initiator.calls
    assert not [lun for lun in array.inventory() if lun.kind == "snapshot"]
    with pytest.raises(VssError) as e:
        prov.on_lun_empty(disk["device"], target)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


def test_do_mask_luns_hides_the_shadow_luns_but_keeps_them(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    prov.locate_luns([target])
    prov.on_lun_state_change([target], [recs["db"]], int(HardwareOptions.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS))
    kept = [lun for lun in array.inventory() if lun.origin]
    assert len(kept) == 1 and kept[0].masks == [] and kept[0].kind == "volume"  # broken: an ordinary LUN


def test_recovery_notifications_change_nothing_and_break_detaches(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    prov.locate_luns([target])  # a break is of copies this host imported
    for flag in (HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY,
                 HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY):
        prov.on_lun_state_change([target], [recs["db"]], int(flag))
        assert [lun.kind for lun in array.inventory() if lun.origin] == ["snapshot"]
    prov.on_lun_state_change([target], [recs["db"]], int(HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE))
    assert [lun.kind for lun in array.inventory() if lun.origin] == ["volume"]
    prov.on_lun_state_change([target], [recs["db"]], 0)  # a second break of the same LUN: nothing to do
    with pytest.raises(VssError) as e:
        prov.on_lun_state_change([predict_lio_lun_info("f" * 32).to_dict()], [recs["db"]], 0)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


def test_a_break_that_reverts_identities_gives_the_disks_the_originals_identity(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    [disk] = prov.locate_luns([target])
    rw = int(HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE)
    before = [asdict(v) for v in array.inventory()]
    for flags, code in ((rw, HResult.VSS_E_BREAK_REVERT_ID_FAILED),  # the original is on this host too
                        (int(HardwareOptions.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS), HResult.E_INVALIDARG)):
        with pytest.raises(VssError) as e:
            prov.on_lun_state_change([target], [recs["db"]], flags, revert_identity=True)
        assert e.value.hresult == code
        assert [asdict(v) for v in array.inventory()] == before  # a shadow copy still, its own identity
        assert prov.initiator.find_disk(disk["wwid"])  # the disk is back (or was never removed)
    array.unmask("db", HOST.initiator)
    prov.initiator.calls.clear()
    prov.on_lun_state_change([target], [recs["db"]], rw, revert_identity=True)
    [broken] = [v for v in array.inventory() if v.origin]
    assert (broken.kind, broken.serial, broken.wwid) == ("volume", array.lun("db").serial, array.lun("db").wwid)
    assert prov.initiator.find_disk(disk["wwid"]) is None and prov.initiator.find_disk(broken.wwid)
    assert [c[0] for c in prov.initiator.calls] == ["remove", "connect"]
    prov.initiator.calls.clear()  # a break run again (stopped after this call): found by its new identity
    prov.on_lun_state_change([recs["db"]], [recs["db"]], rw, revert_identity=True)
    assert array.lun(broken.name) == broken and prov.initiator.find_disk(broken.wwid)


def test_production_luns_are_never_the_object_of_a_shadow_copy_call(array, lvm):
    """OnLunEmpty, DO_MASK_LUNS and a resync source given an original's record: refused with the
    spec's code before anything changes, on the host or on the array, whoever calls (the host
    holding the LUN, or an admin's provider)."""
    from targets_fakes import HOST_A

    recs = volumes(array, "db", "logs")
    for n in ("db", "logs"):
        array.mask(n, HOST_A)
    host_a = Caller("host-a", HOST_A)
    for caller in (ADMIN, host_a):
        initiator = FakeInitiator()
        initiator.disks[array.lun("db").wwid] = "sdb"
        prov = ShadowLunProvider(InProcessArray(array, caller), initiator, HOST)
        before = (sorted(lvm.lvs), [asdict(v) for v in array.inventory()])
        for call, code in (
                (lambda: prov.on_lun_empty("/dev/sdb", recs["db"]), HResult.E_INVALIDARG),
                (lambda: prov.on_lun_state_change(
                    [recs["db"]], [recs["db"]], int(HardwareOptions.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS)),
                 HResult.E_INVALIDARG),
                (lambda: prov.resync_luns([recs["db"]], [recs["logs"]]), HResult.VSS_E_PROVIDER_VETO)):
            with pytest.raises(VssError) as e:
                call()
            assert e.value.hresult == code and "not a shadow copy" in e.value.message
        assert (sorted(lvm.lvs), [asdict(v) for v in array.inventory()]) == before
        assert initiator.calls == [] and initiator.disks  # the host's disk and session untouched


def test_resync_is_asynchronous_with_a_status_to_query(prov, array, monkeypatch):
    import targets.jobs

    release = __import__("threading").Event()

    def copy_blocks(src, dst, size, progress=None, only_changed=False):
        progress(size // 4)
        release.wait(5)
        progress(size)

    monkeypatch.setattr(targets.jobs, "copy_blocks", copy_blocks)
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    started = prov.resync_luns([target], [recs["db"]], wait=False)
    assert started["status"] == int(HResult.VSS_S_ASYNC_PENDING)
    import time

    deadline = time.monotonic() + 5
    while (status := prov.query_status(started["handle"]))["done_bytes"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status["status"] == int(HResult.VSS_S_ASYNC_PENDING) and 0 < status["done_bytes"] < status["total_bytes"]
    release.set()
    while (status := prov.query_status(started["handle"]))["status"] == int(HResult.VSS_S_ASYNC_PENDING):
        time.sleep(0.01)
    assert status["status"] == int(HResult.VSS_S_ASYNC_FINISHED) and status["done_bytes"] == status["total_bytes"]
    with pytest.raises(VssError) as e:
        prov.query_status("no-such-handle")
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


def test_cancel_stops_a_running_resync_and_query_status_says_cancelled(prov, array, monkeypatch):
    """IVssAsync::Cancel: the array's copy stops at its next chunk, QueryStatus answers
    VSS_S_ASYNC_CANCELLED; cancelling again (or after the end) changes nothing."""
    import threading
    import time

    import targets.jobs

    chunks, go_on = [], threading.Event()

    def copy_blocks(src, dst, size, progress=None, only_changed=False):
        for done in range(1, 65):
            chunks.append(done)
            progress(done * size // 64)
            go_on.wait(0.01)

    monkeypatch.setattr(targets.jobs, "copy_blocks", copy_blocks)
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    started = prov.resync_luns([target], [recs["db"]], wait=False)
    while not chunks:
        time.sleep(0.001)
    status = prov.cancel(started["handle"])
    assert status["status"] == int(HResult.VSS_S_ASYNC_CANCELLED) and len(chunks) < 64
    [job] = status["jobs"]
    assert job["state"] == "cancelled" and array.store.job(job["job_id"]).state == "cancelled"
    assert prov.cancel(started["handle"])["status"] == int(HResult.VSS_S_ASYNC_CANCELLED)
    assert prov.query_status(started["handle"])["status"] == int(HResult.VSS_S_ASYNC_CANCELLED)
    with pytest.raises(VssError) as e:
        prov.cancel("no-such-handle")
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


def test_a_resync_onto_a_larger_destination_shrinks_it_to_the_copys_size(prov, array, lvm, monkeypatch):
    import targets.jobs

    monkeypatch.setattr(targets.jobs, "copy_blocks", lambda src, dst, size, progress=None, only_changed=False: size)
    recs = volumes(array, "db", "big")
    create(prov, {"v": [recs["db"]]})
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    lvm.resize("lun-big", 128 * MIB)
    array.store.set_lun_size("lun-big", 128 * MIB)
    status = prov.resync_luns([target], [recs["big"]])
    assert status["status"] == int(HResult.VSS_S_ASYNC_FINISHED)
    assert lvm.get("lun-big").size_bytes == 64 * MIB and array.lun("big").size_bytes == 64 * MIB


def test_locate_of_an_unknown_lun_is_object_not_found(prov, array):
    volumes(array, "db")
    with pytest.raises(VssError) as e:
        prov.locate_luns([predict_lio_lun_info("ffffffffffffffffffffffffffffffff").to_dict()])
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


def test_capabilities_and_reserved_method(prov):
    assert prov.get_provider_capabilities() & 0x2  # COMPLIANT
    with pytest.raises(VssError) as e:
        prov.on_reuse_luns([], [])
    assert e.value.hresult == HResult.E_NOTIMPL


# -- every creation call from every state, through the provider, against the array ---------

from provider.contract.methods import ProviderMethod  # noqa: E402
from provider.contract.state_machine import MACHINE_METHODS, NON_CREATION_METHODS  # noqa: E402

STATES = ["idle", "preparing", "prepared", "precommitted", "committed", "created", "aborted"]
SEQUENCE = ["begin_prepare_snapshot", "end_prepare_snapshots", "pre_commit_snapshots",
            "commit_snapshots", "post_commit_snapshots"]
CREATION = [m.value for m in MACHINE_METHODS if m not in (*NON_CREATION_METHODS, ProviderMethod.ON_UNLOAD)]


def call(prov, method: str, set_id: str, rec: dict) -> None:
    if method == "begin_prepare_snapshot":
        prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdb"], [rec])
    elif method == "get_target_luns":
        prov.get_target_luns(["/dev/sdb"], [rec])
    elif method == "post_commit_snapshots":
        prov.post_commit_snapshots(set_id, 1)
    else:
        getattr(prov, method)(set_id)


def drive_to(prov, state: str, set_id: str, rec: dict) -> None:
    if state == "aborted":
        for m in SEQUENCE[:2] + ["abort_snapshots"]:
            call(prov, m, set_id, rec)
    elif state != "idle":
        for m in SEQUENCE[:STATES.index(state)]:
            call(prov, m, set_id, rec)
    assert prov.sm.state.value == state


def check_array_agrees(prov, array, lvm) -> None:
    """What the provider believes and what the array holds never disagree."""
    held, state = (str(prov.sm.set_id) if prov.sm.set_id else None), prov.sm.state.value
    sets = {s.set_id: s for s in array.store.sets()}
    for set_id, s in sets.items():
        if s.state == "prepared":
            assert set_id == held and state in ("prepared", "precommitted"), (set_id, state)
    if held and state in ("committed", "created"):
        assert sets[held].state == "committed"
    if held and state == "aborted":
        assert held not in sets or sets[held].state == "aborted"
    # Snapshot LVs exist for committed sets, and (made in advance, re-made in the commit window)
    # for the one prepared set; never for an aborted one.
    alive = {set_id for set_id, s in sets.items() if s.state in ("committed", "prepared")}
    for lv in lvm.volumes():
        if lv.name.startswith("snap-"):
            assert lv.tag("shadowlun.set") in alive, f"{lv.name} of a set that is neither prepared nor committed"


@pytest.mark.parametrize("other_set", [False, True], ids=["same-set", "other-set"])
@pytest.mark.parametrize("method", CREATION)
@pytest.mark.parametrize("state", STATES)
def test_every_creation_call_from_every_state_keeps_provider_and_array_in_step(array, lvm, state, method,
                                                                                other_set):
    rec = volumes(array, "db")["db"]
    prov = ShadowLunProvider(InProcessArray(array), FakeInitiator(), HOST)
    set_id = new_id()
    drive_to(prov, state, set_id, rec)
    try:
        call(prov, method, new_id() if other_set else set_id, rec)
    except VssError as e:
        assert e.hresult in (HResult.VSS_E_PROVIDER_VETO, HResult.VSS_E_OBJECT_NOT_FOUND,
                             HResult.E_INVALIDARG), e
    check_array_agrees(prov, array, lvm)


# --- the edge codes of spec section 5 ----------------------------------------------------------

def test_fill_in_lun_info_of_an_absent_or_unknown_device_is_false_with_success(prov, tmp_path):
    record_in = {"serial_number": "x"}
    assert prov.fill_in_lun_info("/dev/sdzz", record_in) == {"supported": False, "lun_info": record_in}
    prov.sysfs_block = tmp_path  # a device that is there but no SCSI disk
    (tmp_path / "vda").mkdir()
    assert prov.fill_in_lun_info("/dev/vda")["supported"] is False


def test_get_target_luns_of_a_lun_outside_the_set_vetoes(prov, array):
    recs = volumes(array, "db", "logs")
    set_id, snap = new_id(), new_id()
    prov.begin_prepare_snapshot(set_id, snap, BACKUP, ["/dev/sdb"], [recs["db"]])
    prov.end_prepare_snapshots(set_id)
    for step in (prov.pre_commit_snapshots, prov.commit_snapshots):
        step(set_id)
    prov.post_commit_snapshots(set_id, 1)
    with pytest.raises(VssError) as e:
        prov.get_target_luns(["/dev/sdc"], [recs["logs"]])
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO


@pytest.mark.parametrize("set_id, snapshot_id", [("not-a-guid", None), (None, "{nope}"), (None, ""), (None, 7)])
def test_a_malformed_id_in_begin_prepare_is_invalidarg_and_changes_nothing(prov, array, lvm, set_id, snapshot_id):
    recs = volumes(array, "db")
    held, snap = new_id(), new_id()
    prov.begin_prepare_snapshot(held, snap, BACKUP, ["/dev/sdb"], [recs["db"]])
    state = prov.sm.state
    with pytest.raises(VssError) as e:
        prov.begin_prepare_snapshot(set_id or held, new_id() if snapshot_id is None else snapshot_id, BACKUP,
                                    ["/dev/sdb"], [recs["db"]])
    assert e.value.hresult == HResult.E_INVALIDARG
    assert (prov.sm.state, str(prov.sm.set_id)) == (state, held)  # the set in preparation goes on
    prov.end_prepare_snapshots(held)
    assert array.set_view(held)["state"] == "prepared"


@pytest.mark.parametrize("attribute", ["VSS_VOLSNAP_ATTR_HARDWARE_ASSISTED", "VSS_VOLSNAP_ATTR_IMPORTED",
                                       "VSS_VOLSNAP_ATTR_EXPOSED_LOCALLY", "VSS_VOLSNAP_ATTR_NOT_SURFACED"])
def test_bits_only_vss_sets_are_not_supported(prov, array, attribute):
    recs = volumes(array, "db")
    context = BACKUP | int(getattr(VolumeSnapshotAttributes, attribute))
    assert prov.are_luns_supported(context, ["/dev/sdb"], [recs["db"]])["supported"] is False


def test_are_luns_supported_of_no_lun_is_invalidarg(prov):
    with pytest.raises(VssError) as e:
        prov.are_luns_supported(BACKUP, [], [])
    assert e.value.hresult == HResult.E_INVALIDARG


def test_an_abort_during_a_slow_end_prepare_interrupts_it_and_leaves_nothing(array, lvm):
    """AbortSnapshots while EndPrepareSnapshots waits on the array: EndPrepare does not answer
    S_OK afterwards, and the set it prepared after the abort's cleanup is gone too."""
    import threading

    class SlowArray(InProcessArray):
        started, release = threading.Event(), threading.Event()

        def prepare_set(self, *args, **kwargs):
            self.started.set()
            assert self.release.wait(10)
            return super().prepare_set(*args, **kwargs)

    slow = SlowArray(array)
    prov = ShadowLunProvider(slow, FakeInitiator(), HOST)
    recs = volumes(array, "db")
    set_id = new_id()
    prov.begin_prepare_snapshot(set_id, new_id(), BACKUP, ["/dev/sdb"], [recs["db"]])
    outcome = {}

    def end_prepare():
        try:
            prov.end_prepare_snapshots(set_id)
            outcome["result"] = "S_OK"
        except VssError as e:
            outcome["result"] = e.hresult

    t = threading.Thread(target=end_prepare)
    t.start()
    assert slow.started.wait(10)
    prov.abort_snapshots(set_id)
    slow.release.set()
    t.join(10)
    assert outcome["result"] == HResult.VSS_E_PROVIDER_VETO
    assert array.set_view(set_id)["state"] == "aborted"
    assert [lv for lv in lvm.lvs if lv.startswith("snap-")] == []


def test_a_transportable_set_located_by_one_host_is_refused_to_another(prov, array):
    recs = volumes(array, "db")
    create(prov, {"v": [recs["db"]]}, context=TRANSPORTABLE)
    target = prov.get_target_luns(["/dev/sdb"], [recs["db"]])[0]
    host_b = HostIdentity("iqn.2026-11.lab.shadowlun:host-b", "host-b", "secret-host-b1")
    array.register_host(host_b.initiator, "host-b")
    other = ShadowLunProvider(InProcessArray(array, Caller("host-b", host_b.initiator)), FakeInitiator(), host_b)
    other.locate_luns([target])
    before = imported_state(array)
    with pytest.raises(VssError) as e:
        prov.locate_luns([target])
    assert e.value.hresult == HResult.VSS_E_BAD_STATE and "already imported by" in e.value.message
    assert imported_state(array) == before and prov.initiator.calls == []
