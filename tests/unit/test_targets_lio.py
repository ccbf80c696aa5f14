"""Unit tests of targets.lio without configfs: the save of a burst of changes, and the lookups
by configfs path (on a temporary tree shaped like /sys/kernel/config/target)."""
from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from targets import lio as lio_mod
from targets.lio import Lio


class FakeRts:
    """The parts of rtslib_fb the tested methods touch."""

    def __init__(self) -> None:
        self.saves: list[str] = []
        self.written: list[dict] = []
        self.dump = lambda: {"storage_objects": []}  # what LIO holds; tests replace it
        rts = self

        class RTSRoot:
            def dump(self) -> dict:
                return rts.dump()

            def save_to_file(self, path: str) -> None:
                rts.written.append(self.dump())
                rts.saves.append(path)

        self.RTSRoot = RTSRoot
        self.Target = type("Target", (), {})
        self.TPG = type("TPG", (), {})
        self.tcm = SimpleNamespace(StorageObject=SimpleNamespace(
            so_from_path=lambda path: SimpleNamespace(name=os.path.basename(path), path=path)))
        self.LUN = lambda tpg, lun: SimpleNamespace(lun=lun, tpg=tpg)


class TestLio(Lio):
    __test__ = False

    def __init__(self, tmp_path) -> None:
        super().__init__("iqn.2026-11.lab.shadowlun:array.target", ["10.87.0.10"],
                         save_file=str(tmp_path / "etc" / "saveconfig.json"))
        self.fake = FakeRts()

    @property
    def rts(self):
        return self.fake


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 0.05)
    monkeypatch.setattr(lio_mod, "SAVE_LATEST_S", 0.3)


def wait_for(cond, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.01)


def test_a_burst_of_changes_is_saved_once_after_it(tmp_path, quick):
    lio = TestLio(tmp_path)
    for _ in range(20):
        lio._changed()
    assert lio.fake.saves == []  # not one save per change
    wait_for(lambda: lio.fake.saves)
    time.sleep(0.2)
    assert lio.fake.saves == [lio.save_file]
    lio.flush()
    assert len(lio.fake.saves) == 1  # nothing waiting any more


def test_a_steady_stream_of_changes_is_still_saved_within_the_bound(tmp_path, quick):
    lio = TestLio(tmp_path)
    started = time.monotonic()
    while not lio.fake.saves:
        lio._changed()
        time.sleep(0.01)
        assert time.monotonic() - started < 2.0, "the debounce never saved"


def test_changes_in_a_batch_are_saved_once_after_it_however_long_it_takes(tmp_path, quick):
    """A 64-LUN publish or abort takes longer than SAVE_LATEST_S: its changes wait for its end."""
    lio = TestLio(tmp_path)
    with lio.batch():
        started = time.monotonic()
        while time.monotonic() - started < 0.6:  # twice SAVE_LATEST_S
            lio._changed()
            time.sleep(0.01)
        with lio.batch():  # nested: the outer one's end saves
            lio._changed()
        time.sleep(0.2)
        assert lio.fake.saves == [] and lio._save_timer is None
    wait_for(lambda: lio.fake.saves)
    time.sleep(0.2)
    assert lio.fake.saves == [lio.save_file]


def test_a_failed_batch_still_saves_what_it_changed(tmp_path, quick):
    lio = TestLio(tmp_path)
    with pytest.raises(RuntimeError), lio.batch():
        lio._changed()
        raise RuntimeError("the third export failed")
    wait_for(lambda: lio.fake.saves)


def test_a_batch_without_changes_saves_nothing(tmp_path, quick):
    lio = TestLio(tmp_path)
    with lio.batch():
        pass
    time.sleep(0.2)
    assert lio.fake.saves == [] and lio._save_timer is None


def test_a_change_made_while_the_save_reads_lio_is_saved_by_a_later_save(tmp_path, quick):
    """The dump runs without the lock: one read while a change came is not written (it could
    hold half of the change); the change's own timer writes LIO as it is after it."""
    lio = TestLio(tmp_path)
    reads = []

    def dump():
        reads.append(len(reads))
        if len(reads) == 1:
            lio._changed()  # another thread's change, in the middle of the first read
            return {"storage_objects": ["before the change"]}
        return {"storage_objects": ["after the change"]}

    lio.fake.dump = dump
    lio._changed()
    wait_for(lambda: lio.fake.saves)
    time.sleep(0.2)
    assert len(reads) == 2
    assert lio.fake.written == [{"storage_objects": ["after the change"]}]


def test_an_object_removed_under_the_read_is_no_error_when_a_change_removed_it(tmp_path, quick, caplog):
    """A change deletes an ACL while the save reads it: the read fails (configfs says ENOENT)
    before the change has counted itself; the save waits for the change to end, sees it, and
    leaves the file to the change's own save instead of logging a failure."""
    lio = TestLio(tmp_path)
    reads = []

    def dump():
        reads.append(len(reads))
        if len(reads) == 1:
            changing = threading.Event()

            def change():
                with lio_mod.locked():
                    changing.set()
                    time.sleep(0.2)  # the kernel object is gone; the change is not counted yet
                    lio._changed()

            threading.Thread(target=change, daemon=True).start()
            changing.wait(2)
            raise FileNotFoundError("acls/iqn.2026-11.lab.shadowlun:host-a/param/DefaultTime2Retain")
        return {"storage_objects": ["after the change"]}

    lio.fake.dump = dump
    lio._changed()
    wait_for(lambda: lio.fake.saves)
    assert lio.fake.written == [{"storage_objects": ["after the change"]}]
    assert "saving the LIO configuration" not in caplog.text


def test_calls_go_on_while_the_save_reads_lio(tmp_path, quick):
    """The save's read takes seconds with a hundred LUNs: it must not hold the lock every change
    and listing takes (an import's calls waited for it on the lab)."""
    lio = TestLio(tmp_path)
    reading, release = threading.Event(), threading.Event()

    def dump():
        reading.set()
        release.wait(10)
        return {"storage_objects": ["x"]}

    lio.fake.dump = dump
    lio._changed()
    assert reading.wait(3)
    took = threading.Event()

    def call():
        with lio_mod.locked():
            took.set()

    threading.Thread(target=call, daemon=True).start()
    try:
        assert took.wait(2), "a call waited for the save's read"
    finally:
        release.set()
    wait_for(lambda: lio.fake.saves)
    assert lio.fake.written == [{"storage_objects": ["x"]}]


def test_changes_that_never_stop_during_reads_are_saved_under_the_lock_within_the_bound(tmp_path, quick):
    """Each read meets a change, so none of them is written; past SAVE_LATEST_S the save reads
    under the lock (as every save did before), so the file still follows within the bound."""
    lio = TestLio(tmp_path)

    def dump():
        if not lio_mod._held.__dict__.get("depth"):
            lio._changed()  # a change during every read made without the lock
        return {"storage_objects": ["steady"]}

    lio.fake.dump = dump
    started = time.monotonic()
    lio._changed()
    wait_for(lambda: lio.fake.saves, seconds=3.0)
    assert time.monotonic() - started < 1.0  # SAVE_LATEST_S is 0.3 s here, reads are instant
    assert lio.fake.written[0] == {"storage_objects": ["steady"]}


def test_flush_saves_a_waiting_change_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = TestLio(tmp_path)
    lio.flush()
    assert lio.fake.saves == []  # nothing changed: nothing written
    lio._changed()
    lio.flush()
    assert lio.fake.saves == [lio.save_file] and lio._save_timer is None


def configfs(tmp_path, monkeypatch):
    root = tmp_path / "target"
    monkeypatch.setattr(lio_mod, "CONFIGFS", str(root))
    for index, name in ((0, "lun-a"), (1, "snap-b"), (2, "lun-x[1]")):
        (root / "core" / f"iblock_{index}" / name).mkdir(parents=True)
    tpg = root / "iscsi" / "iqn.x" / "tpgt_1"
    for lun, (index, name) in enumerate(((1, "snap-b"), (0, "lun-a"))):
        d = tpg / "lun" / f"lun_{lun}"
        d.mkdir(parents=True)
        (d / "alua_tg_pt_gp").write_text("")  # a plain file next to the link, as in configfs
        os.symlink(root / "core" / f"iblock_{index}" / name, d / f"{lun:010x}")
    return root, SimpleNamespace(path=str(tpg))


def test_a_backstore_is_found_by_its_configfs_path(tmp_path, monkeypatch):
    root, _ = configfs(tmp_path, monkeypatch)
    lio = TestLio(tmp_path)
    assert lio._find_so("snap-b").path == str(root / "core" / "iblock_1" / "snap-b")
    assert lio._find_so("lun-x[1]").name == "lun-x[1]"  # glob characters in a name are literal
    assert lio._find_so("lun-x1") is None
    (root / "core" / "iblock_0" / "hba_info").write_text("")  # configfs files next to the backstores
    assert lio._find_so("hba_info") is None
    assert lio._find_so("absent") is None


def test_the_tpg_lun_of_a_backstore_is_the_one_linking_to_it(tmp_path, monkeypatch):
    root, tpg = configfs(tmp_path, monkeypatch)
    lio = TestLio(tmp_path)
    assert lio._lun_of(tpg, lio._find_so("lun-a")).lun == 1
    assert lio._lun_of(tpg, lio._find_so("snap-b")).lun == 0
    assert lio._lun_of(tpg, lio._find_so("lun-x[1]")) is None  # a backstore with no LUN


class Mapped:
    """An ACL's mapped LUN (its configfs directory, and a link in it to a TPG LUN), whose
    rtslib `tpg_lun` must not be asked: it builds every LUN of the TPG."""

    def __init__(self, acl_dir, number: int, link_to) -> None:
        self.path = str(acl_dir / f"lun_{number}")
        os.makedirs(self.path)
        (acl_dir / f"lun_{number}" / "write_protect").write_text("0")
        os.symlink(link_to, os.path.join(self.path, "0a1b2c3d4e"))
        self.deleted = False

    @property
    def tpg_lun(self):
        raise AssertionError("MappedLUN.tpg_lun scans every LUN of the TPG")

    def delete(self) -> None:
        self.deleted = True


def test_a_mapped_lun_leads_to_the_tpg_lun_its_link_names(tmp_path, monkeypatch):
    root, tpg = configfs(tmp_path, monkeypatch)
    acl_dir = tmp_path / "target" / "iscsi" / "iqn.x" / "tpgt_1" / "acls" / "iqn.host"
    to_1, to_0 = Mapped(acl_dir, 1, f"{tpg.path}/lun/lun_1"), Mapped(acl_dir, 7, f"{tpg.path}/lun/lun_0")
    elsewhere = Mapped(acl_dir, 8, root / "core" / "iblock_0" / "lun-a")
    assert [lio_mod.tpg_lun_number(m) for m in (to_1, to_0, elsewhere)] == [1, 0, None]
    acl = SimpleNamespace(mapped_luns=[to_1, to_0, elsewhere], delete=lambda: None)
    Lio._drop_mapping(acl, SimpleNamespace(lun=0))
    assert (to_1.deleted, to_0.deleted, elsewhere.deleted) == (False, True, False)


def test_a_failed_save_is_tried_again_by_the_next_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = TestLio(tmp_path)
    lio._changed()
    real = lio.fake.RTSRoot

    class Failing:
        def save_to_file(self, path):
            raise OSError("disk full")

    lio.fake.RTSRoot = Failing
    with pytest.raises(OSError):
        lio.flush()
    lio.fake.RTSRoot = real
    lio.flush()
    assert lio.fake.saves == [lio.save_file]


class FakeBackstore:
    """A block backstore as LIO makes it: thin provisioning off; `refuse` makes the kernel reject
    setting an attribute (a device without discard: ENOSYS)."""

    def __init__(self, name: str, dev: str, wwn: str, refuse: bool = False) -> None:
        self.name, self.udev_path, self.wwn, self.refuse = name, dev, wwn, refuse
        self.attributes = {"emulate_tpu": "0", "emulate_tpws": "0", "emulate_3pc": "1"}
        self.deleted = False

    def get_attribute(self, attr: str) -> str:
        return self.attributes[attr]

    def set_attribute(self, attr: str, value: str) -> None:
        if self.refuse:
            raise OSError(38, "Function not implemented")
        self.attributes[attr] = value

    def delete(self) -> None:
        self.deleted = True


class ExportingLio(TestLio):
    """export() and advertise_thin() over backstores kept in a dict (the configfs lookups are
    tested above)."""

    def __init__(self, tmp_path, refuse: bool = False) -> None:
        super().__init__(tmp_path)
        self.backstores: dict[str, FakeBackstore] = {}

        def make(name, dev, wwn):
            self.backstores[name] = FakeBackstore(name, dev, wwn, refuse)
            return self.backstores[name]

        self.fake.BlockStorageObject = make
        self.fake.LUN = lambda tpg, storage_object: SimpleNamespace(lun=7)  # a new TPG LUN
        self.scanned: list[str] = []  # the backstores whose TPG LUN was looked for
        self.save_file = str(tmp_path / "never-saved.json")

    def _tpg(self):
        return SimpleNamespace(path="tpg")

    def _find_so(self, name):
        so = self.backstores.get(name)
        return None if so is None or so.deleted else so

    def _lun_of(self, tpg, so):
        self.scanned.append(so.name)
        return SimpleNamespace(lun=3)


THIN_ON = {"emulate_tpu": "1", "emulate_tpws": "1", "emulate_3pc": "1"}


def test_a_new_backstore_gets_a_new_tpg_lun_without_a_scan_of_every_lun(tmp_path, monkeypatch):
    """The scan (a readlink per TPG LUN) cost a 64-LUN publish about 12 s with 170 LUNs; a
    backstore made just now has no TPG LUN to find. One exported before is looked up."""
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = ExportingLio(tmp_path)
    assert lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16).lun == 7 and lio.scanned == []
    assert lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16).lun == 3 and lio.scanned == ["lun-a"]


def test_an_export_advertises_thin_provisioning(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = ExportingLio(tmp_path)
    lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16)
    assert lio.backstores["lun-a"].attributes == THIN_ON


def test_an_existing_backstore_looked_up_by_export_gets_thin_provisioning(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = ExportingLio(tmp_path)
    lio.backstores["lun-a"] = FakeBackstore("lun-a", "/dev/shadowlun/lun-a", "ab" * 16)
    assert lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16).lun == 3
    assert lio.backstores["lun-a"].attributes == THIN_ON and not lio.backstores["lun-a"].deleted


def test_a_backstore_of_the_name_on_another_device_or_serial_is_not_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = ExportingLio(tmp_path)
    lio.backstores["lun-a"] = FakeBackstore("lun-a", "/dev/other/lun-a", "ab" * 16)
    with pytest.raises(lio_mod.BackstoreConflictError, match="on /dev/other/lun-a") as e:
        lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16)
    assert (e.value.name, e.value.found_device, e.value.device) == (
        "lun-a", "/dev/other/lun-a", "/dev/shadowlun/lun-a")
    assert not lio.backstores["lun-a"].deleted


def test_a_new_backstore_whose_thin_attributes_are_refused_is_removed_again(tmp_path):
    lio = ExportingLio(tmp_path, refuse=True)
    with pytest.raises(OSError, match="not implemented"):
        lio.export("lun-a", "/dev/shadowlun/lun-a", "ab" * 16)
    assert lio.backstores["lun-a"].deleted
    existing = FakeBackstore("lun-b", "/dev/shadowlun/lun-b", "cd" * 16, refuse=True)
    lio.backstores["lun-b"] = existing
    with pytest.raises(OSError):
        lio.export("lun-b", "/dev/shadowlun/lun-b", "cd" * 16)
    assert not existing.deleted  # not ours to undo: it was there before this call


def test_advertise_thin_changes_only_a_backstore_with_it_off(tmp_path, monkeypatch):
    monkeypatch.setattr(lio_mod, "SAVE_QUIET_S", 60.0)
    lio = ExportingLio(tmp_path)
    lio.backstores["lun-a"] = FakeBackstore("lun-a", "/dev/shadowlun/lun-a", "ab" * 16)
    lio.backstores["lun-a"].attributes["emulate_tpu"] = "1"  # half on, as by hand
    assert lio.advertise_thin("lun-a") is True and lio.backstores["lun-a"].attributes == THIN_ON
    assert lio._unsaved_since is not None  # the change is saved with the next burst
    lio._unsaved_since = None
    assert lio.advertise_thin("lun-a") is False and lio._unsaved_since is None
    with pytest.raises(lio_mod.NotExportedError, match="lun-absent is not exported") as e:
        lio.advertise_thin("lun-absent")
    assert e.value.name == "lun-absent"


def test_missing_state_directories_are_named_and_refused(tmp_path):
    lio = TestLio(tmp_path)
    dbroot = tmp_path / "dbroot"
    lio.fake.RTSRoot.dbroot = str(dbroot)
    (dbroot / "alua").mkdir(parents=True)
    with pytest.raises(lio_mod.LioStateError, match=f"{dbroot}/pr\\b.*NOT READY") as e:
        lio.check_state_dirs()
    assert f"{dbroot}/alua" not in str(e.value)
    (dbroot / "pr").write_text("")  # a file in its place is no directory
    with pytest.raises(lio_mod.LioStateError):
        lio.check_state_dirs()
    (dbroot / "pr").unlink()
    (dbroot / "pr").mkdir()
    lio.check_state_dirs()
