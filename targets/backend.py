"""The array's storage, in the words its parts use: volumes with a device for LIO, the
snapshots of a set taken in one short window, resize, rename and removal, the metadata the
reconcile reads back, and the pool's use.

LVM thin (`targets.lvm_thin`) is the one backend; the README says what another (Ceph RBD,
mapped by krbd) would do differently. Everything here was written from what LVM needs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Tags = dict[str, str]
Snapshot = tuple[str, str, Tags]  # (origin, snapshot name, tags)


class Volume(Protocol):
    """A volume as the backend reports it. Its tags are `key=value` strings, with the owner
    tag on every volume the array made."""

    @property
    def name(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def data_percent(self) -> float | None: ...  # of its size, written (None: not known)
    @property
    def active(self) -> bool: ...  # its device exists
    @property
    def owned(self) -> bool: ...  # made by the array
    @property
    def device(self) -> str: ...

    def tag(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class PoolUse:
    """The space every volume takes from: `group` holds `name` (a VG and its thin pool)."""

    group: str
    name: str
    size_bytes: int
    data_percent: float
    metadata_percent: float

    @property
    def used_bytes(self) -> int:
        return int(self.size_bytes * self.data_percent / 100)

    @property
    def free_bytes(self) -> int:
        return self.size_bytes - self.used_bytes


class Backend(Protocol):
    def volumes(self) -> Sequence[Volume]: ...
    def volume(self, name: str) -> Volume | None: ...
    def use(self) -> PoolUse: ...

    def device(self, name: str) -> str:
        """The block device LIO exports and copies read and write."""

    def create_volume(self, name: str, size_bytes: int, tags: Tags | None = None) -> None: ...

    def prepare_snapshots(self, set_id: str, snaps: Sequence[Snapshot]) -> None:
        """Make the set's snapshots ahead of its commit, outside the window."""

    def commit_snapshots(self, set_id: str, snaps: Sequence[Snapshot]) -> float:
        """The commit window: every snapshot of the set as of one moment. Returns its seconds."""

    def forget_snapshots(self, set_id: str) -> None:
        """The set is undone: drop what was kept for its window."""

    def recover_window(self) -> tuple[list[str], list[Exception]]:
        """Release what an agent killed inside a commit window left holding hosts' I/O.
        Returns (what was released, failures)."""

    def array_id(self) -> str | None:
        """The array id written on the storage itself, compared with the store's at start."""

    def set_array_id(self, array_id: str, was: str | None) -> None: ...

    def activate(self, *names: str) -> None:
        """Give each volume its device (snapshots are made without one)."""

    def retag(self, name: str, remove: Sequence[str] = (), add: Tags | None = None) -> None:
        """Delete the whole tags `remove`, add `add`, as one change."""

    def rename(self, name: str, new_name: str) -> None: ...
    def resize(self, name: str, size_bytes: int) -> None: ...
    def remove(self, name: str) -> None: ...
