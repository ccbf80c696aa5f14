"""The array's operations: what the agent's API does, over the store, LVM and LIO.

Rules kept everywhere:
- validate everything first (names, sizes, ids, pool space) and raise a VSS-coded user error
  before any object is made, so bad input changes nothing;
- write the intent to the store before touching the kernel, mark it done after, so the
  reconcile at start can finish or undo an interrupted operation;
- idempotent where a retry can happen (same request again = same answer, nothing new made).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from provider.hresult import HResult, vss_error
from provider.lun_info import LIO_PRODUCT, LIO_VENDOR

from . import names
from .authority import ADMIN, Caller, denied, new_chap_secret, new_token, require_admin, token_digest
from .config import ArrayConfig
from .faults import crash_point
from .lio import Lio, naa_wwid
from .lvm import LogicalVolume, Lvm, copy_blocks
from .store import Host, Job, Lun, Mask, SetMember, SnapshotSet, Store

log = logging.getLogger("shadowlun.array")

MAX_LUNS_PER_SET = 64
MIN_VOLUME_BYTES = 1 << 20
JOB_CANCEL_WAIT_S = 30.0  # a cancelled job stops at its next chunk (CHUNK bytes), well within this
VOLUME_PREFIX, SNAPSHOT_PREFIX = "lun-", names.SNAPSHOT_PREFIX
PLEX_PREFIX = "plex-"  # a full copy being made of a shadow LUN, before it takes the LUN's place
KIND_TAG, SET_TAG, SNAPSHOT_TAG = "shadowlun.kind", "shadowlun.set", "shadowlun.snapshot"


class JobCancelled(Exception):
    """Raised inside a job's copy when its requester cancelled it."""


def _api_name(lv: str) -> str:
    """A LUN's name in the API: a volume without its LV prefix, a snapshot as its LV."""
    return lv.removeprefix(VOLUME_PREFIX)


def _kind_tags(lv: LogicalVolume, kind: str) -> tuple[list[str], dict[str, str]]:
    """(tags to delete, tags to add) so that the LV is tagged as a LUN of `kind` that is no
    snapshot: no set and snapshot tags, one kind tag."""
    remove = [t for t in lv.tags if t.startswith((SET_TAG + "=", SNAPSHOT_TAG + "="))
              or (t.startswith(KIND_TAG + "=") and t != f"{KIND_TAG}={kind}")]
    add = {} if f"{KIND_TAG}={kind}" in lv.tags else {KIND_TAG: kind}
    return remove, add


@dataclass(frozen=True)
class LunView:
    """A LUN as the API shows it: identity a host will read, and who may see it."""

    name: str
    kind: str
    size_bytes: int
    serial: str
    wwid: str
    vendor: str
    product: str
    origin: str | None
    set_id: str | None
    snapshot_id: str | None
    state: str
    lun_id: int | None
    masks: list[dict] = field(default_factory=list)


class Array:
    def __init__(self, config: ArrayConfig, store: Store, lvm: Lvm, lio: Lio) -> None:
        self.config, self.store, self.lvm, self.lio = config, store, lvm, lio
        self._op_lock = threading.RLock()  # one changing operation at a time; reads are free
        self._premade: dict[str, list] = {}  # prepared set -> [(origin, snapshot) ThinDevice]
        self._jobs: dict[str, threading.Thread] = {}  # job id -> its thread (a reconcile spares live ones)
        self._cancels: dict[str, threading.Event] = {}  # job id -> set when its requester cancels it
        # False while the store is not known to be this array's (targets.reconcile decides at
        # start): then nothing that removes or overwrites data runs.
        self.store_trusted = True

    # -- views and who may see what ------------------------------------------------------

    def _view(self, lun: Lun, exports: dict | None = None, caller: Caller = ADMIN) -> LunView:
        exports = self.lio.exports() if exports is None else exports
        export = exports.get(lun.name)
        return LunView(
            name=_api_name(lun.name), kind=lun.kind, size_bytes=lun.size_bytes,
            serial=lun.serial, wwid=naa_wwid(lun.serial), vendor=LIO_VENDOR, product=LIO_PRODUCT,
            origin=_api_name(lun.origin) if lun.origin else None,
            set_id=lun.set_id, snapshot_id=lun.snapshot_id, state=lun.state,
            lun_id=export.lun if export else None,
            masks=[{"initiator": m.initiator, "read_only": m.read_only} for m in self.store.masks(lun.name)
                   if caller.is_admin or m.initiator == caller.initiator],  # a host sees only its own
        )

    def _may_import(self, s: SnapshotSet, initiator: str) -> bool:
        """A set is imported by the host that made it; a transportable one (or one the admin
        made) by any host of this array."""
        return s.owner in (None, initiator) or s.transportable

    def _masked_to(self, lun: Lun, caller: Caller) -> bool:
        return any(m.initiator == caller.initiator for m in self.store.masks(lun.name))

    def _visible(self, lun: Lun, caller: Caller) -> bool:
        if caller.is_admin or lun.holder == caller.initiator or self._masked_to(lun, caller):
            return True
        s = self.store.snapshot_set(lun.set_id) if lun.kind == "snapshot" and lun.set_id else None
        return s is not None and s.state == "committed" and self._may_import(s, caller.initiator)

    def _require_use(self, lun: Lun, caller: Caller, action: str) -> None:
        """Snapshot, copy or resync: the caller's own LUNs (masked to it, or held)."""
        if not (caller.is_admin or lun.holder == caller.initiator or self._masked_to(lun, caller)):
            raise denied(caller, f"{action} {_api_name(lun.name)}: it is not masked to this host")

    def _require_holder(self, lun: Lun, caller: Caller, action: str) -> None:
        """Delete, detach, mask or unmask: what the caller made or imported."""
        if not (caller.is_admin or lun.holder == caller.initiator):
            raise denied(caller, f"{action} {_api_name(lun.name)}: this host did not make or import it")

    def inventory(self, caller: Caller = ADMIN) -> list[LunView]:
        with self._op_lock:
            exports = self.lio.exports()
            return [self._view(lun, exports, caller) for lun in self.store.luns() if self._visible(lun, caller)]

    def _lun(self, name: str, caller: Caller = ADMIN) -> Lun:
        """A LUN by its API name (a volume name, or a snapshot's name snap-<snapshot id>) that
        the caller may see."""
        if not isinstance(name, str) or not name.isascii() or len(name) > 64:
            raise vss_error(HResult.E_INVALIDARG, f"LUN name {name!r} is not a LUN name")
        lun = self.store.lun(name if name.startswith(SNAPSHOT_PREFIX) else VOLUME_PREFIX + name)
        if lun is None or lun.state != "ready":
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no LUN named {name!r} on this array")
        if not self._visible(lun, caller):
            raise denied(caller, f"see LUN {name!r}")
        return lun

    def lun(self, name: str, caller: Caller = ADMIN) -> LunView:
        with self._op_lock:
            return self._view(self._lun(name, caller), caller=caller)

    def pool(self) -> dict:
        p = self.lvm.pool_status()
        return {"vg": p.vg, "pool": p.name, "size_bytes": p.size_bytes, "used_bytes": p.used_bytes,
                "free_bytes": p.free_bytes, "data_percent": p.data_percent,
                "metadata_percent": p.metadata_percent, "full_percent": self.config.pool_full_percent}

    def _check_pool(self, need_bytes: int = 0) -> None:
        """Refuse new work on a nearly full pool (data or metadata), before anything is made.
        Running copies have reserved what they have still to write."""
        p = self.lvm.pool_status()
        limit = self.config.pool_full_percent
        reserved = sum(j.total_bytes - j.done_bytes for j in self.store.jobs("running") if j.kind == "copy")
        after = 100.0 * (p.used_bytes + reserved + need_bytes) / p.size_bytes if p.size_bytes else 100.0
        if p.data_percent >= limit or p.metadata_percent >= limit or after >= limit:
            raise vss_error(HResult.VSS_E_INSUFFICIENT_STORAGE,
                            f"thin pool {p.vg}/{p.name} is too full: data {p.data_percent:.1f}%, "
                            f"metadata {p.metadata_percent:.1f}%, {need_bytes} bytes needed, "
                            f"{reserved} reserved by running copies, limit {limit:.0f}%")

    def _check_size(self, size_bytes: object, what: str = "size") -> int:
        """A new volume's or copy's virtual size: bounded, and the pool not overcommitted
        beyond its ratio (snapshots share their origin's blocks and are not counted)."""
        if type(size_bytes) is not int or size_bytes < MIN_VOLUME_BYTES or size_bytes % 512:
            raise vss_error(HResult.E_INVALIDARG, f"{what} {size_bytes!r}: an integer of at least 1 MiB, "
                                                  f"a multiple of 512")
        if size_bytes > self.config.max_volume_bytes:
            raise vss_error(HResult.E_INVALIDARG, f"{what} {size_bytes}: at most "
                                                  f"{self.config.max_volume_bytes} bytes on this array")
        p = self.lvm.pool_status()
        virtual = sum(lun.size_bytes for lun in self.store.luns() if lun.kind != "snapshot")
        allowed = int(self.config.overcommit_ratio * p.size_bytes)
        if virtual + size_bytes > allowed:
            raise vss_error(HResult.VSS_E_INSUFFICIENT_STORAGE,
                            f"{what} {size_bytes}: the volumes would total {virtual + size_bytes} bytes, "
                            f"over {self.config.overcommit_ratio:g} times the thin pool ({allowed} bytes)")
        return size_bytes

    def _require_trusted(self, what: str) -> None:
        if not self.store_trusted:
            raise vss_error(HResult.VSS_E_BAD_STATE,
                             f"{what}: refused until an admin confirms this array's store "
                             f"(GET /v1/health, then POST /v1/store/confirm)")

    def _require_no_lv(self, lv: str) -> None:
        """A new LUN's LV name must be free in LVM too: an LV the store does not know (set aside
        at start) would otherwise be removed by the failed create's cleanup."""
        if self.lvm.get(lv) is not None:
            raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS,
                             f"an LV named {lv} exists on the array, unknown to its store (see GET /v1/health)")

    def _new_serial(self, also_taken: set[str] = frozenset()) -> str:
        """32 hex digits, unique in its first 25 (LIO's NAA id uses only those) among LUNs,
        the snapshots of prepared sets, and `also_taken` (the set being prepared)."""
        taken = {naa_wwid(lun.serial) for lun in self.store.luns()}
        taken |= {naa_wwid(m.serial) for s in self.store.sets() for m in s.members}
        taken |= {naa_wwid(serial) for serial in also_taken}
        while True:
            serial = uuid.uuid4().hex
            if naa_wwid(serial) not in taken and not self.store.serial_in_use(serial):
                return serial

    # -- volumes -------------------------------------------------------------------------

    def create_volume(self, name: str, size_bytes: int, caller: Caller = ADMIN) -> LunView:
        require_admin(caller, "create a volume")
        names.lun_name(name)
        lv = VOLUME_PREFIX + name
        with self._op_lock:
            existing = self.store.lun(lv)
            if existing is not None:
                if existing.state == "ready" and existing.size_bytes == size_bytes and existing.kind == "volume":
                    return self._view(existing)  # a retry
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a LUN named {name!r} exists")
            self._check_size(size_bytes)
            self._require_no_lv(lv)
            self._check_pool()
            lun = self.store.add_lun(lv, "volume", size_bytes, self._new_serial())
            self._make(lun, lambda: self.lvm.create_volume(lv, size_bytes, {KIND_TAG: "volume"}))
            return self._view(self.store.lun(lv))

    def _make(self, lun: Lun, create_lv) -> None:
        """LV, then export; on failure undo both and drop the intent (errors collected)."""
        try:
            create_lv()
            crash_point("volume-lv-created")
            self.lio.export(lun.name, self.lvm.device(lun.name), lun.serial)
            self.store.set_lun_state(lun.name, "ready")
        except Exception as e:
            self._destroy(lun.name)
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not create {lun.name}: {e}") from e

    def _destroy(self, lv: str) -> list[str]:
        """Remove export, LV and store rows of one LUN, collecting errors rather than stopping.
        If the export or the LV stays, so does the row, as 'deleting': the reconcile at the next
        start finishes it from the store's record (it never removes LVs the store does not know)."""
        errors = []
        for what, fn in (("LIO export", lambda: self.lio.unexport(lv)),
                         ("LV", lambda: self.lvm.get(lv) and self.lvm.remove(lv)),
                         ("store", lambda: self.store.set_lun_state(lv, "deleting") if errors
                          else self.store.remove_lun(lv))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(f"{lv}: {what}: {e}")
        for err in errors:
            log.error("cleanup: %s", err)
        return errors

    def delete(self, name: str, caller: Caller = ADMIN) -> None:
        with self._op_lock:
            lun = self._lun(name, caller)
            self._require_holder(lun, caller, "delete")
            self._require_trusted(f"delete of {name}")
            if any(j.state == "running" and lun.name in (j.source, j.target) for j in self.store.jobs()):
                raise vss_error(HResult.VSS_E_VOLUME_IN_USE, f"{name} is in a running copy or resync")
            self.store.set_lun_state(lun.name, "deleting")
            errors = self._destroy(lun.name)
            if errors:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "; ".join(errors))

    # -- masking -------------------------------------------------------------------------

    def mask(self, name: str, initiator: str, read_only: bool = False, caller: Caller = ADMIN) -> LunView:
        """Show the LUN to `initiator`, a registered host, with that host's CHAP credentials.
        LIO first, then the store (undone in LIO if the store fails): the two never disagree."""
        initiator = names.initiator(initiator)
        if type(read_only) is not bool:
            raise vss_error(HResult.E_INVALIDARG, f"read_only {read_only!r}: true or false")
        with self._op_lock:
            lun = self._lun(name, caller)
            if not caller.is_admin and initiator != caller.initiator:
                raise denied(caller, f"mask {name} to another initiator ({initiator})")
            self._require_holder(lun, caller, "mask")
            host = self._require_host(initiator)
            self._publish(lun)  # a committed snapshot not published yet is exported now
            had = self.store.masks(lun.name)
            self.lio.mask(lun.name, initiator, host.chap_user, host.chap_secret, read_only)
            try:
                self.store.put_mask(Mask(lun.name, initiator, read_only))
            except Exception:
                old = next((m for m in had if m.initiator == initiator), None)
                if old is None:
                    self.lio.unmask(lun.name, initiator)
                else:
                    self.lio.mask(lun.name, initiator, host.chap_user, host.chap_secret, old.read_only)
                raise
            return self._view(lun, caller=caller)

    def unmask(self, name: str, initiator: str, caller: Caller = ADMIN) -> LunView:
        initiator = names.initiator(initiator)
        with self._op_lock:
            lun = self._lun(name, caller)
            if not caller.is_admin and initiator != caller.initiator:
                raise denied(caller, f"unmask {name} from another initiator ({initiator})")
            self._require_holder(lun, caller, "unmask")
            self.lio.unmask(lun.name, initiator)
            self.store.remove_mask(lun.name, initiator)
            return self._view(lun, caller=caller)

    # -- hosts: the initiators this array serves, and their credentials ------------------

    def _host_view(self, host: Host) -> dict:
        return {"initiator": host.initiator, "name": host.name, "added": host.added,
                "chap_user": host.chap_user,
                "luns": [_api_name(m.lun) for m in self.store.masks(initiator=host.initiator)]}

    @staticmethod
    def _credentials(host: Host, token: str) -> dict:
        """What the host alone is given: its bearer token and its CHAP credentials."""
        return {"initiator": host.initiator, "name": host.name, "token": token,
                "chap_user": host.chap_user, "chap_secret": host.chap_secret}

    def hosts(self, caller: Caller = ADMIN) -> list[dict]:
        """The registered hosts, each with the LUNs masked to it (a host sees only itself)."""
        with self._op_lock:
            return [self._host_view(h) for h in self.store.hosts()
                    if caller.is_admin or h.initiator == caller.initiator]

    def caller_for(self, token: str) -> Caller | None:
        """The registered host whose token this is, or None."""
        host = self.store.host_by_token(token_digest(token))
        return Caller(host.name, host.initiator) if host else None

    def register_host(self, initiator: str, name: str, caller: Caller = ADMIN) -> dict:
        """Allow `initiator` (as host `name`) to be masked to and to import sets, and make its
        credentials (a bearer token and CHAP secret, in `credentials`, shown this once).
        Create-or-lookup: the same initiator and name again is a retry and shows no secret (a
        new token is `issue_token`'s); another name for a registered initiator, or a name
        another initiator has, is VSS_E_OBJECT_ALREADY_EXISTS."""
        require_admin(caller, "register hosts")
        initiator, name = names.initiator(initiator), names.lun_name(name, "host name")
        with self._op_lock:
            have = self.store.host(initiator)
            if have is not None:
                if have.name != name:
                    raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS,
                                    f"initiator {initiator} is registered as host {have.name!r}")
                return self._host_view(have)
            if self.store.host_named(name) is not None:
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a host named {name!r} exists")
            token = new_token()
            host = self.store.add_host(initiator, name, name, new_chap_secret(), token_digest(token))
            return {**self._host_view(host), "credentials": self._credentials(host, token)}

    def issue_token(self, initiator: str, caller: Caller = ADMIN) -> dict:
        """A new bearer token for a registered host (the old one stops working); its CHAP
        credentials are unchanged, so its sessions go on."""
        require_admin(caller, "issue host tokens")
        initiator = names.initiator(initiator)
        with self._op_lock:
            host = self._registered(initiator)
            token = new_token()
            self.store.set_host_token(initiator, token_digest(token))
            return self._credentials(host, token)

    def _registered(self, initiator: str) -> Host:
        host = self.store.host(initiator)
        if host is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no host with initiator {initiator} on this array")
        return host

    def unregister_host(self, initiator: str, caller: Caller = ADMIN) -> None:
        """Forget a host; refused while LUNs are still masked to it (unmask them first)."""
        require_admin(caller, "unregister hosts")
        initiator = names.initiator(initiator)
        with self._op_lock:
            host = self._registered(initiator)
            luns = [_api_name(m.lun) for m in self.store.masks(initiator=initiator)]
            if luns:
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"host {host.name!r} ({initiator}) still sees LUNs {', '.join(luns)}; "
                                f"unmask them first")
            self.store.remove_host(initiator)

    def register_configured_hosts(self) -> dict[str, dict]:
        """At agent start: register the config's hosts (initiator -> name). Returns the
        credentials of those newly registered, by initiator, for their access files. Every entry
        is checked before any is registered. An initiator already registered under another
        name keeps it (a warning): start-up does not rename."""
        wanted = sorted((names.initiator(i, "configured host initiator"), names.lun_name(n, "configured host name"))
                        for i, n in self.config.hosts.items())
        made = {}
        with self._op_lock:
            for initiator, name in wanted:
                have = self.store.host(initiator)
                if have is None:
                    made[initiator] = self.register_host(initiator, name)["credentials"]
                elif have.name != name:
                    log.warning("configured host %s (%s) is registered as %r; left as it is",
                                name, initiator, have.name)
        if made:
            log.info("hosts registered from the config: %s", ", ".join(made))
        return made

    def _require_host(self, initiator: str) -> Host:
        host = self.store.host(initiator)
        if host is None:
            raise vss_error(HResult.E_ACCESSDENIED,
                            f"initiator {initiator} is not a host of this array; "
                            f"register it with PUT /v1/hosts/{initiator}")
        return host

    # -- snapshot sets -------------------------------------------------------------------

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
        with self._op_lock:
            origins = [self._lun(lun, caller) for _, lun in wanted]
            for origin in origins:
                self._require_use(origin, caller, "snapshot")
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
            self._check_pool()
            members, serials = [], set()
            for sid, origin in wanted:
                serial = self._new_serial(serials)
                serials.add(serial)
                members.append(SetMember(set_id, sid, origin, SNAPSHOT_PREFIX + sid, serial))
            self.store.add_set(set_id, members, caller.initiator, transportable)
            self._premake(set_id, members)
            return self.set_view(set_id)

    def _premake(self, set_id: str, members: list[SetMember]) -> None:
        """Make the set's snapshots now, outside the commit window, so the commit only has to
        make them again from the origins' current blocks (`Lvm.repoint_snapshots`), which costs
        no LVM metadata update. A failure aborts the set and nothing is left."""
        try:
            self._create_snapshots(members)
            self._premade[set_id] = self._thin_pairs(members)
        except Exception as e:
            errors = self._undo_set(set_id)
            raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                            f"snapshot set {set_id}: the snapshots could not be prepared: {e}"
                            + (f"; cleanup: {'; '.join(errors)}" if errors else "")) from e

    def _create_snapshots(self, members: list[SetMember]) -> float:
        """lvcreate -s of every member, tagged as the set's, in one lvm process."""
        return self.lvm.create_snapshots([
            (m.origin, m.name, {KIND_TAG: "snapshot", SET_TAG: m.set_id, SNAPSHOT_TAG: m.snapshot_id})
            for m in members])

    def _thin_pairs(self, members: list[SetMember]) -> list:
        """(origin, snapshot) ThinDevice of each member, from one lvs (None where an LV is missing)."""
        devices = self.lvm.thin_devices([m.origin for m in members] + [m.name for m in members])
        return [(devices.get(m.origin), devices.get(m.name)) for m in members]

    def _commit_snapshots(self, s) -> float:
        """The commit window: the pre-made snapshots made again at this moment. Without them
        (removed behind the agent's back since the prepare, or an origin is not active), one
        batch of lvcreate -s, as slow as LVM is but just as consistent."""
        pairs = self._premade.pop(s.set_id, None)
        if pairs is None:
            pairs = self._thin_pairs(s.members)
        if all(o is not None and o.dm_name and sn is not None and sn.dm_name is None for o, sn in pairs):
            return self.lvm.repoint_snapshots(pairs)
        log.warning("set %s: snapshots not pre-made (or an origin inactive); creating them now", s.set_id)
        for m in s.members:
            if self.lvm.get(m.name) is not None:
                self.lvm.remove(m.name)
        return self._create_snapshots(s.members)

    def _set(self, set_id: str, caller: Caller, owner_only: bool = False) -> SnapshotSet:
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
        if (imported and imported[0] == caller.initiator) or self._may_import(s, caller.initiator):
            return s
        raise denied(caller, f"see snapshot set {set_id}")

    def set_view(self, set_id: str, caller: Caller = ADMIN) -> dict:
        with self._op_lock:
            s = self._set(set_id, caller)
        imported = self.store.import_of(s.set_id)
        return {
            "set_id": s.set_id, "state": s.state, "commit_window_s": s.commit_window_s,
            "transportable": s.transportable, "handed_out": s.handed_out,
            "imported_by": imported[0] if imported else None,
            "snapshots": [{"snapshot_id": m.snapshot_id, "lun": _api_name(m.origin),
                           "target": m.name, "serial": m.serial, "wwid": naa_wwid(m.serial),
                           "vendor": LIO_VENDOR, "product": LIO_PRODUCT} for m in s.members],
        }

    def claim_import(self, serials: list[str], host: str | None = None, caller: Caller = ADMIN) -> dict:
        """Before a host locates shadow LUNs: the sets they belong to become that host's import,
        and their shadow LUNs the host's to mask, break and delete. A set already imported by
        another host is refused (spec 9.1: a transportable set is imported once); the same host
        again is a retry. A host claims for itself only, and only sets it may import. Nothing is
        claimed unless all can be."""
        host = names.initiator(host if host is not None else caller.initiator, "host")
        if not caller.is_admin and host != caller.initiator:
            raise denied(caller, f"claim an import for another host ({host})")
        if not isinstance(serials, list) or not serials or len(serials) > MAX_LUNS_PER_SET * 4:
            raise vss_error(HResult.E_INVALIDARG, "serials: a non-empty list of LUN serials")
        serials = [names.serial(x) for x in serials]
        with self._op_lock:
            self._require_host(host)  # only a registered host imports, and before any claim
            set_ids = []
            for serial in serials:
                lun = self.store.lun_by_serial(serial)
                if lun is None or lun.state != "ready" or lun.kind != "snapshot":
                    raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no shadow LUN with serial {serial!r}")
                if lun.set_id not in set_ids:
                    set_ids.append(lun.set_id)
            for set_id in set_ids:
                s = self.store.snapshot_set(set_id)
                if s is None or s.state != "committed":
                    raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is not committed")
                if not self._may_import(s, host):
                    raise denied(caller, f"import snapshot set {set_id} to {host}: it is not transportable "
                                         f"and another host made it")
                taken = self.store.import_of(set_id)
                if taken is not None and taken[0] != host:
                    raise vss_error(HResult.VSS_E_BAD_STATE,
                                     f"snapshot set {set_id} was already imported by {taken[0]} at "
                                     f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(taken[1]))}")
            with self.store.tx():
                claims = [self.store.claim_import(set_id, host) for set_id in set_ids]
                for set_id in set_ids:
                    self.store.set_holder([lun.name for lun in self.store.luns() if lun.set_id == set_id], host)
            return {"sets": [{"set_id": sid, "host": h, "since": since}
                             for sid, (h, since) in zip(set_ids, claims)]}

    def commit_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Only the snapshots, all of the set in one batch: this is the window in which writes
        are held on the hosts. Activation and export come after, in publish_set (or at the
        first mask, or at the next reconcile): a committed snapshot is 'ready' at once."""
        with self._op_lock:
            s = self._set(set_id, caller, owner_only=True)
            set_id = s.set_id
            if s.state == "committed":
                return self.set_view(set_id)  # a retry
            if s.state != "prepared":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is {s.state}")
            gone = [_api_name(m.origin) for m in s.members
                    if (o := self.store.lun(m.origin)) is None or o.state != "ready"]
            if gone:
                raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                                 f"snapshot set {set_id}: no LUN {', '.join(gone)} any more")
            with self.store.tx():
                self.store.set_state(set_id, "committing")
                for m in s.members:
                    origin = self.store.lun(m.origin)
                    self.store.add_lun(m.name, "snapshot", origin.size_bytes, m.serial, origin=m.origin,
                                       set_id=set_id, snapshot_id=m.snapshot_id, holder=s.owner)
            crash_point("commit-before-snapshots")
            try:
                window = self._commit_snapshots(s)
                crash_point("commit-after-snapshots")
            except Exception as e:
                self._undo_set(s.set_id)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"commit of set {set_id} failed: {e}") from e
            with self.store.tx():
                for m in s.members:
                    self.store.set_lun_state(m.name, "ready")
                self.store.set_state(set_id, "committed", commit_window_s=window)
            log.info("set %s committed: %d snapshots in %.3f s", set_id, len(s.members), window)
            return self.set_view(set_id)

    def publish_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Activate and export every snapshot of a committed set (masked to nobody yet), so that
        locating them later is quick. Idempotent; outside the commit window."""
        with self._op_lock:
            s = self._set(set_id, caller, owner_only=True)
            set_id = s.set_id
            if s.state != "committed":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {set_id} is {s.state}, not committed")
            try:
                self._publish(*(lun for m in s.members if (lun := self.store.lun(m.name)) is not None
                                and lun.state == "ready" and lun.set_id == set_id))  # not detached
            except Exception as e:  # the set stays committed: a retry or the reconcile finishes it
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"publish of set {set_id}: {e}") from e
            return self.set_view(set_id)

    def hand_out_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """The set's requester has it whole (PostFinalCommitSnapshots succeeded): from now on
        it is removed by deleting its shadow copies, never by an abort. Idempotent; only a
        committed set, by its owner."""
        with self._op_lock:
            s = self._set(set_id, caller, owner_only=True)
            if s.state != "committed":
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {s.set_id} is {s.state}, not committed")
            self.store.hand_out(s.set_id)
            return self.set_view(s.set_id)

    def plex_set(self, set_id: str, caller: Caller = ADMIN) -> list[Job]:
        """PLEX: each shadow LUN of a committed set becomes a full copy, independent of its
        origin. A job per LUN copies the snapshot (the bytes of the freeze point) into a new thin
        LV, which then takes the snapshot's place under the same LUN name and serial: hosts see
        the same LUN, now a plex. Before the set is handed out, by its owner; the whole size of
        the copies is reserved in the pool."""
        with self._op_lock:
            s = self._set(set_id, caller, owner_only=True)
            if s.state != "committed" or s.handed_out is not None:
                raise vss_error(HResult.VSS_E_BAD_STATE, f"snapshot set {s.set_id} is {s.state}"
                                f"{', handed out' if s.handed_out else ''}: full copies are made before")
            luns = [lun for m in s.members if (lun := self.store.lun(m.name)) is not None and lun.set_id == s.set_id]
            self._check_pool(need_bytes=sum(lun.size_bytes for lun in luns))
            jobs = []
            for lun in luns:
                plex = PLEX_PREFIX + lun.name.removeprefix(SNAPSHOT_PREFIX)
                self._require_no_lv(plex)
                job = self.store.add_job(uuid.uuid4().hex, "copy", lun.name, plex, lun.size_bytes,
                                         caller.initiator)
                try:
                    self.lvm.create_volume(plex, lun.size_bytes, {KIND_TAG: "copy"})
                except Exception as e:
                    self.store.update_job(job.job_id, state="failed", error=str(e))
                    raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not create {plex}: {e}") from e
                self._run_job(job, lambda progress, lun=lun, plex=plex: self._plex(lun, plex, progress))
                jobs.append(job)
            return jobs

    def _plex(self, lun: Lun, plex: str, progress) -> None:
        """Copy, then swap: the snapshot LV goes, the copy is renamed to it and tagged as it was,
        and exported again with the same serial if it was exported."""
        copy_blocks(self._active_device(lun), self.lvm.device(plex), lun.size_bytes, progress)
        with self._op_lock:
            if self.store.masks(lun.name):
                raise RuntimeError(f"{lun.name} was masked to a host during its full copy")
            exported = lun.name in self.lio.exports()
            if exported:
                self.lio.unexport(lun.name)
            self.lvm.remove(lun.name)
            self.lvm.rename(plex, lun.name)
            self.lvm.retag(lun.name, [f"{KIND_TAG}=copy"],
                           {KIND_TAG: "snapshot", SET_TAG: lun.set_id, SNAPSHOT_TAG: lun.snapshot_id})
            if exported:
                self.lio.export(lun.name, self.lvm.device(lun.name), lun.serial)
        log.info("%s is a full copy now (plex)", lun.name)

    def _publish(self, *luns: Lun) -> None:
        """Activate (thin snapshots skip activation) and export with the stored serials, in
        batches: one lvs, one lvchange for every LV (LIO saves once, after the burst)."""
        active = {lv.name for lv in self.lvm.volumes() if lv.active}
        self.lvm.activate(*(lun.name for lun in luns if lun.name not in active))
        for lun in luns:
            self.lio.export(lun.name, self.lvm.device(lun.name), lun.serial)
            crash_point("publish-after-first-export")

    def _undo_set(self, set_id: str) -> list[str]:
        errors = []
        self._premade.pop(set_id, None)
        s = self.store.snapshot_set(set_id)
        for m in s.members if s else ():
            lun = self.store.lun(m.name)
            if lun is not None and lun.set_id != set_id:
                continue  # detached: an ordinary LUN now, not the set's to undo
            for mask in self.store.masks(m.name):
                self.store.remove_mask(m.name, mask.initiator)
            errors += self._destroy(m.name)
        self.store.set_state(set_id, "aborted")
        return errors

    def abort_set(self, set_id: str, caller: Caller = ADMIN) -> dict:
        """Undo whatever the set made: before it was handed out (abort after commit deletes).
        Only its owner aborts it, and not once it was handed out to its requester or imported
        by a host: a late abort (a retry, another provider instance) must not delete a shadow
        copy that a document already describes. The admin may abort any set."""
        with self._op_lock:
            s = self._set(set_id, caller, owner_only=True)
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
            self._require_trusted(f"abort of snapshot set {set_id}")
            errors = self._undo_set(set_id)
            if errors:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "; ".join(errors))
            return self.set_view(set_id)

    # -- break: a shadow copy becomes an ordinary LUN ------------------------------------

    def detach(self, name: str, caller: Caller = ADMIN) -> LunView:
        """The array's side of a break: the snapshot LUN `name` becomes a LUN of kind 'volume',
        no longer in its set (set and snapshot id cleared, origin kept for information). Its
        serial, masks, LV and LIO export stay as they are; its LV loses the snapshot tags. Aborting
        the set later leaves it alone. The store changes first; if the LV's tags cannot be
        changed the store is put back and nothing has changed. A crash in between is finished by
        the reconcile (the LV's tags follow the store)."""
        with self._op_lock:
            lun = self._lun(name, caller)
            self._require_holder(lun, caller, "detach")
            if lun.kind != "snapshot":
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                 f"{name} is a {lun.kind}, not a shadow copy: nothing to detach")
            self.store.set_lun_kind(lun.name, "volume")
            crash_point("detach-after-store")
            try:
                lv = self.lvm.get(lun.name)
                if lv is not None:
                    self.lvm.retag(lun.name, *_kind_tags(lv, "volume"))
            except Exception as e:
                self.store.set_lun_kind(lun.name, lun.kind, set_id=lun.set_id, snapshot_id=lun.snapshot_id)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not detach {name}: {e}") from e
            log.info("%s detached from snapshot set %s: an ordinary LUN now", lun.name, lun.set_id)
            return self._view(self.store.lun(lun.name), caller=caller)

    # -- long-running jobs: full copy (plex) and resync ---------------------------------

    def start_copy(self, source: str, target: str, caller: Caller = ADMIN) -> Job:
        """A full copy of `source` into a new volume `target`, made on the array. The copy is
        the caller's (masked to nobody); the whole size is reserved in the pool until it ends."""
        names.lun_name(target, "copy name")
        lv = VOLUME_PREFIX + target
        with self._op_lock:
            src = self._lun(source, caller)
            self._require_use(src, caller, "copy")
            if self.store.lun(lv) is not None:
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a LUN named {target!r} exists")
            self._require_no_lv(lv)
            self._check_size(src.size_bytes, "copy size")
            self._check_pool(need_bytes=src.size_bytes)
            lun = self.store.add_lun(lv, "copy", src.size_bytes, self._new_serial(), origin=src.name,
                                     holder=caller.initiator)
            job = self.store.add_job(uuid.uuid4().hex, "copy", src.name, lv, src.size_bytes, caller.initiator)
            try:
                self.lvm.create_volume(lv, src.size_bytes, {KIND_TAG: "copy"})
            except Exception as e:
                self._destroy(lv)
                self.store.update_job(job.job_id, state="failed", error=str(e))
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not create {lv}: {e}") from e
            self._run_job(job, lambda progress: self._copy_then_export(src, lun, progress))
            return job

    def _unmapped_bytes(self, lun: Lun) -> int:
        """What writing every block of the LUN could still take from the pool."""
        lv = self.lvm.get(lun.name)
        return lun.size_bytes - int(lun.size_bytes * (lv.data_percent or 0.0) / 100) if lv else lun.size_bytes

    def _active_device(self, lun: Lun) -> str:
        """The LUN's device node, activating the LV first (thin snapshots skip activation)."""
        lv = self.lvm.get(lun.name)
        if lv is not None and not lv.active:
            self.lvm.activate(lun.name)
        return self.lvm.device(lun.name)

    def _copy_then_export(self, src: Lun, lun: Lun, progress) -> None:
        self._active_device(src)
        copy_blocks(self.lvm.device(src.name), self.lvm.device(lun.name), src.size_bytes, progress)
        crash_point("copy-before-export")
        self.lio.export(lun.name, self.lvm.device(lun.name), lun.serial)
        self.store.set_lun_state(lun.name, "ready")

    def start_resync(self, snapshot: str, target: str, caller: Caller = ADMIN) -> Job:
        """Revert `target` (usually the snapshot's origin) to the snapshot's bytes, on the array;
        only differing chunks are written. The source is a shadow copy; a host resyncs only
        onto its own LUNs, from snapshots it may use. Hosts must have the target unmounted (the
        coordinator's job); the array refuses a target already in a running job, and a pool
        that could not take the target's unwritten blocks."""
        with self._op_lock:
            snap, dst = self._lun(snapshot, caller), self._lun(target, caller)
            self._require_trusted(f"resync of {target}")
            if snap.kind != "snapshot":
                raise vss_error(HResult.E_INVALIDARG, f"{snapshot} is a {snap.kind}, not a shadow copy: "
                                                      f"a resync copies a shadow copy back")
            if snap.name == dst.name:
                raise vss_error(HResult.E_INVALIDARG, f"{snapshot} cannot be resynced onto itself")
            self._require_use(dst, caller, "resync onto")
            if snap.size_bytes > dst.size_bytes:
                raise vss_error(HResult.E_INVALIDARG, f"{target} is smaller than {snapshot}")
            if any(j.state == "running" and dst.name in (j.source, j.target) for j in self.store.jobs()):
                raise vss_error(HResult.VSS_E_RESYNC_IN_PROGRESS, f"{target} is already being resynced")
            self._check_pool(need_bytes=self._unmapped_bytes(dst))
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
            with self._op_lock:
                self.lvm.resize(dst.name, snap.size_bytes)
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
            except JobCancelled:
                log.warning("job %s cancelled by its requester", job.job_id)
                if job.kind == "copy":
                    self._destroy(job.target)
                self.store.update_job(job.job_id, state="cancelled")
            except Exception as e:  # noqa: BLE001 - recorded on the job, shown by the API
                log.exception("job %s failed", job.job_id)
                if job.kind == "copy":
                    self._destroy(job.target)
                self.store.update_job(job.job_id, state="failed", error=str(e))

        t = threading.Thread(target=body, name=f"job-{job.job_id[:8]}", daemon=True)
        self._jobs[job.job_id] = t
        t.start()

    def cancel_job(self, job_id: str, caller: Caller = ADMIN) -> Job:
        """Stop a running job at its next chunk (IVssAsync::Cancel): a copy's new LUN is removed,
        a resync's destination keeps what was written so far (it is neither the old nor the
        new content: resync again). A job that has ended is answered as it is."""
        job = self.job(job_id, caller)
        if job.state == "running" and job.job_id in self._cancels:
            self._cancels[job.job_id].set()
            thread = self._jobs.get(job.job_id)
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

