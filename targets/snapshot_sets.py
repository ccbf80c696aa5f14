"""Snapshot sets: prepared (snapshots made in advance), committed in one short window,
published, handed out to their requester, claimed by the host that imports them, or aborted."""
from __future__ import annotations

import logging
import time

from provider.contract.hresult import HResult, vss_error
from provider.contract.lio_target import LIO_PRODUCT, LIO_VENDOR
from provider.contract.vss_types import MAX_LUNS_PER_SET

from . import names
from .authority import ADMIN, Caller, denied, may_import
from .backend import Snapshot
from .context import ArrayContext, ArrayPart
from .faults import crash_point
from .hosts import HostRegistry
from .lio import naa_wwid
from .luns import KIND_TAG, SET_TAG, SNAPSHOT_TAG, Luns
from .names import SNAPSHOT_PREFIX, api_name
from .store import Host, Lun, SetMember, SnapshotSet

log = logging.getLogger("shadowlun.array")


class SnapshotSets(ArrayPart):
    """The set lifecycle, over the LUNs its snapshots become."""

    def __init__(self, ctx: ArrayContext, luns: Luns, hosts: HostRegistry) -> None:
        super().__init__(ctx)
        self.luns, self.hosts = luns, hosts

    def prepare_set(self, set_id: str, snapshots: list[dict], caller: Caller = ADMIN,
                    transportable: bool = False) -> dict:
        """Check and record the set; choose every snapshot's name and serial now, so the
        commit only commits and the target identities are known before any host sees them.
        A host snapshots only its own LUNs; it owns the set. A transportable set may be
        imported by any host of this array, another only by its owner."""
        set_id = names.guid(set_id, "snapshot set id")
        if type(transportable) is not bool:
            raise vss_error(HResult.E_INVALIDARG, f"transportable {transportable!r}: true or false")
        if not isinstance(snapshots, list) or not snapshots:
            raise vss_error(HResult.E_INVALIDARG, "a snapshot set needs at least one LUN")
        if len(snapshots) > MAX_LUNS_PER_SET:
            raise vss_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                             f"{len(snapshots)} LUNs in one set; at most {MAX_LUNS_PER_SET}")
        wanted: list[tuple[str, str]] = []
        for s in snapshots:
            if not isinstance(s, dict) or set(s) != {"snapshot_id", "lun"}:
                raise vss_error(HResult.E_INVALIDARG, "each snapshot is {snapshot_id, lun}")
            wanted.append((names.guid(s["snapshot_id"], "snapshot id"), s["lun"]))
        if len({sid for sid, _ in wanted}) != len(wanted):
            raise vss_error(HResult.E_INVALIDARG, "snapshot ids repeat within the set")
        with self.ctx.lock:
            origins = [self.luns.get(lun, caller) for _, lun in wanted]
            for origin in origins:
                self.luns.require_use(origin, caller, "snapshot")
            wanted = [(sid, origin.name) for (sid, _), origin in zip(wanted, origins)]
            if len({lv for _, lv in wanted}) != len(wanted):
                raise vss_error(HResult.E_INVALIDARG, "a LUN appears twice in the set")
            existing = self.store.snapshot_set(set_id)
            if existing is not None:
                if [(m.snapshot_id, m.origin) for m in existing.members] == wanted and \
                        existing.owner == caller.initiator and existing.transportable == transportable:
                    return self.set_view(set_id)  # a retry
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"snapshot set {set_id} exists")
            in_sets = {m.snapshot_id for s in self.store.sets() for m in s.members}
            for sid, _ in wanted:
                if sid in in_sets or self.store.lun(SNAPSHOT_PREFIX + sid) is not None:
                    raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"snapshot {sid} exists")
            self.luns.check_pool()
            members, serials = [], set()
            for sid, origin in wanted:
                serial = self.luns.new_serial(serials)
                serials.add(serial)
                members.append(SetMember(set_id, sid, origin, SNAPSHOT_PREFIX + sid, serial))
            self.store.add_set(set_id, members, caller.initiator, transportable)
            self._premake(set_id, members)
            return self.set_view(set_id)

    def _premake(self, set_id: str, members: list[SetMember]) -> None:
        """Make the set's snapshots now, outside the commit window, so that the commit has as
        little as can be to do. A failure aborts the set and nothing is left."""
        try:
            self.backend.prepare_snapshots(set_id, self._snapshots(members))
        except Exception as e:
            errors = self.undo(set_id)
            raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                            f"snapshot set {set_id}: the snapshots could not be prepared: {e}"
                            + (f"; cleanup: {'; '.join(errors)}" if errors else "")) from e

    @staticmethod
    def _snapshots(members: list[SetMember]) -> list[Snapshot]:
        """Each member's snapshot, tagged as the set's."""
        return [(m.origin, m.name, {KIND_TAG: "snapshot", SET_TAG: m.set_id, SNAPSHOT_TAG: m.snapshot_id})
                for m in members]

    def get(self, set_id: str, caller: Caller, owner_only: bool = False) -> SnapshotSet:
        """A snapshot set the caller may see (its owner, its importer, or a host that may
        import it), or with `owner_only` act on (its owner)."""
        set_id = names.guid(set_id, "snapshot set id")
        s = self.store.snapshot_set(set_id)
        if s is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no snapshot set {set_id}")
        if caller.is_admin or s.owner == caller.initiator:
            return s
        if owner_only:
            raise denied(caller, f"act on snapshot set {set_id}: another host made it")
        imported = self.store.import_of(set_id)
        if (imported and imported[0] == caller.initiator) or may_import(s, caller.initiator):
            return s
        raise denied(caller, f"see snapshot set {set_id}")

    def set_view(self, set_id: str, caller: Caller = ADMIN) -> dict:
        with self.ctx.lock:
            s = self.get(set_id, caller)
        imported = self.store.import_of(s.set_id)
        return {
            "set_id": s.set_id, "state": s.state, "commit_window_s": s.commit_window_s,
            "transportable": s.transportable, "handed_out": s.handed_out,
            "imported_by": imported[0] if imported else None,
            "snapshots": [{"snapshot_id": m.snapshot_id, "lun": api_name(m.origin),
                           "target": m.name, "serial": m.serial, "wwid": naa_wwid(m.serial),
                           "vendor": LIO_VENDOR, "product": LIO_PRODUCT} for m in s.members],
        }

    def _import_request(self, serials: list[str], host: str | None,
                        caller: Caller) -> tuple[Host, list[Lun], list[str]]:
        """What an import call names, checked before anything changes: the registered host (a
        host acts for itself only), the ready shadow LUNs of `serials` and their sets' ids."""
        host = names.initiator(host if host is not None else caller.initiator, "host")
        if not caller.is_admin and host != caller.initiator:
            raise denied(caller, f"claim an import for another host ({host})")
        if not isinstance(serials, list) or not serials or len(serials) > MAX_LUNS_PER_SET * 4:
            raise vss_error(HResult.E_INVALIDARG, "serials: a non-empty list of LUN serials")
        serials = [names.serial(x) for x in serials]
        registered = self.hosts.require_host(host)  # only a registered host imports, and before any claim
        luns: dict[str, Lun] = {}
        set_ids: list[str] = []
        for serial in serials:
            lun = self.store.lun_by_serial(serial)
            if lun is None or lun.state != "ready" or lun.kind != "snapshot":
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no shadow LUN with serial {serial!r}")
            luns.setdefault(lun.name, lun)
            if lun.set_id not in set_ids:
                set_ids.append(lun.set_id)
        return registered, list(luns.values()), set_ids

    def _claimable(self, serials: list[str], host: str | None,
                   caller: Caller) -> tuple[Host, list[Lun], list[str]]:
        """_import_request, and each set committed, importable by that host, and not imported by
        another (spec 9.1: a transportable set is imported once; the same host again is a retry)."""
        registered, luns, set_ids = self._import_request(serials, host, caller)
        for set_id in set_ids:
            s = self.store.snapshot_set(set_id)
            if s is None or s.state != "committed":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is not committed")
            if not may_import(s, registered.initiator):
                raise denied(caller, f"import snapshot set {set_id} to {registered.initiator}: it is not "
                                     f"transportable and another host made it")
            taken = self.store.import_of(set_id)
            if taken is not None and taken[0] != registered.initiator:
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                 f"snapshot set {set_id} was already imported by {taken[0]} at "
                                 f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(taken[1]))}")
        return registered, luns, set_ids

    def _claim(self, set_ids: list[str], host: str) -> list[dict]:
        """The sets become `host`'s import, and their shadow LUNs its to mask, break and delete."""
        with self.store.tx():
            claims = [self.store.claim_import(set_id, host) for set_id in set_ids]
            for set_id in set_ids:
                self.store.set_holder([lun.name for lun in self.store.luns() if lun.set_id == set_id], host)
        return [{"set_id": sid, "host": h, "since": since} for sid, (h, since) in zip(set_ids, claims)]

    def claim_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        """Before a host locates shadow LUNs: the sets they belong to become that host's import
        (see _claimable). Nothing is claimed unless all can be."""
        with self.ctx.lock:
            registered, _, set_ids = self._claimable(serials, host, caller)
            return {"sets": self._claim(set_ids, registered.initiator)}

    def attach_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        """LocateLuns' work on the array in one call instead of one per LUN: claim_import, then
        each of these shadow LUNs masked read-write to the host (spec 13), all published first in
        one batch. Answers the claims, the LUNs as the host will read them (LUN number, WWID),
        and the serials this call masked: what release_import gives back if the import fails on
        the host. A failure here undoes the call's masks and claims, so nothing has changed."""
        with self.ctx.lock:
            registered, luns, set_ids = self._claimable(serials, host, caller)
            host = registered.initiator
            claimed_before = {sid for sid in set_ids if self.store.import_of(sid) is not None}
            masked_before = {lun.name for lun in luns if self._masked(lun.name, host)}
            sets = self._claim(set_ids, host)
            try:
                self.luns.publish(*luns)
                with self.luns.lio.batch():  # LIO's file saved once, not between two masks
                    for lun in luns:
                        self.luns.map(lun, registered, read_only=False)
            except Exception as e:
                errors = self._give_back([lun for lun in luns if lun.name not in masked_before], host,
                                         keep=claimed_before)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"import of {len(luns)} shadow LUNs to {host}: {e}"
                                + (f"; undoing it: {'; '.join(errors)}" if errors else "")) from e
            return {"sets": sets, "luns": self.luns.views(luns, caller),
                    "masked": [lun.serial for lun in luns if lun.name not in masked_before]}

    def release_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        """The undo of a failed import: these shadow LUNs unmasked from the host, and the host's
        claim dropped on each of their sets that has no LUN masked to it any more (its LUNs are
        their owner's again, so the set can be imported once more). Only the importing host's
        own sets; everything is checked before anything changes, and failures are collected."""
        with self.ctx.lock:
            registered, luns, set_ids = self._import_request(serials, host, caller)
            host = registered.initiator
            for set_id in set_ids:
                taken = self.store.import_of(set_id)
                if taken is None:
                    raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is not imported")
                if taken[0] != host:
                    raise denied(caller, f"release snapshot set {set_id}: {taken[0]} imported it")
            errors = self._give_back(luns, host, keep=set())
            if errors:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "; ".join(errors))
            return {"unmasked": [lun.serial for lun in luns],
                    "unclaimed": [sid for sid in set_ids if self.store.import_of(sid) is None]}

    def _masked(self, lun: str, host: str) -> bool:
        return any(m.initiator == host for m in self.store.masks(lun))

    def _give_back(self, luns: list[Lun], host: str, keep: set[str]) -> list[str]:
        """Unmask `luns` from `host`, then drop its claim of each of their sets (but `keep`) that
        has no LUN masked to it any more, the set's LUNs held by its owner again. Errors are
        collected, and every step is tried."""
        errors = []
        with self.luns.lio.batch():
            for lun in luns:
                try:
                    self.luns.unmask(api_name(lun.name), host)
                except Exception as e:  # noqa: BLE001 - collected and reported
                    errors.append(f"unmask of {api_name(lun.name)}: {e}")
        for set_id in dict.fromkeys(lun.set_id for lun in luns):
            taken = self.store.import_of(set_id)
            members = [m for m in self.store.luns() if m.set_id == set_id]
            if set_id in keep or taken is None or taken[0] != host or any(self._masked(m.name, host) for m in members):
                continue
            try:
                s = self.store.snapshot_set(set_id)
                with self.store.tx():
                    self.store.drop_import(set_id)
                    self.store.set_holder([m.name for m in members], s.owner if s else None)
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(f"claim of snapshot set {set_id}: {e}")
        for err in errors:
            log.error("giving back an import: %s", err)
        return errors

    def commit_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Only the snapshots, all of the set in one batch: this is the window in which writes
        are held on the hosts. Activation and export come after, in publish_set (or at the
        first mask, or at the next reconcile): a committed snapshot is 'ready' at once."""
        with self.ctx.lock:
            s = self.get(set_id, caller, owner_only=True)
            set_id = s.set_id
            if s.state == "committed":
                return self.set_view(set_id)  # a retry
            if s.state != "prepared":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is {s.state}")
            # The hosts' writes are held from here to the answer: the store is read and written
            # once for the whole set, not once per LUN.
            origins = self.store.luns_named([m.origin for m in s.members])
            gone = [api_name(m.origin) for m in s.members
                    if (o := origins.get(m.origin)) is None or o.state != "ready"]
            if gone:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                 f"snapshot set {set_id}: no LUN {', '.join(gone)} any more")
            with self.store.tx():
                self.store.set_state(set_id, "committing")
                self.store.add_snapshot_luns(s.members, {n: o.size_bytes for n, o in origins.items()}, s.owner)
            crash_point("commit-before-snapshots")
            try:
                window = self.backend.commit_snapshots(set_id, self._snapshots(s.members))
                crash_point("commit-after-snapshots")
            except Exception as e:
                self.undo(s.set_id)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"commit of set {set_id} failed: {e}") from e
            with self.store.tx():
                self.store.set_luns_state([m.name for m in s.members], "ready")
                self.store.set_state(set_id, "committed", commit_window_s=window)
            log.info("set %s committed: %d snapshots in %.3f s", set_id, len(s.members), window)
            return self.set_view(set_id)

    def publish_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Activate and export every snapshot of a committed set (masked to nobody yet), so that
        locating them later is quick. Idempotent; outside the commit window."""
        with self.ctx.lock:
            s = self.get(set_id, caller, owner_only=True)
            set_id = s.set_id
            if s.state != "committed":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is {s.state}, not committed")
            try:
                self.luns.publish(*(lun for m in s.members if (lun := self.store.lun(m.name)) is not None
                                and lun.state == "ready" and lun.set_id == set_id))  # not detached
            except Exception as e:  # the set stays committed: a retry or the reconcile finishes it
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"publish of set {set_id}: {e}") from e
            return self.set_view(set_id)

    def hand_out_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """The set's requester has it whole (PostFinalCommitSnapshots succeeded): from now on
        it is removed by deleting its shadow copies, never by an abort. Idempotent; only a
        committed set, by its owner."""
        with self.ctx.lock:
            s = self.get(set_id, caller, owner_only=True)
            if s.state != "committed":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {s.set_id} is {s.state}, not committed")
            self.store.hand_out(s.set_id)
            return self.set_view(s.set_id)

    def undo(self, set_id: str) -> list[str]:
        errors = []
        self.backend.forget_snapshots(set_id)
        s = self.store.snapshot_set(set_id)
        with self.luns.lio.batch():  # LIO's file saved once, not between two LUNs' removals
            for m in s.members if s else ():
                lun = self.store.lun(m.name)
                if lun is not None and lun.set_id != set_id:
                    continue  # detached: an ordinary LUN now, not the set's to undo
                for mask in self.store.masks(m.name):
                    self.store.remove_mask(m.name, mask.initiator)
                errors += self.luns.destroy(m.name)
        self.store.set_state(set_id, "aborted")
        return errors

    def abort_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Undo whatever the set made: before it was handed out (abort after commit deletes).
        Only its owner aborts it, and not once it was handed out to its requester or imported
        by a host: a late abort (a retry, another provider instance) must not delete a shadow
        copy that a document already describes. The admin may abort any set."""
        with self.ctx.lock:
            s = self.get(set_id, caller, owner_only=True)
            set_id = s.set_id
            imported = self.store.import_of(set_id)
            if not caller.is_admin and imported:  # by another host, or by this one: it lives on a host now
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"snapshot set {set_id} was imported by {imported[0]}: an abort changes nothing "
                                f"now; the importing host deletes or breaks its copies")
            if not caller.is_admin and s.handed_out is not None:
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"snapshot set {set_id} was handed out to its requester at "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(s.handed_out))}: an abort "
                                f"changes nothing now; deleting its shadow copies removes it")
            self.ctx.require_trusted(f"abort of snapshot set {set_id}")
            errors = self.undo(set_id)
            if errors:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "; ".join(errors))
            return self.set_view(set_id)
