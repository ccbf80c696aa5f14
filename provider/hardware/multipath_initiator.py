"""The transport of a host running multipathd: a session on every portal the array gives, and each
LUN handed out as its dm-multipath map, so a path that fails during an import or a read costs a
failover, not the copy.

Modelled on os-brick's multipath iSCSI connect (reimplemented): log in everywhere, scan each LUN
on each session, wait (bounded) for the map by its WWID; take it down map first (`multipath -f`,
which flushes it), then its paths, then the sessions that have no disk left. Cleanup carries on
past a failed step and reports every failure. Policy (said here, since hosts differ):
- a portal whose login fails is skipped while another works: that is what the second path is for;
- the wait wants a path on every session; when the bound passes, a map with fewer paths is taken
  (degraded, logged), a LUN with no map fails the import with VSS_E_MISSING_DISK.
"""
from __future__ import annotations

import logging

from provider.contract.hresult import HResult, VssError, VssRuntimeError, vss_error
from provider.hardware.iscsi import Initiator, block_name, normalize_wwid
from provider.hardware.multipath import Multipath

log = logging.getLogger("shadowlun.multipath")

# How long I/O on a lost connection waits for it before failing (open-iscsi's default is 120 s);
# dm-multipath then retries it on another path. open-iscsi's README suggests a few seconds to a
# few tens for multipath; 15 s rides out a short blip without a failover.
REPLACEMENT_TIMEOUT_S = 15


class MultipathInitiator:
    """The provider's initiator over every portal, handing out multipath maps ('dm-3')."""

    def __init__(self, initiator: Initiator, multipath: Multipath) -> None:
        self.initiator, self.multipath = initiator, multipath

    def connect(self, target_iqn: str, portals: list[str], chap_user: str | None, chap_secret: str | None,
                luns: dict[int, str], timeout: float) -> dict[str, str]:
        """{WWID: map block name} of these LUNs (number -> WWID). A failure undoes what this call
        did: the maps and paths that appeared, and the sessions it logged in."""
        wwids = {normalize_wwid(w): lun for lun, w in luns.items()}
        before = {w for w in wwids if self.find_disk(w)}
        logged_in: list[str] = []
        hosts: dict[str, int] = {}
        try:
            failed = []
            for portal in portals:
                existed = self.initiator.has_session(target_iqn, portal)
                try:
                    hosts[portal] = self.initiator.login(target_iqn, portal, chap_user, chap_secret,
                                                         replacement_timeout=REPLACEMENT_TIMEOUT_S)
                except VssError as e:
                    failed.append(e.message)
                    log.warning("path to %s at %s left out: %s", target_iqn, portal, e.message)
                    continue
                if not existed:
                    logged_in.append(portal)
            if not hosts:
                raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                                f"no path to {target_iqn}: the login failed on every portal: {'; '.join(failed)}")

            def scan(missing: list[str]) -> None:
                for host in hosts.values():
                    for w in sorted(missing, key=wwids.__getitem__):
                        self.initiator.scan_lun(host, wwids[w], w)

            scan(list(wwids))
            return self.multipath.wait_for_maps(list(wwids), len(hosts), timeout, rescan=scan)
        except VssError as e:
            errors = self._undo(target_iqn, [w for w in wwids if w not in before], logged_in)
            if errors:
                raise vss_error(e.hresult, f"{e.message}; undoing the connect: {'; '.join(errors)}") from e
            raise

    def _undo(self, target_iqn: str, wwids: list[str], logged_in: list[str]) -> list[str]:
        """Remove the maps and lone paths of `wwids`, then log out of the sessions this connect
        made (each only if no disk is left on it); the failures, as messages."""
        errors = []
        for w in wwids:
            disk = self.find_disk(w)
            try:
                if disk:
                    self.remove_disk(disk)
                for path in self.initiator.find_disks(w):  # paths no map took
                    self.initiator.remove_disk(path)
            except VssError as cleanup:
                errors.append(cleanup.message)
        for portal in logged_in:
            try:
                self.initiator.disconnect(target_iqn, portal, [])
            except VssError as cleanup:
                errors.append(cleanup.message)
        return errors

    def find_disk(self, wwid: str) -> str | None:
        """The LUN's map; a path of it when it has none (left from before multipathd ran)."""
        return self.multipath.map_of(wwid) or self.initiator.find_disk(wwid)

    def remove_disk(self, block_name_or_path: str) -> None:
        """A map: flushed and removed, then each of its paths; a path: removed. A failed flush
        stops here (removing the paths then could lose queued writes)."""
        name = block_name(block_name_or_path)
        if not self.multipath.is_map(name):
            self.initiator.remove_disk(name)
            return
        paths = self.multipath.paths(name)
        self.multipath.flush(name)
        errors = []
        for path in paths:
            try:
                self.initiator.remove_disk(path)
            except VssError as e:
                errors.append(e.message)
        if errors:
            raise VssRuntimeError(HResult.VSS_E_PROVIDER_VETO,
                                  f"multipath map {name} removed, but not all its paths: {'; '.join(errors)}")

    def disconnect(self, target_iqn: str, portals: list[str], disks: list[str]) -> None:
        """Flush and remove the maps among `disks`, then, session by session, remove their paths
        and log out of (and forget) each session that has no disk left. Every step is tried."""
        errors: list[str] = []
        paths: list[str] = []
        for disk in map(block_name, disks):
            if not self.multipath.is_map(disk):
                paths.append(disk)
                continue
            slaves = self.multipath.paths(disk)
            try:
                self.multipath.flush(disk)
                paths += slaves
            except VssError as e:
                errors.append(e.message)  # its paths stay: they may carry the map's queued writes
        for portal in portals:
            mine = [p for p in paths if p in self.initiator.session_disks(target_iqn, portal)]
            try:
                self.initiator.disconnect(target_iqn, portal, mine)
            except VssError as e:
                errors.append(e.message)
        if errors:
            raise VssRuntimeError(HResult.VSS_E_PROVIDER_VETO,
                                  f"disconnect from {target_iqn}: {len(errors)} step(s) failed: " + "; ".join(errors))
