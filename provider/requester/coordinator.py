"""The coordinator: the VSS role on one host (spec sections 6-8).

One snapshot set in creation per host (a lock; the second requester gets
VSS_E_SNAPSHOT_SET_IN_PROGRESS). It resolves each volume to its LUNs and reads their records
from the devices (step 1a), picks the provider by AreLunsSupported, walks it through the creation
sequence, holds writes (FIFREEZE on every filesystem of the set) only around CommitSnapshots with
a 10 s watchdog (and a thaw guard process, for a coordinator that is killed), aborts the whole set on any failure, and writes the Backup Components Document.
Each set's progress is persisted before each step, so a set left by a crash of the coordinator
or the provider server is aborted at the next start (`recover()`).

The shadow-copy flags (GPT attributes, `provider.requester.shadow_flags`) are set on the originals right
after EndPrepare, captured by the commit, and cleared on the originals after it (spec 14.2), so
they travel with the shadow LUNs. After an import the set is in this host's catalog
(`provider.requester.catalog`), from which list, expose/unexpose, break and delete work (spec 10, 11, 14.4);
resync works from the document (spec 12, 14.5).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provider.requester import bcd
from provider.requester.catalog import Catalog, ImportedSet, ImportedSnapshot
from provider.durable import write_durably
from provider.contract.hresult import HResult, VssError, vss_error
from provider.commands import DEFAULT_RUNNER, Runner, run_checked
from provider.hardware.lun_info import read_lun_info
from provider.hardware.multipath import Multipath
from provider.hosting.proxy import post_commit_deadline
from provider.polling import poll
from provider.requester.holds import RequesterHolds, is_auto_release
from provider.requester.shadow_flags import (
    ORIGINALS_DIR,
    READ_ONLY,
    SHADOW_COPY,
    SHADOW_FLAGS,
    GptFlags,
    describe,
)
from provider.requester.volumes import Extent
from provider.contract.vss_types import (
    MAX_LUNS_PER_SET,
    HardwareOptions,
    LunInformation,
    SnapshotContext,
    VolumeSnapshotAttributes,
)

log = logging.getLogger("shadowlun.coordinator")

HOLD_WRITES_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 30
ASYNC_POLL_S = 0.5  # between two QueryStatus of a resync or of full copies
ASYNC_TIMEOUT_S = 3600.0  # a resync, or a set's full copies: as ResyncLuns' own wait
STATE_DIR = Path("/var/lib/shadowlun/coordinator")
SYSFS_BLOCK = Path("/sys/block")


class Provider(Protocol):
    """A loaded provider as the coordinator calls it (provider.hosting.proxy over the provider server)."""

    provider_id: str

    def call(self, method: str, timeout: float | None = None, /, **params: Any) -> Any:
        """`timeout`: the call's deadline in seconds (None: the method's default)."""


@dataclass(frozen=True)
class Volume:
    """One volume of the set: what the requester named, its LUNs (block names) and records."""

    name: str
    disks: tuple[str, ...]
    records: tuple[dict, ...]
    mountpoints: tuple[str, ...]
    extents: tuple[Extent, ...] = ()


@dataclass
class SetProgress:
    """What is persisted for a set in creation (enough to abort it after a crash)."""

    set_id: str
    provider_id: str
    context: int
    state: str  # preparing | committing | committed | aborted | created
    volumes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    flagged: list[list] = field(default_factory=list)  # [disk, partition, flags we added] on originals


class Coordinator:
    def __init__(self, providers: list[Provider], *, state_dir: Path = STATE_DIR,
                 resolve: Callable[[str], list[str]] | None = None,
                 filesystems_on: Callable[[list[str]], list[str]] | None = None,
                 hold_writes: Callable[..., Any] | None = None,
                 read_record: Callable[[str], dict] | None = None,
                 extents: Callable[[str], list[Extent]] | None = None,
                 flags: GptFlags | None = None, runner: Runner = DEFAULT_RUNNER,
                 list_disks: Callable[[], list[str]] | None = None,
                 originals_dir: Path = ORIGINALS_DIR) -> None:
        if not (resolve and filesystems_on and hold_writes and extents):
            from provider.requester import volumes as vol

            resolve = resolve or vol.resolve_volume
            filesystems_on = filesystems_on or vol.filesystems_on
            hold_writes = hold_writes or vol.hold_writes
            extents = extents or vol.volume_extents
        self.providers = providers
        self.state_dir = state_dir
        self.resolve, self.filesystems_on, self.hold_writes = resolve, filesystems_on, hold_writes
        self.read_record = read_record or (lambda disk: read_lun_info(SYSFS_BLOCK / disk).to_dict())
        self.extents = extents
        self.flags = flags or GptFlags(runner)
        self.runner = runner
        # multipath maps first: a LUN is found as its map where it has one, not as a path of it
        self.list_disks = list_disks or (lambda: [*Multipath().maps()] + sorted(
            (p.name for p in SYSFS_BLOCK.glob("sd*")), key=lambda n: (len(n), n)))
        self.catalog = Catalog(state_dir / "imports")
        self.holds = RequesterHolds(state_dir / "held")
        self.originals_dir = originals_dir

    # -- the host-wide creation lock and persisted progress --------------------------------

    @contextmanager
    def creation_lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "creation.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise vss_error(HResult.VSS_E_SNAPSHOT_SET_IN_PROGRESS,
                                "another snapshot set is being created on this host") from None
            yield

    def _save(self, p: SetProgress) -> None:
        write_durably(self.state_dir / "sets" / f"{p.set_id}.json", json.dumps(p.__dict__))

    def recover(self) -> list[str]:
        """Abort every set a crash left between prepare and created; returns their ids."""
        aborted = []
        with self.creation_lock():
            for path in sorted((self.state_dir / "sets").glob("*.json")):
                p = SetProgress(**json.loads(path.read_text()))
                if p.state in ("preparing", "committing", "committed"):
                    provider = self._provider(p.provider_id)
                    if not self._abort(provider, p.set_id):
                        continue  # still there: the next recover tries again
                    p.state = "aborted"
                    self._save(p)
                    aborted.append(p.set_id)
                    log.warning("aborted snapshot set %s left by a crash", p.set_id)
                if p.flagged:
                    self._unflag_originals(p)
            for hold in self.holds.all():
                if not hold.requester_alive():  # its requester died without releasing it
                    self.release(hold.set_id)
                    aborted.append(hold.set_id)
                    log.warning("released auto-release snapshot set %s of a requester that is gone",
                                hold.set_id)
        return aborted

    @staticmethod
    def _abort(provider: Provider, set_id: str) -> bool:
        """AbortSnapshots, once more after restarting a provider server that died or was killed
        hung (a fresh server holds nothing, yet still deletes what the array has of the set).
        False (logged) when it did not go through: the set stays for `recover`."""
        try:
            provider.call("abort_snapshots", set_id=set_id)
            return True
        except VssError as e:
            if e.hresult == HResult.VSS_E_OBJECT_NOT_FOUND:
                return True  # nothing of it left to abort
            if e.hresult != HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR or not hasattr(provider, "start"):
                log.error("abort of %s: %s", set_id, e)
                return False
            log.warning("abort of %s: provider server gone (%s); restarting it", set_id, e)
        try:
            provider.start()
            provider.call("abort_snapshots", set_id=set_id)
            return True
        except VssError as e:
            log.error("abort of %s after restarting the provider server: %s; `shadowlun recover` "
                      "tries again", set_id, e)
            return False

    def _provider(self, provider_id: str) -> Provider:
        for p in self.providers:
            if p.provider_id == provider_id:
                return p
        raise vss_error(HResult.VSS_E_PROVIDER_NOT_REGISTERED, f"provider {provider_id} is not registered")

    # -- import (spec 9.3) ------------------------------------------------------------------

    def import_document(self, xml: bytes) -> ImportResult:
        """Import a transportable set from its Backup Components Document: LocateLuns on the
        provider named in it (the array refuses a set another host imported, or a host it does not
        serve), whose answer carries the record of every disk that arrived (FillInLunInfo's, read
        in the same pass), matched to the document's target records. Each volume comes online read-only and hidden, as its flags say, and the set
        enters this host's catalog. A set is imported once on this host too."""
        doc = bcd.from_xml(xml)
        if not is_transportable(doc.context):
            raise vss_error(HResult.VSS_E_NONTRANSPORTABLE_BCD,
                            f"snapshot set {doc.set_id} was not created transportable")
        with self.creation_lock():
            return self._import(doc)

    def _import(self, doc: bcd.BackupComponentsDocument) -> ImportResult:
        """The import itself, under the creation lock: by import_document on any host, and by
        create on the creating host for a set that is not transportable (auto-import)."""
        done = self.catalog.get(doc.set_id)
        if done is not None:
            raise vss_error(HResult.VSS_E_BAD_STATE,
                            f"snapshot set {doc.set_id} was already imported on this host at {done.imported}")
        provider = self._provider(doc.provider_id)
        wanted = [m.destination for s in doc.snapshots for m in s.luns]
        arrived = provider.call("locate_luns", luns=wanted)  # undoes its own failure
        try:
            return self._take(doc, arrived)
        except VssError as e:
            raise self._released(provider, doc.set_id, wanted, e) from e  # what LocateLuns masked

    @staticmethod
    def _released(provider: Any, set_id: str, luns: list[dict], error: VssError) -> VssError:
        """The requester's cleanup of an import that failed after LocateLuns (VSS leaves it to
        the requester): the provider's ReleaseLuns takes the disks off this host and has the
        array unmask them and drop the claim, so the set can be imported again. Answers the
        error to raise: `error`, with the cleanup's own failure added if it failed."""
        try:
            provider.call("release_luns", luns=luns)
        except VssError as failed:
            log.error("import of set %s failed (%s); releasing its LUNs failed too: %s", set_id, error.message,
                      failed.message)
            return vss_error(error.hresult, f"{error.message}; releasing its LUNs: {failed.message}")
        log.warning("import of set %s failed (%s); its LUNs were released: nothing of it is left on this "
                    "host, and it can be imported again", set_id, error.message)
        return error

    def _take(self, doc: bcd.BackupComponentsDocument, arrived: list[dict]) -> ImportResult:
        """The disks LocateLuns brought, matched to the document's records: each volume online
        read-only and hidden, and the set in this host's catalog."""
        # Each disk comes with the record its provider read from sysfs (what FillInLunInfo answers).
        seen = {disk["device"]: LunInformation.from_dict(disk["lun_info"]) for disk in arrived}
        self._settle()
        snapshots, missing, entries = [], [], []
        for s in doc.snapshots:
            devices = []
            for m in s.luns:
                want = LunInformation.from_dict(m.destination)
                device = next((d for d, got in seen.items() if got.matches(want)), None)
                devices.append(device)
            entry = self._catalog_entry(s)
            if all(devices):
                volume = self._enforce(entry, devices)
                snapshots.append({"snapshot_id": s.snapshot_id, "volume": s.volume_name,
                                  "devices": devices, **volume})
                entries.append(entry)
            else:
                missing.append({"snapshot_id": s.snapshot_id, "volume": s.volume_name,
                                "why": "a shadow LUN did not arrive or did not match its record"})
        if not snapshots:
            raise vss_error(HResult.VSS_E_NO_SNAPSHOTS_IMPORTED,
                            f"no shadow copy of set {doc.set_id} could be imported: {missing}")
        self.catalog.save(self._catalog_set(doc, entries))
        status = HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED if missing else HResult.S_OK
        return ImportResult(doc.set_id, status, snapshots, missing)

    @staticmethod
    def _catalog_entry(s: bcd.SnapshotRecord) -> ImportedSnapshot:
        return ImportedSnapshot(
            snapshot_id=s.snapshot_id, volume=s.volume_name,
            luns=[m.destination for m in s.luns], sources=[m.source for m in s.luns],
            extents=[{"lun_index": e.lun_index, "offset_bytes": e.offset_bytes,
                      "length_bytes": e.length_bytes} for e in s.extents])

    @staticmethod
    def _catalog_set(doc: bcd.BackupComponentsDocument, entries: list[ImportedSnapshot]) -> ImportedSet:
        return ImportedSet(
            set_id=doc.set_id, provider_id=doc.provider_id, context=doc.context,
            originating_host=doc.originating_host, created=doc.created,
            imported=bcd.utc_timestamp(), fingerprint=bcd.fingerprint(doc), snapshots=entries)

    # -- the requester's end: auto-release sets go (spec 4: contexts) ---------------------------

    def release(self, set_id: str) -> dict:
        """The requester is done with an auto-release set: delete every shadow copy of it, on
        this host and on the array, whether the auto-import got to it or not. Idempotent."""
        hold, imported = self.holds.get(set_id), self.catalog.get(set_id)
        if hold is None and imported is None:
            return {"set_id": set_id, "released": []}
        if hold is not None:  # every copy of the document, those imported as they are now
            doc = bcd.from_xml(hold.document.encode())
            have = {e.snapshot_id: e for e in imported.snapshots} if imported else {}
            self.catalog.save(self._catalog_set(doc, [have.get(s.snapshot_id) or self._catalog_entry(s)
                                                      for s in doc.snapshots]))
        deleted = self.delete(set_id=set_id)["deleted"]
        self.holds.remove(set_id)
        return {"set_id": set_id, "released": deleted}

    def _settle(self) -> None:
        """Let udev finish with the disks that arrived (partitions, blkid, our rule), bounded."""
        self.runner(["udevadm", "settle", f"--timeout={SETTLE_TIMEOUT_S}"], check=False)

    # -- the volume of a shadow copy on this host ----------------------------------------------

    def _find_disk(self, record: dict) -> str | None:
        """This host's disk whose FillInLunInfo record matches `record` (page 0x83 identity)."""
        want = LunInformation.from_dict(record)
        for disk in self.list_disks():
            try:
                got = LunInformation.from_dict(self.read_record(disk))
            except VssError:
                continue  # not a disk whose identity can be read (gone, or not SCSI)
            if got.matches(want):
                return disk
        return None

    def _volume_on(self, disks: list[str], extents: list[dict]) -> tuple[str, str, list[int], int | None]:
        """The volume's block device on these disks, the disk holding it, the GPT partitions of
        the volume on each disk, and the volume's flags (None: no GPT, no flags)."""
        ext = extents[0] if extents else {"lun_index": 0, "offset_bytes": 0}
        disk = disks[ext["lun_index"]]
        part = self.flags.gpt_partition(disk, ext["offset_bytes"]) if ext["offset_bytes"] else None
        if ext["offset_bytes"] and part is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                            f"{disk} has no partition at byte {ext['offset_bytes']}, where the volume was")
        device = f"/dev/{self.flags.partition_device(disk, part.number)}" if part else f"/dev/{disk}"
        return device, disk, [part.number] if part else [], part.attrs if part else None

    def _enforce(self, entry: ImportedSnapshot, devices: list[str]) -> dict:
        """Read-only in the kernel for every shadow LUN of the volume, whatever udev did; returns
        the volume's device and the flags it carries."""
        disks = [d.removeprefix("/dev/") for d in devices]
        device, on, parts, attrs = self._volume_on(disks, entry.extents)
        if attrs is None or attrs & READ_ONLY:
            for disk in disks:
                self.flags.set_read_only(disk, parts if disk == on else [], True)
        return {"device": device, "flags": describe(attrs or 0)}

    def _located(self, entry: ImportedSnapshot, records: list[dict] | None = None) -> tuple[list[str], dict]:
        """The snapshot's disks on this host (by its LUNs' records, or `records`) and its volume;
        VSS_E_OBJECT_NOT_FOUND when a disk is not here (e.g. after a reboot without a session)."""
        disks = []
        for rec in entry.luns if records is None else records:
            disk = self._find_disk(rec)
            if disk is None:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                f"shadow copy {entry.snapshot_id}: its LUN (serial "
                                f"{rec.get('serial_number', '?')}) is not attached to this host")
            disks.append(disk)
        device, disk, parts, attrs = self._volume_on(disks, entry.extents)
        return disks, {"device": device, "disk": disk, "partitions": parts, "attrs": attrs}

    # -- list, expose, unexpose (spec 11.2) ------------------------------------------------------

    def list_sets(self) -> list[dict]:
        """The catalog with what is on this host now: devices, flags, exposure."""
        out = []
        for s in self.catalog.sets():
            snaps = []
            for e in s.snapshots:
                row = {"snapshot_id": e.snapshot_id, "volume": e.volume, "exposed": e.exposed,
                       "device": None, "flags": [], "read_only": None}
                try:
                    disks, vol = self._located(e)
                    row.update(device=vol["device"], disks=[f"/dev/{d}" for d in disks],
                               flags=describe(vol["attrs"] or 0), read_only=self._read_only(vol["device"]))
                except VssError as err:
                    row["problem"] = err.message
                snaps.append(row)
            out.append({"set_id": s.set_id, "provider_id": s.provider_id, "context": s.context,
                        "originating_host": s.originating_host, "created": s.created,
                        "imported": s.imported, "snapshots": snaps})
        return out

    @staticmethod
    def _read_only(device: str) -> bool:
        name = device.removeprefix("/dev/")
        try:
            return (Path("/sys/class/block") / name / "ro").read_text().strip() == "1"
        except OSError:
            return False

    def _run(self, argv: list[str], code: HResult = HResult.VSS_E_UNEXPECTED) -> str:
        return run_checked(self.runner, argv, code)

    def expose(self, snapshot_id: str, mount_dir: str | None = None) -> dict:
        """Mount the shadow copy read-only at an empty directory, or (no directory) present its
        block device. The data stays read-only either way (the kernel refuses writes)."""
        s, entry = self.catalog.require_snapshot(snapshot_id)
        if entry.exposed:
            raise vss_error(HResult.VSS_E_BAD_STATE, f"shadow copy {snapshot_id} is already exposed "
                                                     f"({entry.exposed}); unexpose it first")
        _, vol = self._located(entry)
        if mount_dir:
            target = Path(mount_dir)
            if not target.is_absolute():
                raise vss_error(HResult.E_INVALIDARG, f"{mount_dir}: give an absolute path")
            try:
                target.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                pass  # a file is in the way: refused just below, as the caller's error
            if not target.is_dir() or any(target.iterdir()) or os.path.ismount(target):
                raise vss_error(HResult.E_INVALIDARG, f"{mount_dir} is not an empty directory")
            fstype = self._run(["blkid", "-o", "value", "-s", "TYPE", vol["device"]],
                               HResult.VSS_E_OBJECT_NOT_FOUND).strip()
            # Never replay a journal: the device is read-only, and the copy is consistent as frozen.
            options = {"ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,norecovery"}.get(fstype, "ro")
            self._run(["mount", "-t", fstype, "-o", options, vol["device"], str(target)])
            entry.exposed = str(target)
        else:
            entry.exposed = "device"
        self.catalog.save(s)
        return {"snapshot_id": snapshot_id, "device": vol["device"], "exposed": entry.exposed}

    def unexpose(self, snapshot_id: str) -> dict:
        s, entry = self.catalog.require_snapshot(snapshot_id)
        if not entry.exposed:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"shadow copy {snapshot_id} is not exposed")
        was = entry.exposed
        self._unmount(entry)
        self.catalog.save(s)
        return {"snapshot_id": snapshot_id, "unexposed": was}

    def _unmount(self, entry: ImportedSnapshot) -> None:
        if entry.exposed and entry.exposed != "device" and os.path.ismount(entry.exposed):
            self._run(["umount", entry.exposed], HResult.VSS_E_BAD_STATE)
        entry.exposed = None

    # -- break (spec 11.1, 14.4) -----------------------------------------------------------------

    def break_set(self, set_id: str, writable: bool = False, mask: bool = False,
                  revert_identity: bool = False) -> dict:
        """The set leaves VSS: its LUNs become ordinary LUNs, no longer shadow copies (the array
        forgets them as such too). BreakSnapshotSetEx's flags: without any, the disks stay
        read-only and hidden (only the shadow-copy flag is cleared); `writable`
        (MAKE_READ_WRITE) clears every flag and makes them writable; `mask` (MASK_LUNS) hides the
        LUNs from this host instead (unmasked, the disks and session removed), keeping them on the
        array; `revert_identity` (REVERT_IDENTITY_ALL) gives each LUN its original's page 0x83
        identity (its disk ids are the original's already: a shadow copy is a copy of the bytes),
        refused with VSS_E_BREAK_REVERT_ID_FAILED when an original is on this host. All or
        nothing on this host: the disks keep their flags and exposures until the provider has
        agreed (a refusal leaves an intact shadow copy); a break that stops after that can be
        run again."""
        if mask and (writable or revert_identity):
            raise vss_error(HResult.E_INVALIDARG, "a break that masks the LUNs neither makes them writable "
                                                  "nor reverts their identity")
        s = self.catalog.require_set(set_id)
        provider = self._provider(s.provider_id)
        records = {e.snapshot_id: self._identity_now(e, revert_identity) for e in s.snapshots}
        located = [(e, *self._located(e, records[e.snapshot_id])) for e in s.snapshots]  # all, or nothing changes
        if revert_identity:
            ours = {d for _, disks, _ in located for d in disks}
            here = [e.snapshot_id for e in s.snapshots for src in e.sources if self._find_disk(src) not in ours | {None}]
            if here:
                raise vss_error(HResult.VSS_E_BREAK_REVERT_ID_FAILED,
                                f"the original LUN of shadow copy {', '.join(here)} is on this host: two disks "
                                f"with one identity; nothing was reverted")
        clear = SHADOW_FLAGS if writable else SHADOW_COPY
        notify = (HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE if writable
                  else HardwareOptions.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS if mask else 0)
        if mask or revert_identity:  # the provider removes the disks: nothing here may still use them
            for entry, disks, _ in located:
                self._require_unused(entry, disks)
        provider.call("on_lun_state_change", snapshot_luns=[r for e in s.snapshots for r in records[e.snapshot_id]],
                      original_luns=[r for e in s.snapshots for r in e.sources], flags=int(notify),
                      **({"revert_identity": True} if revert_identity else {}))
        if revert_identity:  # the same LUNs, on new disks that answer with the originals' identity
            located = [(e, *self._located(e, e.sources)) for e in s.snapshots]
        out = []
        for entry, disks, vol in located:
            if not mask:
                self._unmount(entry)
                for disk in disks:
                    self.flags.set_read_only(disk, vol["partitions"] if disk == vol["disk"] else [], False)
                    self.flags.clear(disk, None, clear)
                    if not writable:
                        self.flags.set_read_only(disk, vol["partitions"] if disk == vol["disk"] else [], True)
            out.append({"snapshot_id": entry.snapshot_id, "volume": entry.volume,
                        "device": None if mask else vol["device"]})
        self.catalog.remove(set_id)
        return {"set_id": set_id, "writable": writable, "masked": mask, "identity_reverted": revert_identity,
                "volumes": out}

    def _identity_now(self, entry: ImportedSnapshot, revert_identity: bool) -> list[dict]:
        """The records the snapshot's disks answer with: its LUNs' own, or, for a break reverting
        identities that an earlier run took past the provider, the originals'."""
        if revert_identity and all(self._find_disk(r) is None for r in entry.luns) \
                and all(self._find_disk(r) is not None for r in entry.sources):
            return entry.sources
        return entry.luns

    def _require_unused(self, entry: ImportedSnapshot, disks: list[str]) -> None:
        """Refuse (VSS_E_VOLUME_IN_USE) a shadow copy that is exposed or mounted here."""
        used = ([entry.exposed] if entry.exposed else []) + self.filesystems_on(disks)
        if used:
            raise vss_error(HResult.VSS_E_VOLUME_IN_USE,
                            f"shadow copy {entry.snapshot_id} is in use here ({', '.join(used)}): "
                            f"unexpose or unmount it first")

    # -- delete (spec 10, 14.4) ------------------------------------------------------------------

    def delete(self, snapshot_id: str | None = None, set_id: str | None = None,
               everything: bool = False) -> dict:
        """Delete shadow copies one by one (one snapshot, a set, or all of this host's): unexpose,
        then for each shadow LUN no other copy uses, FillInLunInfo and OnLunEmpty (the provider
        removes the disk, logs out when it was the last, and the array deletes the LUN). Stops at
        the first failure, naming the copy not deleted; the catalog keeps what was not deleted."""
        if sum(x is not None and x is not False for x in (snapshot_id, set_id, everything)) != 1:
            raise vss_error(HResult.E_INVALIDARG, "delete one snapshot, one set, or all")
        if snapshot_id:
            chosen = [(self.catalog.require_snapshot(snapshot_id)[0].set_id, snapshot_id)]
        elif set_id:
            chosen = [(set_id, e.snapshot_id) for e in self.catalog.require_set(set_id).snapshots]
        else:
            chosen = [(s.set_id, e.snapshot_id) for s in self.catalog.sets() for e in s.snapshots]
        deleted = []
        for sid, snap_id in chosen:
            try:
                self._delete_one(sid, snap_id)
            except VssError as e:
                raise vss_error(e.hresult, f"deleted {len(deleted)} shadow copies; {snap_id} was not "
                                           f"deleted: {e.message}") from e
            deleted.append(snap_id)
        return {"deleted": deleted, "non_deleted": None}

    def _delete_one(self, set_id: str, snapshot_id: str) -> None:
        s = self.catalog.require_set(set_id)
        entry = s.snapshot(snapshot_id)
        assert entry is not None
        provider = self._provider(s.provider_id)
        if hasattr(provider, "start"):  # a server killed as hung (a cleanup after it) starts anew
            provider.start()
        self._unmount(entry)
        self.catalog.save(s)
        others = [r for o in self.catalog.sets() for e in o.snapshots
                  if not (o.set_id == set_id and e.snapshot_id == snapshot_id) for r in e.luns]
        for rec in entry.luns:
            if any(LunInformation.from_dict(rec).matches(LunInformation.from_dict(o)) for o in others):
                continue  # the LUN still holds another copy
            disk = self._find_disk(rec)
            if disk is not None:
                provider.call("fill_in_lun_info", device=f"/dev/{disk}", lun_info=rec)
                self.flags.set_read_only(disk, [], False)
            try:
                provider.call("on_lun_empty", device=f"/dev/{disk}" if disk else "", lun_info=rec)
            except VssError as e:
                if e.hresult != HResult.VSS_E_OBJECT_NOT_FOUND or disk is not None:
                    raise
                # No disk here and no LUN on the array: a delete that stopped after its
                # OnLunEmpty (or the array's admin) reclaimed it already. Nothing is left.
                log.warning("shadow copy %s: its LUN (serial %s) is gone from the array and from "
                            "this host; forgetting it", snapshot_id, rec.get("serial_number"))
        s.snapshots = [e for e in s.snapshots if e.snapshot_id != snapshot_id]
        if s.snapshots:
            self.catalog.save(s)
        else:
            self.catalog.remove(set_id)

    # -- resync (spec 12, 14.5) ------------------------------------------------------------------

    def resync(self, xml: bytes, snapshot_ids: list[str] | None = None,
               on_progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
        """LUN resync: each chosen shadow copy's LUNs are copied back onto the original LUNs on the
        array, which must be attached to this host and not in use. Afterwards the partition tables
        are re-read and the flags the copy carried are cleared on the originals."""
        doc = bcd.from_xml(xml)
        chosen = list(doc.snapshots)
        if snapshot_ids:
            known = {s.snapshot_id: s for s in doc.snapshots}
            unknown = [i for i in snapshot_ids if i not in known]
            if unknown:
                raise vss_error(HResult.VSS_E_SNAPSHOT_NOT_IN_SET,
                                f"not in snapshot set {doc.set_id}: {', '.join(unknown)}")
            chosen = [known[i] for i in snapshot_ids]
        provider = self._provider(doc.provider_id)
        shadows = [m.destination for s in chosen for m in s.luns]
        originals = [m.source for s in chosen for m in s.luns]
        disks = []
        for s in chosen:
            for m in s.luns:
                disk = self._find_disk(m.source)
                if disk is None:
                    raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                    f"the original LUN of {s.volume_name} (serial "
                                    f"{m.source.get('serial_number', '?')}) is not attached to this host")
                in_use = self.filesystems_on([disk])
                if in_use:
                    raise vss_error(HResult.VSS_E_VOLUME_IN_USE,
                                    f"{s.volume_name} (/dev/{disk}) is mounted at {', '.join(in_use)}; "
                                    "unmount it before the resync")
                disks.append(disk)
        provider.call("on_lun_state_change", snapshot_luns=shadows, original_luns=originals,
                      flags=int(HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY))
        started = provider.call("resync_luns", source_luns=shadows, target_luns=originals, wait=False)
        status = self._wait_async(provider, started["handle"], on_progress, "resync")
        if status["status"] == int(HResult.VSS_S_ASYNC_CANCELLED):
            raise vss_error(HResult.E_ABORT, f"the resync of set {doc.set_id} was cancelled: the original "
                                             f"LUNs hold part of the copy; resync again")
        for disk in disks:
            # The host's cached blocks and partition table are those of before: drop them, clear the
            # copy's flags on the original (it is no shadow copy), then re-read the partitions.
            self._run(["blockdev", "--flushbufs", f"/dev/{disk}"])
            self.flags.set_read_only(disk, [], False)
            self.flags.clear(disk, None, SHADOW_FLAGS)
            self._run(["blockdev", "--rereadpt", f"/dev/{disk}"])
        self._settle()
        provider.call("on_lun_state_change", snapshot_luns=shadows, original_luns=originals,
                      flags=int(HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY))
        return {"set_id": doc.set_id, "resynced": [{"snapshot_id": s.snapshot_id, "volume": s.volume_name}
                                                   for s in chosen], "disks": [f"/dev/{d}" for d in disks]}

    @staticmethod
    def _wait_async(provider: Provider, handle: str, on_progress: Callable[[int, int], None], what: str) -> dict:
        """QueryStatus until the array's jobs behind `handle` (a resync, a set's full copies)
        end, bounded by ASYNC_TIMEOUT_S. Interrupted (Ctrl-C, SIGTERM, the deadline), they are
        cancelled on the array before the error goes up."""
        try:
            return poll(lambda: provider.call("query_status", handle=handle),
                        lambda status: status["status"] == int(HResult.VSS_S_ASYNC_PENDING),
                        ASYNC_TIMEOUT_S, f"the {what}", interval_s=ASYNC_POLL_S,
                        on_each=lambda status: on_progress(status["done_bytes"], status["total_bytes"]))
        except BaseException as e:
            try:
                provider.call("cancel", handle=handle)
            except VssError as cancel_error:
                log.error("%s %s: cancel failed: %s", what, handle, cancel_error)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise vss_error(HResult.E_ABORT, f"{what} interrupted and cancelled on the array") from e
            raise

    # -- creation --------------------------------------------------------------------------

    def _volume(self, name: str) -> Volume:
        disks = self.resolve(name)
        return Volume(name, tuple(disks), tuple(self.read_record(d) for d in disks),
                      tuple(self.filesystems_on(disks)), tuple(self.extents(name)))

    def _flaggable(self, v: Volume, transportable: bool) -> list[tuple[str, int]]:
        """(disk, GPT partition) of each extent of the volume, which will carry the flags. A
        transportable volume must have them all (spec 9.3: it comes online read-only and hidden
        because of them); otherwise a volume without GPT simply gets none."""
        found, why = [], ""
        for e in v.extents:
            parts = self.flags.partitions(e.disk) if e.partition is not None else None
            if e.partition is None:
                why = f"it is on the whole disk {e.disk}, with no partition table"
            elif parts is None:
                why = f"{e.disk} has no GPT (an MBR has no documented place for them)"
            elif e.partition not in parts:
                why = f"{e.disk}'s partition {e.partition} is not in its GPT"
            else:
                found.append((e.disk, e.partition))
                continue
            if transportable:
                raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED,
                                f"{v.name}: a transportable shadow copy carries its read-only and hidden "
                                f"flags in the GPT attributes of the volume's partition, but {why}")
            return []
        return found

    def _flag_originals(self, progress: SetProgress, targets: list[tuple[str, int]]) -> None:
        """Set the shadow-copy flags on the originals so the commit captures them; what we add is
        persisted first, so a crash leaves nothing that `recover` cannot clear. The udev rule is
        told to leave these disks alone meanwhile (a marker per disk in `originals_dir`).
        Each new table makes udev re-read the disk; that is waited for here, before the hold:
        left to run beside the commit, it took most of the host's CPU while writes were held
        (16 LUNs on the lab: writes held 2.1 s with it, 0.4 s without)."""
        for disk, number in targets:
            current = (self.flags.partitions(disk) or {}).get(number)
            added = SHADOW_FLAGS & ~(current.attrs if current else 0)
            if added:
                progress.flagged.append([disk, number, added])
        self._save(progress)
        if progress.flagged:
            self.originals_dir.mkdir(parents=True, exist_ok=True)
        for disk, number, added in progress.flagged:
            (self.originals_dir / disk).touch()
            self.flags.set(disk, [number], added)
        if progress.flagged:
            self._settle()

    def _unflag_originals(self, progress: SetProgress) -> None:
        """Clear what `_flag_originals` added, let udev finish with the disks, and make sure the
        originals are writable (a reboot inside the window brings them back read-only)."""
        errors = []
        for disk, number, added in progress.flagged:
            try:
                self.flags.set_read_only(disk, [number], False)
                self.flags.clear(disk, [number], added)
            except VssError as e:
                errors.append(f"{disk} partition {number}: {e.message}")
        if errors:
            raise vss_error(HResult.VSS_E_UNEXPECTED, "clearing the shadow-copy flags on the originals "
                                                      f"failed: {'; '.join(errors)}")
        self._settle()
        for disk, number, _ in progress.flagged:
            self.flags.set_read_only(disk, [number], False)
            (self.originals_dir / disk).unlink(missing_ok=True)
        progress.flagged = []
        self._save(progress)

    def _select(self, volumes: list[Volume], context: int) -> Provider:
        """The first provider that supports every volume (step 1b); none ⇒ VOLUME_NOT_SUPPORTED."""
        reasons = []
        for provider in self.providers:
            answers = [provider.call("are_luns_supported", context=context,
                                     devices=[f"/dev/{d}" for d in v.disks], luns=list(v.records))
                       for v in volumes]
            if all(a["supported"] for a in answers):
                return provider
            reasons += [a.get("reason", "") for a in answers if not a["supported"]]
        raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED,
                        "no provider supports these volumes in context "
                        f"{context:#x}: {'; '.join(r for r in reasons if r) or 'unsupported'}")

    def create(self, volume_names: list[str], context: int = int(SnapshotContext.VSS_CTX_BACKUP),
               on_step: Callable[[str], None] = lambda s: None,
               on_progress: Callable[[int, int], None] = lambda done, total: None,
               ) -> tuple[bcd.BackupComponentsDocument, dict]:
        """Create one snapshot set of the volumes; returns its document and a report of the steps:
        {"seconds": {step: duration}, "wall": {step: (start, end) epoch seconds}}. A PLEX set's
        full copies are waited for after PostCommitSnapshots, their bytes told to on_progress."""
        if not volume_names:
            raise vss_error(HResult.E_INVALIDARG, "no volume given")
        if len(set(volume_names)) != len(volume_names):
            raise vss_error(HResult.E_INVALIDARG, "a volume is named twice")
        with self.creation_lock():
            if len(set(volume_names)) > bcd.MAX_SNAPSHOTS:  # the document's limit, before anything is made
                raise vss_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                                f"{len(set(volume_names))} volumes in one set; at most {bcd.MAX_SNAPSHOTS}")
            volumes = [self._volume(v) for v in volume_names]
            luns = {d for v in volumes for d in v.disks}
            if len(luns) > MAX_LUNS_PER_SET:
                raise vss_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                                f"{len(luns)} LUNs in one set; at most {MAX_LUNS_PER_SET}")
            flaggable = [t for v in volumes for t in self._flaggable(v, is_transportable(context))]
            provider = self._select(volumes, context)
            set_id = str(uuid.uuid4())
            snapshot_ids = {v.name: str(uuid.uuid4()) for v in volumes}
            progress = SetProgress(set_id, provider.provider_id, context, "preparing", volume_names)
            self._save(progress)
            timings: dict[str, float] = {}
            spans: dict[str, tuple[float, float]] = {}  # wall-clock start/end, for checks on the host

            def step(name: str, fn: Callable[[], Any]) -> Any:
                on_step(name)
                started, wall = time.monotonic(), time.time()
                out = fn()
                timings[name] = time.monotonic() - started
                spans[name] = (wall, time.time())
                return out

            try:
                for v in volumes:
                    step(f"BeginPrepareSnapshot {v.name}", lambda v=v: provider.call(
                        "begin_prepare_snapshot", set_id=set_id, snapshot_id=snapshot_ids[v.name],
                        context=context, devices=[f"/dev/{d}" for d in v.disks], luns=list(v.records)))
                step("EndPrepareSnapshots", lambda: provider.call("end_prepare_snapshots", set_id=set_id))
                step("flag originals", lambda: self._flag_originals(progress, flaggable))
                step("PreCommitSnapshots", lambda: provider.call("pre_commit_snapshots", set_id=set_id))
                progress.state = "committing"
                self._save(progress)
                mountpoints = [m for v in volumes for m in v.mountpoints]
                hold = self.hold_writes(mountpoints, timeout=HOLD_WRITES_TIMEOUT_S)  # starts the thaw guard
                hold_started = time.time()
                with hold:
                    frozen_at = time.time()
                    step("CommitSnapshots", lambda: provider.call("commit_snapshots", set_id=set_id))
                    thawing_at = time.time()
                thawed_at = time.time()
                timings["writes held"] = thawed_at - hold_started
                spans["writes held"] = (hold_started, thawed_at)
                spans["frozen"] = (frozen_at, thawing_at)
                progress.state = "committed"
                self._save(progress)
                step("unflag originals", lambda: self._unflag_originals(progress))
                step("PostCommitSnapshots", lambda: provider.call(
                    "post_commit_snapshots", post_commit_deadline(len(luns)), set_id=set_id,
                    snapshot_count=len(volumes)))
                if context & VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_PLEX:
                    status = step("full copies (plex)", lambda: self._wait_async(
                        provider, set_id, on_progress, "full copy"))
                    if status["status"] != int(HResult.VSS_S_ASYNC_FINISHED):
                        raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"the full copies of set {set_id} "
                                                                     f"were cancelled")
                targets = {v.name: step(f"GetTargetLuns {v.name}", lambda v=v: provider.call(
                    "get_target_luns", devices=[f"/dev/{d}" for d in v.disks], source_luns=list(v.records)))
                    for v in volumes}
                step("PreFinalCommitSnapshots", lambda: provider.call("pre_final_commit_snapshots", set_id=set_id))
                step("PostFinalCommitSnapshots", lambda: provider.call("post_final_commit_snapshots", set_id=set_id))
            except BaseException as e:
                log.error("snapshot set %s failed, aborting it: %s", set_id, e)
                if self._abort(provider, set_id):
                    progress.state = "aborted"
                    self._save(progress)
                if progress.flagged:
                    try:
                        self._unflag_originals(progress)
                    except VssError as flag_error:  # keep the first error; `recover` retries this
                        log.error("snapshot set %s: %s", set_id, flag_error)
                raise
            progress.state = "created"
            self._save(progress)
            doc = bcd.BackupComponentsDocument(
                set_id=set_id, context=context & 0xFFFFFFFF, attributes=context & 0xFFFFFFFF,
                provider_id=provider.provider_id, originating_host=socket.gethostname(),
                created=bcd.utc_timestamp(),
                snapshots=tuple(
                    bcd.SnapshotRecord(
                        snapshot_id=snapshot_ids[v.name], volume_name=v.name, attributes=context & 0xFFFFFFFF,
                        luns=tuple(bcd.LunMapping(source=s, destination=t) for s, t in zip(v.records, targets[v.name])),
                        extents=tuple(bcd.DiskExtent(v.disks.index(e.disk), e.offset_bytes, e.length_bytes)
                                      for e in v.extents),
                    ) for v in volumes),
            )
            if not is_transportable(context):
                # Auto-import on this host (spec 4): the set is this host's own, never moved.
                # An auto-release set is held first, so that whatever ends the requester from
                # now on, it is released (by the requester, or by `recover`).
                if is_auto_release(context):
                    self.holds.add(set_id, bcd.to_xml(doc))
                try:
                    imported = step("auto-import", lambda: self._import(doc))
                    if imported.missing:
                        raise vss_error(HResult.VSS_E_NO_SNAPSHOTS_IMPORTED,
                                        f"auto-import of set {set_id}: {imported.missing}")
                except BaseException as e:
                    log.error("snapshot set %s: auto-import failed, deleting the set: %s", set_id, e)
                    if not is_auto_release(context):  # release works from a hold's document
                        self.holds.add(set_id, bcd.to_xml(doc))
                    try:
                        self.release(set_id)
                    except VssError as cleanup:  # the set stays held: `recover` deletes it
                        if not isinstance(e, VssError):
                            raise
                        raise vss_error(e.hresult, f"{e.message}; deleting the set: {cleanup.message} "
                                                   f"(`shadowlun recover` tries again)") from e
                    raise
            return doc, {"seconds": timings, "wall": spans}


@dataclass(frozen=True)
class ImportResult:
    set_id: str
    status: HResult  # S_OK, or VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED
    snapshots: list[dict]  # {snapshot_id, volume, devices: [...]} of those imported
    missing: list[dict]    # {snapshot_id, volume, why} of those not


def is_transportable(context: int) -> bool:
    return bool(context & VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE)
