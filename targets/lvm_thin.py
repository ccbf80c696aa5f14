"""The array's storage on an LVM thin pool: `targets.backend.Backend` over `targets.lvm.Lvm`.

The commit window is LVM's own business here: the set's thin snapshots are made by lvcreate at
prepare, and the commit makes each again from its origin's current blocks with thin-pool
messages (`Lvm.repoint_snapshots`), so no LVM metadata is written inside the window.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from .backend import PoolUse, Snapshot, Tags
from .lvm import LogicalVolume, Lvm, ThinDevice

log = logging.getLogger("shadowlun.array")

ARRAY_TAG = "shadowlun.array"  # VG tag: shadowlun.array=<array id>, the same id as in the store

Pair = tuple[ThinDevice | None, ThinDevice | None]


class LvmThin:
    def __init__(self, lvm: Lvm) -> None:
        self.lvm = lvm
        self.premade: dict[str, list[Pair]] = {}  # prepared set -> (origin, snapshot) of each member

    def volumes(self) -> list[LogicalVolume]:
        return self.lvm.volumes()

    def volume(self, name: str) -> LogicalVolume | None:
        return self.lvm.get(name)

    def use(self) -> PoolUse:
        return self.lvm.pool_status()

    def device(self, name: str) -> str:
        return self.lvm.device(name)

    def create_volume(self, name: str, size_bytes: int, tags: Tags | None = None) -> None:
        self.lvm.create_volume(name, size_bytes, tags)

    def prepare_snapshots(self, set_id: str, snaps: Sequence[Snapshot]) -> None:
        """lvcreate -s of every member in one lvm process, then the thin ids the commit needs,
        so that the commit costs no LVM metadata update and no lvs."""
        self.lvm.create_snapshots(snaps)
        self.premade[set_id] = self._thin_pairs(snaps)

    def _thin_pairs(self, snaps: Sequence[Snapshot]) -> list[Pair]:
        """(origin, snapshot) ThinDevice of each member, from one lvs (None where an LV is missing)."""
        devices = self.lvm.thin_devices([origin for origin, _, _ in snaps] + [name for _, name, _ in snaps])
        return [(devices.get(origin), devices.get(name)) for origin, name, _ in snaps]

    def commit_snapshots(self, set_id: str, snaps: Sequence[Snapshot]) -> float:
        """The pre-made snapshots made again at this moment. Without them (removed behind the
        agent's back since the prepare, or an origin is not active), one batch of lvcreate -s,
        as slow as LVM is but just as consistent."""
        pairs = self.premade.pop(set_id, None)
        if pairs is None:
            pairs = self._thin_pairs(snaps)
        if all(o is not None and o.dm_name and sn is not None and sn.dm_name is None for o, sn in pairs):
            return self.lvm.repoint_snapshots(pairs)
        log.warning("set %s: snapshots not pre-made (or an origin inactive); creating them now", set_id)
        for _, name, _ in snaps:
            if self.lvm.get(name) is not None:
                self.lvm.remove(name)
        return self.lvm.create_snapshots(snaps)

    def forget_snapshots(self, set_id: str) -> None:
        self.premade.pop(set_id, None)

    def recover_window(self) -> tuple[list[str], list[Exception]]:
        resumed, errors = self.lvm.resume_suspended()
        return resumed, list(errors)

    def array_id(self) -> str | None:
        return next((t.split("=", 1)[1] for t in self.lvm.vg_tags() if t.startswith(ARRAY_TAG + "=")), None)

    def set_array_id(self, array_id: str, was: str | None) -> None:
        """The VG's only array tag, in one vgchange."""
        self.lvm.retag_vg(remove=[f"{ARRAY_TAG}={was}"] if was else [], add=[f"{ARRAY_TAG}={array_id}"])

    def activate(self, *names: str) -> None:
        self.lvm.activate(*names)

    def retag(self, name: str, remove: Sequence[str] = (), add: Tags | None = None) -> None:
        self.lvm.retag(name, remove, add)

    def rename(self, name: str, new_name: str) -> None:
        self.lvm.rename(name, new_name)

    def resize(self, name: str, size_bytes: int) -> None:
        self.lvm.resize(name, size_bytes)

    def remove(self, name: str) -> None:
        self.lvm.remove(name)
