"""The coordinator: the VSS role on one host (spec sections 6-8).

One snapshot set in creation per host (a lock; the second requester gets
VSS_E_SNAPSHOT_SET_IN_PROGRESS). It resolves each volume to its LUNs and reads their records
from the devices (step 1a), picks the provider by AreLunsSupported, walks it through the creation
sequence, holds writes (FIFREEZE on every filesystem of the set) only around CommitSnapshots with
a 10 s watchdog, aborts the whole set on any failure, and writes the Backup Components Document.
Each set's progress is persisted before each step, so a set left by a crash of the coordinator
or the provider server is aborted at the next start (`recover()`).
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

from . import bcd
from .hresult import HResult, VssError, vss_error
from .lun_info import read_lun_info
from .vss_types import LunInformation, SnapshotContext, VolumeSnapshotAttributes

log = logging.getLogger("shadowlun.coordinator")

MAX_LUNS_PER_SET = 64
HOLD_WRITES_TIMEOUT_S = 10.0
STATE_DIR = Path("/var/lib/shadowlun/coordinator")
SYSFS_BLOCK = Path("/sys/block")


class Provider(Protocol):
    """A loaded provider as the coordinator calls it (provider.proxy over the provider server)."""

    provider_id: str

    def call(self, method: str, **params: Any) -> Any: ...


@dataclass(frozen=True)
class Volume:
    """One volume of the set: what the requester named, its LUNs (block names) and records."""

    name: str
    disks: tuple[str, ...]
    records: tuple[dict, ...]
    mountpoints: tuple[str, ...]


@dataclass
class SetProgress:
    """What is persisted for a set in creation (enough to abort it after a crash)."""

    set_id: str
    provider_id: str
    context: int
    state: str  # preparing | committing | committed | aborted | created
    volumes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class Coordinator:
    def __init__(self, providers: list[Provider], *, state_dir: Path = STATE_DIR,
                 resolve: Callable[[str], list[str]] | None = None,
                 filesystems_on: Callable[[list[str]], list[str]] | None = None,
                 hold_writes: Callable[..., Any] | None = None,
                 read_record: Callable[[str], dict] | None = None,
                 disk_size: Callable[[str], int] | None = None) -> None:
        if not (resolve and filesystems_on and hold_writes):
            from . import volumes as vol

            resolve = resolve or vol.resolve_volume
            filesystems_on = filesystems_on or vol.filesystems_on
            hold_writes = hold_writes or vol.hold_writes
        self.providers = providers
        self.state_dir = state_dir
        self.resolve, self.filesystems_on, self.hold_writes = resolve, filesystems_on, hold_writes
        self.read_record = read_record or (lambda disk: read_lun_info(SYSFS_BLOCK / disk).to_dict())
        self.disk_size = disk_size or (lambda disk: int((SYSFS_BLOCK / disk / "size").read_text()) * 512)

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
        path = self.state_dir / "sets" / f"{p.set_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(p.__dict__))
        os.replace(tmp, path)

    def recover(self) -> list[str]:
        """Abort every set a crash left between prepare and created; returns their ids."""
        aborted = []
        with self.creation_lock():
            for path in sorted((self.state_dir / "sets").glob("*.json")):
                p = SetProgress(**json.loads(path.read_text()))
                if p.state in ("preparing", "committing", "committed"):
                    provider = self._provider(p.provider_id)
                    self._abort(provider, p.set_id)
                    p.state = "aborted"
                    self._save(p)
                    aborted.append(p.set_id)
                    log.warning("aborted snapshot set %s left by a crash", p.set_id)
        return aborted

    @staticmethod
    def _abort(provider: Provider, set_id: str) -> None:
        """AbortSnapshots, once more after restarting a provider server that died (a fresh
        server holds nothing, yet still deletes what the array has of the set)."""
        try:
            provider.call("abort_snapshots", set_id=set_id)
            return
        except VssError as e:
            if e.hresult != HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR or not hasattr(provider, "start"):
                log.error("abort of %s: %s", set_id, e)
                return
            log.warning("abort of %s: provider server gone (%s); restarting it", set_id, e)
        try:
            provider.start()
            provider.call("abort_snapshots", set_id=set_id)
        except VssError as e:
            log.error("abort of %s after restarting the provider server: %s", set_id, e)

    def _provider(self, provider_id: str) -> Provider:
        for p in self.providers:
            if p.provider_id == provider_id:
                return p
        raise vss_error(HResult.VSS_E_PROVIDER_NOT_REGISTERED, f"provider {provider_id} is not registered")

    # -- import (spec 9.3) ------------------------------------------------------------------

    def _catalog(self, set_id: str) -> Path:
        return self.state_dir / "imports" / f"{set_id}.json"

    def import_document(self, xml: bytes) -> ImportResult:
        """Import a transportable set from its Backup Components Document: LocateLuns on the
        provider named in it (the array refuses a set another host imported), then
        FillInLunInfo of every disk that arrived, matched to the document's target records.
        A set is imported once on this host too (a catalog kept here)."""
        doc = bcd.from_xml(xml)
        if not is_transportable(doc.context):
            raise vss_error(HResult.VSS_E_NONTRANSPORTABLE_BCD,
                            f"snapshot set {doc.set_id} was not created transportable")
        with self.creation_lock():
            if self._catalog(doc.set_id).exists():
                done = json.loads(self._catalog(doc.set_id).read_text())
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"snapshot set {doc.set_id} was already imported on this host at {done['imported']}")
            provider = self._provider(doc.provider_id)
            wanted = [m.destination for s in doc.snapshots for m in s.luns]
            arrived = provider.call("locate_luns", luns=wanted)
            seen = {}
            for disk in arrived:
                info = provider.call("fill_in_lun_info", device=disk["device"], lun_info=None)
                if info["supported"]:
                    seen[disk["device"]] = LunInformation.from_dict(info["lun_info"])
            snapshots, missing = [], []
            for s in doc.snapshots:
                devices = []
                for m in s.luns:
                    want = LunInformation.from_dict(m.destination)
                    device = next((d for d, got in seen.items() if got.matches(want)), None)
                    devices.append(device)
                if all(devices):
                    snapshots.append({"snapshot_id": s.snapshot_id, "volume": s.volume_name, "devices": devices})
                else:
                    missing.append({"snapshot_id": s.snapshot_id, "volume": s.volume_name,
                                    "why": "a shadow LUN did not arrive or did not match its record"})
            if not snapshots:
                raise vss_error(HResult.VSS_E_NO_SNAPSHOTS_IMPORTED,
                                f"no shadow copy of set {doc.set_id} could be imported: {missing}")
            path = self._catalog(doc.set_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"set_id": doc.set_id, "fingerprint": bcd.fingerprint(doc),
                                        "imported": bcd.utc_timestamp(), "snapshots": snapshots}))
            status = HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED if missing else HResult.S_OK
            return ImportResult(doc.set_id, status, snapshots, missing)

    # -- creation --------------------------------------------------------------------------

    def _volume(self, name: str) -> Volume:
        disks = self.resolve(name)
        return Volume(name, tuple(disks), tuple(self.read_record(d) for d in disks),
                      tuple(self.filesystems_on(disks)))

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
               on_step: Callable[[str], None] = lambda s: None) -> tuple[bcd.BackupComponentsDocument, dict]:
        """Create one snapshot set of the volumes; returns its document and a report of the steps:
        {"seconds": {step: duration}, "wall": {step: (start, end) epoch seconds}}."""
        if not volume_names:
            raise vss_error(HResult.E_INVALIDARG, "no volume given")
        if len(set(volume_names)) != len(volume_names):
            raise vss_error(HResult.E_INVALIDARG, "a volume is named twice")
        with self.creation_lock():
            volumes = [self._volume(v) for v in volume_names]
            luns = {d for v in volumes for d in v.disks}
            if len(luns) > MAX_LUNS_PER_SET:
                raise vss_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
                                f"{len(luns)} LUNs in one set; at most {MAX_LUNS_PER_SET}")
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
                step("PreCommitSnapshots", lambda: provider.call("pre_commit_snapshots", set_id=set_id))
                progress.state = "committing"
                self._save(progress)
                mountpoints = [m for v in volumes for m in v.mountpoints]
                hold_started = time.time()
                with self.hold_writes(mountpoints, timeout=HOLD_WRITES_TIMEOUT_S):
                    frozen_at = time.time()
                    step("CommitSnapshots", lambda: provider.call("commit_snapshots", set_id=set_id))
                    thawing_at = time.time()
                thawed_at = time.time()
                timings["writes held"] = thawed_at - hold_started
                spans["writes held"] = (hold_started, thawed_at)
                spans["frozen"] = (frozen_at, thawing_at)
                progress.state = "committed"
                self._save(progress)
                step("PostCommitSnapshots", lambda: provider.call(
                    "post_commit_snapshots", set_id=set_id, snapshot_count=len(volumes)))
                targets = {v.name: step(f"GetTargetLuns {v.name}", lambda v=v: provider.call(
                    "get_target_luns", devices=[f"/dev/{d}" for d in v.disks], source_luns=list(v.records)))
                    for v in volumes}
                step("PreFinalCommitSnapshots", lambda: provider.call("pre_final_commit_snapshots", set_id=set_id))
                step("PostFinalCommitSnapshots", lambda: provider.call("post_final_commit_snapshots", set_id=set_id))
            except BaseException as e:
                log.error("snapshot set %s failed, aborting it: %s", set_id, e)
                self._abort(provider, set_id)
                progress.state = "aborted"
                self._save(progress)
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
                        extents=tuple(bcd.DiskExtent(i, 0, self.disk_size(d)) for i, d in enumerate(v.disks)),
                    ) for v in volumes),
            )
            return doc, {"seconds": timings, "wall": spans}


@dataclass(frozen=True)
class ImportResult:
    set_id: str
    status: HResult  # S_OK, or VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED
    snapshots: list[dict]  # {snapshot_id, volume, devices: [...]} of those imported
    missing: list[dict]    # {snapshot_id, volume, why} of those not


def is_transportable(context: int) -> bool:
    return bool(context & VolumeSnapshotAttributes.VSS_VOLSNAP_ATTR_TRANSPORTABLE)
