"""shadowlun's VSS hardware provider: IVssProviderCreateSnapshotSet, IVssHardwareSnapshotProvider,
IVssHardwareSnapshotProviderEx and IVssProviderNotifications, in snake_case, over the array agent.

Values cross the provider server's RPC as JSON: LUN records are VDS_LUN_INFORMATION dicts
(`LunInformation.to_dict()`), ids are GUID strings. The provider keeps nothing essential in
memory between sequences (spec 17.2 #1): a LUN is found on the array from its record alone (the
serial), so any host's provider can locate, resync or reclaim it.

Slow work is in BeginPrepareSnapshot / EndPrepareSnapshots (the array chooses names and serials
and checks space there); CommitSnapshots only asks the array to commit.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provider.contract.hresult import HResult, VssError, VssUserError, vss_error
from provider.hardware.iscsi import Initiator as IscsiInitiator
from provider.hardware.iscsi import normalize_wwid
from provider.contract.lio_target import LIO_VENDOR, predict_lio_lun_info
from provider.hardware.lun_info import read_lun_info
from provider.contract.methods import ProviderMethod
from provider.polling import poll
from provider.contract.state_machine import OutOfSequenceError, ProviderState, ProviderStateMachine, Verdict
from provider.contract.vss_types import (
    MAX_LUNS_PER_SET,
    LunInformation,
    REQUESTER_MODIFIERS,
    ProviderCapabilities,
    SnapshotContext,
    VolumeSnapshotAttributes,
    split_context,
)

log = logging.getLogger("shadowlun.provider")

PROVIDER_ID = uuid.UUID("5b1f3a3e-6c2d-4d8e-9a57-3f0e1c4b7a21")
VERSION_ID = uuid.UUID("0d6f0c1e-2b3a-4c5d-8e9f-a0b1c2d3e4f5")
PROVIDER_NAME = "shadowlun hardware provider"
PROVIDER_VERSION = "0.1.0"
DISK_WAIT_S = 60.0

# What this provider can do: thin snapshots (differential) that travel to other hosts, and full
# copies (plex), which the array makes from the snapshots after the commit, as jobs that the
# coordinator waits for (with progress) before the set is handed out.
SUPPORTED_CONTEXTS = frozenset({
    SnapshotContext.VSS_CTX_BACKUP, SnapshotContext.VSS_CTX_FILE_SHARE_BACKUP,
    SnapshotContext.VSS_CTX_NAS_ROLLBACK, SnapshotContext.VSS_CTX_APP_ROLLBACK,
})


class Array(Protocol):
    """What the provider needs of the array agent (provider.hardware.array_client.ArrayClient)."""

    def luns(self) -> list[dict]: ...
    def target(self) -> dict: ...
    def pool(self) -> dict: ...
    def prepare_set(self, set_id: str, snapshots: list[dict], transportable: bool = False) -> dict: ...
    def commit_set(self, set_id: str) -> dict: ...
    def publish_set(self, set_id: str) -> dict: ...
    def attach_import(self, serials: list[str], host: str) -> dict: ...
    def release_import(self, serials: list[str], host: str) -> dict: ...
    def abort_set(self, set_id: str) -> dict: ...
    def hand_out_set(self, set_id: str) -> dict: ...
    def plex_set(self, set_id: str) -> dict: ...
    def unmask(self, name: str, initiator: str) -> dict: ...
    def delete(self, name: str) -> None: ...
    def detach(self, name: str) -> dict: ...
    def take_identity(self, names: list[str]) -> list[dict]: ...
    def hosts(self) -> list[dict]: ...
    def start_resync(self, name: str, snapshot: str) -> dict: ...
    def job(self, job_id: str) -> dict: ...
    def cancel_job(self, job_id: str) -> dict: ...
    def wait_job(self, job_id: str, timeout: float, on_progress=None) -> dict: ...


class Initiator(Protocol):
    """What the provider needs of the host's iSCSI transport: one path (single_path.SinglePath)
    or, with multipathd, every portal and a dm-multipath map per LUN
    (multipath_initiator.MultipathInitiator). Disks are block names: 'sdb', or a map's 'dm-3'."""

    def connect(self, target_iqn: str, portals: list[str], chap_user: str | None, chap_secret: str | None,
                luns: dict[int, str], timeout: float) -> dict[str, str]: ...
    def find_disk(self, wwid: str) -> str | None: ...
    def remove_disk(self, block_name_or_path: str) -> None: ...
    def disconnect(self, target_iqn: str, portals: list[str], disks: list[str]) -> None: ...


@dataclass(frozen=True)
class HostIdentity:
    """Who this host is to the array: its initiator name and the CHAP credentials the array
    made for it (from its access file)."""

    initiator: str
    chap_user: str
    chap_secret: str


@dataclass
class PendingSet:
    """A set between BeginPrepareSnapshot and the end of creation (in memory; the array keeps
    the durable part from EndPrepareSnapshots on)."""

    set_id: str
    context: int
    members: dict[str, str] = field(default_factory=dict)      # origin LUN name -> array snapshot id
    volumes: dict[str, list[str]] = field(default_factory=dict)  # VSS snapshot id -> origin LUN names
    serials: dict[str, str] = field(default_factory=dict)      # origin LUN name -> shadow LUN serial
    sources: dict[str, str] = field(default_factory=dict)      # source record's serial -> origin LUN name
    inventory: dict[str, dict] = field(default_factory=dict)  # the array's LUNs by serial, as first read


PAUSE_ENV = "SHADOWLUN_PROVIDER_PAUSE_AT"


def pause_point(name: str) -> None:
    """Fault injection for the system tests: `SHADOWLUN_PROVIDER_PAUSE_AT=<point>:<seconds>`
    holds the provider there, so a test can kill its server mid-operation."""
    point, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if point == name:
        log.warning("pausing %s s at %s as asked by %s", seconds, name, PAUSE_ENV)
        time.sleep(float(seconds or 60))


def array_snapshot_id(snapshot_id: str, lun: str) -> str:
    """One array snapshot per (VSS snapshot, LUN): a volume may span several LUNs."""
    return str(uuid.uuid5(uuid.UUID(snapshot_id), lun))


def record(d: Any) -> LunInformation:
    return LunInformation.from_dict(d)


class ShadowLunProvider:
    def __init__(self, array: Array, initiator: Initiator, host: HostIdentity,
                 sysfs_block: Path = Path("/sys/block")) -> None:
        self.array, self.initiator, self.host, self.sysfs_block = array, initiator, host, sysfs_block
        self.sm = ProviderStateMachine()
        self._sets: dict[str, PendingSet] = {}
        self._asyncs: dict[str, list[str]] = {}  # IVssAsync handle of a resync -> array job ids
        self._handed_out: set[str] = set()  # sets whose targets GetTargetLuns described (VSS has them)
        self._lock = threading.RLock()

    # -- plumbing --------------------------------------------------------------------------

    def _creation(self, method: ProviderMethod, set_id: str | None, work: Callable[[], Any]) -> Any:
        """Run one creation call through the state machine: discard a superseded set first, do
        the work unless it is a no-op, and report success or failure. The array is told to
        delete a set exactly when the machine says it is discarded or aborted."""
        held = self.sm.set_id
        try:
            call = self.sm.begin(method, set_id)
        except OutOfSequenceError as e:
            if e.discard:
                self._discard(str(e.discard))
            log.error("VETO: %s", e)
            raise
        if call.discard:
            self._discard(str(call.discard))
        if call.verdict is Verdict.NO_OP:
            return None
        try:
            result = work()
        except Exception as e:
            after = self.sm.failed(method)
            # A failed new sequence that reuses a handed-out set's id is refused; the set that
            # VSS already has in its document is not the failed call's to delete.
            reused = method is ProviderMethod.BEGIN_PREPARE_SNAPSHOT and str(set_id) in self._handed_out
            if after is ProviderState.ABORTED and method is not ProviderMethod.ABORT_SNAPSHOTS and not reused:
                self._discard(str(self.sm.set_id or held or set_id))
            log.error("%s(%s) failed: %s", method.spec_name, set_id or "", e)
            if isinstance(e, VssError):
                raise
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{method.spec_name}: {e}") from e
        if call.cancelled.is_set():
            # An abort (or unload, or a new set) came while this ran, e.g. during a long
            # EndPrepareSnapshots: what the work made after the abort's cleanup goes too, and
            # the call does not report a success the requester no longer expects.
            self._discard(str(call.set_id or held or set_id))
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{method.spec_name} was interrupted by an abort")
        self.sm.succeeded(method)
        return result

    def _discard(self, set_id: str) -> None:
        """Delete everything of a set on the array (best effort, logged), forget it here."""
        with self._lock:
            self._sets.pop(str(set_id), None)
        try:
            self.array.abort_set(str(set_id))
        except VssUserError as e:
            if e.hresult != HResult.VSS_E_OBJECT_NOT_FOUND:  # never reached the array: nothing to undo
                log.error("discard of set %s: %s", set_id, e)
        except VssError as e:
            log.error("discard of set %s: %s", set_id, e)

    def _inventory_by_serial(self) -> dict[str, dict]:
        """The array's LUNs by the serial a host reads. An original and the broken copy that took
        its identity share one; the array lets a host see only one of them, which wins here."""
        def mine(lun: dict) -> bool:
            return any(m["initiator"] == self.host.initiator for m in lun["masks"])

        return {lun["serial"]: lun for lun in sorted(self.array.luns(), key=mine)}

    @staticmethod
    def _lio_record(info: LunInformation) -> bool:
        """Whether a record is what a LIO LUN with its serial reports: our vendor and the NAA
        identity made from that serial (so a foreign LUN with a colliding serial is not ours)."""
        try:
            return info.vendor_id.rstrip() == LIO_VENDOR and predict_lio_lun_info(info.serial_number).matches(info)
        except VssError:  # a serial no LIO LUN could have
            return False

    def _lun_for(self, info: LunInformation, inventory: dict[str, dict]) -> dict | None:
        """The array LUN a record describes: a LIO record (`_lio_record`) of a serial the array knows."""
        lun = inventory.get(info.serial_number)
        return lun if lun is not None and self._lio_record(info) else None

    @staticmethod
    def _context_supported(context: int) -> bool:
        """A named context we implement, with only modifiers a requester may ask for, and not
        both kinds of copy (DIFFERENTIAL and PLEX exclude each other)."""
        try:
            ctx, attrs = split_context(context)
        except VssError:
            return False
        both = VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_DIFFERENTIAL | VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX
        return ctx in SUPPORTED_CONTEXTS and not (attrs & ~REQUESTER_MODIFIERS) and attrs & both != both

    # -- IVssProviderNotifications ---------------------------------------------------------

    def on_load(self) -> None:
        log.info("%s %s loaded", PROVIDER_NAME, PROVIDER_VERSION)

    def on_unload(self, force: bool = True) -> int:
        """An unload during creation abandons the set (spec 2.2)."""
        held = self.sm.set_id
        in_progress = self.sm.state.in_progress
        self.sm.begin(ProviderMethod.ON_UNLOAD)
        if held is not None and in_progress:
            self._discard(str(held))
        return int(HResult.S_OK)

    # -- IVssHardwareSnapshotProvider ------------------------------------------------------

    def are_luns_supported(self, context: int, devices: list[str], luns: list[dict]) -> dict:
        """All or nothing; FALSE (not an error) for a foreign LUN, an unsupported context, or a
        pool too full to take new work (never accept and fail later)."""
        infos = [record(d) for d in luns]
        if not infos or len(infos) != len(devices):
            raise vss_error(HResult.E_INVALIDARG, "one LUN record per device, at least one")
        supported = self._context_supported(context)
        why = "" if supported else f"context {context:#x} is not supported (thin snapshots only, no plex)"
        if supported:
            inventory = self._inventory_by_serial()
            foreign = [d for d, i in zip(devices, infos) if self._lun_for(i, inventory) is None]
            if foreign:
                supported, why = False, f"not LUNs of this array: {', '.join(foreign)}"
        if supported:
            pool = self.array.pool()
            if max(pool["data_percent"], pool["metadata_percent"]) >= pool["full_percent"]:
                supported, why = False, "the array's thin pool is nearly full"
        return {"supported": supported, "luns": [i.to_dict() for i in infos], "reason": why}

    def fill_in_lun_info(self, device: str, lun_info: dict | None = None) -> dict:
        """The disk's record as read from sysfs (the same as GetTargetLuns predicted), and whether
        it is ours. An unknown disk is FALSE with success."""
        block = self.sysfs_block / Path(device).name
        try:
            info = read_lun_info(block)
        except VssError as e:  # no such disk, or no SCSI disk: not ours (FALSE, S_OK), record untouched
            log.info("FillInLunInfo(%s): not a LUN of this array: %s", device, e)
            return {"supported": False, "lun_info": lun_info or {}}
        supported = self._lun_for(info, self._inventory_by_serial()) is not None
        return {"supported": supported, "lun_info": info.to_dict()}

    def begin_prepare_snapshot(self, set_id: str, snapshot_id: str, context: int,
                               devices: list[str], luns: list[dict]) -> list[dict]:
        for what, value in (("snapshot set id", set_id), ("snapshot id", snapshot_id)):
            try:  # a malformed argument is refused before the creation machine moves
                uuid.UUID(str(value))
            except ValueError:
                raise vss_error(HResult.E_INVALIDARG, f"{what} {value!r} is not a GUID") from None
        if not devices or len(devices) != len(luns):
            raise vss_error(HResult.E_INVALIDARG, "one LUN record per device, at least one")

        def work() -> list[dict]:
            if not self._context_supported(context):
                raise vss_error(HResult.VSS_E_UNSUPPORTED_CONTEXT, f"context {context:#x}")
            # The array's inventory is read once per set (a set of 64 volumes made 64 listings of
            # every LUN), and again only when a record is not in it.
            with self._lock:
                known = self._sets[str(set_id)].inventory if str(set_id) in self._sets else {}
            records = [record(d) for d in luns]
            inventory = known if all(r.serial_number in known for r in records) else self._inventory_by_serial()
            names = []
            for device, info in zip(devices, records, strict=True):
                lun = self._lun_for(info, inventory)
                if lun is None:
                    raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
                                    f"{device} is not a LUN of this array")
                names.append(lun["name"])
            with self._lock:
                pending = self._sets.setdefault(str(set_id), PendingSet(str(set_id), context))
                pending.inventory = inventory
                for name, info in zip(names, records, strict=True):  # a LUN of several volumes: once
                    pending.members.setdefault(name, array_snapshot_id(str(snapshot_id), name))
                    pending.sources[info.serial_number] = name
                pending.volumes[str(snapshot_id)] = names
                if len(pending.members) > MAX_LUNS_PER_SET:
                    raise vss_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                                    f"at most {MAX_LUNS_PER_SET} LUNs per set")
            return luns

        return self._creation(ProviderMethod.BEGIN_PREPARE_SNAPSHOT, set_id, work)

    def _pending(self, set_id: str) -> PendingSet:
        pending = self._sets.get(str(set_id))
        if pending is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no snapshot set {set_id} in preparation")
        return pending

    def end_prepare_snapshots(self, set_id: str) -> None:
        def work() -> None:
            pending = self._pending(set_id)
            _, attributes = split_context(pending.context)
            prepared = self.array.prepare_set(str(set_id), [
                {"snapshot_id": sid, "lun": name} for name, sid in pending.members.items()],
                transportable=bool(attributes & VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE))
            pending.serials = {s["lun"]: s["serial"] for s in prepared["snapshots"]}
            pause_point("end_prepare_snapshots")

        return self._creation(ProviderMethod.END_PREPARE_SNAPSHOTS, set_id, work)

    def pre_commit_snapshots(self, set_id: str) -> None:
        return self._creation(ProviderMethod.PRE_COMMIT_SNAPSHOTS, set_id, lambda: self._pending(set_id) and None)

    def commit_snapshots(self, set_id: str) -> dict:
        """Only the commit: the array snapshots every LUN of the set in one batch."""
        def work() -> dict:
            window = self.array.commit_set(str(set_id))["commit_window_s"]
            pause_point("commit_snapshots")  # the requester's filesystems are frozen here
            return {"commit_window_s": window}

        return self._creation(ProviderMethod.COMMIT_SNAPSHOTS, set_id, work)

    def post_commit_snapshots(self, set_id: str, snapshot_count: int = 0) -> None:
        """Writes flow again: now the array activates and exports the new snapshots, and for a
        PLEX set starts their full copies, whose progress QueryStatus answers with the set id as
        the handle (the coordinator waits for them before the final commits)."""
        def work() -> None:
            self.array.publish_set(str(set_id))
            if self._pending(str(set_id)).context & VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX:
                jobs = self.array.plex_set(str(set_id))["jobs"]
                with self._lock:
                    self._asyncs[str(set_id)] = [j["job_id"] for j in jobs]

        return self._creation(ProviderMethod.POST_COMMIT_SNAPSHOTS, set_id, work)

    def pre_final_commit_snapshots(self, set_id: str) -> None:
        return self._creation(ProviderMethod.PRE_FINAL_COMMIT_SNAPSHOTS, set_id, lambda: None)

    def post_final_commit_snapshots(self, set_id: str) -> None:
        """The last creation call: the requester has the whole set now. The array is told, so
        that from now on no abort (a late one, or another provider instance's) deletes it."""
        return self._creation(ProviderMethod.POST_FINAL_COMMIT_SNAPSHOTS, set_id,
                              lambda: self.array.hand_out_set(str(set_id)))

    def abort_snapshots(self, set_id: str) -> None:
        """Idempotent; callable while EndPrepareSnapshots runs (the state machine cancels it)."""
        held = self.sm.set_id

        def work() -> None:
            self._discard(set_id)

        result = self._creation(ProviderMethod.ABORT_SNAPSHOTS, set_id, work)
        if held is None or str(held) != str(set_id):
            # Not the set this instance holds (e.g. the provider server restarted mid-creation):
            # still delete whatever the array has of it, so nothing is left behind.
            self._discard(set_id)
        return result

    def get_target_luns(self, devices: list[str], source_luns: list[dict]) -> list[dict]:
        """The shadow LUNs' records, 1:1 with the sources, from the array's chosen serials: the
        identity the LUN will report on any host (FillInLunInfo there returns the same)."""
        def work() -> list[dict]:
            pending = self._pending(str(self.sm.set_id))
            out = []
            for device, d in zip(devices, source_luns, strict=True):  # the set's own sources: no listing
                info = record(d)
                name = pending.sources.get(info.serial_number) if self._lio_record(info) else None
                if name is None or name not in pending.serials:
                    raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{device} is not in the snapshot set")
                out.append(predict_lio_lun_info(pending.serials[name]).to_dict())
            with self._lock:
                self._handed_out.add(str(self.sm.set_id))
            return out

        return self._creation(ProviderMethod.GET_TARGET_LUNS, None, work)

    def locate_luns(self, luns: list[dict]) -> list[dict]:
        """LocateLuns in one batch: one array call claims the set for this host and masks every
        shadow LUN to it (read-write: spec 13); the initiator connects them all (one login or
        none, one scan pass, one bounded wait); each disk's record is read from sysfs once and
        carried back as `lun_info`, what FillInLunInfo would answer, so that the coordinator needs
        no call per disk. A failure undoes what the call did, host first (os-brick's order): the
        disks and a session it made, then its masks and claim on the array; cleanup failures are
        added to the error."""
        infos = [record(d) for d in luns]
        foreign = [i.serial_number for i in infos if not self._lio_record(i)]
        if not infos or foreign:  # checked before anything changes
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                            f"no LUN with serial {', '.join(map(repr, foreign)) or '(none given)'} on this array")
        attached = self.array.attach_import([i.serial_number for i in infos], self.host.initiator)
        target, portals = attached["target"], attached["target"]["portals"]
        shadows = [(lun, normalize_wwid(lun["wwid"])) for lun in attached["luns"]]
        before = {w for _, w in shadows if self.initiator.find_disk(w)}
        disks: dict[str, str] = {}
        try:
            disks = self.initiator.connect(target["iqn"], portals, self.host.chap_user, self.host.chap_secret,
                                           {lun["lun_id"]: w for lun, w in shadows}, DISK_WAIT_S)
            return [{"device": f"/dev/{disks[w]}", "wwid": lun["wwid"], "lun": lun["name"],
                     "lun_info": read_lun_info(self.sysfs_block / disks[w]).to_dict()} for lun, w in shadows]
        except Exception as e:
            undo = []
            made = [d for w, d in disks.items() if w not in before]  # connect undoes its own failure
            if made:
                undo.append(lambda: self.initiator.disconnect(target["iqn"], portals, made))
            if attached["masked"]:
                undo.append(lambda: self.array.release_import(attached["masked"], self.host.initiator))
            errors = []
            for step in undo:
                try:
                    step()
                except VssError as failed:
                    errors.append(failed.message)
            log.error("LocateLuns failed (%s); undone%s", e, f" but for: {'; '.join(errors)}" if errors else "")
            if errors and isinstance(e, VssError):
                raise vss_error(e.hresult, f"{e.message}; undoing it: {'; '.join(errors)}") from e
            if errors:
                e.add_note(f"undoing it: {'; '.join(errors)}")
            raise

    def _imported_shadows(self, records: list[dict], what: str, broken_too: bool = False) -> dict[str, dict]:
        """{name: LUN} of these records, all checked before anything changes: each a shadow LUN
        of this array (VSS_E_OBJECT_NOT_FOUND for an unknown serial; E_INVALIDARG for a
        production LUN, see _require_shadow) masked to this host (E_INVALIDARG otherwise). The
        same LUN twice is one."""
        inventory = self._inventory_by_serial()
        found: dict[str, dict] = {}
        for info in (record(d) for d in records):
            lun = self._lun_for(info, inventory)
            if lun is None:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                f"no LUN with serial {info.serial_number!r} on this array")
            self._require_shadow(lun, HResult.E_INVALIDARG, what, broken_too=broken_too)
            if not any(m["initiator"] == self.host.initiator for m in lun["masks"]):
                raise vss_error(HResult.E_INVALIDARG, f"{what} of {lun['name']}: not imported by "
                                                      f"this host ({self.host.initiator})")
            found[lun["name"]] = lun
        return found

    def release_luns(self, luns: list[dict]) -> dict:
        """shadowlun's own method: the requester's cleanup of an import that failed after
        LocateLuns succeeded (VSS leaves it to the requester). Each LUN's disk leaves this host
        (a logout when it was the session's last), then the array unmasks the LUNs from it and
        drops its claim, so that the set can be imported again; the shadow copies stay on the
        array. Only shadow LUNs masked to this host, all checked before anything changes; every
        step is tried, and failures are collected into one VSS_E_PROVIDER_VETO."""
        found = self._imported_shadows(luns, "ReleaseLuns")
        if not found:
            raise vss_error(HResult.E_INVALIDARG, "ReleaseLuns of no LUN")
        target, errors = self.array.target(), []
        for lun in found.values():
            try:
                self._release_on_host(lun, target)
            except VssError as e:
                errors.append(f"{lun['name']} on this host: {e.message}")
        try:
            released = self.array.release_import([lun["serial"] for lun in found.values()], self.host.initiator)
        except VssError as e:
            errors.append(f"on the array: {e.message}")
        if errors:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"releasing {', '.join(found)}: {'; '.join(errors)}")
        log.info("released %s from this host (the array unmasked them; sets unclaimed: %s)", ", ".join(found),
                 ", ".join(released.get("unclaimed", [])) or "none")
        return released

    def on_lun_empty(self, device: str, lun_info: dict) -> None:
        """The only regular trigger for deleting a shadow LUN: remove the host's disk, log out if
        it was the last one of the session, unmask it, and have the array delete it."""
        info = record(lun_info)
        lun = self._lun_for(info, self._inventory_by_serial())
        if lun is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"{device}: not a LUN of this array")
        self._require_shadow(lun, HResult.E_INVALIDARG, f"OnLunEmpty of {device}")
        self._release_on_host(lun, self.array.target())
        self.array.delete(lun["name"])

    @staticmethod
    def _require_shadow(lun: dict, code: HResult, what: str, broken_too: bool = False) -> None:
        """Production LUNs are never the object of a shadow-copy call (delete, mask, resync
        source): refused before anything on the host or the array changes. `broken_too`: a
        shadow copy already broken (an ordinary LUN taken from one) is accepted, so that a break
        can be run again."""
        if not (lun["kind"] == "snapshot" or (broken_too and lun["kind"] == "volume" and lun["origin"])):
            raise vss_error(code, f"{what} {lun['name']}: a {lun['kind']} LUN, not a shadow copy; "
                                  f"the provider acts only on shadow LUNs")

    def _release_on_host(self, lun: dict, target: dict) -> None:
        """Remove this host's disk of `lun` (if it has one), logging out when it was the
        session's last: before the array unmaps it (os-brick's order)."""
        disk = self.initiator.find_disk(lun["wwid"])
        self.initiator.disconnect(target["iqn"], target["portals"], [disk] if disk else [])

    def get_provider_capabilities(self) -> int:
        return int(ProviderCapabilities.VSS_PRV_CAPABILITY_COMPLIANT
                   | ProviderCapabilities.VSS_PRV_CAPABILITY_DIFFERENTIAL
                   | ProviderCapabilities.VSS_PRV_CAPABILITY_PLEX
                   | ProviderCapabilities.VSS_PRV_CAPABILITY_LUN_RESYNC)

    def on_lun_state_change(self, snapshot_luns: list[dict], original_luns: list[dict], flags: int,
                            revert_identity: bool = False) -> None:
        """Break (no flag, NOTIFY_READ_WRITE, DO_MASK_LUNS): the shadow LUNs become ordinary LUNs
        on the array, no longer members of their set; DO_MASK_LUNS also hides them from this host.
        `revert_identity` (shadowlun's part of BreakSnapshotSetEx's REVERT_IDENTITY_ALL, which
        only the array can do): first each LUN takes its original's page 0x83 identity, all or
        none, and this host's disks of them come back with it. The recovery notifications
        (around a resync) need nothing."""
        from provider.contract.vss_types import HardwareOptions as H

        if flags & (H.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY | H.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY):
            return
        if revert_identity and flags & H.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS:
            raise vss_error(HResult.E_INVALIDARG, "a break that masks the LUNs keeps no disk to revert the identity of")
        luns = list(self._imported_shadows(snapshot_luns, "OnLunStateChange", broken_too=True).values())
        target = self.array.target()
        if revert_identity:
            self._take_identities(luns, target)
        for lun in luns:
            if lun["kind"] == "snapshot":
                self.array.detach(lun["name"])
            if flags & H.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS:
                self._release_on_host(lun, target)
                self.array.unmask(lun["name"], self.host.initiator)

    def _take_identities(self, luns: list[dict], target: dict) -> None:
        """The array gives the LUNs their originals' identities (refused, changing nothing, when
        a host of theirs sees an original). The kernel keeps a disk's identity from its first
        scan, so this host's disks of them are removed first and scanned again after: with the
        new identity, or with the old one when the array refused."""
        for lun in luns:
            disk = self.initiator.find_disk(lun["wwid"])
            if disk:
                self.initiator.remove_disk(disk)
        try:
            taken = self.array.take_identity([lun["name"] for lun in luns])
        except VssError:
            try:
                self._scan_back(luns, target)
            except VssError as e:
                log.error("the disks of the LUNs whose identity was kept did not come back: %s", e)
            raise
        self._scan_back(taken, target)

    def _scan_back(self, luns: list[dict], target: dict) -> None:
        """These LUNs' disks again, found by their WWIDs (one scan pass, one bounded wait)."""
        self.initiator.connect(target["iqn"], target["portals"], self.host.chap_user, self.host.chap_secret,
                               {lun["lun_id"]: lun["wwid"] for lun in luns}, DISK_WAIT_S)

    def resync_luns(self, source_luns: list[dict], target_luns: list[dict], timeout: float = 3600,
                    wait: bool = True) -> dict:
        """Copy each shadow LUN onto its destination on the array (never through this host).
        ResyncLuns hands back an IVssAsync: with `wait=False` this returns its handle at once,
        for query_status; otherwise it waits for the end."""
        inventory = self._inventory_by_serial()
        pairs = []
        for s, t in zip(source_luns, target_luns, strict=True):
            src, dst = self._lun_for(record(s), inventory), self._lun_for(record(t), inventory)
            if src is None or dst is None:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "resync needs two LUNs of this array")
            self._require_shadow(src, HResult.VSS_E_PROVIDER_VETO, "ResyncLuns from")
            if not any(m["initiator"] == self.host.initiator for m in dst["masks"]):
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"ResyncLuns onto {dst['name']}: not a LUN of this host")
            if src["size_bytes"] > dst["size_bytes"]:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"ResyncLuns onto {dst['name']}: smaller than "
                                                             f"{src['name']}")
            pairs.append((src, dst))
        for taken in ({src["name"] for src, _ in pairs}, {dst["name"] for _, dst in pairs}):
            if len(taken) != len(pairs):  # all checked before any copy starts
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "ResyncLuns: a LUN appears twice")
        if {src["name"] for src, _ in pairs} & {dst["name"] for _, dst in pairs}:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, "ResyncLuns: a LUN is both a source and a destination")
        jobs = [self.array.start_resync(dst["name"], src["name"]) for src, dst in pairs]
        handle = str(uuid.uuid4())
        with self._lock:
            self._asyncs[handle] = [j["job_id"] for j in jobs]
        if not wait:
            return {"status": int(HResult.VSS_S_ASYNC_PENDING), "handle": handle}
        return poll(lambda: self.query_status(handle),
                    lambda status: status["status"] == int(HResult.VSS_S_ASYNC_PENDING), timeout, "resync")

    def query_status(self, handle: str) -> dict:
        """IVssAsync::QueryStatus of a resync: pending with bytes done, finished, or the failure."""
        with self._lock:
            job_ids = self._asyncs.get(handle)
        if job_ids is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no asynchronous operation {handle}")
        jobs = [self.array.job(j) for j in job_ids]
        failed = [j for j in jobs if j["state"] == "failed"]
        if failed:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"array jobs failed: {json.dumps(failed)}")
        pending = any(j["state"] == "running" for j in jobs)
        cancelled = any(j["state"] == "cancelled" for j in jobs)
        status = (HResult.VSS_S_ASYNC_PENDING if pending else HResult.VSS_S_ASYNC_CANCELLED if cancelled
                  else HResult.VSS_S_ASYNC_FINISHED)
        return {"status": int(status),
                "done_bytes": sum(j["done_bytes"] for j in jobs),
                "total_bytes": sum(j["total_bytes"] for j in jobs), "jobs": jobs}

    def cancel(self, handle: str) -> dict:
        """IVssAsync::Cancel of a resync or of a PLEX set's full copies: every job of it still
        running stops at its next chunk (a resync's destinations keep what was written so far, a
        full copy's new LV goes); then its status, as QueryStatus."""
        with self._lock:
            job_ids = self._asyncs.get(handle)
        if job_ids is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no asynchronous operation {handle}")
        for job_id in job_ids:
            self.array.cancel_job(job_id)
        return self.query_status(handle)

    def on_reuse_luns(self, snapshot_luns: list[dict], original_luns: list[dict]) -> None:
        raise vss_error(HResult.E_NOTIMPL, "OnReuseLuns is reserved")


def make() -> ShadowLunProvider:
    """Factory for the provider server (`--provider provider.hardware.hardware_provider:make`)."""
    from provider.hardware.array_client import ArrayAccess, ArrayClient

    from provider.hardware.iscsi import initiator_name

    access = ArrayAccess.load()
    if access.initiator is None or access.chap_user is None or access.chap_secret is None:
        raise vss_error(HResult.E_ACCESSDENIED, "this host's array access file has no host identity "
                                                "(initiator, CHAP): it is not a host's own access file")
    if access.initiator != initiator_name().lower():
        raise vss_error(HResult.E_ACCESSDENIED, f"the array knows this host as {access.initiator}, but its "
                                                f"initiator name is {initiator_name()}")
    return ShadowLunProvider(ArrayClient(access), transport(IscsiInitiator()),
                             HostIdentity(access.initiator, access.chap_user, access.chap_secret))


def transport(initiator: IscsiInitiator) -> Initiator:
    """Every portal and multipath maps when multipathd runs here (a path that fails costs a
    failover, and multipathd would claim the paths anyway, so they could not be mounted); one
    path otherwise, as a host without dm-multipath has always had."""
    from provider.hardware.multipath import Multipath, multipathd_running
    from provider.hardware.multipath_initiator import MultipathInitiator
    from provider.hardware.single_path import SinglePath

    if multipathd_running():
        log.info("multipathd runs: shadow LUNs are imported on every portal, as multipath maps")
        return MultipathInitiator(initiator, Multipath(initiator.runner, initiator.sysfs_root))
    return SinglePath(initiator)
