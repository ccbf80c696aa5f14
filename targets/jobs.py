"""Long-running jobs on the array: full copies (of a LUN, or PLEX of a set's shadow LUNs) and
resyncs, each in a thread with its progress in the store, cancelled at its next chunk."""
from __future__ import annotations

import logging
import threading
import time
import uuid

from provider.contract.hresult import HResult, vss_error

from . import names
from .authority import ADMIN, Caller, denied
from .block_copy import copy_blocks
from .context import ArrayContext, ArrayPart
from .faults import crash_point
from .luns import KIND_TAG, SET_TAG, SNAPSHOT_TAG, Luns
from .names import SNAPSHOT_PREFIX, VOLUME_PREFIX
from .snapshot_sets import SnapshotSets
from .store import Job, Lun

log = logging.getLogger("shadowlun.array")

JOB_CANCEL_WAIT_S = 30.0  # a cancelled job stops at its next chunk (CHUNK bytes), well within this
PLEX_PREFIX = "plex-"  # a full copy being made of a shadow LUN, before it takes the LUN's place


class JobCancelled(Exception):
    """Raised inside a job's copy when its requester cancelled it."""


class Jobs(ArrayPart):
    """Copies and resyncs as jobs, each in a thread of its own."""

    def __init__(self, ctx: ArrayContext, luns: Luns, sets: SnapshotSets) -> None:
        super().__init__(ctx)
        self.luns, self.sets = luns, sets
        self.threads: dict[str, threading.Thread] = {}  # job id -> its thread (a reconcile spares live ones)
        self._cancels: dict[str, threading.Event] = {}  # job id -> set when its requester cancels it

    def live(self) -> set[str]:
        """Jobs of this process still running (a confirm reconciles while the agent serves)."""
        return {job_id for job_id, t in self.threads.items() if t.is_alive()}

    def plex_set(self, set_id: str, caller: Caller = ADMIN) -> list[Job]:
        """PLEX: each shadow LUN of a committed set becomes a full copy, independent of its
        origin. A job per LUN copies the snapshot (the bytes of the freeze point) into a new thin
        LV, which then takes the snapshot's place under the same LUN name and serial: hosts see
        the same LUN, now a plex. Before the set is handed out, by its owner; the whole size of
        the copies is reserved in the pool."""
        with self.ctx.lock:
            s = self.sets.get(set_id, caller, owner_only=True)
            if s.state != "committed" or s.handed_out is not None:
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {s.set_id} is {s.state}"
                                f"{', handed out' if s.handed_out else ''}: full copies are made before")
            luns = [lun for m in s.members if (lun := self.store.lun(m.name)) is not None and lun.set_id == s.set_id]
            self.luns.check_pool(need_bytes=sum(lun.size_bytes for lun in luns))
            jobs = []
            for lun in luns:
                plex = PLEX_PREFIX + lun.name.removeprefix(SNAPSHOT_PREFIX)
                self.luns.require_no_volume(plex)
                job = self.store.add_job(uuid.uuid4().hex, "copy", lun.name, plex, lun.size_bytes,
                                         caller.initiator)
                self._make_copy_volume(job, plex, lun.size_bytes)
                self._run_job(job, lambda progress, lun=lun, plex=plex: self._plex(lun, plex, progress))
                jobs.append(job)
            return jobs

    def _plex(self, lun: Lun, plex: str, progress) -> None:
        """Copy, then swap. The finished copy is first tagged as the snapshot it replaces: from
        then on a crash is finished by the reconcile (finish_plex), not undone."""
        copy_blocks(self._active_device(lun), self.backend.device(plex), lun.size_bytes, progress)
        with self.ctx.lock:
            if self.store.masks(lun.name):
                raise RuntimeError(f"{lun.name} was masked to a host during its full copy")
            self.backend.retag(plex, [f"{KIND_TAG}=copy"],
                           {KIND_TAG: "snapshot", SET_TAG: lun.set_id, SNAPSHOT_TAG: lun.snapshot_id})
            crash_point("plex-copied")
            self.finish_plex(lun, plex)

    def finish_plex(self, lun: Lun, plex: str) -> None:
        """The swap of a finished full copy: the snapshot LV goes (its export first, so LIO
        lets go of it), the copy is renamed to it and exported again with the same serial if
        the snapshot was. Each step can be run again after a crash."""
        exported = lun.name in self.lio.exports()
        if exported:
            self.lio.unexport(lun.name)
        if self.backend.volume(lun.name) is not None:
            self.backend.remove(lun.name)
        crash_point("plex-swap")
        self.backend.rename(plex, lun.name)
        if exported:
            self.lio.export(lun.name, self.backend.device(lun.name), lun.exported_serial)
        log.info("%s is a full copy now (plex)", lun.name)

    @staticmethod
    def is_finished_plex(lun: Lun | None, lv) -> bool:
        """Whether the volume `lv` is a full copy made for `lun` to the end (tagged as its snapshot)."""
        return (lun is not None and lv is not None and lv.name.startswith(PLEX_PREFIX)
                and lun.snapshot_id is not None and lv.tag(SNAPSHOT_TAG) == lun.snapshot_id)

    def start_copy(self, source: str, target: str, caller: Caller = ADMIN) -> Job:
        """A full copy of `source` into a new volume `target`, made on the array. The copy is
        the caller's (masked to nobody); the whole size is reserved in the pool until it ends."""
        names.lun_name(target, "copy name")
        lv = VOLUME_PREFIX + target
        with self.ctx.lock:
            src = self.luns.get(source, caller)
            self.luns.require_use(src, caller, "copy")
            if self.store.lun(lv) is not None:
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a LUN named {target!r} exists")
            self.luns.require_no_volume(lv)
            self.luns.check_size(src.size_bytes, "copy size")
            self.luns.check_pool(need_bytes=src.size_bytes)
            lun = self.store.add_lun(lv, "copy", src.size_bytes, self.luns.new_serial(), origin=src.name,
                                     holder=caller.initiator)
            job = self.store.add_job(uuid.uuid4().hex, "copy", src.name, lv, src.size_bytes, caller.initiator)
            self._make_copy_volume(job, lv, src.size_bytes)
            self._run_job(job, lambda progress: self._copy_then_export(src, lun, progress))
            return job

    def _make_copy_volume(self, job: Job, lv: str, size_bytes: int) -> None:
        """The volume a copy job writes into; if it cannot be made, whatever of it (and of its
        store row) exists goes, the job is failed, and the caller gets the reason."""
        try:
            self.backend.create_volume(lv, size_bytes, {KIND_TAG: "copy"})
        except Exception as e:
            self.luns.destroy(lv)
            self.store.update_job(job.job_id, state="failed", error=str(e))
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not create {lv}: {e}") from e

    def _unmapped_bytes(self, lun: Lun) -> int:
        """What writing every block of the LUN could still take from the pool."""
        lv = self.backend.volume(lun.name)
        return lun.size_bytes - int(lun.size_bytes * (lv.data_percent or 0.0) / 100) if lv else lun.size_bytes

    def _active_device(self, lun: Lun) -> str:
        """The LUN's device node, activating it first (snapshots are made inactive)."""
        lv = self.backend.volume(lun.name)
        if lv is not None and not lv.active:
            self.backend.activate(lun.name)
        return self.backend.device(lun.name)

    def _copy_then_export(self, src: Lun, lun: Lun, progress) -> None:
        self._active_device(src)
        copy_blocks(self.backend.device(src.name), self.backend.device(lun.name), src.size_bytes, progress)
        crash_point("copy-before-export")
        self.lio.export(lun.name, self.backend.device(lun.name), lun.serial)
        self.store.set_lun_state(lun.name, "ready")

    def start_resync(self, snapshot: str, target: str, caller: Caller = ADMIN) -> Job:
        """Revert `target` (usually the snapshot's origin) to the snapshot's bytes, on the array;
        only differing chunks are written. The source is a shadow copy; a host resyncs only
        onto its own LUNs, from snapshots it may use. Hosts must have the target unmounted (the
        coordinator's job); the array refuses a target already in a running job, and a pool
        that could not take the target's unwritten blocks."""
        with self.ctx.lock:
            snap, dst = self.luns.get(snapshot, caller), self.luns.get(target, caller)
            self.ctx.require_trusted(f"resync of {target}")
            if snap.kind != "snapshot":
                raise vss_error(HResult.E_INVALIDARG, f"{snapshot} is a {snap.kind}, not a shadow copy: "
                                                      f"a resync copies a shadow copy back")
            if snap.name == dst.name:
                raise vss_error(HResult.E_INVALIDARG, f"{snapshot} cannot be resynced onto itself")
            self.luns.require_use(dst, caller, "resync onto")
            if snap.size_bytes > dst.size_bytes:
                raise vss_error(HResult.E_INVALIDARG, f"{target} is smaller than {snapshot}")
            if any(j.state == "running" and dst.name in (j.source, j.target) for j in self.store.jobs()):
                raise vss_error(HResult.VSS_E_RESYNC_IN_PROGRESS, f"{target} is already being resynced")
            self.luns.check_pool(need_bytes=self._unmapped_bytes(dst))
            job = self.store.add_job(uuid.uuid4().hex, "resync", snap.name, dst.name, snap.size_bytes,
                                     caller.initiator)
            self._run_job(job, lambda progress: self._resync(snap, dst, progress))
            return job

    def _resync(self, snap: Lun, dst: Lun, progress) -> None:
        """Copy the differing chunks; a destination larger than the shadow copy is then shrunk
        to its size, so that the LUN is what the original was at snapshot time."""
        copy_blocks(self._active_device(snap), self._active_device(dst), snap.size_bytes, progress,
                    only_changed=True)
        if dst.size_bytes > snap.size_bytes:
            with self.ctx.lock:
                self.backend.resize(dst.name, snap.size_bytes)
                self.store.set_lun_size(dst.name, snap.size_bytes)
            log.info("%s shrunk to %d bytes, the size of %s", dst.name, snap.size_bytes, snap.name)

    def _run_job(self, job: Job, work) -> None:
        cancel = self._cancels[job.job_id] = threading.Event()

        def progress(done: int, last=[0.0]) -> None:
            if cancel.is_set():  # between two chunks: the copy stops here
                raise JobCancelled(job.job_id)
            now = time.monotonic()
            if now - last[0] > 0.5 or done == job.total_bytes:
                last[0] = now
                self.store.update_job(job.job_id, done_bytes=done)

        def body() -> None:
            try:
                work(progress)
                self.store.update_job(job.job_id, done_bytes=job.total_bytes, state="done")
            except Exception as e:  # noqa: BLE001 - recorded on the job, shown by the API
                cancelled = isinstance(e, JobCancelled)
                if cancelled:
                    log.warning("job %s cancelled by its requester", job.job_id)
                else:
                    log.exception("job %s failed", job.job_id)
                if job.kind == "copy":  # a copy that did not finish leaves no LV behind
                    self.luns.destroy(job.target)
                self.store.update_job(job.job_id, state="cancelled" if cancelled else "failed",
                                      error=None if cancelled else str(e))

        t = threading.Thread(target=body, name=f"job-{job.job_id[:8]}", daemon=True)
        self.threads[job.job_id] = t
        t.start()

    def cancel_job(self, job_id: str, caller: Caller = ADMIN) -> Job:
        """Stop a running job at its next chunk (IVssAsync::Cancel): a copy's new LUN is removed,
        a resync's destination keeps what was written so far (it is neither the old nor the
        new content: resync again). A job that has ended is answered as it is."""
        job = self.job(job_id, caller)
        if job.state == "running" and job.job_id in self._cancels:
            self._cancels[job.job_id].set()
            thread = self.threads.get(job.job_id)
            if thread is not None:
                thread.join(JOB_CANCEL_WAIT_S)
        return self.store.job(job.job_id)

    def job(self, job_id: str, caller: Caller = ADMIN) -> Job:
        job = self.store.job(job_id) if isinstance(job_id, str) and len(job_id) <= 64 else None
        if job is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no job {job_id!r}")
        if not (caller.is_admin or job.requester == caller.initiator):
            raise denied(caller, f"see job {job_id}: another host started it")
        return job
