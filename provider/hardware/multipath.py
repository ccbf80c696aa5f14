"""dm-multipath on this host: is multipathd running, which map stands for a LUN, and taking a map
down again.

Everything is read from sysfs, where the kernel writes it: a map is /sys/block/dm-N with
dm/uuid `mpath-<WWID as udev writes it>` (the NAA designator behind a "3"), its paths are under
slaves/, and the partition maps kpartx makes of it are holders with dm/uuid `part<N>-mpath-...`.
The names of maps (user_friendly_names or not) depend on the host's configuration, so they are
only used in messages and to flush; the uuid is what identifies a LUN's map.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from provider.commands import DEFAULT_RUNNER, Runner, tail
from provider.contract.hresult import HResult, vss_error
from provider.hardware.iscsi import normalize_wwid

log = logging.getLogger("shadowlun.multipath")

PIDFILE = Path("/run/multipathd.pid")
POLL_INTERVAL = 0.5        # s between sysfs reads while waiting for maps
FIRST_RESCAN_AFTER = 3.0   # s; later rescans of LUNs still short of paths at doubling intervals
FLUSH_TRIES = 3            # `multipath -f` fails while udev still probes a new map: retried
FLUSH_RETRY_AFTER = 1.0    # s


def multipathd_running(pidfile: Path = PIDFILE, proc_root: Path = Path("/proc")) -> bool:
    """multipathd is up when its pid file names a live process. Read from files, not with
    `multipathd show daemon`, which on a host with multipathd.socket would start the daemon."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return False
    return (Path(proc_root) / str(pid)).is_dir()


def map_uuid(wwid: str) -> str:
    """The dm uuid of the multipath map of a LUN: "naa.6001405..." -> "mpath-36001405..."."""
    text = normalize_wwid(wwid)
    return "mpath-" + ("3" + text[4:] if text.startswith("naa.") else text)


def _sort_key(name: str) -> tuple[int, str]:
    return len(name), name


class Multipath:
    """The host's multipath maps, read from sysfs (`sysfs_root` lets tests use a fake tree) and
    flushed with multipath(8) through `runner`; `clock` and `sleep` let tests drive time."""

    def __init__(self, runner: Runner = DEFAULT_RUNNER, sysfs_root: Path = Path("/sys"), *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.runner, self.sysfs_root, self.clock, self.sleep = runner, Path(sysfs_root), clock, sleep

    def _read(self, block: str, attr: str) -> str | None:
        try:
            return (self.sysfs_root / "block" / block / attr).read_text().strip()
        except OSError:
            return None

    def maps(self) -> dict[str, str]:
        """{dm block name: dm uuid} of every multipath map."""
        found = {}
        for block in (self.sysfs_root / "block").glob("dm-*"):
            uuid = self._read(block.name, "dm/uuid")
            if uuid and uuid.startswith("mpath-"):
                found[block.name] = uuid
        return dict(sorted(found.items(), key=lambda kv: _sort_key(kv[0])))

    def is_map(self, block: str) -> bool:
        return (self._read(block, "dm/uuid") or "").startswith("mpath-")

    def map_of(self, wwid: str) -> str | None:
        """The dm block name ('dm-3') of the LUN's map; None if it has none."""
        wanted = map_uuid(wwid)
        return next((name for name, uuid in self.maps().items() if uuid == wanted), None)

    def name(self, block: str) -> str:
        """The map's name (what multipath -ll shows and /dev/mapper has)."""
        return self._read(block, "dm/name") or block

    def paths(self, block: str) -> list[str]:
        """The path devices ('sdc', 'sdd') of a map."""
        try:
            names = [p.name for p in (self.sysfs_root / "block" / block / "slaves").iterdir()]
        except OSError:
            return []
        return sorted(names, key=_sort_key)

    def partition(self, block: str, number: int) -> str | None:
        """The dm block name of the map's partition `number` (made by kpartx), if there is one."""
        wanted = f"part{number}-{self._read(block, 'dm/uuid')}"
        try:
            holders = [h.name for h in (self.sysfs_root / "block" / block / "holders").iterdir()]
        except OSError:
            return None
        return next((h for h in sorted(holders, key=_sort_key) if self._read(h, "dm/uuid") == wanted), None)

    def wait_for_maps(self, wwids: list[str], paths: int, timeout: float,
                      rescan: Callable[[list[str]], None] | None = None) -> dict[str, str]:
        """{WWID: dm block name} of the maps of these LUNs, in one wait of up to `timeout` s.

        A map counts when it has `paths` paths (one per session). When the bound passes, a map
        with fewer (but at least one) is taken all the same, logged as degraded: the copy is
        readable, and multipathd adds the late path when it comes. No map for a WWID raises
        VSS_E_MISSING_DISK naming what was seen. `rescan(wwids)` is called for the LUNs still
        short of paths after 3 s, then at doubling intervals, in case a scan raced the target.
        """
        wanted = [normalize_wwid(w) for w in wwids]
        start = self.clock()
        deadline, gap = start + timeout, FIRST_RESCAN_AFTER
        next_rescan = start + gap
        while True:
            found = {w: self.map_of(w) for w in wanted}
            short = [w for w in wanted if found[w] is None or len(self.paths(found[w])) < paths]
            now = self.clock()
            if not short or now >= deadline:
                break
            if rescan is not None and now >= next_rescan:
                rescan(short)
                gap *= 2
                next_rescan = now + gap
            self.sleep(min(POLL_INTERVAL, deadline - now))
        missing = [w for w in wanted if found[w] is None or not self.paths(found[w])]
        if missing:
            seen = ", ".join(f"{self.name(b)} ({b}: {', '.join(self.paths(b)) or 'no paths'})"
                             for b in self.maps()) or "none"
            raise vss_error(HResult.VSS_E_MISSING_DISK,
                            f"no multipath map {', '.join(map_uuid(w) for w in missing)} with a path appeared "
                            f"within {timeout:g} s (wanted {paths} path(s) each; is the LUN's WWID blacklisted, "
                            f"or find_multipaths strict?); multipath maps seen: {seen}")
        for w in short:
            log.warning("map %s has %d of %d paths after %g s; taken degraded", self.name(found[w]),
                        len(self.paths(found[w])), paths, timeout)
        log.info("%d multipath map(s) after %.1f s: %s", len(found), self.clock() - start,
                 ", ".join(f"{b}={self.name(b)} [{' '.join(self.paths(b))}]" for b in found.values()))
        return {w: b for w, b in found.items() if b is not None}

    def flush(self, block: str) -> None:
        """Remove the map (and its partition maps) with `multipath -f`, which flushes its queued
        I/O and refuses a map in use. Retried briefly: udev may still hold a new map open. A map
        already gone is not an error."""
        if not self.is_map(block):
            return
        name = self.name(block)
        for attempt in range(1, FLUSH_TRIES + 1):
            result = self.runner(["multipath", "-f", name], check=False)
            if result.returncode == 0 or not self.is_map(block):
                log.info("flushed multipath map %s (%s)", name, block)
                return
            if attempt < FLUSH_TRIES:
                self.sleep(FLUSH_RETRY_AFTER)
        raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                        f"flushing multipath map {name} ({block}) failed {FLUSH_TRIES} times "
                        f"(multipath -f exit {result.returncode}: {tail(result)}); is it still mounted or open?")

