"""The host's iSCSI initiator (open-iscsi): log in to the array's target, make LUNs appear, find
their disks by WWID, and take it all down again.

The lessons come from os-brick's iSCSI connector (OpenStack), reimplemented here:
- Sessions log in with `node.session.scan=manual`, so a login surfaces no LUN by itself; each LUN
  is scanned by number (`"- - L" > /sys/class/scsi_host/hostH/scan`). Automatic scans at login and
  on AEN are what leaves unexpected disks on hosts sharing a target.
- Disks are found in sysfs (`/sys/block/sd*/device/wwid`), never through `/dev/disk/by-path` or
  `by-id` links, which udev creates later and which race with reused LUN numbers. A LUN number
  the array gave to another LU while this host kept the old device is cleared before the scan.
- Every wait is bounded, and a timeout says what was waited for, for how long, and what was seen.
- A disk is flushed and deleted on the host *before* its LUN is unmapped on the array (unmapping
  first leaves I/O queued to a vanished LUN and udev stuck in D state); the session is logged out
  only when no disk of it is left; cleanup carries on after a failed step and reports every failure.

iscsiadm exit codes used here (open-iscsi include/iscsi_err.h): 15 session exists, 21 no objects
found, 24 authorization failure. Commands run with LC_ALL=C so their messages can be quoted as is.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypedDict

from provider.commands import DEFAULT_RUNNER, CommandResult, Runner, command_text, tail
from provider.contract.hresult import HResult, VssError, VssRuntimeError, vss_error
from provider.contract.lio_target import ISCSI_PORT

log = logging.getLogger("shadowlun.iscsi")

# iscsid retries a failing first login node.session.initial_login_retry_max times (default 8, each
# up to the 15 s login timeout: about 2 min). 3 tries bound a login to a dead portal to about 45 s.
LOGIN_RETRIES = 3
POLL_INTERVAL = 0.5               # s between sysfs re-reads while waiting for a disk
FIRST_RESCAN_AFTER = 3.0          # s; later rescans at doubling intervals (3, 9, 21 s, ...)

# iscsiadm exit codes (ISCSI_ERR_*)
_ERR_TRANS = 4
_ERR_TRANS_TIMEOUT = 8
_ERR_TRANS_NOT_FOUND = 12
_ERR_SESS_EXISTS = 15
_ERR_ISCSID_COMM = 18
_ERR_FATAL_LOGIN = 19
_ERR_ISCSID_NOTCONN = 20
_ERR_NO_OBJS_FOUND = 21
_ERR_LOGIN_AUTH_FAILED = 24

_LOGIN_FAILURES = {
    _ERR_TRANS: "could not connect to the portal",
    _ERR_TRANS_TIMEOUT: "connection to the portal timed out",
    _ERR_TRANS_NOT_FOUND: "the iscsi_tcp kernel module is not loaded",
    _ERR_ISCSID_COMM: "could not talk to iscsid",
    _ERR_FATAL_LOGIN: "the target refused the login for good (unknown target name at this portal?)",
    _ERR_ISCSID_NOTCONN: "iscsid is not running",
    _ERR_LOGIN_AUTH_FAILED: "authorization failure: the array does not accept this initiator name "
                            "or these CHAP credentials (check the LUN masking and CHAP on the array)",
}


def _veto(message: str) -> VssError:
    return vss_error(HResult.VSS_E_PROVIDER_VETO, message)


# --- identity, portals and routes --------------------------------------------------------------

def initiator_name(path: Path = Path("/etc/iscsi/initiatorname.iscsi")) -> str:
    """This host's initiator IQN: the name the array masks LUNs to."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise _veto(f"{path}: missing; is open-iscsi installed?") from None
    except OSError as e:
        raise _veto(f"{path}: cannot read: {e.strerror or e}") from None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "InitiatorName" and value.strip():
            return value.strip()
    if "GenerateName=yes" in text:
        raise _veto(f"{path}: no InitiatorName yet (GenerateName=yes); start iscsid once to create it")
    raise _veto(f"{path}: no InitiatorName= line")


def parse_portal(portal: str) -> tuple[str, int]:
    """(address, port) of "10.0.0.1", "10.0.0.1:3260", "[fd00::1]:3260" or "fd00::1"; a ",tpgt"
    suffix as iscsiadm prints it is ignored."""
    text = portal.strip().split(",", 1)[0]
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        address, port = text.split(":")
    else:
        address, port = text, ""
    if not address:
        raise vss_error(HResult.E_INVALIDARG, f"portal {portal!r}: no address")
    try:
        number = int(port) if port else ISCSI_PORT
    except ValueError:
        raise vss_error(HResult.E_INVALIDARG, f"portal {portal!r}: port {port!r} is not a number") from None
    return address, number


def format_portal(address: str, port: int = ISCSI_PORT) -> str:
    """The portal as iscsiadm takes it: "10.0.0.1:3260", "[fd00::1]:3260"."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()  # a host name


# --- udev events -------------------------------------------------------------------------------

class DiskEvents(Protocol):
    """A source of "a block disk was added" events, opened before the first sysfs check so an
    arrival between check and wait is not lost."""

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` s; True when a disk was added meanwhile."""
        ...

    def close(self) -> None: ...


class _UdevDiskEvents:
    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor

    def wait(self, timeout: float) -> bool:
        device = self._monitor.poll(timeout=max(timeout, 0.0))
        return device is not None and device.action == "add"

    def close(self) -> None:
        self._monitor = None  # pyudev frees the netlink socket with the object


def udev_disk_events() -> DiskEvents | None:
    """pyudev events for block disks, or None (then waits poll sysfs) when pyudev or udev's
    netlink socket is unavailable."""
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by(subsystem="block", device_type="disk")
        monitor.start()
    except Exception as e:  # ImportError, OSError (no netlink, no udev)
        log.debug("no udev events, polling sysfs instead: %s", e)
        return None
    return _UdevDiskEvents(monitor)


# --- the initiator -----------------------------------------------------------------------------

class SessionInfo(TypedDict):
    sid: int
    target: str
    portal: str       # "address:port" as format_portal writes it
    host: int | None  # SCSI host number; None if sysfs does not show it (session being torn down)


def normalize_wwid(wwid: str) -> str:
    """The sysfs form `naa.<hex>` of "naa.6001405…", "6001405…" or udev's "36001405…"."""
    text = wwid.strip().lower()
    if text.startswith("naa."):
        return text
    if re.fullmatch(r"3[0-9a-f]{32}", text) or re.fullmatch(r"3[0-9a-f]{16}", text):
        return "naa." + text[1:]  # udev ID_SERIAL: designator type 3 (NAA) prefix
    if re.fullmatch(r"[0-9a-f]+", text):
        return "naa." + text
    return text  # t10./eui. designators are compared as given


def block_name(disk: str) -> str:
    """'sdb' of 'sdb' or '/dev/sdb'."""
    return disk.rstrip("/").rsplit("/", 1)[-1]


def _disk_sort_key(name: str) -> tuple[int, str]:
    return len(name), name  # sdz before sdaa


class Initiator:
    """open-iscsi on this host, driven through iscsiadm and sysfs.

    `runner` runs commands; `sysfs_root` and `dev_root` let tests use fake trees; `events` opens
    the udev event source for `wait_for_disks` (None: poll sysfs); `clock` and `sleep` let tests
    drive time. Logins and disconnects are serialized within the process, as os-brick does per
    target and portal, because iscsiadm's node database is not safe against concurrent edits.
    """

    def __init__(self, runner: Runner = DEFAULT_RUNNER, sysfs_root: Path = Path("/sys"),
                 dev_root: Path = Path("/dev"), *,
                 events: Callable[[], DiskEvents | None] | None = udev_disk_events,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.runner = runner
        self.sysfs_root = Path(sysfs_root)
        self.dev_root = Path(dev_root)
        self.events = events
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.RLock()

    # -- iscsiadm -------------------------------------------------------------------------------

    @staticmethod
    def _node(target_iqn: str, portal: str) -> list[str]:
        return ["iscsiadm", "-m", "node", "-T", target_iqn, "-p", portal]

    def _run(self, argv: list[str], ok: Iterable[int] = (0,), what: str = "") -> CommandResult:
        result = self.runner(argv, check=False)
        if result.returncode not in tuple(ok):
            raise _veto(f"{what or command_text(argv)} failed (iscsiadm exit {result.returncode}): "
                        f"{tail(result)}")
        return result

    def _set(self, node: list[str], settings: dict[str, str]) -> None:
        """One `-o update` with every setting (an iscsiadm process costs a second under emulation)."""
        pairs = [arg for key, value in settings.items() for arg in ("-n", key, "-v", value)]
        self._run(node + ["-o", "update", *pairs],
                  what=f"setting {', '.join(settings)} of the node record {node[4]} {node[6]}")

    # -- sessions -------------------------------------------------------------------------------

    def sessions(self) -> list[SessionInfo]:
        """Every iSCSI session of this host, from sysfs (no iscsiadm: its output format changes)."""
        found: list[SessionInfo] = []
        root = self.sysfs_root / "class/iscsi_session"
        for path in sorted(root.glob("session*"), key=lambda p: _disk_sort_key(p.name)):
            try:
                sid = int(path.name[len("session"):])
                target = (path / "targetname").read_text().strip()
            except (ValueError, OSError):
                continue  # a session going away while we read
            match = re.search(r"/host(\d+)/", os.path.realpath(path))
            found.append(SessionInfo(sid=sid, target=target, portal=self._session_portal(sid),
                                     host=int(match.group(1)) if match else None))
        return found

    def _session_portal(self, sid: int) -> str:
        for conn in sorted((self.sysfs_root / "class/iscsi_connection").glob(f"connection{sid}:*")):
            for addr_name, port_name in (("persistent_address", "persistent_port"), ("address", "port")):
                try:
                    address = (conn / addr_name).read_text().strip()
                    port = int((conn / port_name).read_text().strip())
                except (OSError, ValueError):
                    continue
                if address:
                    return format_portal(address, port)
        return ""

    def _find_session(self, target_iqn: str, portal: str) -> SessionInfo | None:
        address, port = parse_portal(portal)
        for s in self.sessions():
            if s["target"] != target_iqn or not s["portal"]:
                continue
            s_address, s_port = parse_portal(s["portal"])
            if s_port == port and _same_address(s_address, address):
                return s
        return None

    def _session_disks(self, sid: int) -> list[str]:
        """Block names of the disks under session `sid` (…/hostH/session<sid>/targetH:C:T/H:C:T:L)."""
        marker = f"session{sid}"
        names = []
        for block in (self.sysfs_root / "block").glob("*"):
            if marker in Path(os.path.realpath(block / "device")).parts:
                names.append(block.name)
        return sorted(names, key=_disk_sort_key)

    def session_disks(self, target_iqn: str, portal: str) -> list[str]:
        """Block names of the disks of the session to `target_iqn` at `portal` (none without one)."""
        session = self._find_session(target_iqn, format_portal(*parse_portal(portal)))
        return self._session_disks(session["sid"]) if session is not None else []

    def has_session(self, target_iqn: str, portal: str) -> bool:
        return self._find_session(target_iqn, format_portal(*parse_portal(portal))) is not None

    # -- login ----------------------------------------------------------------------------------

    def login(self, target_iqn: str, portal: str, chap_user: str | None, chap_secret: str | None, *,
              replacement_timeout: int | None = None) -> int:
        """Log in to `target_iqn` at `portal` (once: an existing session is reused) and return the
        SCSI host number of the session. No LUN appears until `scan_lun`.

        The node record is created if missing (not overwritten: `-o new` on an existing record
        would reset it while a session may use it) and set to manual startup and manual scan, with
        CHAP when a user is given. A failed login removes a record this call created.
        `replacement_timeout` (s) bounds how long I/O waits for a lost connection to come back
        before it fails; with dm-multipath it then fails over to another path, so keep it short.
        """
        if (chap_user is None) != (chap_secret is None) or chap_user == "" or chap_secret == "":
            raise vss_error(HResult.E_INVALIDARG, "CHAP needs both a user name and a secret, or neither")
        address, port = parse_portal(portal)
        portal = format_portal(address, port)
        node = self._node(target_iqn, portal)
        with self._lock:
            lookup = self.runner(node, check=False)
            created = lookup.returncode != 0
            if lookup.returncode not in (0, _ERR_NO_OBJS_FOUND, 255):  # 255: "no records", old versions
                raise _veto(f"cannot read the node record of {target_iqn} at {portal} "
                            f"(iscsiadm exit {lookup.returncode}): {tail(lookup)}")
            if created:
                self._run(node + ["-o", "new"], what=f"creating the node record of {target_iqn} at {portal}")
            try:
                auth = ({"node.session.auth.authmethod": "CHAP", "node.session.auth.username": chap_user,
                         "node.session.auth.password": chap_secret} if chap_user is not None and chap_secret
                        is not None else {"node.session.auth.authmethod": "None"})
                timeouts = ({"node.session.timeo.replacement_timeout": str(replacement_timeout)}
                            if replacement_timeout is not None else {})
                self._set(node, {"node.startup": "manual", "node.session.scan": "manual",
                                 "node.session.initial_login_retry_max": str(LOGIN_RETRIES), **auth, **timeouts})
                session = self._find_session(target_iqn, portal)
                if session is None:
                    result = self.runner(node + ["--login"], check=False)
                    if result.returncode not in (0, _ERR_SESS_EXISTS):
                        reason = _LOGIN_FAILURES.get(result.returncode, "login failed")
                        raise _veto(f"iSCSI login to {target_iqn} at {portal} failed: {reason} "
                                    f"(iscsiadm exit {result.returncode}: {tail(result)})")
                    session = self._find_session(target_iqn, portal)
            except VssError:
                if created:
                    self._forget_quietly(target_iqn, portal)
                raise
        if session is None:
            raise _veto(f"iscsiadm logged in to {target_iqn} at {portal}, but sysfs shows no such session")
        if session["host"] is None:
            raise _veto(f"session {session['sid']} to {target_iqn} at {portal} has no SCSI host in sysfs")
        log.info("iSCSI session %s to %s at %s on host%s", session["sid"], target_iqn, portal, session["host"])
        return session["host"]

    def _forget_quietly(self, target_iqn: str, portal: str) -> None:
        try:
            self.forget(target_iqn, portal)
        except VssError as e:
            log.warning("could not remove the node record after a failed login: %s", e)

    # -- LUNs and disks -------------------------------------------------------------------------

    def scan_lun(self, host: int, lun: int, wwid: str) -> None:
        """Ask SCSI host `host` to probe LUN `lun`, expected to be the LU with `wwid`, on every
        channel and target (manual scan). A device of another LU left at that number goes first
        (`clear_stale_lun`)."""
        self.clear_stale_lun(host, lun, wwid)
        path = self.sysfs_root / f"class/scsi_host/host{host}/scan"
        try:
            path.write_text(f"- - {int(lun)}")
        except OSError as e:
            raise _veto(f"scan of LUN {lun} on host{host} ({path}): {e.strerror or e}") from None

    def clear_stale_lun(self, host: int, lun: int, wwid: str) -> None:
        """Delete a SCSI device that this host keeps at LUN `lun` of SCSI host `host` for another
        LU than `wwid`; refuse if it is in use.

        The array hands a LUN number out again once its LU is unmapped; a host that still has a
        device there (its disk was never removed: the LUN was deleted or unmasked under it) keeps
        the old LU's identity on it. Linux never re-identifies it on a scan, so the new LU never
        appears, and I/O through the old disk now reaches the new LU. An unused one is deleted; one
        that is mounted or held (a multipath map, LVM, an exclusive opener: the kernel's own claim,
        tested with O_EXCL) is refused with its name, since deleting it would fail its users'
        I/O. A device whose identity cannot be read yet is left alone. The delete is not
        `remove_disk`: its flush would write the old LU's buffers into the new LU."""
        wanted = normalize_wwid(wwid)
        for device in sorted((self.sysfs_root / "bus/scsi/devices").glob(f"{host}:*:*:{lun}")):
            try:
                seen = (device / "wwid").read_text().strip()
                disks = sorted(p.name for p in (device / "block").iterdir()) if (device / "block").is_dir() else []
            except OSError:
                continue  # no identity yet, or going away
            if not seen or normalize_wwid(seen) == wanted:
                continue
            what = f"SCSI device {device.name} ({', '.join(disks) or 'no disk'}, WWID {seen})"
            for disk in disks:
                try:
                    fd = os.open(self.dev_root / disk, os.O_RDONLY | os.O_EXCL)
                except OSError as e:
                    raise _veto(f"{what} is left from an LU the array no longer maps at LUN {lun}, which "
                                f"is now {wanted}; it is in use ({e.strerror or e}), so it is not deleted: "
                                f"stop its users (unmount, remove its multipath map), then try again") from None
                os.close(fd)
            log.warning("%s is left from an LU the array no longer maps at LUN %d (now %s): deleting it",
                        what, lun, wanted)
            try:
                (device / "delete").write_text("1")
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as e:
                raise _veto(f"deleting the stale {what}: {e.strerror or e}") from None

    def _wwids(self) -> dict[str, str]:
        """{block name: wwid} of every sd* disk that sysfs shows with a WWID."""
        seen = {}
        for block in (self.sysfs_root / "block").glob("sd*"):
            try:
                seen[block.name] = (block / "device/wwid").read_text().strip()
            except OSError:
                continue  # no wwid yet, or the disk went away
        return dict(sorted(seen.items(), key=lambda kv: _disk_sort_key(kv[0])))

    def find_disk(self, wwid: str) -> str | None:
        """The block name ('sdb') of the disk with this WWID, from sysfs; None if there is none.
        With several paths to one LUN the first by name is returned."""
        return next(iter(self.find_disks(wwid)), None)

    def find_disks(self, wwid: str) -> list[str]:
        """Every disk with this WWID (one per path to the LUN), by name."""
        wanted = normalize_wwid(wwid)
        return [name for name, seen in self._wwids().items() if seen.lower() == wanted]

    def wait_for_disks(self, wwids: dict[str, int], timeout: float, *, host: int | None = None) -> dict[str, str]:
        """{WWID: block name} of the disks with these WWIDs (each mapped to its LUN number), in one
        wait of up to `timeout` s for all of them.

        sysfs is re-read on every udev block-disk 'add' event and at least every 0.5 s. With
        `host`, the LUNs still missing are scanned again after 3 s, then at doubling intervals,
        in case the first scan raced with the target. A timeout raises VSS_E_MISSING_DISK ("an
        expected disk did not arrive") naming the WWIDs missing and listing those that were seen.
        """
        wanted = {normalize_wwid(w): lun for w, lun in wwids.items()}
        start = self.clock()
        deadline = start + timeout
        events = self.events() if self.events else None  # opened before the first check
        how = "udev block-disk 'add' events and sysfs every 0.5 s" if events else "sysfs every 0.5 s"
        rescans, gap = 0, FIRST_RESCAN_AFTER
        next_rescan = start + gap
        found: dict[str, str] = {}
        try:
            while True:
                by_wwid = {seen.lower(): name for name, seen in reversed(self._wwids().items())}  # first by name
                found = {w: by_wwid[w] for w in wanted if w in by_wwid}
                if len(found) == len(wanted):
                    log.info("%d disk(s) by WWID after %.1f s: %s", len(found), self.clock() - start,
                             ", ".join(f"{n}={w}" for w, n in found.items()))
                    return found
                now = self.clock()
                if now >= deadline:
                    break
                if host is not None and now >= next_rescan:
                    for w, lun in wanted.items():
                        if w not in found:
                            self.scan_lun(host, lun, w)
                    rescans += 1
                    gap *= 2
                    next_rescan = now + gap
                step = min(POLL_INTERVAL, deadline - now)
                if events is not None:
                    try:
                        events.wait(step)
                    except Exception as e:  # the monitor broke: fall back to polling
                        log.warning("udev monitor failed, polling sysfs: %s", e)
                        events.close()
                        events = None
                else:
                    self.sleep(step)
        finally:
            if events is not None:
                events.close()
        missing = [w for w in wanted if w not in found]
        shown = ", ".join(f"{n}={w}" for n, w in self._wwids().items()) or "none"
        scans = (f"; LUN(s) {', '.join(str(wanted[w]) for w in missing)} on host{host} rescanned {rescans} times"
                 if host is not None else "")
        raise vss_error(HResult.VSS_E_MISSING_DISK,
                        f"no disk with WWID {', '.join(missing)} appeared within {timeout:g} s (watched {how}{scans}); "
                        f"disks with a WWID in {self.sysfs_root / 'block'}: {shown}")

    def connect(self, target_iqn: str, portal: str, chap_user: str | None, chap_secret: str | None,
                luns: dict[int, str], timeout: float) -> dict[str, str]:
        """{WWID: block name} of these LUNs (number -> WWID) of the target, made to appear in one
        go: the session to the target reused as it is, or one `login`; one scan pass of just these
        LUNs; one bounded wait for all their disks.

        A failure undoes what this call did, as os-brick does after a failed connect: the disks
        that appeared are removed, and a session it logged in goes (with its node record) when no
        disk is left on it. The cleanup carries on past its own failures and adds them to the error.
        """
        wwids = {normalize_wwid(w): lun for lun, w in luns.items()}
        before = {w for w in wwids if self.find_disk(w)}
        session = self._find_session(target_iqn, format_portal(*parse_portal(portal)))
        if session is not None and session["host"] is None:
            raise _veto(f"session {session['sid']} to {target_iqn} at {portal} is being torn down; try again")
        host = session["host"] if session is not None else self.login(target_iqn, portal, chap_user, chap_secret)
        try:
            for w, lun in sorted(wwids.items(), key=lambda item: item[1]):
                self.scan_lun(host, lun, w)
            return self.wait_for_disks(wwids, timeout, host=host)
        except VssError as e:
            appeared = [d for w in wwids if w not in before and (d := self.find_disk(w))]
            errors = []
            for step in ([lambda: self.disconnect(target_iqn, portal, appeared)] if session is None
                         else [lambda d=d: self.remove_disk(d) for d in appeared]):
                try:
                    step()
                except VssError as cleanup:
                    errors.append(cleanup.message)
            if errors:
                raise vss_error(e.hresult, f"{e.message}; undoing the connect: {'; '.join(errors)}") from e
            raise

    def remove_disk(self, block_name_or_path: str) -> None:
        """Flush the disk and delete its SCSI device, so the LUN can be unmapped on the array
        without leaving I/O queued to a vanished LUN. A disk already gone is not an error; a failed
        flush stops here (deleting then could lose written data). The caller unmounts first."""
        name = block_name(block_name_or_path)
        block = self.sysfs_root / "block" / name
        if not block.exists():
            log.info("disk %s already gone", name)
            return
        flush = self.runner(["blockdev", "--flushbufs", str(self.dev_root / name)], check=False)
        if flush.returncode:
            if not block.exists():
                return  # it went away meanwhile
            raise _veto(f"flushing {name} failed (exit {flush.returncode}): {tail(flush)}; not deleted")
        try:
            (block / "device/delete").write_text("1")
        except FileNotFoundError:
            return  # removed meanwhile
        except OSError as e:
            if not block.exists():
                return
            raise _veto(f"deleting SCSI device {name}: {e.strerror or e}") from None
        log.info("removed disk %s", name)

    # -- logout ---------------------------------------------------------------------------------

    def logout(self, target_iqn: str, portal: str) -> None:
        """Log out of the session to `target_iqn` at `portal`; no session is fine."""
        node = self._node(target_iqn, format_portal(*parse_portal(portal)))
        self._run(node + ["--logout"], ok=(0, _ERR_NO_OBJS_FOUND),
                  what=f"logout from {target_iqn} at {portal}")

    def forget(self, target_iqn: str, portal: str) -> None:
        """Delete the node record (with its CHAP secret); no record is fine."""
        node = self._node(target_iqn, format_portal(*parse_portal(portal)))
        self._run(node + ["-o", "delete"], ok=(0, _ERR_NO_OBJS_FOUND),
                  what=f"deleting the node record of {target_iqn} at {portal}")

    def disconnect(self, target_iqn: str, portal: str, disks: list[str]) -> None:
        """Remove `disks` (LUNs of this session), then log out if no disk of the session is left and
        delete the node record. Every step is tried; all failures are raised together at the end.

        A disk that sysfs shows under another session is refused, not removed. When other disks of
        the session remain (another LUN of a shared target in use), the session and its record stay.
        """
        errors: list[str] = []
        with self._lock:
            session = self._find_session(target_iqn, portal)
            removed: set[str] = set()
            for disk in disks:
                name = block_name(disk)
                try:
                    present = (self.sysfs_root / "block" / name).exists()
                    if present and (session is None or name not in self._session_disks(session["sid"])):
                        errors.append(f"{name} is not a LUN of the session to {target_iqn} at {portal}; "
                                      "left in place")
                        continue
                    self.remove_disk(name)
                    removed.add(name)
                except VssError as e:
                    errors.append(f"{name}: {e.message}")
                except OSError as e:
                    errors.append(f"{name}: {e}")
            logged_out = session is None
            if session is not None:
                left = [n for n in self._session_disks(session["sid"]) if n not in removed]
                if left:
                    log.info("session %s keeps disks %s; not logging out", session["sid"], left)
                else:
                    try:
                        self.logout(target_iqn, portal)
                        logged_out = True
                    except VssError as e:
                        errors.append(e.message)
            if logged_out:
                try:
                    self.forget(target_iqn, portal)
                except VssError as e:
                    errors.append(e.message)
        if errors:
            raise VssRuntimeError(HResult.VSS_E_PROVIDER_VETO,
                                  f"disconnect from {target_iqn} at {portal}: {len(errors)} step(s) failed: "
                                  + "; ".join(errors))
