"""LUNs: volumes, shadow copies and copies as the API shows them, made, deleted, masked to
hosts and detached from their sets; the thin pool's room for them; their LVs' tags."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from provider.contract.hresult import HResult, vss_error
from provider.contract.lio_target import LIO_PRODUCT, LIO_VENDOR

from . import names
from .backend import Volume
from .authority import ADMIN, Caller, denied, may_import, require_admin
from .context import ArrayContext, ArrayPart
from .faults import crash_point
from .hosts import HostRegistry
from .lio import naa_wwid
from .names import SNAPSHOT_PREFIX, VOLUME_PREFIX, api_name
from .store import Host, Lun, Mask

log = logging.getLogger("shadowlun.array")

MIN_VOLUME_BYTES = 1 << 20
KIND_TAG, SET_TAG, SNAPSHOT_TAG = "shadowlun.kind", "shadowlun.set", "shadowlun.snapshot"


def kind_tags(lv: Volume, kind: str) -> tuple[list[str], dict[str, str]]:
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
    identity_of: str | None = None  # a broken copy presenting its original's identity: the original


class Luns(ArrayPart):
    """The array's LUNs, each a volume of the storage backend exported by LIO, and who may see and use them."""

    def __init__(self, ctx: ArrayContext, hosts: HostRegistry) -> None:
        super().__init__(ctx)
        self.hosts = hosts

    def _view(self, lun: Lun, exports: dict | None = None, caller: Caller = ADMIN) -> LunView:
        if exports is None:  # one LUN's view: its own LUN number only
            lun_id = self.lio.lun_number(lun.name)
        else:
            export = exports.get(lun.name)
            lun_id = export.lun if export else None
        return LunView(
            name=api_name(lun.name), kind=lun.kind, size_bytes=lun.size_bytes,
            serial=lun.exported_serial, wwid=naa_wwid(lun.exported_serial), vendor=LIO_VENDOR, product=LIO_PRODUCT,
            origin=api_name(lun.origin) if lun.origin else None,
            set_id=lun.set_id, snapshot_id=lun.snapshot_id, state=lun.state,
            lun_id=lun_id,
            masks=[{"initiator": m.initiator, "read_only": m.read_only} for m in self.store.masks(lun.name)
                   if caller.is_admin or m.initiator == caller.initiator],  # a host sees only its own
            identity_of=api_name(lun.origin) if lun.taken_serial and lun.origin else None,
        )

    def _masked_to(self, lun: Lun, caller: Caller) -> bool:
        return any(m.initiator == caller.initiator for m in self.store.masks(lun.name))

    def _visible(self, lun: Lun, caller: Caller) -> bool:
        if caller.is_admin or lun.holder == caller.initiator or self._masked_to(lun, caller):
            return True
        s = self.store.snapshot_set(lun.set_id) if lun.kind == "snapshot" and lun.set_id else None
        return s is not None and s.state == "committed" and may_import(s, caller.initiator)

    def require_use(self, lun: Lun, caller: Caller, action: str) -> None:
        """Snapshot, copy or resync: the caller's own LUNs (masked to it, or held)."""
        if not (caller.is_admin or lun.holder == caller.initiator or self._masked_to(lun, caller)):
            raise denied(caller, f"{action} {api_name(lun.name)}: it is not masked to this host")

    def _require_holder(self, lun: Lun, caller: Caller, action: str) -> None:
        """Delete, detach, mask or unmask: what the caller made or imported."""
        if not (caller.is_admin or lun.holder == caller.initiator):
            raise denied(caller, f"{action} {api_name(lun.name)}: this host did not make or import it")

    def inventory(self, caller: Caller = ADMIN) -> list[LunView]:
        with self.ctx.lock:
            return self.views([lun for lun in self.store.luns() if self._visible(lun, caller)], caller)

    def views(self, luns: list[Lun], caller: Caller = ADMIN) -> list[LunView]:
        """The API's view of these LUNs, from one walk of LIO's exports."""
        exports = self.lio.exports()
        return [self._view(lun, exports, caller) for lun in luns]

    def get(self, name: str, caller: Caller = ADMIN) -> Lun:
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
        with self.ctx.lock:
            return self._view(self.get(name, caller), caller=caller)

    def pool(self) -> dict:
        p = self.backend.use()
        return {"vg": p.group, "pool": p.name, "size_bytes": p.size_bytes, "used_bytes": p.used_bytes,
                "free_bytes": p.free_bytes, "data_percent": p.data_percent,
                "metadata_percent": p.metadata_percent, "full_percent": self.config.pool_full_percent}

    def check_pool(self, need_bytes: int = 0) -> None:
        """Refuse new work on a nearly full pool (data or metadata), before anything is made.
        Running copies have reserved what they have still to write."""
        p = self.backend.use()
        limit = self.config.pool_full_percent
        reserved = sum(j.total_bytes - j.done_bytes for j in self.store.jobs("running") if j.kind == "copy")
        after = 100.0 * (p.used_bytes + reserved + need_bytes) / p.size_bytes if p.size_bytes else 100.0
        if p.data_percent >= limit or p.metadata_percent >= limit or after >= limit:
            raise vss_error(HResult.VSS_E_INSUFFICIENT_STORAGE,
                            f"thin pool {p.group}/{p.name} is too full: data {p.data_percent:.1f}%, "
                            f"metadata {p.metadata_percent:.1f}%, {need_bytes} bytes needed, "
                            f"{reserved} reserved by running copies, limit {limit:.0f}%")

    def check_size(self, size_bytes: object, what: str = "size") -> int:
        """A new volume's or copy's virtual size: bounded, and the pool not overcommitted
        beyond its ratio (snapshots share their origin's blocks and are not counted)."""
        if type(size_bytes) is not int or size_bytes < MIN_VOLUME_BYTES or size_bytes % 512:
            raise vss_error(HResult.E_INVALIDARG, f"{what} {size_bytes!r}: an integer of at least 1 MiB, "
                                                  f"a multiple of 512")
        if size_bytes > self.config.max_volume_bytes:
            raise vss_error(HResult.E_INVALIDARG, f"{what} {size_bytes}: at most "
                                                  f"{self.config.max_volume_bytes} bytes on this array")
        p = self.backend.use()
        virtual = sum(lun.size_bytes for lun in self.store.luns() if lun.kind != "snapshot")
        allowed = int(self.config.overcommit_ratio * p.size_bytes)
        if virtual + size_bytes > allowed:
            raise vss_error(HResult.VSS_E_INSUFFICIENT_STORAGE,
                            f"{what} {size_bytes}: the volumes would total {virtual + size_bytes} bytes, "
                            f"over {self.config.overcommit_ratio:g} times the thin pool ({allowed} bytes)")
        return size_bytes

    def require_no_volume(self, lv: str) -> None:
        """A new LUN's name must be free in the backend too: a volume the store does not know (set
        aside at start) would otherwise be removed by the failed create's cleanup."""
        if self.backend.volume(lv) is not None:
            raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS,
                             f"an LV named {lv} exists on the array, unknown to its store (see GET /v1/health)")

    def new_serial(self, also_taken: set[str] = frozenset()) -> str:
        """32 hex digits, unique in its first 25 (LIO's NAA id uses only those) among LUNs,
        the snapshots of prepared sets, and `also_taken` (the set being prepared)."""
        taken = {naa_wwid(serial) for lun in self.store.luns() for serial in (lun.serial, lun.exported_serial)}
        taken |= {naa_wwid(m.serial) for s in self.store.sets() for m in s.members}
        taken |= {naa_wwid(serial) for serial in also_taken}
        while True:
            serial = uuid.uuid4().hex
            if naa_wwid(serial) not in taken and not self.store.serial_in_use(serial):
                return serial

    def create_volume(self, name: str, size_bytes: int, caller: Caller = ADMIN) -> LunView:
        require_admin(caller, "create a volume")
        names.lun_name(name)
        lv = VOLUME_PREFIX + name
        with self.ctx.lock:
            existing = self.store.lun(lv)
            if existing is not None:
                if existing.state == "ready" and existing.size_bytes == size_bytes and existing.kind == "volume":
                    return self._view(existing)  # a retry
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a LUN named {name!r} exists")
            self.check_size(size_bytes)
            self.require_no_volume(lv)
            self.check_pool()
            lun = self.store.add_lun(lv, "volume", size_bytes, self.new_serial())
            self._make(lun, lambda: self.backend.create_volume(lv, size_bytes, {KIND_TAG: "volume"}))
            return self._view(self.store.lun(lv))

    def _make(self, lun: Lun, create) -> None:
        """Volume, then export; on failure undo both and drop the intent (errors collected)."""
        try:
            create()
            crash_point("volume-lv-created")
            self.lio.export(lun.name, self.backend.device(lun.name), lun.serial)
            self.store.set_lun_state(lun.name, "ready")
        except Exception as e:
            self.destroy(lun.name)
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not create {lun.name}: {e}") from e

    def destroy(self, lv: str) -> list[str]:
        """Remove export, LV and store rows of one LUN, collecting errors rather than stopping.
        If the export or the LV stays, so does the row, as 'deleting': the reconcile at the next
        start finishes it from the store's record (it never removes LVs the store does not know)."""
        errors = []
        for what, fn in (("LIO export", lambda: self.lio.unexport(lv)),
                         ("LV", lambda: self.backend.volume(lv) and self.backend.remove(lv)),
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
        with self.ctx.lock:
            lun = self.get(name, caller)
            self._require_holder(lun, caller, "delete")
            self.ctx.require_trusted(f"delete of {name}")
            if any(j.state == "running" and lun.name in (j.source, j.target) for j in self.store.jobs()):
                raise vss_error(HResult.VSS_E_VOLUME_IN_USE, f"{name} is in a running copy or resync")
            self.store.set_lun_state(lun.name, "deleting")
            errors = self.destroy(lun.name)
            if errors:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, "; ".join(errors))

    def mask(self, name: str, initiator: str, read_only: bool = False, caller: Caller = ADMIN) -> LunView:
        """Show the LUN to `initiator`, a registered host, with that host's CHAP credentials.
        LIO first, then the store (undone in LIO if the store fails): the two never disagree."""
        initiator = names.initiator(initiator)
        if type(read_only) is not bool:
            raise vss_error(HResult.E_INVALIDARG, f"read_only {read_only!r}: true or false")
        with self.ctx.lock:
            lun = self.get(name, caller)
            if not caller.is_admin and initiator != caller.initiator:
                raise denied(caller, f"mask {name} to another initiator ({initiator})")
            self._require_holder(lun, caller, "mask")
            host = self.hosts.require_host(initiator)
            if self.lio.lun_number(lun.name) is None:  # a committed snapshot not published yet
                self.publish(lun)                        # is exported now (one lvs: only then)
            self.map(lun, host, read_only)
            return self._view(lun, caller=caller)

    def map(self, lun: Lun, host: Host, read_only: bool) -> None:
        """The mask itself, of an exported LUN to a registered host, once every check passed:
        LIO first, then the store (undone in LIO if the store fails), so the two never disagree.
        Never a second LUN with one identity to one host."""
        self._require_one_identity(lun, host.initiator)
        had = self.store.masks(lun.name)
        self.lio.mask(lun.name, host.initiator, host.chap_user, host.chap_secret, read_only)
        try:
            self.store.put_mask(Mask(lun.name, host.initiator, read_only))
        except Exception:
            old = next((m for m in had if m.initiator == host.initiator), None)
            if old is None:
                self.lio.unmask(lun.name, host.initiator)
            else:
                self.lio.mask(lun.name, host.initiator, host.chap_user, host.chap_secret, old.read_only)
            raise

    def _require_one_identity(self, lun: Lun, initiator: str) -> None:
        """A host never sees two LUNs with one identity (an original and the broken copy that
        took it): it would take them for two paths to one disk."""
        for other in self.store.luns_presenting(lun.exported_serial):
            if other.name != lun.name and any(m.initiator == initiator for m in self.store.masks(other.name)):
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"{initiator} sees {api_name(other.name)}, which has the identity "
                                f"{api_name(lun.name)} presents (serial {lun.exported_serial}): unmask it first")

    def unmask(self, name: str, initiator: str, caller: Caller = ADMIN) -> LunView:
        initiator = names.initiator(initiator)
        with self.ctx.lock:
            lun = self.get(name, caller)
            if not caller.is_admin and initiator != caller.initiator:
                raise denied(caller, f"unmask {name} from another initiator ({initiator})")
            self._require_holder(lun, caller, "unmask")
            self.lio.unmask(lun.name, initiator)
            self.store.remove_mask(lun.name, initiator)
            return self._view(lun, caller=caller)

    def publish(self, *luns: Lun) -> None:
        """Activate (snapshots are made inactive) and export with the stored serials, in batches:
        one listing, one activation for every volume, LIO's file saved once after the batch."""
        active = {lv.name for lv in self.backend.volumes() if lv.active}
        self.backend.activate(*(lun.name for lun in luns if lun.name not in active))
        with self.lio.batch():
            for lun in luns:
                self.lio.export(lun.name, self.backend.device(lun.name), lun.exported_serial)
                crash_point("publish-after-first-export")

    def detach(self, name: str, caller: Caller = ADMIN) -> LunView:
        """The array's side of a break: the snapshot LUN `name` becomes a LUN of kind 'volume',
        no longer in its set (set and snapshot id cleared, origin kept for information). Its
        serial, masks, LV and LIO export stay as they are; its LV loses the snapshot tags. Aborting
        the set later leaves it alone. The store changes first; if the LV's tags cannot be
        changed the store is put back and nothing has changed. A crash in between is finished by
        the reconcile (the LV's tags follow the store)."""
        with self.ctx.lock:
            lun = self.get(name, caller)
            self._require_holder(lun, caller, "detach")
            if lun.kind != "snapshot":
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                 f"{name} is a {lun.kind}, not a shadow copy: nothing to detach")
            self.store.set_lun_kind(lun.name, "volume")
            crash_point("detach-after-store")
            try:
                lv = self.backend.volume(lun.name)
                if lv is not None:
                    self.backend.retag(lun.name, *kind_tags(lv, "volume"))
            except Exception as e:
                self.store.set_lun_kind(lun.name, lun.kind, set_id=lun.set_id, snapshot_id=lun.snapshot_id)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"could not detach {name}: {e}") from e
            log.info("%s detached from snapshot set %s: an ordinary LUN now", lun.name, lun.set_id)
            return self._view(self.store.lun(lun.name), caller=caller)

    def take_identity(self, lun_names: list[str], caller: Caller = ADMIN) -> list[LunView]:
        """REVERT_IDENTITY_ALL on the array: each broken (or shadow) copy presents its original's
        unit serial, so hosts read the original's page 0x83 identity on it. All or none: refused
        with VSS_E_BREAK_REVERT_ID_FAILED, nothing changed, when an original is gone or a host the
        copy is masked to also sees the original (or another LUN with that identity). The store
        changes before LIO (a crash between is finished by the reconcile); a failure of LIO
        (VSS_E_PROVIDER_VETO) puts back what was changed, errors collected."""
        if not isinstance(lun_names, list) or not lun_names or not all(isinstance(n, str) for n in lun_names):
            raise vss_error(HResult.E_INVALIDARG, "luns: a non-empty list of LUN names")
        with self.ctx.lock:
            plan: list[tuple[Lun, str]] = []
            for name in dict.fromkeys(lun_names):
                lun = self.get(name, caller)
                self._require_holder(lun, caller, "revert the identity of")
                if not (lun.kind == "snapshot" or (lun.kind == "volume" and lun.origin)):
                    raise vss_error(HResult.E_INVALIDARG, f"{name} is a {lun.kind} LUN, not a shadow copy: "
                                                          f"it has no original identity to take")
                origin = self.store.lun(lun.origin)
                if origin is None or origin.state != "ready":
                    raise vss_error(HResult.VSS_E_BREAK_REVERT_ID_FAILED,
                                    f"{name}: its original {api_name(lun.origin)} is no longer on this array")
                if lun.exported_serial != origin.exported_serial:
                    plan.append((lun, origin.exported_serial))
            for lun, identity in plan:
                hosts = {m.initiator for m in self.store.masks(lun.name)}
                for other in self.store.luns_presenting(identity):
                    seen = hosts & {m.initiator for m in self.store.masks(other.name)}
                    if other.name != lun.name and seen:
                        raise vss_error(HResult.VSS_E_BREAK_REVERT_ID_FAILED,
                                        f"{api_name(lun.name)}: {', '.join(sorted(seen))} also sees "
                                        f"{api_name(other.name)} with that identity; nothing was reverted")
            stored: list[Lun] = []
            exported: list[Lun] = []
            in_lio = self.lio.exports()
            try:
                for lun, identity in plan:
                    stored.append(lun)
                    self.store.set_taken_serial(lun.name, identity)
                    crash_point("take-identity-after-store")
                    if lun.name in in_lio:  # one not exported yet gets it from the store when it is
                        self.lio.change_serial(lun.name, identity)  # a refused change undoes itself
                        exported.append(lun)
            except Exception as e:
                errors = self._give_back_identities(stored, exported)
                raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                                f"identity revert failed: {e}; "
                                + ("; ".join(errors) if errors else "nothing was reverted")) from e
            for lun, _ in plan:
                log.info("%s presents the identity of its original %s now", lun.name, lun.origin)
            return [self._view(self.store.lun(lun.name), caller=caller)
                    for lun in (self.get(n, caller) for n in dict.fromkeys(lun_names))]

    def _give_back_identities(self, stored: list[Lun], exported: list[Lun]) -> list[str]:
        """Undo a failed take_identity: each LUN its identity as it was, in the store and, where
        it was changed there, in LIO."""
        errors = []
        for lun in stored:
            try:
                self.store.set_taken_serial(lun.name, lun.taken_serial)
                if lun in exported:
                    self.lio.change_serial(lun.name, lun.exported_serial)
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(f"{lun.name}: not put back ({e}); the reconcile will")
        return errors
