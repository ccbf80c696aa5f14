"""The coordinator over the real provider and array logic (in process, LVM/LIO faked)."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import asdict

import pytest

from provider.requester import bcd
from provider.requester.coordinator import Coordinator, SetProgress
from provider.hardware.hardware_provider import PROVIDER_ID, ShadowLunProvider
from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.lio_target import predict_lio_lun_info
from provider.requester.shadow_flags import Partition
from provider.requester.volumes import Extent
from provider.contract.vss_types import SnapshotContext, VolumeSnapshotAttributes
from targets_fakes import FakeLvm, make_array
from test_hardware_provider import HOST, FakeInitiator, FakeSysfs, InProcessArray, fake_sysfs

pytestmark = pytest.mark.usefixtures(fake_sysfs.__name__)  # disks read as LIO reports them

MIB = 1 << 20
BACKUP = int(SnapshotContext.VSS_CTX_BACKUP)
TRANSPORTABLE = BACKUP | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE)


class InProcessProvider:
    """What provider.hosting.proxy gives the coordinator, without the process boundary."""

    def __init__(self, impl, events: list, fail: str | None = None) -> None:
        self.provider_id, self.impl, self.events, self.fail = str(PROVIDER_ID), impl, events, fail

    def call(self, method, timeout=None, /, **params):
        self.events.append(method)
        if method == self.fail:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{method} failed (injected)")
        return getattr(self.impl, method)(**params)


PART_START = MIB  # each volume is partition 1 of its disk, from 1 MiB on


class FakeGpt:
    """provider.requester.shadow_flags.GptFlags over in-memory partition tables: {disk: {number: attrs}}.
    Disks named 'raw*' have no partition table."""

    def __init__(self) -> None:
        self.attrs: dict[str, dict[int, int]] = {}
        self.read_only: dict[str, bool] = {}
        self.writes: list[tuple[str, int, int]] = []
        self.captured = lambda disk: None  # a new disk's table: one the commit captured, if any

    def partitions(self, disk):
        disk = disk.removeprefix("/dev/")
        if disk.startswith("raw"):
            return None
        table = self.attrs.setdefault(disk, dict(self.captured(disk) or {1: 0}))
        return {n: Partition(n, PART_START, 63 * MIB, a) for n, a in table.items()}

    def partition_device(self, disk, number):
        return f"{disk}{number}"

    def gpt_partition(self, disk, offset_bytes):
        return next((p for p in (self.partitions(disk) or {}).values() if p.start_bytes == offset_bytes), None)

    def set(self, disk, numbers, flags):
        for n in numbers:
            self.attrs[disk][n] |= flags
            self.writes.append((disk, n, self.attrs[disk][n]))

    def clear(self, disk, numbers=None, flags=0):
        changed = []
        for n, a in (self.partitions(disk) and self.attrs[disk.removeprefix("/dev/")].items()):
            if (numbers is None or n in numbers) and a & flags:
                self.attrs[disk][n] = a & ~flags
                self.writes.append((disk, n, self.attrs[disk][n]))
                changed.append(n)
        return changed

    def set_read_only(self, disk, numbers, read_only):
        self.read_only[disk] = read_only
        for n in numbers:
            self.read_only[f"{disk}{n}"] = read_only


class FakeRunner:
    """Commands the coordinator runs on the host (mount, blkid, blockdev, udevadm)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv, check=True):
        import subprocess

        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "ext4\n" if argv[0] == "blkid" else "", "")


class ShadowDisks(FakeInitiator):
    """The creating host's initiator: its shadow disks are named shb, shc, ... (its own
    originals are sdb, sdc, ...)."""

    def new_disk(self, wwid: str) -> str:
        return f"sh{chr(ord('b') + len(self.disks))}"


def found_disks(impl, array, hide: set[str] = frozenset()):
    """FillInLunInfo of the disks the fake initiator 'found' (device -> WWID -> the array's
    serial), patched into `impl`; returns the record of such a disk."""
    def record_of(disk):
        wwid = next(w for w, d in impl.initiator.disks.items() if d == disk.removeprefix("/dev/"))
        lun = next(v for v in array.inventory() if v.wwid == wwid)
        return predict_lio_lun_info(lun.serial).to_dict()

    def fill_in_lun_info(device, lun_info=None):
        return {"supported": device not in hide, "lun_info": record_of(device)}

    impl.fill_in_lun_info = fill_in_lun_info
    FakeSysfs.foreign |= {d.removeprefix("/dev/") for d in hide}  # what LocateLuns reads of them
    return record_of


class Lab:
    """An array with volumes, each on partition 1 of its own 'disk' (sdb, sdc, ...), mounted at
    /mnt/<disk>; a disk named raw* has its filesystem on the whole disk."""

    def __init__(self, tmp_path, fail=None, hold_error=None):
        self.lvm = FakeLvm()
        self.array = make_array(lvm=self.lvm)
        self.events: list[str] = []
        self.records: dict[str, dict] = {}
        self.impl = ShadowLunProvider(InProcessArray(self.array), ShadowDisks(), HOST)
        found = found_disks(self.impl, self.array)
        self.provider = InProcessProvider(self.impl, self.events, fail)
        self.hold_error = hold_error
        self.gpt, self.runner = FakeGpt(), FakeRunner()
        # A shadow disk shX has the table its original sdX had at the freeze.
        self.gpt.captured = lambda disk: getattr(self, "frozen_attrs", {}).get("sd" + disk[2:])
        self.unmounted: set[str] = set()
        self.coord = Coordinator([self.provider], state_dir=tmp_path, resolve=self.resolve,
                                 filesystems_on=lambda disks: [f"/mnt/{d}" for d in disks
                                                               if d not in self.unmounted],
                                 hold_writes=self.hold,
                                 read_record=lambda d: self.records[d] if d in self.records else found(d),
                                 extents=self.extents, flags=self.gpt, runner=self.runner,
                                 list_disks=lambda: sorted([*self.records, *self.impl.initiator.disks.values()]),
                                 originals_dir=tmp_path / "originals")

    def extents(self, volume: str) -> list[Extent]:
        disk = self.resolve(volume)[0]
        if disk.startswith("raw"):
            return [Extent(disk, 0, 64 * MIB, None)]
        return [Extent(disk, PART_START, 63 * MIB, 1)]

    def volume(self, name: str, disk: str) -> str:
        view = self.array.create_volume(name, 64 * MIB)
        self.array.mask(name, HOST.initiator)  # the host's own LUN
        self.records[disk] = predict_lio_lun_info(view.serial).to_dict()
        return f"/mnt/{disk}"

    def resolve(self, volume: str) -> list[str]:
        disk = volume.removeprefix("/mnt/")
        if disk not in self.records:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no volume {volume}")
        return [disk]

    @contextmanager
    def hold(self, mountpoints, timeout):
        self.frozen_attrs = {d: dict(t) for d, t in self.gpt.attrs.items()}
        self.frozen_markers = sorted(p.name for p in self.coord.originals_dir.glob("*"))
        self.events.append(f"freeze {','.join(mountpoints)}")
        try:
            yield
        finally:
            self.events.append("thaw")
        if self.hold_error:
            raise self.hold_error

    def snapshots(self):
        return [lv.name for lv in self.lvm.volumes() if lv.name.startswith("snap-")]


def test_create_holds_writes_only_around_commit_and_writes_the_document(tmp_path):
    lab = Lab(tmp_path)
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc"), lab.volume("idx", "sdd")]
    doc, timings = lab.coord.create(vols, TRANSPORTABLE)
    i = lab.events.index("commit_snapshots")
    assert lab.events[i - 1] == "freeze /mnt/sdb,/mnt/sdc,/mnt/sdd" and lab.events[i + 1] == "thaw"
    assert lab.events.index("end_prepare_snapshots") < i - 1
    assert "writes held" in timings["seconds"] and "CommitSnapshots" in timings["seconds"]
    held, commit = timings["wall"]["writes held"], timings["wall"]["CommitSnapshots"]
    assert held[0] <= commit[0] <= commit[1] <= held[1]
    assert timings["wall"]["EndPrepareSnapshots"][1] <= held[0]
    assert len(lab.snapshots()) == 3
    again = bcd.from_xml(bcd.to_xml(doc))
    assert again == doc and doc.context == TRANSPORTABLE and len(doc.snapshots) == 3
    serials = {m["lun"]: m["serial"] for m in lab.array.set_view(doc.set_id)["snapshots"]}
    for snap, name in zip(doc.snapshots, ("db", "logs", "idx")):
        assert snap.luns[0].destination == predict_lio_lun_info(serials[name]).to_dict()
        assert snap.luns[0].source == lab.records[snap.volume_name.removeprefix("/mnt/")]


def test_one_creation_per_host(tmp_path):
    lab = Lab(tmp_path)
    vol = lab.volume("db", "sdb")
    inside, release = threading.Event(), threading.Event()

    def hold_lock():
        with lab.coord.creation_lock():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold_lock)
    t.start()
    inside.wait(5)
    try:
        with pytest.raises(VssError) as e:
            lab.coord.create([vol])
        assert e.value.hresult == HResult.VSS_E_SNAPSHOT_SET_IN_PROGRESS
    finally:
        release.set()
        t.join()
    assert lab.snapshots() == []


def test_unsupported_context_is_a_clear_error_and_makes_nothing(tmp_path):
    lab = Lab(tmp_path)
    vol = lab.volume("db", "sdb")
    with pytest.raises(VssError) as e:
        lab.coord.create([vol], int(SnapshotContext.VSS_CTX_CLIENT_ACCESSIBLE))
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED and "not supported" in str(e.value)
    assert lab.events == ["are_luns_supported"] and lab.snapshots() == []


@pytest.mark.parametrize("step", ["end_prepare_snapshots", "commit_snapshots", "get_target_luns"])
def test_any_failure_aborts_the_whole_set(tmp_path, step):
    lab = Lab(tmp_path, fail=step)
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    with pytest.raises(VssError):
        lab.coord.create(vols)
    assert lab.events[-1] == "abort_snapshots"
    assert lab.snapshots() == []
    if step == "commit_snapshots":
        assert lab.events[lab.events.index("commit_snapshots") + 1] == "thaw"


def test_hold_writes_watchdog_aborts_the_set(tmp_path):
    lab = Lab(tmp_path, hold_error=vss_error(HResult.VSS_E_HOLD_WRITES_TIMEOUT, "held over 10 s"))
    vol = lab.volume("db", "sdb")
    with pytest.raises(VssError) as e:
        lab.coord.create([vol])
    assert e.value.hresult == HResult.VSS_E_HOLD_WRITES_TIMEOUT
    assert lab.snapshots() == []


def test_at_most_64_luns(tmp_path):
    lab = Lab(tmp_path)
    vols = [f"/mnt/d{i}" for i in range(65)]
    for i in range(65):
        lab.records[f"d{i}"] = {}
    with pytest.raises(VssError) as e:
        lab.coord.create(vols)
    assert e.value.hresult == HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED
    assert lab.events == []


def test_at_most_64_volumes_even_on_fewer_luns(tmp_path, monkeypatch):
    """65 volumes on one LUN: refused before anything is resolved, frozen or made (the document
    holds at most 64 snapshots), instead of failing after the commit."""
    lab = Lab(tmp_path)
    lab.volume("db", "sdb")
    for resolver in (lab, lab.coord):  # 65 partitions of sdb
        monkeypatch.setattr(resolver, "resolve", lambda volume: ["sdb"])
    with pytest.raises(VssError) as e:
        lab.coord.create([f"/mnt/part{i}" for i in range(65)])
    assert e.value.hresult == HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED
    assert lab.events == [] and lab.snapshots() == [] and lab.array.store.sets() == []


def test_bad_volume_names(tmp_path):
    lab = Lab(tmp_path)
    for vols, code in [([], HResult.E_INVALIDARG), (["/mnt/x", "/mnt/x"], HResult.E_INVALIDARG),
                       (["/mnt/nothing"], HResult.VSS_E_OBJECT_NOT_FOUND)]:
        with pytest.raises(VssError) as e:
            lab.coord.create(vols)
        assert e.value.hresult == code


@pytest.mark.parametrize("server_restarted", [False, True])
def test_recover_aborts_a_set_left_by_a_crash(tmp_path, server_restarted):
    """The coordinator died right after CommitSnapshots; at its next start the set is aborted,
    whether the provider server still holds it or was restarted and holds nothing."""
    lab = Lab(tmp_path)
    vol = lab.volume("db", "sdb")
    set_id, snap_id = "7f0c5d2e-3b1a-4c8d-9e6f-1a2b3c4d5e6f", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    lab.impl.begin_prepare_snapshot(set_id, snap_id, BACKUP, ["/dev/sdb"], [lab.records["sdb"]])
    lab.impl.end_prepare_snapshots(set_id)
    lab.impl.pre_commit_snapshots(set_id)
    lab.impl.commit_snapshots(set_id)
    lab.coord._save(SetProgress(set_id, str(PROVIDER_ID), BACKUP, "committing", [vol]))
    assert len(lab.snapshots()) == 1
    if server_restarted:
        lab.provider.impl = ShadowLunProvider(InProcessArray(lab.array), FakeInitiator(), HOST)
    assert lab.coord.recover() == [set_id]
    assert lab.snapshots() == []
    assert lab.coord.recover() == []


def test_a_set_whose_abort_failed_is_left_for_recover(tmp_path):
    """The abort after a failed commit did not go through (a provider server killed hung that
    would not start again, say): the set keeps its progress, and `recover` aborts it."""
    lab = Lab(tmp_path, fail="commit_snapshots")
    vol = lab.volume("db", "sdb")
    call = lab.provider.call

    def abort_fails_once(method, **params):
        if method == "abort_snapshots" and lab.events.count("abort_snapshots") == 0:
            lab.events.append(method)
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, "abort failed (injected)")
        return call(method, **params)

    lab.provider.call = abort_fails_once
    with pytest.raises(VssError):
        lab.coord.create([vol])
    [progress] = (tmp_path / "sets").glob("*.json")
    left = json.loads(progress.read_text())
    assert left["state"] == "committing"
    assert lab.coord.recover() == [left["set_id"]]
    assert json.loads(progress.read_text())["state"] == "aborted" and lab.snapshots() == []


# -- import ---------------------------------------------------------------------------------

from provider.hardware.hardware_provider import HostIdentity  # noqa: E402


def importer(lab, tmp_path, name: str, hide: set[str] = frozenset()):
    """Another host's coordinator and provider over the same array; FillInLunInfo answers from
    the disks the fake initiator 'found' (device -> WWID -> the array's serial). Its partition
    tables are those the originals had at the freeze (what the snapshots captured): the fake
    initiator names the shadow disks sdb, sdc, ... in the order of the volumes, like lab's."""
    host = HostIdentity(f"iqn.2026-11.lab.shadowlun:{name}", name, f"secret-{name}-00")
    impl = ShadowLunProvider(InProcessArray(lab.array), FakeInitiator(), host)
    record_of = found_disks(impl, lab.array, hide)
    provider = InProcessProvider(impl, [])
    gpt = FakeGpt()
    gpt.attrs = {d: dict(t) for d, t in getattr(lab, "frozen_attrs", {}).items()}
    coord = Coordinator([provider], state_dir=tmp_path / name, resolve=lab.resolve,
                        filesystems_on=lambda d: [], hold_writes=lab.hold, read_record=record_of,
                        extents=lab.extents, flags=gpt, runner=FakeRunner(),
                        list_disks=lambda: sorted(impl.initiator.disks.values()),
                        originals_dir=tmp_path / name / "originals")
    return coord, impl


def test_import_on_another_host_finds_every_shadow_lun_once(tmp_path):
    lab = Lab(tmp_path / "a")
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    doc, _ = lab.coord.create(vols, TRANSPORTABLE)
    xml = bcd.to_xml(doc)
    coord_b, impl_b = importer(lab, tmp_path, "host-b")
    result = coord_b.import_document(xml)
    assert result.status == HResult.S_OK and result.missing == []
    assert [s["volume"] for s in result.snapshots] == vols
    assert all(len(s["devices"]) == 1 and s["devices"][0].startswith("/dev/sd") for s in result.snapshots)
    # The same document again on this host, and on a third host: refused.
    with pytest.raises(VssError) as e:
        coord_b.import_document(xml)
    assert e.value.hresult == HResult.VSS_E_BAD_STATE and "already imported on this host" in str(e.value)
    coord_c, _ = importer(lab, tmp_path, "host-c")
    with pytest.raises(VssError) as e:
        coord_c.import_document(xml)
    assert e.value.hresult == HResult.VSS_E_BAD_STATE and "host-b" in str(e.value)
    assert lab.array.set_view(doc.set_id)["imported_by"] == "iqn.2026-11.lab.shadowlun:host-b"


def test_import_with_a_lun_that_does_not_match_is_partial(tmp_path):
    lab = Lab(tmp_path / "a")
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    doc, _ = lab.coord.create(vols, TRANSPORTABLE)
    coord_b, _ = importer(lab, tmp_path, "host-b", hide={"/dev/sdc"})
    result = coord_b.import_document(bcd.to_xml(doc))
    assert result.status == HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED
    assert [m["volume"] for m in result.missing] == [vols[1]]


def array_state(lab, set_id: str) -> dict:
    """What an import changes on the array: the set's claim and every LUN's masks."""
    return {"set": lab.array.set_view(set_id),
            "masks": {v.name: sorted(m.initiator for m in lab.array.store.masks(v.name))
                      for v in lab.array.inventory()}}


def test_an_import_that_fails_after_locate_luns_releases_what_it_located(tmp_path):
    """No disk matches its record (VSS_E_NO_SNAPSHOTS_IMPORTED, after LocateLuns brought them):
    the requester's cleanup (ReleaseLuns) takes the disks off the host, and the array unmasks
    them and drops the claim: the array is as before the import, and the set can be imported
    again, here or elsewhere."""
    lab = Lab(tmp_path / "a")
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    doc, _ = lab.coord.create(vols, TRANSPORTABLE)
    before = array_state(lab, doc.set_id)
    coord_b, impl_b = importer(lab, tmp_path, "host-b", hide={"/dev/sdb", "/dev/sdc"})
    with pytest.raises(VssError) as e:
        coord_b.import_document(bcd.to_xml(doc))
    assert e.value.hresult == HResult.VSS_E_NO_SNAPSHOTS_IMPORTED
    assert coord_b.providers[0].events == ["locate_luns", "release_luns"]
    assert impl_b.initiator.disks == {} and coord_b.list_sets() == []
    assert array_state(lab, doc.set_id) == before
    FakeSysfs.foreign.clear()
    coord_c, _ = importer(lab, tmp_path, "host-c")
    assert coord_c.import_document(bcd.to_xml(doc)).status == HResult.S_OK


def test_a_failed_release_after_a_failed_import_says_both(tmp_path):
    lab = Lab(tmp_path / "a")
    doc, _ = lab.coord.create([lab.volume("db", "sdb")], TRANSPORTABLE)
    coord_b, _ = importer(lab, tmp_path, "host-b", hide={"/dev/sdb"})
    coord_b.providers[0].fail = "release_luns"
    with pytest.raises(VssError) as e:
        coord_b.import_document(bcd.to_xml(doc))
    assert e.value.hresult == HResult.VSS_E_NO_SNAPSHOTS_IMPORTED
    assert "could be imported" in e.value.message and "releasing its LUNs: release_luns failed" in e.value.message


def test_release_luns_refuses_what_this_host_did_not_locate_and_changes_nothing(tmp_path):
    """ReleaseLuns (shadowlun's own method) of a production LUN, of a LUN another host
    imported, of an unknown serial: refused with its code before anything changes."""
    lab = Lab(tmp_path / "a")
    doc, _ = lab.coord.create([lab.volume("db", "sdb")], TRANSPORTABLE)
    coord_b, impl_b = importer(lab, tmp_path, "host-b")
    coord_b.import_document(bcd.to_xml(doc))
    _, impl_c = importer(lab, tmp_path, "host-c")
    shadow = [m.destination for s in doc.snapshots for m in s.luns]
    production = [m.source for s in doc.snapshots for m in s.luns]
    unknown = [dict(shadow[0], serial_number="0" * 32)]
    before = (array_state(lab, doc.set_id), dict(impl_b.initiator.disks))
    for impl, luns, code in [(impl_c, shadow, HResult.E_INVALIDARG), (impl_b, production, HResult.E_INVALIDARG),
                             (impl_b, unknown, HResult.VSS_E_OBJECT_NOT_FOUND), (impl_b, [], HResult.E_INVALIDARG)]:
        with pytest.raises(VssError) as e:
            impl.release_luns(luns)
        assert e.value.hresult == code, e.value
        assert (array_state(lab, doc.set_id), dict(impl_b.initiator.disks)) == before


def test_release_luns_twice_and_after_a_crash_between_its_two_steps(tmp_path, monkeypatch):
    """A second ReleaseLuns finds nothing of the import left here: E_INVALIDARG, nothing changed.
    One that stopped after the host's step (the array unreachable, or the process killed) leaves
    the LUNs masked and claimed with no disk here: called again, it finishes the array's step."""
    lab = Lab(tmp_path / "a")
    doc, _ = lab.coord.create([lab.volume("db", "sdb"), lab.volume("logs", "sdc")], TRANSPORTABLE)
    before = array_state(lab, doc.set_id)
    shadow = [m.destination for s in doc.snapshots for m in s.luns]
    _, impl_b = importer(lab, tmp_path, "host-b")
    impl_b.locate_luns(shadow)
    assert impl_b.initiator.disks and array_state(lab, doc.set_id) != before
    down = vss_error(HResult.VSS_E_PROVIDER_VETO, "array agent unreachable")
    monkeypatch.setattr(impl_b.array, "release_import", lambda serials, host: (_ for _ in ()).throw(down))
    with pytest.raises(VssError) as e:
        impl_b.release_luns(shadow)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO and "on the array" in e.value.message
    assert impl_b.initiator.disks == {} and array_state(lab, doc.set_id) != before  # half done
    monkeypatch.undo()
    impl_b.release_luns(shadow)  # the array's step now
    assert impl_b.initiator.disks == {} and array_state(lab, doc.set_id) == before
    with pytest.raises(VssError) as e:
        impl_b.release_luns(shadow)
    assert e.value.hresult == HResult.E_INVALIDARG
    assert impl_b.initiator.disks == {} and array_state(lab, doc.set_id) == before


def test_import_refuses_a_non_transportable_or_broken_document(tmp_path):
    lab = Lab(tmp_path / "a")
    doc, _ = lab.coord.create([lab.volume("db", "sdb")], BACKUP)
    coord_b, impl_b = importer(lab, tmp_path, "host-b")
    with pytest.raises(VssError) as e:
        coord_b.import_document(bcd.to_xml(doc))
    assert e.value.hresult == HResult.VSS_E_NONTRANSPORTABLE_BCD
    with pytest.raises(VssError) as e:
        coord_b.import_document(b"<not xml")
    assert e.value.hresult == HResult.VSS_E_CORRUPT_XML_DOCUMENT
    assert impl_b.initiator.calls == []  # nothing was located


# -- shadow-copy flags ----------------------------------------------------------------------

from provider.requester.shadow_flags import READ_ONLY, SHADOW_COPY, SHADOW_FLAGS  # noqa: E402


def test_flags_are_on_the_originals_only_while_the_commit_captures_them(tmp_path):
    lab = Lab(tmp_path)
    doc, report = lab.coord.create([lab.volume("db", "sdb"), lab.volume("logs", "sdc")], TRANSPORTABLE)
    assert lab.frozen_attrs == {"sdb": {1: SHADOW_FLAGS}, "sdc": {1: SHADOW_FLAGS}}
    assert lab.gpt.attrs == {"sdb": {1: 0}, "sdc": {1: 0}}
    # Meanwhile the udev rule was told to leave the originals alone; afterwards they are writable.
    assert lab.frozen_markers == ["sdb", "sdc"] and list(lab.coord.originals_dir.glob("*")) == []
    assert lab.gpt.read_only == {"sdb": False, "sdb1": False, "sdc": False, "sdc1": False}
    assert report["wall"]["flag originals"][1] <= report["wall"]["writes held"][0]
    assert report["wall"]["unflag originals"][0] >= report["wall"]["writes held"][1]
    # The document says where each volume lies: partition 1, from 1 MiB on.
    assert [(e.lun_index, e.offset_bytes) for s in doc.snapshots for e in s.extents] == [(0, MIB), (0, MIB)]


def test_udev_is_done_with_the_flagged_originals_before_writes_are_held(tmp_path):
    """Writing the flags makes udev re-read every original's table: that work is waited for
    before the freeze, not left to run beside the commit while writes are held."""
    lab = Lab(tmp_path)
    runner, set_flags = lab.runner.__call__, lab.gpt.set

    def run(argv, check=True):
        lab.events.append(" ".join(argv[:2]))
        return runner(argv, check)

    def flag(disk, numbers, flags):
        lab.events.append(f"flag {disk}")
        return set_flags(disk, numbers, flags)

    lab.coord.runner, lab.gpt.set = run, flag
    lab.coord.create([lab.volume("db", "sdb"), lab.volume("logs", "sdc")], TRANSPORTABLE)
    freeze = next(i for i, e in enumerate(lab.events) if e.startswith("freeze"))
    last_flag = max(i for i, e in enumerate(lab.events) if e.startswith("flag "))
    assert "udevadm settle" in lab.events[last_flag:freeze], lab.events


def test_flags_already_on_an_original_are_left_as_they_were(tmp_path):
    lab = Lab(tmp_path)
    vol = lab.volume("db", "sdb")
    lab.gpt.attrs["sdb"] = {1: READ_ONLY}
    lab.coord.create([vol], TRANSPORTABLE)
    assert lab.frozen_attrs["sdb"][1] == SHADOW_FLAGS and lab.gpt.attrs["sdb"][1] == READ_ONLY


def test_transportable_needs_gpt_partitions_and_makes_nothing_without(tmp_path):
    lab = Lab(tmp_path)
    vol = lab.volume("db", "rawb")
    with pytest.raises(VssError) as e:
        lab.coord.create([vol], TRANSPORTABLE)
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED and "whole disk rawb" in str(e.value)
    assert lab.events == [] and lab.snapshots() == []
    lab.coord.create([vol], BACKUP)  # not transportable: no flags, no refusal
    assert lab.gpt.writes == []


@pytest.mark.parametrize("step", ["pre_commit_snapshots", "commit_snapshots", "post_commit_snapshots"])
def test_a_failed_set_leaves_no_flag_on_the_originals(tmp_path, step):
    lab = Lab(tmp_path, fail=step)
    with pytest.raises(VssError):
        lab.coord.create([lab.volume("db", "sdb")], TRANSPORTABLE)
    assert lab.gpt.attrs == {"sdb": {1: 0}} and lab.snapshots() == []


def test_recover_clears_flags_a_crash_left_on_the_originals(tmp_path):
    lab = Lab(tmp_path)
    vol = lab.volume("db", "sdb")
    lab.gpt.partitions("sdb")
    lab.gpt.set("sdb", [1], SHADOW_FLAGS)
    progress = SetProgress("7f0c5d2e-3b1a-4c8d-9e6f-1a2b3c4d5e6f", str(PROVIDER_ID), TRANSPORTABLE,
                           "committing", [vol], flagged=[["sdb", 1, SHADOW_FLAGS]])
    lab.coord._save(progress)
    lab.coord.recover()
    assert lab.gpt.attrs["sdb"][1] == 0


# -- after an import: list, expose, break, delete, resync -----------------------------------

def imported(tmp_path, volumes=(("db", "sdb"), ("logs", "sdc"))):
    lab = Lab(tmp_path / "a")
    doc, _ = lab.coord.create([lab.volume(n, d) for n, d in volumes], TRANSPORTABLE)
    coord_b, impl_b = importer(lab, tmp_path, "host-b")
    result = coord_b.import_document(bcd.to_xml(doc))
    return lab, doc, coord_b, impl_b, result


def test_import_brings_each_volume_online_read_only_with_its_flags(tmp_path):
    lab, doc, coord_b, impl_b, result = imported(tmp_path)
    assert [s["device"] for s in result.snapshots] == ["/dev/sdb1", "/dev/sdc1"]
    assert all(s["flags"] == ["read-only", "shadow-copy", "hidden", "no-drive-letter"] for s in result.snapshots)
    assert coord_b.flags.read_only == {"sdb": True, "sdb1": True, "sdc": True, "sdc1": True}
    listed = coord_b.list_sets()
    assert [s["set_id"] for s in listed] == [doc.set_id]
    assert [(s["volume"], s["device"], s["exposed"]) for s in listed[0]["snapshots"]] == [
        ("/mnt/sdb", "/dev/sdb1", None), ("/mnt/sdc", "/dev/sdc1", None)]


def test_expose_mounts_read_only_without_journal_replay_and_unexpose(tmp_path):
    _, doc, coord_b, _, _ = imported(tmp_path)
    snap = doc.snapshots[0].snapshot_id
    where = tmp_path / "shadow-db"
    out = coord_b.expose(snap, str(where))
    assert out == {"snapshot_id": snap, "device": "/dev/sdb1", "exposed": str(where)}
    assert ["mount", "-t", "ext4", "-o", "ro,noload", "/dev/sdb1", str(where)] in coord_b.runner.calls
    with pytest.raises(VssError) as e:
        coord_b.expose(snap, str(tmp_path / "elsewhere"))
    assert e.value.hresult == HResult.VSS_E_BAD_STATE
    assert coord_b.unexpose(snap) == {"snapshot_id": snap, "unexposed": str(where)}
    with pytest.raises(VssError) as e:
        coord_b.unexpose(snap)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND
    (where / "x").write_text("not empty")
    with pytest.raises(VssError) as e:
        coord_b.expose(snap, str(where))
    assert e.value.hresult == HResult.E_INVALIDARG
    assert coord_b.expose(snap)["exposed"] == "device"


def test_unknown_ids_are_object_not_found(tmp_path):
    _, _, coord_b, _, _ = imported(tmp_path)
    unknown = "11111111-2222-4333-8444-555555555555"
    for op in (lambda: coord_b.expose(unknown), lambda: coord_b.break_set(unknown),
               lambda: coord_b.delete(set_id=unknown), lambda: coord_b.delete(snapshot_id=unknown)):
        with pytest.raises(VssError) as e:
            op()
        assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND


@pytest.mark.parametrize("writable", [False, True])
def test_break_makes_ordinary_luns(tmp_path, writable):
    lab, doc, coord_b, _, _ = imported(tmp_path)
    out = coord_b.break_set(doc.set_id, writable=writable)
    assert [v["device"] for v in out["volumes"]] == ["/dev/sdb1", "/dev/sdc1"]
    left = 0 if writable else SHADOW_FLAGS & ~SHADOW_COPY
    assert coord_b.flags.attrs == {"sdb": {1: left}, "sdc": {1: left}}
    assert coord_b.flags.read_only["sdb1"] is (not writable)
    assert coord_b.list_sets() == []
    shadows = [v for v in lab.array.inventory() if v.origin]
    assert len(shadows) == 2 and {v.kind for v in shadows} == {"volume"}


def test_a_break_the_provider_refuses_changes_nothing_on_the_host(tmp_path):
    """break --writable whose provider call fails: the flags, the read-only setting and the
    catalog are as before (an intact shadow copy, not an unprotected one); run again once the
    provider agrees, it breaks."""
    lab, doc, coord_b, impl_b, _ = imported(tmp_path)
    flags, read_only = {d: dict(p) for d, p in coord_b.flags.attrs.items()}, dict(coord_b.flags.read_only)
    lab.array.lio.inject("unmask", RuntimeError("not reached"))  # any array failure will do:
    lab.array.backend.lvm.inject("retag", RuntimeError("the array could not detach"))
    with pytest.raises(VssError):
        coord_b.break_set(doc.set_id, writable=True)
    assert coord_b.flags.attrs == flags and coord_b.flags.read_only == read_only
    assert [s["set_id"] for s in coord_b.list_sets()] == [doc.set_id]
    lab.array.backend.lvm.clear_failures()
    lab.array.lio.clear_failures()
    assert coord_b.break_set(doc.set_id, writable=True)["writable"] is True
    assert coord_b.list_sets() == []


def test_delete_a_snapshot_then_the_set(tmp_path):
    lab, doc, coord_b, impl_b, _ = imported(tmp_path)
    first, second = (s.snapshot_id for s in doc.snapshots)
    assert coord_b.delete(snapshot_id=first) == {"deleted": [first], "non_deleted": None}
    assert len([v for v in lab.array.inventory() if v.kind == "snapshot"]) == 1
    assert [s["snapshot_id"] for s in coord_b.list_sets()[0]["snapshots"]] == [second]
    assert coord_b.delete(set_id=doc.set_id)["deleted"] == [second]
    assert [v for v in lab.array.inventory() if v.kind == "snapshot"] == []
    assert coord_b.list_sets() == [] and impl_b.initiator.disks == {}
    with pytest.raises(VssError) as e:
        coord_b.delete(snapshot_id=first, set_id=doc.set_id)
    assert e.value.hresult == HResult.E_INVALIDARG


def test_a_delete_cut_short_after_the_array_deleted_the_lun_finishes_when_run_again(tmp_path):
    """OnLunEmpty done (the host's disk removed, the LUN deleted on the array), then the
    requester stopped before its catalog forgot the copy: the delete run again finishes, it
    does not fail for ever on a LUN the array no longer has. Nothing else is touched."""
    lab, doc, coord_b, impl_b, _ = imported(tmp_path)
    first, second = (s.snapshot_id for s in doc.snapshots)
    _, entry = coord_b.catalog.require_snapshot(first)
    [rec] = entry.luns
    impl_b.on_lun_empty(f"/dev/{coord_b._find_disk(rec)}", rec)  # the part that was done
    others = [v.name for v in lab.array.inventory()]
    assert coord_b.delete(snapshot_id=first) == {"deleted": [first], "non_deleted": None}
    assert [v.name for v in lab.array.inventory()] == others
    assert [s["snapshot_id"] for s in coord_b.list_sets()[0]["snapshots"]] == [second]
    assert coord_b.delete(set_id=doc.set_id)["deleted"] == [second]
    assert coord_b.list_sets() == [] and impl_b.initiator.disks == {}


def test_resync_refuses_a_mounted_original_then_restores_and_clears_flags(tmp_path, monkeypatch):
    import targets.jobs

    copied = []

    def copy_blocks(src, dst, size, progress=None, only_changed=False):
        copied.append((src, dst, only_changed))
        progress(size // 2)
        progress(size)

    monkeypatch.setattr(targets.jobs, "copy_blocks", copy_blocks)
    lab, doc, _, _, _ = imported(tmp_path, volumes=(("db", "sdb"),))
    with pytest.raises(VssError) as e:
        lab.coord.resync(bcd.to_xml(doc))
    assert e.value.hresult == HResult.VSS_E_VOLUME_IN_USE and "/mnt/sdb" in str(e.value)
    assert not any(j for j in lab.array.store.jobs())  # nothing started
    with pytest.raises(VssError) as e:
        lab.coord.resync(bcd.to_xml(doc), ["11111111-2222-4333-8444-555555555555"])
    assert e.value.hresult == HResult.VSS_E_SNAPSHOT_NOT_IN_SET
    lab.unmounted.add("sdb")
    lab.gpt.attrs["sdb"][1] = SHADOW_FLAGS  # what the copy carries arrives with the resync
    seen = []
    out = lab.coord.resync(bcd.to_xml(doc), on_progress=lambda done, total: seen.append((done, total)))
    assert out["disks"] == ["/dev/sdb"] and seen[-1][0] == seen[-1][1] > 0
    assert [j.state for j in lab.array.store.jobs()] == ["done"]
    assert [(src.rsplit("/", 1)[1][:5], dst.rsplit("/", 1)[1], changed) for src, dst, changed in copied] == [
        ("snap-", "lun-db", True)]
    assert lab.gpt.attrs["sdb"][1] == 0
    calls = lab.runner.calls
    assert calls.index(["blockdev", "--flushbufs", "/dev/sdb"]) < calls.index(["blockdev", "--rereadpt", "/dev/sdb"])


# -- contexts: auto-import on the creating host, release at the requester's end -----------------

APP_ROLLBACK = int(SnapshotContext.VSS_CTX_APP_ROLLBACK)


def on_the_array(lab) -> tuple:
    """Every shadow LUN and snapshot LV the array has, and the masks of them."""
    return (sorted(v.name for v in lab.array.inventory() if v.kind == "snapshot"), lab.snapshots())


def test_a_backup_set_is_imported_here_and_released_whole_at_the_requesters_end(tmp_path):
    """Issue 13 point 4: VSS_CTX_BACKUP (non-persistent, auto-release, not transportable): the
    set is imported on the creating host (read-only, hidden, in `list`), held for its requester,
    and release leaves nothing of it on the array or on this host."""
    lab = Lab(tmp_path)
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    doc, report = lab.coord.create(vols, BACKUP)
    assert "auto-import" in report["seconds"]
    [listed] = lab.coord.list_sets()
    assert listed["set_id"] == doc.set_id and [s["device"] for s in listed["snapshots"]] == ["/dev/shb1", "/dev/shc1"]
    assert {d: ro for d, ro in lab.gpt.read_only.items() if d.startswith("sh")} == \
        {"shb": True, "shb1": True, "shc": True, "shc1": True}
    assert [h.set_id for h in lab.coord.holds.all()] == [doc.set_id]
    assert len(on_the_array(lab)[1]) == 2
    out = lab.coord.release(doc.set_id)
    assert sorted(out["released"]) == sorted(s.snapshot_id for s in doc.snapshots)
    assert on_the_array(lab) == ([], []) and lab.coord.list_sets() == [] and lab.coord.holds.all() == []
    assert lab.impl.initiator.disks == {}  # the disks left this host
    assert lab.coord.release(doc.set_id)["released"] == []  # again: nothing to do


def test_a_persistent_set_is_imported_here_and_stays(tmp_path):
    lab = Lab(tmp_path)
    doc, _ = lab.coord.create([lab.volume("db", "sdb")], APP_ROLLBACK)
    assert [s["set_id"] for s in lab.coord.list_sets()] == [doc.set_id]
    assert lab.coord.holds.all() == [] and lab.coord.recover() == []
    assert len(on_the_array(lab)[1]) == 1
    lab.coord.delete(everything=True)  # `delete --all` finds it
    assert on_the_array(lab) == ([], [])


def test_a_transportable_set_is_neither_imported_here_nor_held(tmp_path):
    lab = Lab(tmp_path)
    lab.coord.create([lab.volume("db", "sdb")], TRANSPORTABLE)
    assert lab.coord.list_sets() == [] and lab.coord.holds.all() == [] and lab.impl.initiator.disks == {}


def test_recover_releases_the_sets_of_a_requester_that_died_and_only_those(tmp_path, monkeypatch):
    lab = Lab(tmp_path)
    mine, _ = lab.coord.create([lab.volume("db", "sdb")], BACKUP)
    theirs, _ = lab.coord.create([lab.volume("logs", "sdc")], BACKUP)
    dead = lab.coord.holds.get(theirs.set_id)
    # the requester of `theirs` is gone: a pid whose start time is not the one recorded
    (lab.coord.holds.directory / f"{theirs.set_id}.json").write_text(
        json.dumps({**dead.__dict__, "started": "1"}))
    assert lab.coord.recover() == [theirs.set_id]
    assert [s["set_id"] for s in lab.coord.list_sets()] == [mine.set_id]
    assert [h.set_id for h in lab.coord.holds.all()] == [mine.set_id]
    assert len(on_the_array(lab)[1]) == 1


def test_a_crash_before_the_auto_import_is_released_by_recover(tmp_path, monkeypatch):
    """The requester died after the hold was written, before the import: recover deletes the
    shadow LUNs from the held document, though this host never imported them."""
    lab = Lab(tmp_path)
    monkeypatch.setattr(lab.coord, "_import", lambda doc: (_ for _ in ()).throw(SystemExit(137)))
    monkeypatch.setattr(lab.coord, "release", lambda set_id: {})  # the requester is killed: no cleanup
    with pytest.raises(SystemExit):
        lab.coord.create([lab.volume("db", "sdb")], BACKUP)
    monkeypatch.undo()
    [hold] = lab.coord.holds.all()
    (lab.coord.holds.directory / f"{hold.set_id}.json").write_text(json.dumps({**hold.__dict__, "started": "1"}))
    assert len(on_the_array(lab)[1]) == 1 and lab.coord.list_sets() == []
    assert lab.coord.recover() == [hold.set_id]
    assert on_the_array(lab) == ([], []) and lab.coord.holds.all() == []


def test_a_failed_auto_import_deletes_the_set_and_says_why(tmp_path):
    lab = Lab(tmp_path)
    vols = [lab.volume("db", "sdb")]
    FakeSysfs.foreign.add("shb")  # the shadow disk reports another LUN's identity
    with pytest.raises(VssError) as e:
        lab.coord.create(vols, APP_ROLLBACK)
    assert e.value.hresult == HResult.VSS_E_NO_SNAPSHOTS_IMPORTED
    assert on_the_array(lab) == ([], []) and lab.coord.list_sets() == [] and lab.coord.holds.all() == []


class KilledAtLocate(InProcessProvider):
    """A provider server that does LocateLuns' work but is killed as hung before it answers (a
    64-LUN auto-import overran the 300 s deadline on the lab): every call fails as against a dead
    server until the coordinator starts a new one."""

    def __init__(self, impl, events) -> None:
        super().__init__(impl, events)
        self.dead, self.starts = False, 0

    def start(self) -> None:
        self.starts += 1
        self.dead = False

    def call(self, method, timeout=None, /, **params):
        if self.dead:
            raise vss_error(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, f"{method}: connection refused")
        out = super().call(method, timeout, **params)
        if method == "locate_luns":
            self.dead = True
            raise vss_error(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR,
                            "provider did not answer LocateLuns within 300 s; its server was killed")
        return out


def test_an_auto_import_whose_provider_was_killed_is_deleted_by_a_new_provider_server(tmp_path):
    """The set's deletion after a failed auto-import starts the provider server again when the
    failure killed it, and the error said is the import's, not the cleanup's."""
    lab = Lab(tmp_path)
    lab.provider = lab.coord.providers[0] = KilledAtLocate(lab.impl, lab.events)
    with pytest.raises(VssError) as e:
        lab.coord.create([lab.volume("db", "sdb")], BACKUP)
    assert e.value.hresult == HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR and "LocateLuns" in e.value.message
    assert lab.provider.starts >= 1
    assert on_the_array(lab) == ([], []) and lab.coord.list_sets() == [] and lab.coord.holds.all() == []
    assert lab.impl.initiator.disks == {}


def test_a_failed_cleanup_of_an_auto_import_is_added_to_the_imports_error(tmp_path, monkeypatch):
    lab = Lab(tmp_path)
    monkeypatch.setattr(lab.coord, "release", lambda set_id: (_ for _ in ()).throw(
        vss_error(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, "deleted 0 shadow copies")))
    FakeSysfs.foreign.add("shb")  # the shadow disk reports another LUN's identity
    with pytest.raises(VssError) as e:
        lab.coord.create([lab.volume("db", "sdb")], APP_ROLLBACK)
    assert e.value.hresult == HResult.VSS_E_NO_SNAPSHOTS_IMPORTED
    assert "deleting the set: deleted 0 shadow copies" in e.value.message
    assert [h.set_id for h in lab.coord.holds.all()]  # held: `recover` deletes it later


def cli_over(lab, monkeypatch):
    """provider.cli, with the lab's provider loaded and its coordinator."""
    from provider import cli

    lab.provider.server_pid = 4242

    @contextmanager
    def loaded():
        yield [lab.provider]

    monkeypatch.setattr(cli, "loaded_providers", loaded)
    monkeypatch.setattr(cli, "coordinator", lambda providers=None: lab.coord)
    return cli


@pytest.mark.parametrize("status", [0, 3])
def test_the_cli_runs_the_command_while_the_backup_set_exists_then_releases_it(tmp_path, monkeypatch, status):
    """`shadowlun create --exec CMD` (vshadow -exec): CMD sees the shadow copies' devices, the
    set is released after it whatever its exit status, which the CLI's status reports."""
    lab = Lab(tmp_path)
    vols = [lab.volume("db", "sdb"), lab.volume("logs", "sdc")]
    cli = cli_over(lab, monkeypatch)
    seen = tmp_path / "seen"
    cmd = f'echo "$SHADOWLUN_SET_ID $SHADOWLUN_DEVICES" > {seen}; exit {status}'
    assert cli.main(["--json", "create", "--exec", cmd, *vols]) == (1 if status else 0)
    set_id, *devices = seen.read_text().split()
    assert devices == ["/dev/shb1", "/dev/shc1"]
    assert lab.array.set_view(set_id)["state"] == "committed"  # the set row stays, its LUNs are gone
    assert on_the_array(lab) == ([], []) and lab.coord.holds.all() == [] and lab.coord.list_sets() == []


def test_a_document_the_cli_cannot_write_is_the_systems_failure_and_the_backup_set_still_goes(
        tmp_path, monkeypatch, capsys):
    lab = Lab(tmp_path)
    vols = [lab.volume("db", "sdb")]
    cli = cli_over(lab, monkeypatch)
    assert cli.main(["--json", "create", "--bcd", str(tmp_path / "no-such-dir" / "set.xml"), *vols]) == 1
    assert json.loads(capsys.readouterr().err)["vss"] == "VSS_E_UNEXPECTED"
    assert on_the_array(lab) == ([], []) and lab.coord.holds.all() == [] and lab.coord.list_sets() == []


def test_break_with_mask_luns_hides_them_from_this_host_and_keeps_them_on_the_array(tmp_path):
    """BreakSnapshotSetEx MASK_LUNS: ordinary LUNs on the array, no longer masked to (nor
    attached on) the importing host, no flag written on the way; refused while a copy is
    exposed, with nothing changed."""
    lab, doc, coord_b, impl_b, _ = imported(tmp_path)
    snap = doc.snapshots[0].snapshot_id
    coord_b.expose(snap, str(tmp_path / "shadow"))
    writes, before = list(coord_b.flags.writes), [v for v in lab.array.inventory() if v.origin]
    with pytest.raises(VssError) as e:
        coord_b.break_set(doc.set_id, mask=True)
    assert e.value.hresult == HResult.VSS_E_VOLUME_IN_USE
    assert [v for v in lab.array.inventory() if v.origin] == before
    assert [s["set_id"] for s in coord_b.list_sets()] == [doc.set_id]
    coord_b.unexpose(snap)
    out = coord_b.break_set(doc.set_id, mask=True)
    assert out["masked"] is True and [v["device"] for v in out["volumes"]] == [None, None]
    assert coord_b.flags.writes == writes and coord_b.list_sets() == []
    shadows = [v for v in lab.array.inventory() if v.origin]
    assert len(shadows) == 2 and {v.kind for v in shadows} == {"volume"} and all(v.masks == [] for v in shadows)
    assert impl_b.initiator.disks == {}
    with pytest.raises(VssError) as e:
        coord_b.break_set(doc.set_id, writable=True, mask=True)
    assert e.value.hresult == HResult.E_INVALIDARG


def test_break_with_revert_identity_gives_the_copies_their_originals_identity(tmp_path):
    """REVERT_IDENTITY_ALL: refused (the spec's code, nothing changed) while an original is on
    this host, and with MASK_LUNS; otherwise the broken LUNs answer with their originals'
    identity, on disks found by it, flags handled as for any break."""
    lab, doc, coord_b, impl_b, _ = imported(tmp_path)
    originals = {v.name: v for v in lab.array.inventory() if not v.origin}

    def state():
        return ([asdict(v) for v in lab.array.inventory()], dict(impl_b.initiator.disks),
                {d: dict(p) for d, p in coord_b.flags.attrs.items()}, dict(coord_b.flags.read_only),
                coord_b.list_sets())

    impl_b.initiator.disks[originals["db"].wwid] = "sdz"  # the original db is attached here too
    before = state()
    with pytest.raises(VssError) as e:
        coord_b.break_set(doc.set_id, writable=True, revert_identity=True)
    assert e.value.hresult == HResult.VSS_E_BREAK_REVERT_ID_FAILED and state() == before
    del impl_b.initiator.disks[originals["db"].wwid]
    before = state()
    with pytest.raises(VssError) as e:
        coord_b.break_set(doc.set_id, mask=True, revert_identity=True)
    assert e.value.hresult == HResult.E_INVALIDARG and state() == before
    out = coord_b.break_set(doc.set_id, writable=True, revert_identity=True)
    assert out["identity_reverted"] is True and [v["device"] for v in out["volumes"]] == ["/dev/sdb1", "/dev/sdc1"]
    broken = {v.origin: v for v in lab.array.inventory() if v.origin}
    for name in ("db", "logs"):
        assert (broken[name].kind, broken[name].serial) == ("volume", originals[name].serial)
        assert impl_b.initiator.find_disk(originals[name].wwid)  # the disk answers as the original
    assert coord_b.flags.attrs == {"sdb": {1: 0}, "sdc": {1: 0}} and coord_b.flags.read_only["sdb1"] is False
    assert coord_b.list_sets() == []


def test_a_resync_interrupted_by_the_user_is_cancelled_on_the_array(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into SystemExit) while the resync runs: the
    coordinator cancels it (IVssAsync Cancel) and answers E_ABORT; the job is cancelled."""
    import threading

    import targets.jobs

    stop = threading.Event()

    def copy_blocks(src, dst, size, progress=None, only_changed=False):
        while True:  # runs until cancelled
            progress(size // 2)
            stop.wait(0.01)

    monkeypatch.setattr(targets.jobs, "copy_blocks", copy_blocks)
    lab, doc, _, _, _ = imported(tmp_path, volumes=(("db", "sdb"),))
    lab.unmounted.add("sdb")
    polls = []

    def interrupt(done, total):
        polls.append(done)
        if len(polls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(VssError) as e:
        lab.coord.resync(bcd.to_xml(doc), on_progress=interrupt)
    assert e.value.hresult == HResult.E_ABORT and "resync interrupted and cancelled" in str(e.value)
    assert [j.state for j in lab.array.store.jobs()] == ["cancelled"]
    assert lab.events[-2:] == ["query_status", "cancel"]
