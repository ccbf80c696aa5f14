"""The array's operations: what the agent's API does, over the store, the storage backend and LIO.

`Array` is the one object the agent calls. It is made of parts, one object each, over the
context they share (targets.context): the LUNs (targets.luns), the hosts (targets.hosts), the
snapshot sets (targets.snapshot_sets) and the jobs (targets.jobs); its methods hand each call to
its part.

Rules kept everywhere:
- validate everything first (names, sizes, ids, pool space) and raise a VSS-coded user error
  before any object is made, so bad input changes nothing;
- write the intent to the store before touching the kernel, mark it done after, so the
  reconcile at start can finish or undo an interrupted operation;
- idempotent where a retry can happen (same request again = same answer, nothing new made).
"""
from __future__ import annotations

from .authority import ADMIN, Caller
from .backend import Backend
from .config import ArrayConfig
from .context import ArrayContext
from .hosts import HostRegistry
from .jobs import Jobs
from .lio import Lio
from .luns import LunView, Luns
from .snapshot_sets import SnapshotSets
from .store import Job, Store


class Array:
    def __init__(self, config: ArrayConfig, store: Store, backend: Backend, lio: Lio) -> None:
        self.config, self.store, self.backend, self.lio = config, store, backend, lio
        self.ctx = ArrayContext(config, store, backend, lio)
        self.registry = HostRegistry(self.ctx)
        self.luns = Luns(self.ctx, self.registry)
        self.sets = SnapshotSets(self.ctx, self.luns, self.registry)
        self.jobs = Jobs(self.ctx, self.luns, self.sets)

    @property
    def op_lock(self):
        """One changing operation at a time; reads are free."""
        return self.ctx.lock

    @property
    def store_trusted(self) -> bool:
        """False while the store is not known to be this array's (targets.reconcile decides)."""
        return self.ctx.store_trusted

    @store_trusted.setter
    def store_trusted(self, trusted: bool) -> None:
        self.ctx.store_trusted = trusted

    def require_trusted(self, what: str) -> None:
        self.ctx.require_trusted(what)

    # -- LUNs ----------------------------------------------------------------------------

    def inventory(self, caller: Caller = ADMIN) -> list[LunView]:
        return self.luns.inventory(caller)

    def lun(self, name: str, caller: Caller = ADMIN) -> LunView:
        return self.luns.lun(name, caller)

    def pool(self) -> dict:
        return self.luns.pool()

    def create_volume(self, name: str, size_bytes: int, caller: Caller = ADMIN) -> LunView:
        return self.luns.create_volume(name, size_bytes, caller)

    def delete(self, name: str, caller: Caller = ADMIN) -> None:
        self.luns.delete(name, caller)

    def mask(self, name: str, initiator: str, read_only: bool = False, caller: Caller = ADMIN) -> LunView:
        return self.luns.mask(name, initiator, read_only, caller)

    def unmask(self, name: str, initiator: str, caller: Caller = ADMIN) -> LunView:
        return self.luns.unmask(name, initiator, caller)

    def detach(self, name: str, caller: Caller = ADMIN) -> LunView:
        return self.luns.detach(name, caller)

    def take_identity(self, names: list[str], caller: Caller = ADMIN) -> list[LunView]:
        return self.luns.take_identity(names, caller)

    # -- hosts ---------------------------------------------------------------------------

    def hosts(self, caller: Caller = ADMIN) -> list[dict]:
        return self.registry.hosts(caller)

    def caller_for(self, token: str) -> Caller | None:
        return self.registry.caller_for(token)

    def register_host(self, initiator: str, name: str, caller: Caller = ADMIN) -> dict:
        return self.registry.register_host(initiator, name, caller)

    def issue_token(self, initiator: str, caller: Caller = ADMIN) -> dict:
        return self.registry.issue_token(initiator, caller)

    def unregister_host(self, initiator: str, caller: Caller = ADMIN) -> None:
        self.registry.unregister_host(initiator, caller)

    def register_configured_hosts(self) -> dict[str, dict]:
        return self.registry.register_configured_hosts()

    # -- snapshot sets -------------------------------------------------------------------

    def prepare_set(self, set_id: str, snapshots: list[dict], caller: Caller = ADMIN,
                    transportable: bool = False) -> dict:
        return self.sets.prepare_set(set_id, snapshots, caller, transportable)

    def set_view(self, set_id: str, caller: Caller = ADMIN) -> dict:
        return self.sets.set_view(set_id, caller)

    def claim_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        return self.sets.claim_import(serials, host, caller)

    def attach_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        return self.sets.attach_import(serials, host, caller)

    def release_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        return self.sets.release_import(serials, host, caller)

    def commit_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        return self.sets.commit_set(set_id, caller)

    def publish_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        return self.sets.publish_set(set_id, caller)

    def hand_out_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        return self.sets.hand_out_set(set_id, caller)

    def abort_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        return self.sets.abort_set(set_id, caller)

    # -- jobs: full copies (of a LUN, PLEX of a set) and resyncs -------------------------

    def plex_set(self, set_id: str, caller: Caller = ADMIN) -> list[Job]:
        return self.jobs.plex_set(set_id, caller)

    def start_copy(self, source: str, target: str, caller: Caller = ADMIN) -> Job:
        return self.jobs.start_copy(source, target, caller)

    def start_resync(self, snapshot: str, target: str, caller: Caller = ADMIN) -> Job:
        return self.jobs.start_resync(snapshot, target, caller)

    def cancel_job(self, job_id: str, caller: Caller = ADMIN) -> Job:
        return self.jobs.cancel_job(job_id, caller)

    def job(self, job_id: str, caller: Caller = ADMIN) -> Job:
        return self.jobs.job(job_id, caller)
