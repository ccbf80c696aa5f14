"""In-memory stand-ins for the array's kernel layers (LVM, LIO), for unit tests of targets.array
and targets.agent. They keep the behaviour the Array relies on, not the kernel's details:

- FakeLvm: thin LVs in a dict, a thin pool whose data/metadata percent a test sets, LvmError on
  a name that exists (as lvcreate fails), a snapshot batch that makes what it can and then
  reports the missing ones (as the lvm shell runs on past a failed command), inactive thin
  snapshots until activate() (as lvcreate -s without -K), tags changed by retag() (as lvchange),
  VG tags, and dm devices a test marks `suspended` that resume_suspended() resumes;
- FakeLio: exports with their serial and host mappings, create-or-lookup export (BackstoreConflictError
  on a backstore with another serial) with thin provisioning on, mask() refused on what is not
  exported, unexport() drops the mappings with the LUN, orphan backstores and backstores with
  thin provisioning off a test can plant.

Both record every call in `calls` and take failures through inject(method, exc, name=None).

make_array() is the agent just started: its config registers the hosts of HOSTS (unless given
`hosts=`), as the lab's config registers every lab host; STRANGER is registered nowhere.
"""
from __future__ import annotations

import dataclasses

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from targets import names
from targets.array import Array
from targets.config import ArrayConfig
from targets.lio import BackstoreConflictError, Export, Mapping, NotExportedError
from targets.backend import PoolUse
from targets.lvm import OWNER_TAG, LogicalVolume, LvmError, ThinDevice, dm_name
from targets.lvm_thin import LvmThin
from targets.store import Store

TARGET_IQN = "iqn.2026-11.lab.shadowlun:array.target"
SAN_CIDR = "10.87.0.0/24"
MiB = 1 << 20
GiB = 1 << 30

IQN1 = "iqn.1991-05.com.microsoft:host1.lab"
IQN2 = "iqn.1991-05.com.microsoft:host2.lab"
HOST_A = "iqn.2026-11.lab.shadowlun:host-a"
HOST_B = "iqn.2026-11.lab.shadowlun:host-b"
HOST_C = "iqn.2026-11.lab.shadowlun:host-c"  # a third host, for "imported by another host" tests
HOSTS = {IQN1: "host1", IQN2: "host2", HOST_A: "host-a", HOST_B: "host-b", HOST_C: "host-c"}
STRANGER = "iqn.1991-05.com.microsoft:stranger.lab"


class _Injectable:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._fail: dict[str, list[tuple[str | None, BaseException]]] = {}

    def inject(self, method: str, exc: BaseException, name: str | None = None) -> None:
        """Make `method` raise `exc` (only for `name` when given), every time until cleared."""
        self._fail.setdefault(method, []).append((name, exc))

    def clear_failures(self) -> None:
        self._fail.clear()

    def _call(self, method: str, *args) -> None:
        self.calls.append((method, *args))
        name = args[0] if args and isinstance(args[0], str) else None
        for want, exc in self._fail.get(method, ()):
            if want is None or want == name:
                raise exc

    def called(self, method: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == method]


class FakeLvm(_Injectable):
    def __init__(self, vg: str = "shadowlun", pool: str = "pool", pool_size: int = 100 * GiB) -> None:
        super().__init__()
        self.vg, self.pool, self.pool_size = vg, pool, pool_size
        self.data_percent = 0.0
        self.metadata_percent = 0.0
        self.window = 0.125  # what create_snapshots reports as the batch's seconds
        self.lvs: dict[str, LogicalVolume] = {}
        self.tags: list[str] = []  # the VG's
        self.suspended: set[str] = set()  # dm names, as an agent killed in the commit window leaves them
        self._uuids = itertools.count(1)

    # -- test helpers --------------------------------------------------------------------

    def add_lv(self, name: str, size_bytes: int = 64 * MiB, tags: dict[str, str] | None = None, *,
               owned: bool = True, active: bool = True, origin: str = "",
               data_percent: float | None = 0.0) -> LogicalVolume:
        t = ([OWNER_TAG] if owned else []) + [f"{k}={v}" for k, v in (tags or {}).items()]
        attr = ("Vwi-a-tz--" if active else "Vwi---tz--") if not origin else (
            "Vwi-a-tz-k" if active else "Vwi---tz-k")
        lv = LogicalVolume(self.vg, name, f"fake-uuid-{next(self._uuids)}", size_bytes, attr, self.pool, origin,
                           tuple(t), data_percent, None)
        self.lvs[name] = lv
        return lv

    def names(self) -> set[str]:
        return set(self.lvs)

    # -- the Lvm interface the Array uses ------------------------------------------------

    def _pool_lv(self) -> LogicalVolume:
        return LogicalVolume(self.vg, self.pool, "pool-uuid", self.pool_size, "twi-aotz--", "", "", (),
                             self.data_percent, self.metadata_percent)

    def volumes(self) -> list[LogicalVolume]:
        self._call("volumes")
        return [self._pool_lv(), *sorted(self.lvs.values(), key=lambda v: v.name)]

    def get(self, name: str) -> LogicalVolume | None:
        self._call("get", name)
        return self.lvs.get(name)

    def pool_status(self) -> PoolUse:
        self._call("pool_status")
        return PoolUse(self.vg, self.pool, self.pool_size, self.data_percent, self.metadata_percent)

    def device(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    def create_volume(self, name: str, size_bytes: int, tags: dict[str, str] | None = None) -> None:
        self._call("create_volume", name, size_bytes, dict(tags or {}))
        if name in self.lvs:
            raise LvmError(["lvcreate", "-n", name], 5, f"Logical Volume \"{name}\" already exists")
        self.add_lv(name, size_bytes, tags)

    def create_snapshots(self, snaps) -> float:
        snaps = [(o, n, dict(t)) for o, n, t in snaps]
        self.calls.append(("create_snapshots", snaps))
        # a failure injected for one snapshot name: the others are made, as by the lvm shell
        failing = {name for name, _ in self._fail.get("create_snapshots", ()) if name is not None}
        for origin, name, tags in snaps:
            if name in failing or name in self.lvs or origin not in self.lvs:
                continue
            self.add_lv(name, self.lvs[origin].size_bytes, tags, active=False, origin=origin)
        for want, exc in self._fail.get("create_snapshots", ()):
            if want is None:
                raise exc
        missing = [name for _, name, _ in snaps if name not in self.lvs]
        if missing:
            raise LvmError(["lvm", "lvcreate -s"], 1, f"snapshots not created: {', '.join(missing)}")
        return self.window

    def thin_devices(self, names) -> dict:
        self._call("thin_devices", *names)
        return {n: ThinDevice(n, int(self.lvs[n].uuid.rsplit("-", 1)[1]),
                              dm_name(self.vg, n) if self.lvs[n].active else None)
                for n in names if n in self.lvs}

    def repoint_snapshots(self, pairs) -> float:
        """Records the pairs; a failure injected for a snapshot name fails the whole batch."""
        self.calls.append(("repoint_snapshots", [(o.name, sn.name) for o, sn in pairs]))
        for want, exc in self._fail.get("repoint_snapshots", ()):
            if want is None or want in {sn.name for _, sn in pairs}:
                raise exc
        self.repointed = getattr(self, "repointed", []) + [sn.name for _, sn in pairs]
        return self.window

    def activate(self, *names: str) -> None:
        self.calls.append(("activate", *names))  # one lvchange for all; it fails as a whole
        for want, exc in self._fail.get("activate", ()):
            if want is None or want in names:
                raise exc
        for name in names:
            lv = self.lvs[name]
            self.lvs[name] = replace(lv, attr=lv.attr[:4] + "a" + lv.attr[5:])

    def retag(self, name: str, remove=(), add=None) -> None:
        self._call("retag", name, tuple(remove), dict(add or {}))
        lv = self.lvs.get(name)
        if lv is None:
            raise LvmError(["lvchange", name], 5, f"Failed to find logical volume \"{self.vg}/{name}\"")
        tags = [t for t in lv.tags if t not in remove]
        tags += [f"{k}={v}" for k, v in (add or {}).items() if f"{k}={v}" not in tags]
        self.lvs[name] = replace(lv, tags=tuple(tags))

    def resume_suspended(self) -> tuple[list[str], list]:
        self._call("resume_suspended")
        resumed = sorted(self.suspended)
        self.suspended.clear()
        return resumed, []

    def vg_tags(self) -> tuple[str, ...]:
        self._call("vg_tags")
        return tuple(self.tags)

    def retag_vg(self, remove=(), add=()) -> None:
        self._call("retag_vg", tuple(remove), tuple(add))
        self.tags = [t for t in self.tags if t not in remove] + [t for t in add if t not in self.tags]

    def rename(self, name: str, new_name: str) -> None:
        self._call("rename", name, new_name)
        self.lvs[new_name] = dataclasses.replace(self.lvs.pop(name), name=new_name)

    def resize(self, name: str, size_bytes: int) -> None:
        self._call("resize", name, size_bytes)
        self.lvs[name] = dataclasses.replace(self.lvs[name], size_bytes=size_bytes)

    def remove(self, name: str) -> None:
        self._call("remove", name)
        if name not in self.lvs:
            raise LvmError(["lvremove", name], 5, f"Failed to find logical volume \"{self.vg}/{name}\"")
        del self.lvs[name]


class FakeLio(_Injectable):
    def __init__(self) -> None:
        super().__init__()
        self._exports: dict[str, Export] = {}
        self.orphans: set[str] = set()
        self.not_thin: set[str] = set()  # exports whose backstore has THIN_ATTRIBUTES off
        self.chap: dict[str, tuple[str, str]] = {}
        self.batches: list[list[str]] = []  # each batch() block: what it (un)exported or (un)masked
        self._batch: list[str] | None = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        outer = self._batch is None
        if outer:
            self._batch = []
        try:
            yield
        finally:
            if outer:
                self.batches.append(self._batch)
                self._batch = None

    def _batched(self, name: str) -> None:
        if self._batch is not None:
            self._batch.append(name)

    # -- test helpers --------------------------------------------------------------------

    def drop(self, name: str) -> None:
        """Lose an export behind the array's back (e.g. LIO config not restored)."""
        del self._exports[name]

    def plant(self, name: str, device: str, serial: str, mappings=(), thin: bool = True) -> Export:
        """An export the array did not make (or made and forgot, or an older agent made)."""
        e = Export(name, device, serial, self._free_lun(), tuple(mappings))
        self._exports[name] = e
        if not thin:
            self.not_thin.add(name)
        return e

    def mappings(self, name: str) -> dict[str, Mapping]:
        return {m.initiator: m for m in self._exports[name].mappings}

    def _free_lun(self) -> int:
        used = {e.lun for e in self._exports.values()}
        return next(i for i in range(len(used) + 1) if i not in used)

    # -- the Lio interface the Array uses ------------------------------------------------

    def export(self, name: str, device: str, serial: str) -> Export:
        self._call("export", name, device, serial)
        have = self._exports.get(name)
        if have is not None:
            if have.serial != serial or have.device != device:
                raise BackstoreConflictError(name, serial, device, have.serial, have.device)
            return Export(name, device, serial, have.lun)
        self.orphans.discard(name)
        e = Export(name, device, serial, self._free_lun())
        self._exports[name] = e
        self._batched(name)
        return e

    def advertise_thin(self, name: str) -> bool:
        self._call("advertise_thin", name)
        if name not in self._exports:
            raise NotExportedError(name)
        was_off = name in self.not_thin
        self.not_thin.discard(name)
        return was_off

    def check_state_dirs(self) -> None:
        self._call("check_state_dirs")

    def unexport(self, name: str) -> None:
        self._call("unexport", name)
        if self._exports.pop(name, None) is not None:
            self._batched(name)
        self.orphans.discard(name)
        self.not_thin.discard(name)

    def change_serial(self, name: str, serial: str) -> Export:
        self._call("change_serial", name, serial)
        e = self._exports.get(name)
        if e is None:
            raise LookupError(f"{name} is not exported")
        self._exports[name] = replace(e, serial=serial)
        return self._exports[name]

    def mask(self, name: str, initiator: str, chap_user: str, chap_secret: str,
             read_only: bool = False) -> Mapping:
        self._call("mask", name, initiator, chap_user, chap_secret, read_only)
        e = self._exports.get(name)
        if e is None:
            raise NotExportedError(name)
        self.chap[initiator] = (chap_user, chap_secret)
        m = Mapping(initiator, e.lun, read_only)
        self._exports[name] = replace(e, mappings=tuple(
            [x for x in e.mappings if x.initiator != initiator] + [m]))
        self._batched(f"{name} to {initiator}")
        return m

    def unmask(self, name: str, initiator: str) -> None:
        self._call("unmask", name, initiator)
        e = self._exports.get(name)
        if e is not None:
            self._exports[name] = replace(e, mappings=tuple(x for x in e.mappings if x.initiator != initiator))
            self._batched(f"{name} from {initiator}")

    def lun_number(self, name: str) -> int | None:
        self._call("lun_number", name)
        e = self._exports.get(name)
        return e.lun if e else None

    def exports(self) -> dict[str, Export]:
        self._call("exports")
        return dict(self._exports)

    def orphan_backstores(self) -> list[str]:
        self._call("orphan_backstores")
        return sorted(self.orphans)


def make_config(**kw) -> ArrayConfig:
    kw.setdefault("hosts", dict(HOSTS))
    return ArrayConfig(target_iqn=TARGET_IQN, san_cidrs=[SAN_CIDR], **kw)


def make_array(store: Store | None = None, lvm: FakeLvm | None = None, lio: FakeLio | None = None,
               **config) -> Array:
    """The array as the agent starts it (targets.agent.build_array): its config's hosts registered."""
    arr = Array(make_config(**config), store if store is not None else Store(":memory:"),
                LvmThin(lvm if lvm is not None else FakeLvm()), lio if lio is not None else FakeLio())
    arr.register_configured_hosts()
    return arr


def assert_consistent(arr: Array) -> None:
    """Store, LVM and LIO agree: every LUN is ready and has its LV; every volume is exported with
    its serial (a committed snapshot is exported at publish or its first mask, so a snapshot
    may not be yet, nor one detached before that; when it is, with its serial); store masks are
    exactly LIO's mappings, only to registered hosts, whose names the checks accept unchanged;
    no LV or export the store does not know (a prepared set's pre-made snapshots are its
    members'); every aborted set left nothing."""
    luns = {lun.name: lun for lun in arr.store.luns()}
    exports = arr.lio.exports()
    premade = {m.name for s in arr.store.sets("prepared") for m in s.members}
    assert all(lun.state == "ready" for lun in luns.values()), [x for x in luns.values() if x.state != "ready"]
    for lun in luns.values():
        assert lun.name in arr.backend.lvm.lvs, f"{lun.name}: in the store, no LV"
        e = exports.get(lun.name)
        if e is not None or not (lun.kind == "snapshot" or lun.kind == "volume" and lun.origin):
            assert e is not None and e.serial == lun.serial, f"{lun.name}: export {e}, store serial {lun.serial}"
    unknown = set(arr.backend.lvm.lvs) - set(luns) - premade
    assert not unknown, f"LVs the store does not know: {unknown}"
    assert set(exports) <= set(luns), f"exports the store does not know: {set(exports) - set(luns)}"
    stored = {(m.lun, m.initiator, m.read_only) for m in arr.store.masks()}
    mapped = {(e.name, m.initiator, m.read_only) for e in exports.values() for m in e.mappings}
    assert stored == mapped, f"store only: {stored - mapped}; LIO only: {mapped - stored}"
    hosts = {h.initiator for h in arr.store.hosts()}
    assert {m.initiator for m in arr.store.masks()} <= hosts
    for h in arr.store.hosts():
        assert names.initiator(h.initiator) == h.initiator and names.lun_name(h.name) == h.name
    for s in arr.store.sets("aborted"):
        for m in s.members:
            lun = arr.store.lun(m.name)
            assert (lun is None or lun.set_id != s.set_id) and (m.name in arr.backend.lvm.lvs) == (lun is not None), \
                f"aborted set {s.set_id} left {m.name}"
    assert not arr.store.sets("committing")
