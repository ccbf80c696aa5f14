"""The coordinator over the real provider and array logic (in process, LVM/LIO faked)."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from provider import bcd
from provider.coordinator import Coordinator, SetProgress
from provider.hardware_provider import PROVIDER_ID, ShadowLunProvider
from provider.hresult import HResult, VssError, vss_error
from provider.lun_info import predict_lio_lun_info
from provider.vss_types import SnapshotContext, VolumeSnapshotAttributes
from targets_fakes import FakeLvm, make_array
from test_hardware_provider import HOST, FakeInitiator, InProcessArray

MIB = 1 << 20
BACKUP = int(SnapshotContext.VSS_CTX_BACKUP)
TRANSPORTABLE = BACKUP | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE)


class InProcessProvider:
    """What provider.proxy gives the coordinator, without the process boundary."""

    def __init__(self, impl, events: list, fail: str | None = None) -> None:
        self.provider_id, self.impl, self.events, self.fail = str(PROVIDER_ID), impl, events, fail

    def call(self, method, **params):
        self.events.append(method)
        if method == self.fail:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{method} failed (injected)")
        return getattr(self.impl, method)(**params)


class Lab:
    """An array with volumes, each on its own 'disk' (sdb, sdc, ...), mounted at /mnt/<name>."""

    def __init__(self, tmp_path, fail=None, hold_error=None):
        self.lvm = FakeLvm()
        self.array = make_array(lvm=self.lvm)
        self.events: list[str] = []
        self.records: dict[str, dict] = {}
        self.impl = ShadowLunProvider(InProcessArray(self.array), FakeInitiator(), HOST)
        self.provider = InProcessProvider(self.impl, self.events, fail)
        self.hold_error = hold_error
        self.coord = Coordinator([self.provider], state_dir=tmp_path, resolve=self.resolve,
                                 filesystems_on=lambda disks: [f"/mnt/{d}" for d in disks],
                                 hold_writes=self.hold, read_record=self.records.__getitem__,
                                 disk_size=lambda d: 64 * MIB)

    def volume(self, name: str, disk: str) -> str:
        view = self.array.create_volume(name, 64 * MIB)
        self.records[disk] = predict_lio_lun_info(view.serial).to_dict()
        return f"/mnt/{disk}"

    def resolve(self, volume: str) -> list[str]:
        disk = volume.removeprefix("/mnt/")
        if disk not in self.records:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no volume {volume}")
        return [disk]

    @contextmanager
    def hold(self, mountpoints, timeout):
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
    plex = BACKUP | int(VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX)
    with pytest.raises(VssError) as e:
        lab.coord.create([vol], plex)
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


# -- import ---------------------------------------------------------------------------------

from provider.hardware_provider import HostIdentity  # noqa: E402


def importer(lab, tmp_path, name: str, hide: set[str] = frozenset()):
    """Another host's coordinator and provider over the same array; FillInLunInfo answers from
    the disks the fake initiator 'found' (device -> WWID -> the array's serial)."""
    host = HostIdentity(f"iqn.2026-11.lab.shadowlun:{name}", name, f"secret-{name}-00")
    impl = ShadowLunProvider(InProcessArray(lab.array), FakeInitiator(), host)

    def fill_in_lun_info(device, lun_info=None):
        wwid = next(w for w, d in impl.initiator.disks.items() if "/dev/" + d == device)
        lun = next(v for v in lab.array.inventory() if v.wwid == wwid)
        return {"supported": device not in hide, "lun_info": predict_lio_lun_info(lun.serial).to_dict()}

    impl.fill_in_lun_info = fill_in_lun_info
    provider = InProcessProvider(impl, [])
    coord = Coordinator([provider], state_dir=tmp_path / name, resolve=lab.resolve,
                        filesystems_on=lambda d: [], hold_writes=lab.hold, read_record=lab.records.__getitem__,
                        disk_size=lambda d: 64 * MIB)
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
