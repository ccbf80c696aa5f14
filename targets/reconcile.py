"""The agent's start and upkeep: LVM and LIO brought back toward the store, never destroying
what the store does not know.

At start, in this order:
1. origins left suspended (an agent killed inside the commit window) are resumed: hosts' I/O
   flows again before anything else is looked at;
2. the store is checked to be this array's: an id is written in the store and as a tag of the
   volume group. An empty store beside our LVs, or another array's store, is not trusted: the
   agent comes up and serves reads, and removes or overwrites nothing (no cleanup, no delete,
   abort or resync) until an admin confirms the store;
3. with a trusted store: interrupted operations are finished or undone (running jobs failed and
   their copies removed, committing sets aborted, LUNs half made or half deleted removed),
   prepared sets past their age aborted, leftovers of aborted sets removed;
4. tagged LVs the store does not know are *set aside*: not removed, not exported by the agent
   (an export already there is left, so a host using it keeps it), reported by the health call;
   an admin removes one explicitly;
5. every ready LUN is activated, exported with its serial and thin provisioning on (also on a
   backstore found with it off) and masked as stored; one that cannot be is reported by the
   health call and the others still come up.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from provider.contract.hresult import HResult, vss_error

from .array import Array
from .luns import SET_TAG, SNAPSHOT_TAG, kind_tags
from .backend import Volume
from .names import SNAPSHOT_PREFIX, VOLUME_PREFIX

log = logging.getLogger("shadowlun.reconcile")

EXPIRY_CHECK_MAX_S = 60.0
STOP_WAIT_S = 10.0


class Reconciler:
    """The array's start-up repair, its health as last seen, and the admin calls that act on
    what the repair would not do by itself (confirm the store, remove a set-aside LV)."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self.store_problem: str | None = None  # why the store is not trusted (None: it is)
        self.vg_array_id: str | None = None
        self.failed_luns: dict[str, str] = {}  # LUN -> why it could not be brought up
        self.last: dict[str, list[str]] = {}  # the last reconcile's report

    # -- start ---------------------------------------------------------------------------

    def reconcile(self) -> dict[str, list[str]]:
        """Resume, identify the store, then (trusted only) clean up and rebuild. Every step
        collects its errors: the agent always comes up."""
        a = self.array
        done: dict[str, list[str]] = {k: [] for k in (
            "resumed", "removed", "rebuilt", "failed_jobs", "aborted_sets", "expired_sets",
            "set_aside", "failed_luns", "errors")}
        with a.op_lock:
            resumed, failures = a.backend.recover_window()
            if resumed:
                log.warning("resumed devices left suspended (an agent killed in a commit): %s", ", ".join(resumed))
            done["resumed"] = resumed
            done["errors"] += [str(e) for e in failures]
            lvs = a.backend.volumes()
            self._identify(lvs)
            if self.store_problem:
                done["errors"].append(f"store not trusted, nothing cleaned up: {self.store_problem}")
            else:
                self._clean_up(lvs, done)
                lvs = a.backend.volumes()
            aside = {lv.name for lv in self._set_aside(lvs)}
            done["set_aside"] = sorted(aside)
            if not self.store_problem:
                self._unexport_strays(aside, {lv.name for lv in lvs}, done)
                self._rebuild({lv.name: lv for lv in lvs}, done)
        for err in done["errors"]:
            log.error("reconcile: %s", err)
        log.info("reconcile: %s", json.dumps({k: v for k, v in done.items() if v}))
        self.last = done
        return done

    def _identify(self, lvs: Sequence[Volume]) -> None:
        """Trust the store when it carries the VG's array id. A store without an id is given
        one (the VG's, or a new one) only when that cannot hide a loss: no LV of ours exists, or
        neither has an id yet (a store from before ids, with its LVs). An empty store beside
        LVs of ours is a lost store, never adopted silently."""
        a = self.array
        store_id = a.store.array_id()
        self.vg_array_id = a.backend.array_id()
        ours = any(lv.owned for lv in lvs)
        problem = None
        if store_id is not None:
            if store_id != self.vg_array_id:
                problem = (f"the store belongs to array {store_id}, the volume group to "
                           f"{self.vg_array_id or 'no array (no id tag)'}: a foreign or restored store")
        elif ours and a.store.is_empty():
            problem = "the store is empty, the volume group has LVs of this array: a lost or moved store"
        elif ours and self.vg_array_id is not None:
            problem = f"the store has no array id, the volume group belongs to array {self.vg_array_id}"
        else:
            self._write_id(self.vg_array_id or uuid.uuid4().hex)
        self.store_problem = problem
        a.store_trusted = problem is None

    def _write_id(self, array_id: str) -> None:
        """The id in the store and as the VG's only array tag."""
        a = self.array
        a.store.set_array_id(array_id)
        if self.vg_array_id != array_id:
            a.backend.set_array_id(array_id, was=self.vg_array_id)
            self.vg_array_id = array_id
        log.info("array id %s written to the store and the volume group", array_id)

    def _live_jobs(self) -> set[str]:
        """Jobs of this process still running (a confirm reconciles while the agent serves)."""
        return self.array.jobs.live()

    def _clean_up(self, lvs: Sequence[Volume], done: dict[str, list[str]]) -> None:
        """Finish or undo what interrupted operations left, by the store's own records only."""
        a, live = self.array, self._live_jobs()
        luns = {lun.name for lun in a.store.luns()}
        leftovers = {m.name for s in a.store.sets("aborted") for m in s.members} - luns
        for lv in lvs:
            if lv.owned and lv.name in leftovers:  # its set's undo could not remove it then
                done["errors"] += a.luns.destroy(lv.name)
                done["removed"].append(lv.name)
        busy = set()
        for job in a.store.jobs("running"):
            if job.job_id in live:
                busy.add(job.target)
                continue
            source = a.store.lun(job.source)
            if a.jobs.is_finished_plex(source, a.backend.volume(job.target)):  # copied: the swap is finished
                try:
                    a.jobs.finish_plex(source, job.target)
                    a.store.update_job(job.job_id, done_bytes=job.total_bytes, state="done")
                    done["rebuilt"].append(f"{job.source} (its full copy swapped in)")
                except Exception as e:  # noqa: BLE001 - reported; the LVs are left for the next start
                    done["errors"].append(f"{job.source}: finishing its full copy: {e}")
                continue
            a.store.update_job(job.job_id, state="failed", error="interrupted: the agent restarted")
            done["failed_jobs"].append(job.job_id)
            if job.kind == "copy":
                done["errors"] += a.luns.destroy(job.target)
                done["removed"].append(job.target)
        for s in a.store.sets("committing"):
            done["errors"] += a.sets.undo(s.set_id)
            done["aborted_sets"].append(s.set_id)
        done["expired_sets"] += self._expire(done["errors"])
        for lun in a.store.luns():
            if lun.state in ("creating", "deleting") and lun.name not in busy:
                done["errors"] += a.luns.destroy(lun.name)
                done["removed"].append(lun.name)

    def _set_aside(self, lvs: Sequence[Volume]) -> list[Volume]:
        """Our LVs the store does not know: neither a LUN nor a snapshot of a set in progress."""
        store = self.array.store
        known = {lun.name for lun in store.luns()}
        known |= {m.name for state in ("prepared", "committing") for s in store.sets(state) for m in s.members}
        return [lv for lv in lvs if lv.owned and lv.name not in known]

    def _unexport_strays(self, aside: set[str], lvs: set[str], done: dict[str, list[str]]) -> None:
        """LIO objects of ours with neither a LUN nor an LV behind them; a set-aside LV's are left."""
        a = self.array
        luns = {lun.name for lun in a.store.luns()}
        ours = (VOLUME_PREFIX, SNAPSHOT_PREFIX)
        for name in a.lio.exports():
            if name.startswith(ours) and name not in luns and name not in lvs:
                a.lio.unexport(name)
                done["removed"].append(f"LIO {name}")
        for name in a.lio.orphan_backstores():
            if name.startswith(ours) and name not in aside:
                a.lio.unexport(name)
                done["removed"].append(f"LIO backstore {name}")

    def _rebuild(self, lvs: dict[str, Volume], done: dict[str, list[str]]) -> None:
        """Every ready LUN activated, exported and masked as stored; one that fails is reported
        and the others still come up."""
        a = self.array
        exports = a.lio.exports()
        self.failed_luns = {}
        for lun in a.store.luns("ready"):
            try:
                self._bring_up(lun, lvs.get(lun.name), exports.get(lun.name), done)
            except Exception as e:  # noqa: BLE001 - reported in the health call, the rest goes on
                self.failed_luns[lun.name] = str(e)
                done["failed_luns"].append(lun.name)
                done["errors"].append(f"{lun.name}: {e}")

    def _bring_up(self, lun, lv: Volume | None, export, done: dict[str, list[str]]) -> None:
        a = self.array
        if lv is None:
            raise LookupError("its LV is gone; left in the store for an operator")
        if not lv.active:
            a.backend.activate(lun.name)
        if lun.kind != "snapshot" and (lv.tag(SET_TAG) or lv.tag(SNAPSHOT_TAG)):
            # an interrupted detach: the store says it is no snapshot any more
            a.backend.retag(lun.name, *kind_tags(lv, lun.kind))
            done["rebuilt"].append(f"{lun.name} tags")
        if export is None or export.serial != lun.exported_serial:
            if export is not None:
                a.lio.unexport(lun.name)
            a.lio.export(lun.name, lv.device, lun.exported_serial)
            export = None  # its mappings went with it: re-apply every mask below
            done["rebuilt"].append(lun.name)
        elif a.lio.advertise_thin(lun.name):
            done["rebuilt"].append(f"{lun.name} thin provisioning")
        have = {m.initiator: m for m in (export.mappings if export else ())}
        for mask in a.store.masks(lun.name):
            m = have.pop(mask.initiator, None)
            if m is None or m.read_only != mask.read_only or export is None:
                host = a.store.host(mask.initiator)  # its CHAP, made by the array at registration
                a.lio.mask(lun.name, mask.initiator, host.chap_user, host.chap_secret, mask.read_only)
                done["rebuilt"].append(f"{lun.name} -> {mask.initiator}")
        for initiator in have:
            a.lio.unmask(lun.name, initiator)
            done["removed"].append(f"{lun.name} -> {initiator}")

    # -- expiry of prepared sets ---------------------------------------------------------

    def _expire(self, errors: list[str]) -> list[str]:
        """Abort the prepared sets older than the configured age (under the op lock)."""
        a = self.array
        oldest = time.time() - a.config.prepared_set_max_age_s
        expired = []
        for s in a.store.sets("prepared"):
            if s.created < oldest:
                errors += a.sets.undo(s.set_id)
                expired.append(s.set_id)
                log.warning("snapshot set %s prepared %.0f s ago and never committed: aborted",
                            s.set_id, time.time() - s.created)
        return expired

    def expire_sets(self) -> list[str]:
        """One periodic check: the prepared sets expired now (none while the store is not trusted)."""
        with self.array.op_lock:
            if not self.array.store_trusted:
                return []
            errors: list[str] = []
            expired = self._expire(errors)
        for err in errors:
            log.error("expiry: %s", err)
        return expired

    @contextmanager
    def expiring(self) -> Iterator[None]:
        """Check for expired sets in a thread while the agent serves, at a quarter of the age
        (at most every minute); the thread is stopped on exit, waited for a bounded time."""
        stop = threading.Event()
        every = min(EXPIRY_CHECK_MAX_S, self.array.config.prepared_set_max_age_s / 4)

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.expire_sets()
                except Exception:  # noqa: BLE001 - logged; the next check tries again
                    log.exception("expiry check failed")

        t = threading.Thread(target=loop, name="set-expiry", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(STOP_WAIT_S)

    # -- health and the admin's calls ----------------------------------------------------

    def health(self) -> dict:
        """What is not as wanted: an untrusted store, LVs set aside, LUNs that did not come up,
        and the last reconcile's report."""
        a = self.array
        exports = a.lio.exports()
        aside = [{"lv": lv.name, "size_bytes": lv.size_bytes, "tags": list(lv.tags),
                  "exported": lv.name in exports,
                  "mapped_to": sorted(m.initiator for m in exports[lv.name].mappings) if lv.name in exports else []}
                 for lv in self._set_aside(a.backend.volumes())]
        return {
            "ok": self.store_problem is None and not aside and not self.failed_luns,
            "store": {"trusted": self.store_problem is None, "problem": self.store_problem,
                      "array_id": a.store.array_id(), "vg_array_id": self.vg_array_id},
            "set_aside": aside,
            "failed_luns": [{"lun": name, "error": err} for name, err in sorted(self.failed_luns.items())],
            "last_reconcile": self.last,
        }

    def confirm_store(self) -> dict:
        """The admin says this store is the array's: it takes the volume group's id (or a new
        one), and the reconcile runs again, now with cleanup. Confirming a trusted store is a
        no-op."""
        a = self.array
        with a.op_lock:
            if self.store_problem is not None:
                log.warning("store confirmed by an admin despite: %s", self.store_problem)
                self._write_id(self.vg_array_id or uuid.uuid4().hex)
                self.reconcile()
        return self.health()

    def remove_set_aside(self, lv: str) -> None:
        """Remove one set-aside LV (and any export of it): only an LV of ours the store does
        not know, only with a trusted store."""
        a = self.array
        with a.op_lock:
            a.require_trusted(f"removal of LV {lv}")
            if lv not in {v.name for v in self._set_aside(a.backend.volumes())}:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no set-aside LV named {lv!r}")
            try:
                a.lio.unexport(lv)
                a.backend.remove(lv)
            except Exception as e:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not remove LV {lv}: {e}") from e
            log.warning("set-aside LV %s removed by an admin", lv)
