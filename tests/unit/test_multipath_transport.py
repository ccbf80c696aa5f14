"""dm-multipath on a host, over a fake sysfs tree: finding a LUN's map, waiting for it (bounded),
flushing it; and the multipath transport's connect, undo and disconnect over fakes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from provider.contract.hresult import HResult, VssError, vss_error
from provider.hardware.lun_info import scsi_path
from provider.hardware.multipath import Multipath, map_uuid, multipathd_running
from provider.hardware.multipath_initiator import REPLACEMENT_TIMEOUT_S, MultipathInitiator
from provider.hardware.single_path import SinglePath
from provider.requester.shadow_flags import GptFlags

WWID = "naa.6001405aaaaaaaaaaaaaaaaaaaaaaaaa"
UUID = "mpath-36001405aaaaaaaaaaaaaaaaaaaaaaaaa"
TARGET = "iqn.2026-11.lab.shadowlun:array.target"
PORTALS = ["10.87.0.10:3260", "10.86.0.10:3260"]


@dataclass
class Done:
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class Tree:
    """A fake /sys/block with SCSI paths and dm maps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "block").mkdir(parents=True)

    def path(self, name: str, wwid: str = WWID) -> None:
        (self.root / "block" / name / "device").mkdir(parents=True)
        (self.root / "block" / name / "device/wwid").write_text(wwid + "\n")

    def map(self, name: str, uuid: str, paths: list[str], dm_name: str = "3600") -> None:
        d = self.root / "block" / name
        (d / "dm").mkdir(parents=True, exist_ok=True)
        (d / "dm/uuid").write_text(uuid + "\n")
        (d / "dm/name").write_text(dm_name + "\n")
        (d / "slaves").mkdir(exist_ok=True)
        (d / "holders").mkdir(exist_ok=True)
        for p in paths:
            (d / "slaves" / p).mkdir(exist_ok=True)

    def drop(self, name: str) -> None:
        import shutil

        shutil.rmtree(self.root / "block" / name)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path / "sys")


def multipath(tree, runner=None, clock=None):
    clock = clock or Clock()
    return Multipath(runner or (lambda argv, check=True: Done()), tree.root, clock=clock, sleep=clock.sleep)


def test_multipathd_runs_when_its_pid_file_names_a_live_process(tmp_path):
    pidfile, proc = tmp_path / "multipathd.pid", tmp_path / "proc"
    assert not multipathd_running(pidfile, proc)  # no pid file
    pidfile.write_text("4242\n")
    assert not multipathd_running(pidfile, proc)  # a stale one
    (proc / "4242").mkdir(parents=True)
    assert multipathd_running(pidfile, proc)
    pidfile.write_text("garbage")
    assert not multipathd_running(pidfile, proc)


def test_map_uuid_is_udevs_naa_form():
    assert map_uuid(WWID) == UUID
    assert map_uuid("36001405aaaaaaaaaaaaaaaaaaaaaaaaa") == UUID


def test_finds_a_luns_map_its_paths_and_partition_maps(tree):
    tree.map("dm-3", UUID, ["sdd", "sdc"], dm_name="3600-x")
    tree.map("dm-1", "LVM-abc", ["vda2"])  # not multipath
    tree.map("dm-4", f"part1-{UUID}", ["dm-3"])
    (tree.root / "block/dm-3/holders/dm-4").mkdir()
    mp = multipath(tree)
    assert mp.maps() == {"dm-3": UUID}  # partition maps and LVM are no multipath maps
    assert mp.map_of(WWID) == "dm-3" and mp.name("dm-3") == "3600-x"
    assert mp.paths("dm-3") == ["sdc", "sdd"]
    assert mp.partition("dm-3", 1) == "dm-4" and mp.partition("dm-3", 2) is None
    assert not mp.is_map("dm-1") and mp.map_of("naa.6001405bbbbbbbbbbbbbbbbbbbbbbbbb") is None


def test_wait_returns_the_map_once_it_has_a_path_per_session(tree):
    clock = Clock()
    mp = multipath(tree, clock=clock)
    steps = iter([lambda: None, lambda: tree.map("dm-3", UUID, ["sdc"]),
                  lambda: tree.map("dm-3", UUID, ["sdc", "sdd"])])
    mp.sleep = lambda s: (clock.sleep(s), next(steps, lambda: None)())
    assert mp.wait_for_maps([WWID], 2, 30) == {WWID: "dm-3"}
    assert clock.now < 5  # not the whole bound


def test_wait_takes_a_map_short_of_a_path_when_the_bound_passes_and_rescans_meanwhile(tree, caplog):
    tree.map("dm-3", UUID, ["sdc"])
    clock = Clock()
    rescans = []
    assert multipath(tree, clock=clock).wait_for_maps([WWID], 2, 20, rescan=rescans.append) == {WWID: "dm-3"}
    assert clock.now == pytest.approx(20)
    assert rescans == [[WWID], [WWID]]  # after 3 s, then 6 s later (9 s); the next would be at 21 s
    assert "1 of 2 paths" in caplog.text


def test_no_map_within_the_bound_is_missing_disk_naming_what_was_seen(tree):
    tree.map("dm-7", "mpath-36001405cccccccccccccccccccccccccc", ["sde"], dm_name="other")
    with pytest.raises(VssError) as e:
        multipath(tree).wait_for_maps([WWID], 2, 10)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK
    assert UUID in e.value.message and "within 10 s" in e.value.message and "other (dm-7: sde)" in e.value.message


def test_a_map_without_any_path_is_missing_too(tree):
    tree.map("dm-3", UUID, [])
    with pytest.raises(VssError) as e:
        multipath(tree).wait_for_maps([WWID], 1, 2)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK


def test_flush_retries_then_fails_naming_the_map(tree):
    tree.map("dm-3", UUID, ["sdc"], dm_name="36001405aaaa")
    calls = []

    def busy(argv, check=True):
        calls.append(argv)
        return Done(1, stderr="map in use")

    with pytest.raises(VssError) as e:
        multipath(tree, busy).flush("dm-3")
    assert calls == [["multipath", "-f", "36001405aaaa"]] * 3
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO and "map in use" in e.value.message


def test_flush_of_a_map_gone_meanwhile_is_done(tree):
    tree.map("dm-3", UUID, ["sdc"])

    def vanish(argv, check=True):
        tree.drop("dm-3")
        return Done(1, stderr="no such map")

    multipath(tree, vanish).flush("dm-3")
    multipath(tree, vanish).flush("dm-3")  # not a map any more: nothing run


class FakeIscsi:
    """provider.hardware.iscsi.Initiator as the multipath transport uses it: sessions per portal,
    a path disk per scan, over the fake tree."""

    def __init__(self, tree: Tree, refuse: set[str] = frozenset()) -> None:
        self.tree, self.refuse = tree, refuse
        self.sessions: dict[str, list[str]] = {}
        self.nodes: set[str] = set()
        self.calls: list[tuple] = []
        self.next_disk = iter(f"sd{c}" for c in "cdefgh")

    def has_session(self, target, portal):
        return portal in self.sessions

    def login(self, target, portal, user, secret, *, replacement_timeout=None):
        self.calls.append(("login", portal, replacement_timeout))
        if portal in self.refuse:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"login to {portal} failed")
        self.sessions.setdefault(portal, [])
        self.nodes.add(portal)
        return PORTALS.index(portal) + 2

    def scan_lun(self, host, lun, wwid):
        portal = PORTALS[host - 2]
        if not self.sessions[portal]:
            disk = next(self.next_disk)
            self.tree.path(disk)
            self.sessions[portal].append(disk)

    def find_disks(self, wwid):
        return sorted(d for ds in self.sessions.values() for d in ds)

    def find_disk(self, wwid):
        return next(iter(self.find_disks(wwid)), None)

    def remove_disk(self, disk):
        self.calls.append(("remove", disk))
        for ds in self.sessions.values():
            if disk in ds:
                ds.remove(disk)
                self.tree.drop(disk)

    def session_disks(self, target, portal):
        return list(self.sessions.get(portal, []))

    def disconnect(self, target, portal, disks):
        self.calls.append(("disconnect", portal, tuple(disks)))
        for d in disks:
            self.remove_disk(d)
        if portal in self.sessions and not self.sessions[portal]:
            del self.sessions[portal]
            self.nodes.discard(portal)


def transport(tree, iscsi, runner=None, form=True):
    """The multipath transport; with `form`, multipathd makes the map of every path that appears."""
    clock = Clock()
    mp = multipath(tree, runner or flush_runner(tree), clock)

    def sleep(s):
        clock.sleep(s)
        paths = iscsi.find_disks(WWID)
        if form and paths:
            tree.map("dm-3", UUID, paths)

    mp.sleep = sleep
    return MultipathInitiator(iscsi, mp)


def flush_runner(tree, calls=None):
    def run(argv, check=True):
        if calls is not None:
            calls.append(argv)
        if argv[:2] == ["multipath", "-f"]:
            tree.drop("dm-3")
        return Done()
    return run


def test_connect_logs_in_on_every_portal_and_hands_out_the_map(tree):
    iscsi = FakeIscsi(tree)
    t = transport(tree, iscsi)
    assert t.connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30) == {WWID: "dm-3"}
    assert [c for c in iscsi.calls if c[0] == "login"] == [("login", p, REPLACEMENT_TIMEOUT_S) for p in PORTALS]
    assert t.multipath.paths("dm-3") == ["sdc", "sdd"]
    assert t.find_disk(WWID) == "dm-3"


def test_a_portal_whose_login_fails_is_left_out_while_another_works(tree):
    iscsi = FakeIscsi(tree, refuse={PORTALS[1]})
    assert transport(tree, iscsi).connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30) == {WWID: "dm-3"}
    assert list(iscsi.sessions) == [PORTALS[0]]


def test_no_portal_at_all_is_a_veto_and_leaves_nothing(tree):
    iscsi = FakeIscsi(tree, refuse=set(PORTALS))
    with pytest.raises(VssError) as e:
        transport(tree, iscsi).connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO and "every portal" in e.value.message
    assert iscsi.sessions == {} and iscsi.nodes == set()


def test_a_map_that_never_forms_is_missing_disk_and_leaves_no_path_session_or_record(tree):
    """The misuse of a multipath host whose multipathd will not take the LUN (blacklisted, or
    find_multipaths strict): bounded, a clear error, and the paths and sessions it made gone."""
    iscsi = FakeIscsi(tree)
    with pytest.raises(VssError) as e:
        transport(tree, iscsi, form=False).connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30)
    assert e.value.hresult == HResult.VSS_E_MISSING_DISK and "within 30 s" in e.value.message
    assert iscsi.sessions == {} and iscsi.nodes == set()
    assert not list((tree.root / "block").iterdir())
    assert sorted(c[1] for c in iscsi.calls if c[0] == "remove") == ["sdc", "sdd"]


def test_connect_leaves_a_session_it_did_not_make(tree):
    iscsi = FakeIscsi(tree)
    iscsi.sessions[PORTALS[0]] = []  # in use for another LUN: not this call's to log out
    iscsi.nodes.add(PORTALS[0])
    with pytest.raises(VssError):
        transport(tree, iscsi, form=False).connect(TARGET, PORTALS, "u", "s", {1: WWID}, 10)
    assert list(iscsi.sessions) == [PORTALS[0]] and iscsi.nodes == {PORTALS[0]}


def test_disconnect_flushes_the_map_before_its_paths_then_logs_out_everywhere(tree):
    iscsi = FakeIscsi(tree)
    commands = []
    t = transport(tree, iscsi, runner=flush_runner(tree, commands))
    t.connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30)
    iscsi.calls.clear()
    t.disconnect(TARGET, PORTALS, ["/dev/dm-3"])
    assert commands == [["multipath", "-f", "3600"]]
    assert iscsi.calls[:2] == [("disconnect", PORTALS[0], ("sdc",)), ("remove", "sdc")]
    assert ("disconnect", PORTALS[1], ("sdd",)) in iscsi.calls
    assert iscsi.sessions == {} and t.find_disk(WWID) is None


def test_a_map_that_will_not_flush_keeps_its_paths_and_sessions_and_says_so(tree):
    iscsi = FakeIscsi(tree)
    t = transport(tree, iscsi)
    t.connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30)
    t.multipath.runner = lambda argv, check=True: Done(1, stderr="map in use")
    with pytest.raises(VssError) as e:
        t.disconnect(TARGET, PORTALS, ["dm-3"])
    assert "map in use" in e.value.message
    assert iscsi.sessions == {PORTALS[0]: ["sdc"], PORTALS[1]: ["sdd"]}


def test_remove_disk_of_a_map_removes_the_map_then_each_path(tree):
    iscsi = FakeIscsi(tree)
    t = transport(tree, iscsi)
    t.connect(TARGET, PORTALS, "u", "s", {1: WWID}, 30)
    t.remove_disk("/dev/dm-3")
    assert [c for c in iscsi.calls if c[0] == "remove"] == [("remove", "sdc"), ("remove", "sdd")]
    assert not (tree.root / "block/dm-3").exists()


class OnePortal:
    def __init__(self) -> None:
        self.calls = []

    def connect(self, *args):
        self.calls.append(("connect", args[1]))
        return {}

    def disconnect(self, target, portal, disks):
        self.calls.append(("disconnect", portal))


def test_single_path_uses_the_first_portal_only():
    inner = OnePortal()
    t = SinglePath(inner)
    t.connect(TARGET, PORTALS, None, None, {}, 1)
    t.disconnect(TARGET, PORTALS, [])
    assert inner.calls == [("connect", PORTALS[0]), ("disconnect", PORTALS[0])]


def test_a_maps_record_is_read_through_its_first_path(tree):
    tree.map("dm-3", UUID, ["sdd", "sdc"])
    tree.path("sdc")
    assert scsi_path(tree.root / "block/dm-3") == tree.root / "block/sdc"
    assert scsi_path(tree.root / "block/sdc") == tree.root / "block/sdc"
    tree.map("dm-1", "LVM-abc", ["sdc"])
    assert scsi_path(tree.root / "block/dm-1") == tree.root / "block/dm-1"


def test_read_only_covers_the_map_its_partition_map_and_its_paths(tree):
    tree.map("dm-3", UUID, ["sdc", "sdd"])
    tree.map("dm-4", f"part1-{UUID}", ["dm-3"])
    (tree.root / "block/dm-3/holders/dm-4").mkdir()
    set_ro = []
    flags = GptFlags(dev_root=Path("/dev"), set_ro=lambda node, ro: set_ro.append((node, ro)), sysfs_root=tree.root)
    assert flags.partition_device("dm-3", 1) == "dm-4" and flags.partition_device("sdb", 1) == "sdb1"
    flags.set_read_only("/dev/dm-3", [1], True)
    assert set_ro == [(f"/dev/{n}", True) for n in ("dm-3", "dm-4", "sdc", "sdd")]
    with pytest.raises(VssError) as e:
        flags.partition_device("dm-3", 2)
    assert e.value.hresult == HResult.VSS_E_OBJECT_NOT_FOUND and "kpartx" in e.value.message


def test_the_array_config_reads_a_single_san_network_of_an_older_config(tmp_path):
    from targets.config import ArrayConfig

    path = tmp_path / "array.json"
    path.write_text('{"target_iqn": "iqn.x:t", "san_cidr": "10.87.0.0/24"}')
    assert ArrayConfig.load(path).san_cidrs == ["10.87.0.0/24"]
    path.write_text('{"target_iqn": "iqn.x:t", "san_cidrs": ["10.87.0.0/24", "10.86.0.0/24"]}')
    assert ArrayConfig.load(path).san_cidrs == ["10.87.0.0/24", "10.86.0.0/24"]
    path.write_text('{"target_iqn": "iqn.x:t", "san_cidr": "a", "san_cidrs": ["b"]}')
    with pytest.raises(ValueError):
        ArrayConfig.load(path)

