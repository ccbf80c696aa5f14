"""The array's LIO objects, through rtslib-fb: one iSCSI target, LUN masking per initiator.

Like a real array (and targetd): one target, one TPG with CHAP required and no demo mode,
portals only on the SAN addresses; each exported volume is a block backstore + TPG LUN,
visible to an initiator only through that initiator's NodeACL + MappedLUN. Every operation
is create-or-lookup, so a retry changes nothing. rtslib-fb has no locking, so every change
holds one lock (in-process and a file lock against other processes, e.g. targetcli users).

The configuration file (what target.service restores at boot) is rewritten whole by rtslib
(`lio_save`), which takes seconds with a hundred LUNs under emulation; it is saved once after a
burst of changes (`SAVE_QUIET_S` after the last, at most `SAVE_LATEST_S` after the first) and
at shutdown, as background work: read without the lock at a lower CPU priority, so that no
call waits for it. The agent's store stays the truth: its reconcile at start re-applies every
export and mask whatever the file held. Lookups go straight to the object's configfs path
instead of listing every backstore and LUN, so one change costs the same with 10 or 200 LUNs.
"""
from __future__ import annotations

import fcntl
import glob
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provider.contract.lio_target import ISCSI_PORT, lio_naa_identifier

from .lio_save import saving_root

# In a root-only directory: a lock file in world-writable /run/lock could be held (or made a
# symlink) by any user, blocking every change the agent makes.
LOCK_FILE = Path("/run/shadowlun/lio.lock")
SAVE_FILE = "/etc/rtslib-fb-target/saveconfig.json"  # what Debian's target service restores
TPG_TAG = 1
CONFIGFS = "/sys/kernel/config/target"
log = logging.getLogger(__name__)
SAVE_QUIET_S = 1.0
SAVE_LATEST_S = 10.0
SAVE_NICE = 10  # the saving thread's niceness: a request's threads and LIO's own come first
# Every LUN is a thin LV: the LUN says so (Logical Block Provisioning VPD page: UNMAP and WRITE
# SAME with UNMAP), so a host's fstrim/blkdiscard reaches dm-thin and frees pool blocks. LIO
# leaves both off for block backstores.
THIN_ATTRIBUTES = {"emulate_tpu": "1", "emulate_tpws": "1"}
# Under LIO's dbroot: the kernel writes each LUN's persistent reservations (APTPL file, or its
# "no registrations" stub) in pr/ on every PERSISTENT RESERVE OUT, and ALUA state in alua/; it
# makes neither directory, and without pr/ every PR OUT fails NOT READY.
STATE_DIRS = ("pr", "alua")


def tpg_lun_number(mapped) -> int | None:
    """The TPG LUN an ACL's mapped LUN leads to, read from its configfs link (None: a broken
    link). rtslib's MappedLUN.tpg_lun builds every LUN of the TPG to find it: with about 190
    LUNs and 130 mappings in one ACL, each mask looked at every pair, and an import's 64 masks
    took minutes on the lab's array."""
    with os.scandir(mapped.path) as entries:
        for entry in entries:
            if entry.is_symlink():
                target = os.path.basename(os.path.realpath(entry.path))
                if target.startswith("lun_") and target[4:].isdigit():
                    return int(target[4:])
    return None


class LioError(Exception):
    """LIO is not as the agent needs it (as rtslib-fb's RTSLibError): the caller decides what it
    means to the requester, so these carry no VSS code."""


class NotExportedError(LioError):
    """The volume has no backstore and TPG LUN in our target (as rtslib-fb's RTSLibNotInCFS)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"{self.name} is not exported"


class BackstoreConflictError(LioError):
    """A backstore of the volume's name exists on another device or with another serial: an
    export made by someone else, which create-or-lookup must not take over."""

    def __init__(self, name: str, serial: str, device: str, found_serial: str, found_device: str) -> None:
        super().__init__(name, serial, device, found_serial, found_device)
        self.name, self.serial, self.device = name, serial, device
        self.found_serial, self.found_device = found_serial, found_device

    def __str__(self) -> str:
        return (f"backstore {self.name} exists with serial {self.found_serial} on {self.found_device} "
                f"(wanted {self.serial} on {self.device})")


class LioStateError(LioError):
    """LIO cannot keep the state SCSI hosts rely on (reservations) on this machine."""


def naa_wwid(serial: str) -> str:
    """The WWID a host reads for a LIO LUN with this unit serial: LIO's NAA designator, which
    keeps only the serial's hex digits and the first 25 of them (so serials must differ early)."""
    return "naa." + lio_naa_identifier(serial).hex()


@dataclass(frozen=True)
class Mapping:
    initiator: str
    mapped_lun: int
    read_only: bool


@dataclass(frozen=True)
class Export:
    name: str
    device: str
    serial: str
    lun: int
    mappings: tuple[Mapping, ...] = field(default=())

    @property
    def wwid(self) -> str:
        return naa_wwid(self.serial)


_thread_lock = threading.RLock()
_held = threading.local()


@contextmanager
def locked() -> Iterator[None]:
    """The in-process lock, then the file lock; re-entrant (a nested `locked` in the same
    thread takes the file lock once: a second flock on a new open file would wait for itself)."""
    with _thread_lock:
        if getattr(_held, "depth", 0):
            _held.depth += 1
            try:
                yield
            finally:
                _held.depth -= 1
            return
        LOCK_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        LOCK_FILE.parent.chmod(0o700)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            _held.depth = 1
            try:
                yield
            finally:
                _held.depth = 0


class Lio:
    """The array's iSCSI target. Imports rtslib_fb lazily: unit tests run without configfs."""

    def __init__(self, target_iqn: str, portals: list[str], save_file: str = SAVE_FILE) -> None:
        self.target_iqn, self.portals, self.save_file = target_iqn, portals, save_file
        self._save_timer: threading.Timer | None = None
        self._unsaved_since: float | None = None
        self._generation = 0  # counts changes: a save read during one is not written
        self._saving = threading.Lock()  # one save at a time, so an older one never lands last
        self._batches = 0  # open batch() blocks: their changes wait for the last to end

    @property
    def rts(self):
        import rtslib_fb

        return rtslib_fb

    def _tpg(self):
        r = self.rts
        target = r.Target(r.FabricModule("iscsi"), self.target_iqn)  # mode any: create or lookup
        tpg = r.TPG(target, TPG_TAG)
        if tpg.get_attribute("authentication") != "1":
            tpg.set_attribute("authentication", "1")
        if tpg.get_attribute("generate_node_acls") != "0":
            tpg.set_attribute("generate_node_acls", "0")
        have = {(p.ip_address, p.port) for p in tpg.network_portals}
        for ip in self.portals:
            if (ip, ISCSI_PORT) not in have:
                r.NetworkPortal(tpg, ip, ISCSI_PORT)
        for ip, port in have - {(ip, ISCSI_PORT) for ip in self.portals}:
            r.NetworkPortal(tpg, ip, port, mode="lookup").delete()
        if not tpg.enable:
            tpg.enable = True
        return tpg

    def check_state_dirs(self) -> None:
        """At the agent's start: refuse to serve LUNs whose reservations would fail."""
        root = Path(self.rts.RTSRoot().dbroot)
        missing = [str(root / d) for d in STATE_DIRS if not (root / d).is_dir()]
        if missing:
            raise LioStateError(
                f"LIO's state directories {', '.join(missing)} are missing (dbroot {root}): every "
                f"PERSISTENT RESERVE OUT would fail NOT READY; make them root-only as provisioning "
                f"does (mkdir -m 700 -p {' '.join(missing)})")

    @staticmethod
    def _advertise_thin(so) -> bool:
        """THIN_ATTRIBUTES on one backstore; whether any was off."""
        changed = False
        for attr, want in THIN_ATTRIBUTES.items():
            if so.get_attribute(attr) != want:
                so.set_attribute(attr, want)
                changed = True
        return changed

    def advertise_thin(self, name: str) -> bool:
        """For the reconcile: a backstore found with thin provisioning off (made by an older
        agent, or by hand) gets it; whether it was off (hosts see it on their next rescan)."""
        with locked():
            so = self._find_so(name)
            if so is None:
                raise NotExportedError(name)
            if not self._advertise_thin(so):
                return False
            self._changed()
            return True

    def _find_so(self, name: str):
        """The block backstore `name`, from its configfs directory (iblock_<n>/<name>)."""
        found = [p for p in glob.glob(f"{CONFIGFS}/core/iblock_*/{glob.escape(name)}") if os.path.isdir(p)]
        return self.rts.tcm.StorageObject.so_from_path(found[0]) if found else None

    def _lun_of(self, tpg, so):
        """The TPG LUN whose link points at `so`: one readlink per LUN, no object built for
        the others."""
        luns = f"{tpg.path}/lun"
        with os.scandir(luns) as entries:
            for entry in entries:
                if entry.name.startswith("lun_"):
                    with os.scandir(entry.path) as links:
                        if any(link.is_symlink() and os.path.realpath(link.path) == so.path
                               for link in links):
                            return self.rts.LUN(tpg, int(entry.name[4:]))
        return None

    @staticmethod
    def _drop_mapping(acl, lun) -> None:
        """Unmap `lun` from one initiator's ACL; an ACL left with no LUN goes too (no stale
        ACLs to reappear on the next export)."""
        for m in list(acl.mapped_luns):
            if tpg_lun_number(m) == lun.lun:
                m.delete()
        if not list(acl.mapped_luns):
            acl.delete()

    def save(self, dumped: dict | None = None) -> None:
        """Write the configuration file now: LIO as it is, or `dumped`, read from it earlier."""
        with locked():
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None
            Path(self.save_file).parent.mkdir(parents=True, exist_ok=True)
            saving_root(self.rts, dumped).save_to_file(self.save_file)
            self._unsaved_since = None  # only once written: a failed save is tried again

    def flush(self) -> None:
        """Save now if a change is waiting for its save (at shutdown)."""
        with locked():
            if self._unsaved_since is not None:
                self.save()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside are saved once, after the batch ends. A 64-LUN publish or abort
        spends seconds per LUN in LVM and udev, so the debounce's timer fired between its changes
        and rewrote the whole file (about 10 s with 170 LUNs under TCG) again and again: half of
        a publish, four fifths of an abort. A failed batch still saves what it changed."""
        with locked():
            self._batches += 1
        try:
            yield
        finally:
            with locked():
                self._batches -= 1
                if not self._batches and self._unsaved_since is not None:
                    self._unsaved_since = None  # the quiet time counts from the batch's end
                    self._changed()

    def _changed(self) -> None:
        """Schedule the save of a change: quiet-time debounce, bounded by SAVE_LATEST_S; inside a
        batch, none until it ends."""
        with locked():
            now = time.monotonic()
            self._generation += 1
            if self._unsaved_since is None:
                self._unsaved_since = now
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None
            if self._batches:
                return
            delay = max(0.0, min(SAVE_QUIET_S, self._unsaved_since + SAVE_LATEST_S - now))
            self._save_timer = threading.Timer(delay, self._timed_save)
            self._save_timer.daemon = True
            self._save_timer.start()

    def _timed_save(self) -> None:
        """The debounced save, in its timer's thread. Dumping LIO is seconds of CPU with a
        hundred LUNs (the lab's array has one vCPU): under the lock, every call that came
        meanwhile waited for it (a py-spy dump of the agent during an import caught the LUN
        listing waiting on a save). So the dump is read without the lock, at SAVE_NICE, and
        written only if no change came during it: that change's own timer saves again, so the
        file is always LIO at one moment. A stream of changes that outlasts SAVE_LATEST_S is
        saved under the lock, as every save was before."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SAVE_NICE)  # this thread only
            with self._saving:
                with locked():
                    if self._unsaved_since is None:
                        return  # an earlier save or a flush wrote this change
                    generation = self._generation
                    overdue = time.monotonic() - self._unsaved_since >= SAVE_LATEST_S
                if overdue:
                    self.flush()
                    return
                try:
                    dumped, failure = saving_root(self.rts).dump(), None
                except Exception as e:  # e.g. an object a change removed under the read
                    dumped, failure = None, e
                with locked():  # a change still in progress (not counted yet) ends first
                    if self._generation != generation:
                        return  # a change came during the read: its own timer saves
                    if failure is not None:
                        raise failure
                    self.save(dumped)
        except Exception:  # noqa: BLE001 - the next change or the shutdown saves again
            log.exception("saving the LIO configuration")

    def export(self, name: str, device: str, serial: str) -> Export:
        """Backstore with the array's chosen serial, thin provisioning on (THIN_ATTRIBUTES), and
        TPG LUN, masked to nobody yet."""
        with locked():
            tpg = self._tpg()
            so = self._find_so(name)
            made = so is None
            if made:
                so = self.rts.BlockStorageObject(name, dev=device, wwn=serial)
            elif so.wwn != serial or so.udev_path != device:
                raise BackstoreConflictError(name, serial, device, so.wwn, so.udev_path)
            try:
                self._advertise_thin(so)
            except Exception:
                if made:  # the kernel refused the attribute (a device without discard)
                    so.delete()
                raise
            # A backstore made just now has no TPG LUN: no scan of every LUN's link for it.
            lun = (None if made else self._lun_of(tpg, so)) or self.rts.LUN(tpg, storage_object=so)
            self._changed()
            return Export(name, device, serial, lun.lun)

    def unexport(self, name: str) -> None:
        """Mapped LUNs, then the TPG LUN, then the backstore (an ACL left empty goes too)."""
        with locked():
            tpg = self._tpg()
            so = self._find_so(name)
            if so is None:
                return
            lun = self._lun_of(tpg, so)
            if lun is not None:
                for acl in list(tpg.node_acls):
                    self._drop_mapping(acl, lun)
                lun.delete()
            so.delete()
            self._changed()

    def change_serial(self, name: str, serial: str) -> Export:
        """Give an exported backstore another unit serial (a broken copy taking its original's
        identity). The kernel refuses a new serial while the backstore is exported, so its TPG
        LUN is removed and made again with the same number and mapped LUNs; the ACLs, and so the
        hosts' sessions, stay. A refused serial still gets the LUN and its mappings back."""
        with locked():
            tpg = self._tpg()
            so = self._find_so(name)
            lun = self._lun_of(tpg, so) if so else None
            if lun is None:
                raise LookupError(f"{name} is not exported")
            number = lun.lun
            mapped = [(acl, m.mapped_lun, bool(m.write_protect))
                      for acl in tpg.node_acls for m in acl.mapped_luns if tpg_lun_number(m) == number]
            if so.wwn != serial:
                lun.delete()  # its mapped LUNs with it
                try:
                    so.wwn = serial
                finally:
                    lun = self.rts.LUN(tpg, number, storage_object=so)
                    for acl, mapped_lun, read_only in mapped:
                        self.rts.MappedLUN(acl, mapped_lun, lun, write_protect=read_only)
                    self._changed()
            return Export(name, so.udev_path, so.wwn, number,
                          tuple(Mapping(acl.node_wwn, ml, ro) for acl, ml, ro in mapped))

    def mask(self, name: str, initiator: str, chap_user: str, chap_secret: str,
             read_only: bool = False) -> Mapping:
        """Let `initiator` (with its CHAP credentials) see the volume: NodeACL + MappedLUN.
        The host-visible LUN number is the TPG LUN number, the same on every host."""
        with locked():
            tpg = self._tpg()
            so = self._find_so(name)
            lun = self._lun_of(tpg, so) if so else None
            if lun is None:
                raise NotExportedError(name)
            acl = self.rts.NodeACL(tpg, initiator)
            if acl.chap_userid != chap_user:
                acl.chap_userid = chap_user
            if acl.chap_password != chap_secret:
                acl.chap_password = chap_secret
            existing = next((m for m in acl.mapped_luns if tpg_lun_number(m) == lun.lun), None)
            if existing is not None and bool(existing.write_protect) != read_only:
                existing.delete()
                existing = None
            if existing is None:
                self.rts.MappedLUN(acl, lun.lun, lun, write_protect=read_only)
            self._changed()
            return Mapping(initiator, lun.lun, read_only)

    def unmask(self, name: str, initiator: str) -> None:
        with locked():
            tpg = self._tpg()
            so = self._find_so(name)
            lun = self._lun_of(tpg, so) if so else None
            acl = next((a for a in tpg.node_acls if a.node_wwn == initiator), None)
            if acl is None or lun is None:
                return
            self._drop_mapping(acl, lun)
            self._changed()

    def lun_number(self, name: str) -> int | None:
        """The TPG LUN number of the backstore `name` (None: not exported), found by its configfs
        path: exports() builds every LUN and mapping of the target, which costs seconds once the
        target has a hundred of them."""
        with locked():
            so = self._find_so(name)
            lun = self._lun_of(self._tpg(), so) if so else None
            return lun.lun if lun else None

    def exports(self) -> dict[str, Export]:
        """What LIO has now in our target, by backstore name."""
        with locked():
            tpg = self._tpg()
            maps: dict[int, list[Mapping]] = {}
            for acl in tpg.node_acls:
                for m in acl.mapped_luns:
                    maps.setdefault(tpg_lun_number(m), []).append(
                        Mapping(acl.node_wwn, m.mapped_lun, bool(m.write_protect)))
            return {
                lun.storage_object.name: Export(
                    lun.storage_object.name, lun.storage_object.udev_path, lun.storage_object.wwn,
                    lun.lun, tuple(maps.get(lun.lun, ())))
                for lun in tpg.luns
            }

    def orphan_backstores(self) -> list[str]:
        """Block backstores with no LUN in our target (a half-made export)."""
        with locked():
            tpg = self._tpg()
            used = {lun.storage_object.name for lun in tpg.luns}
            return [so.name for so in self.rts.RTSRoot().storage_objects
                    if so.plugin == "block" and so.name not in used]
