"""LVM thin volumes and snapshots, through the lvm2 commands with JSON reports.

Every command runs with LC_ALL=C and `--reportformat json --units b --nosuffix`, so what we
parse is the tool's structured output, never a localized table. Parsing is kept in pure
functions (unit-tested on recorded output); `Lvm` runs the commands.

Names and tags tie LVs to the array's store: every LV the array makes carries the tag
`shadowlun`, plus `shadowlun.set=<id>` / `shadowlun.snapshot=<id>` for snapshots.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .backend import PoolUse
from .dm import INACTIVE_PRESENT_FLAG, SUSPEND_FLAG, Control, DmControl, DmError
from .faults import crash_point

OWNER_TAG = "shadowlun"
LV_FIELDS = "lv_name,lv_uuid,lv_size,lv_attr,pool_lv,origin,lv_tags,data_percent,metadata_percent"
COMMAND_TIMEOUT_S = 120


class LvmError(RuntimeError):
    """An lvm2 command failed; carries the command and what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = list(argv), returncode, stderr
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    uuid: str
    size_bytes: int
    attr: str
    pool: str
    origin: str
    tags: tuple[str, ...]
    data_percent: float | None
    metadata_percent: float | None

    @property
    def is_thin_pool(self) -> bool:
        return self.attr.startswith("t")

    @property
    def is_thin_volume(self) -> bool:
        return self.attr.startswith("V")

    @property
    def active(self) -> bool:
        """Its device is mapped: live, or suspended ('s'). A suspended LV is not activated
        again: `lvchange -ay` would resume it behind whoever suspended it (an admin; the
        reconcile at start resumes what a killed commit window left), so a copy waits on it."""
        return len(self.attr) > 4 and self.attr[4] in "as"

    @property
    def owned(self) -> bool:
        return OWNER_TAG in self.tags

    def tag(self, key: str) -> str | None:
        """Value of a `key=value` tag, e.g. tag('shadowlun.set')."""
        prefix = key + "="
        return next((t[len(prefix):] for t in self.tags if t.startswith(prefix)), None)

    @property
    def device(self) -> str:
        return f"/dev/{self.vg}/{self.name}"


@dataclass(frozen=True)
class ThinDevice:
    """A thin LV as the pool knows it: its device id in the pool, and its device-mapper name
    when active (None when not)."""

    name: str
    thin_id: int
    dm_name: str | None


def dm_name(vg: str, lv: str) -> str:
    """LVM's device-mapper name of an LV: '-' doubled in each part, joined by '-'."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def vg_dm_names(vg: str, sys_block: Path) -> list[str]:
    """Device-mapper names of the VG's active LVs (and their layers), from sysfs: no command,
    no device opened, so nothing blocks on a suspended device. A name of another VG whose name
    starts with this one's is not taken: LVM doubles '-' in names, and no LV name starts with '-'."""
    prefix = dm_name(vg, "")
    names = []
    for path in sorted(sys_block.glob("dm-*/dm/name")):
        try:
            name = path.read_text().strip()
        except OSError:  # removed meanwhile
            continue
        if name.startswith(prefix) and not name[len(prefix):].startswith("-"):
            names.append(name)
    return names


def parse_thin_devices(report: str, names: Sequence[str]) -> dict[str, ThinDevice]:
    """From `lvs --reportformat json -o lv_name,thin_id,lv_dm_path,lv_attr`: the named LVs."""
    wanted = set(names)
    out = {}
    for r in json.loads(report)["report"][0]["lv"]:
        if r["lv_name"] in wanted and r["thin_id"] not in ("", None):
            active = len(r["lv_attr"]) > 4 and r["lv_attr"][4] == "a"
            out[r["lv_name"]] = ThinDevice(r["lv_name"], int(r["thin_id"]),
                                           os.path.basename(r["lv_dm_path"]) if active else None)
    return out


def _percent(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def parse_lvs(report: str, vg: str) -> list[LogicalVolume]:
    """LVs from `lvs --reportformat json --units b --nosuffix -o LV_FIELDS`."""
    rows = json.loads(report)["report"][0]["lv"]
    return [
        LogicalVolume(
            vg=vg,
            name=r["lv_name"],
            uuid=r["lv_uuid"],
            size_bytes=int(r["lv_size"]),
            attr=r["lv_attr"],
            pool=r["pool_lv"],
            origin=r["origin"],
            tags=tuple(t for t in r["lv_tags"].split(",") if t),
            data_percent=_percent(r["data_percent"]),
            metadata_percent=_percent(r["metadata_percent"]),
        )
        for r in rows
    ]


def pool_status(lvs: list[LogicalVolume], pool: str) -> PoolUse:
    lv = next((v for v in lvs if v.name == pool), None)
    if lv is None or not lv.is_thin_pool:
        raise LookupError(f"no thin pool {pool!r}")
    return PoolUse(lv.vg, pool, lv.size_bytes, lv.data_percent or 0.0, lv.metadata_percent or 0.0)


def parse_vg_tags(report: str) -> tuple[str, ...]:
    """The tags of the one VG in `vgs --reportformat json -o vg_tags VG`."""
    return tuple(t for t in json.loads(report)["report"][0]["vg"][0]["vg_tags"].split(",") if t)


def tags_args(tags: dict[str, str] | None) -> list[str]:
    """--addtag for the owner tag and each key=value (LVM tags allow [A-Za-z0-9_+.=-])."""
    out = ["--addtag", OWNER_TAG]
    for k, v in (tags or {}).items():
        out += ["--addtag", f"{k}={v}"]
    return out


Runner = Callable[[Sequence[str], str | None], str]


def run_lvm(argv: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, env=dict(os.environ, LC_ALL="C"))
    if proc.returncode != 0:
        raise LvmError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def _collect(call: Callable[..., None], *args: str) -> list[DmError]:
    """Cleanup that goes on: the error of one step, as a list, instead of stopping."""
    try:
        call(*args)
    except DmError as e:
        return [e]
    return []


class Lvm:
    """The array's volume group and thin pool. `dm` opens the device-mapper control
    (injectable for unit tests)."""

    def __init__(self, vg: str, pool: str, run: Runner = run_lvm,
                 dm: Callable[[], AbstractContextManager[Control]] = DmControl,
                 sys_block: Path = Path("/sys/block")) -> None:
        self.vg, self.pool, self._run, self._dm, self._sys_block = vg, pool, run, dm, sys_block

    def volumes(self) -> list[LogicalVolume]:
        return parse_lvs(self._run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                                    "-o", LV_FIELDS, self.vg], None), self.vg)

    def get(self, name: str) -> LogicalVolume | None:
        return next((v for v in self.volumes() if v.name == name), None)

    def pool_status(self) -> PoolUse:
        return pool_status(self.volumes(), self.pool)

    def device(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    def create_volume(self, name: str, size_bytes: int, tags: dict[str, str] | None = None) -> None:
        self._run(["lvcreate", "-q", "-V", f"{size_bytes}b", "-T", f"{self.vg}/{self.pool}",
                   "-n", name, *tags_args(tags)], None)

    def create_snapshots(self, snaps: Sequence[tuple[str, str, dict[str, str]]]) -> float:
        """Thin snapshots (origin, name, tags) of several LVs in one lvm process: one start-up,
        one device scan, the commands back to back. Returns the seconds the batch took.
        The lvm shell does not stop at a failed command, so success is checked afterwards."""
        script = "".join(
            " ".join(["lvcreate", "-q", "-s", "-n", name, *tags_args(tags), f"{self.vg}/{origin}"]) + "\n"
            for origin, name, tags in snaps
        )
        started = time.monotonic()
        self._run(["lvm"], script)
        took = time.monotonic() - started
        have = {v.name for v in self.volumes()}
        missing = [name for _, name, _ in snaps if name not in have]
        if missing:
            raise LvmError(["lvm", "lvcreate -s"], 1, f"snapshots not created: {', '.join(missing)}")
        return took

    def thin_devices(self, names: Sequence[str]) -> dict[str, ThinDevice]:
        return parse_thin_devices(self._run(["lvs", "--reportformat", "json", "-o",
                                             "lv_name,thin_id,lv_dm_path,lv_attr", self.vg], None), names)

    def repoint_snapshots(self, pairs: Sequence[tuple[ThinDevice, ThinDevice]]) -> float:
        """Make each pre-made thin snapshot again from its origin's current blocks, in the pool
        itself: the commit window without LVM. The snapshots were made by lvcreate before
        (so LVM's metadata already has them, with these thin ids) and are inactive; the pool
        gets `delete <id>` + `create_snap <id> <origin id>`, which keeps the ids and so LVM's
        metadata exactly as it is. Active origins are suspended around the messages (their
        I/O flushed and held, as lvcreate does), and resumed whatever happens. All of it is
        DM ioctls from this process (`targets.dm`): no process start-up in the window.

        If a message fails, an id already deleted is given an empty thin device again
        (`create_thin`), so that the pool and LVM agree and the set's undo can lvremove it.
        Raises DmError with every failure. Returns the seconds the window took."""
        pool = f"{dm_name(self.vg, self.pool)}-tpool"
        suspended: list[str] = []
        deleted: list[int] = []
        errors: list[DmError] = []
        started = time.monotonic()
        with self._dm() as dm:
            try:
                for origin, _ in pairs:
                    if origin.dm_name:
                        dm.suspend(origin.dm_name)
                        suspended.append(origin.dm_name)
                crash_point("commit-window")  # a killed agent leaves these suspended: see resume_suspended
                for origin, snap in pairs:
                    dm.message(pool, f"delete {snap.thin_id}")
                    deleted.append(snap.thin_id)
                    dm.message(pool, f"create_snap {snap.thin_id} {origin.thin_id}")
                    deleted.pop()
            except DmError as e:
                errors.append(e)
            finally:  # whatever stopped the loop, the pool keeps LVM's ids and writes flow again
                for thin_id in deleted:
                    errors += _collect(dm.message, pool, f"create_thin {thin_id}")
                for name in suspended:
                    errors += _collect(dm.resume, name)
            took = time.monotonic() - started
        if errors:
            raise DmError(errors[0].what, errors[0].device, errors[0].errno,
                          also=[str(e) for e in errors[1:]])
        return took

    def resume_suspended(self) -> tuple[list[str], list[DmError]]:
        """Resume every suspended device of the VG: what an agent killed inside the commit window
        left holding its hosts' I/O. A device with a loaded table waiting (an lvm command
        interrupted between load and resume) is not resumed, which would switch tables behind
        LVM: it is reported for an operator. Returns (resumed, failures); every device is tried."""
        resumed: list[str] = []
        errors: list[DmError] = []
        with self._dm() as dm:
            for name in vg_dm_names(self.vg, self._sys_block):
                try:
                    flags = dm.status(name)
                    if flags & SUSPEND_FLAG and flags & INACTIVE_PRESENT_FLAG:
                        raise DmError("resume (a loaded table waits; left for an operator)", name, errno.EBUSY)
                    if flags & SUSPEND_FLAG:
                        dm.resume(name)
                        resumed.append(name)
                except DmError as e:
                    errors.append(e)
        return resumed, errors

    def vg_tags(self) -> tuple[str, ...]:
        return parse_vg_tags(self._run(["vgs", "--reportformat", "json", "-o", "vg_tags", self.vg], None))

    def retag_vg(self, remove: Sequence[str] = (), add: Sequence[str] = ()) -> None:
        """Delete the VG tags `remove` and add `add` (whole tags), in one vgchange."""
        argv = ["vgchange", "-q"]
        for tag in remove:
            argv += ["--deltag", tag]
        for tag in add:
            argv += ["--addtag", tag]
        self._run([*argv, self.vg], None)

    def activate(self, *names: str) -> None:
        """Thin snapshots skip activation by default; -K activates anyway. Several LVs in one
        lvchange: one process, one device scan."""
        if names:
            self._run(["lvchange", "-q", "-ay", "-K", *(f"{self.vg}/{n}" for n in names)], None)

    def rename(self, name: str, new_name: str) -> None:
        self._run(["lvrename", "-q", self.vg, name, new_name], None)

    def resize(self, name: str, size_bytes: int) -> None:
        """Set a thin LV's size (a shrink drops what lies past the end: the caller knows)."""
        self._run(["lvresize", "-q", "--yes", "--force", "--size", f"{size_bytes}b", f"{self.vg}/{name}"], None)

    def remove(self, name: str) -> None:
        self._run(["lvremove", "-q", "-y", f"{self.vg}/{name}"], None)

    def retag(self, name: str, remove: Sequence[str] = (), add: dict[str, str] | None = None) -> None:
        """Delete the tags `remove` (whole tags, e.g. 'shadowlun.set=<id>') and add `add`
        (key=value), in one lvchange (one metadata update). Nothing to change: no command."""
        argv = ["lvchange", "-q"]
        for tag in remove:
            argv += ["--deltag", tag]
        for k, v in (add or {}).items():
            argv += ["--addtag", f"{k}={v}"]
        if len(argv) > 2:
            self._run([*argv, f"{self.vg}/{name}"], None)
