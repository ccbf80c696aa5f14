"""The provider's methods (CONTRACT.md §2): the one list from which the RPC's names, the
creation state machine's rows and the proxy's codes and deadlines per method are derived, so that
a method added or renamed here is one that every side knows, or the import fails.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

_V = TypeVar("_V")


def spec_name(method: str) -> str:
    """The COM name of a snake_case method: "end_prepare_snapshots" → "EndPrepareSnapshots"."""
    return "".join(word.capitalize() for word in method.split("_"))


@enum.unique
class ProviderMethod(enum.Enum):
    """Every method of a provider object that can be called (the interfaces of CONTRACT.md §2,
    each in its v-table order); the value is the snake_case name the RPC carries."""

    # IVssProviderCreateSnapshotSet
    END_PREPARE_SNAPSHOTS = "end_prepare_snapshots"
    PRE_COMMIT_SNAPSHOTS = "pre_commit_snapshots"
    COMMIT_SNAPSHOTS = "commit_snapshots"
    POST_COMMIT_SNAPSHOTS = "post_commit_snapshots"
    PRE_FINAL_COMMIT_SNAPSHOTS = "pre_final_commit_snapshots"
    POST_FINAL_COMMIT_SNAPSHOTS = "post_final_commit_snapshots"
    ABORT_SNAPSHOTS = "abort_snapshots"
    # IVssHardwareSnapshotProvider
    ARE_LUNS_SUPPORTED = "are_luns_supported"
    FILL_IN_LUN_INFO = "fill_in_lun_info"
    BEGIN_PREPARE_SNAPSHOT = "begin_prepare_snapshot"
    GET_TARGET_LUNS = "get_target_luns"
    LOCATE_LUNS = "locate_luns"
    ON_LUN_EMPTY = "on_lun_empty"
    # IVssHardwareSnapshotProviderEx
    GET_PROVIDER_CAPABILITIES = "get_provider_capabilities"
    ON_LUN_STATE_CHANGE = "on_lun_state_change"
    RESYNC_LUNS = "resync_luns"
    ON_REUSE_LUNS = "on_reuse_luns"
    # IVssProviderNotifications
    ON_LOAD = "on_load"
    ON_UNLOAD = "on_unload"
    # IVssAsync::QueryStatus and Cancel of what ResyncLuns started (its ppAsync), by handle
    QUERY_STATUS = "query_status"
    CANCEL = "cancel"
    # shadowlun's own: the requester's cleanup of an import that failed after LocateLuns, which
    # VSS leaves to the requester (CONTRACT.md §9); the undo of what LocateLuns did
    RELEASE_LUNS = "release_luns"

    @property
    def spec_name(self) -> str:
        """The COM name: "BeginPrepareSnapshot"."""
        return spec_name(self.value)

    @property
    def takes_set_id(self) -> bool:
        return self in SET_ID_METHODS


SET_ID_METHODS = frozenset({
    ProviderMethod.BEGIN_PREPARE_SNAPSHOT, ProviderMethod.END_PREPARE_SNAPSHOTS,
    ProviderMethod.PRE_COMMIT_SNAPSHOTS, ProviderMethod.COMMIT_SNAPSHOTS,
    ProviderMethod.POST_COMMIT_SNAPSHOTS, ProviderMethod.PRE_FINAL_COMMIT_SNAPSHOTS,
    ProviderMethod.POST_FINAL_COMMIT_SNAPSHOTS, ProviderMethod.ABORT_SNAPSHOTS,
})

PROVIDER_METHODS: tuple[str, ...] = tuple(m.value for m in ProviderMethod)
"""The names a provider server serves; nothing else of a provider object can be called over its
socket."""


def per_method(table: Mapping[ProviderMethod, _V]) -> Mapping[str, _V]:
    """A read-only table by RPC name that has an entry for every method (ValueError otherwise)."""
    missing = [m.value for m in ProviderMethod if m not in table]
    if missing:
        raise ValueError(f"no entry for {', '.join(missing)}")
    return MappingProxyType({m.value: table[m] for m in ProviderMethod})
