"""Snapshot sets that live only as long as the requester that made them.

An auto-release context (VSS_CTX_BACKUP, VSS_CTX_FILE_SHARE_BACKUP: no
VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE bit) asks that the set go away when its requester is done.
The coordinator records a hold per such set: the set's document (enough to delete its shadow
LUNs whether or not they were imported yet) and the requester process (pid and kernel start
time, so a reused pid is not taken for it). The requester releases its holds when it ends;
`recover` releases those of a requester that died without doing so.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from provider.durable import write_durably
from provider.contract.vss_types import VolumeSnapshotAttributes

_A = VolumeSnapshotAttributes


def is_auto_release(context: int) -> bool:
    return not context & _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name start at field 3


@dataclass(frozen=True)
class Hold:
    set_id: str
    document: str   # the set's Backup Components Document (XML)
    pid: int        # the requester
    started: str    # its start time (process_start), which a reused pid does not have

    def requester_alive(self) -> bool:
        return process_start(self.pid) == self.started


class RequesterHolds:
    """One JSON file per held set, written durably before the set is used."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def add(self, set_id: str, document: bytes) -> Hold:
        pid = os.getpid()
        hold = Hold(set_id, document.decode(), pid, process_start(pid) or "")
        write_durably(self.directory / f"{set_id}.json", json.dumps(asdict(hold)), 0o600)
        return hold

    def get(self, set_id: str) -> Hold | None:
        path = self.directory / f"{set_id}.json"
        return Hold(**json.loads(path.read_text())) if path.exists() else None

    def all(self) -> list[Hold]:
        return [Hold(**json.loads(p.read_text())) for p in sorted(self.directory.glob("*.json"))]

    def remove(self, set_id: str) -> None:
        (self.directory / f"{set_id}.json").unlink(missing_ok=True)
