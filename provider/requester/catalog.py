"""The host's catalog of imported shadow copies (the VSS catalog of spec 13: Query, expose,
break and delete work from it). One JSON file per snapshot set, replaced atomically.

A shadow copy is kept by its LUN records and extents, never by a device name: names like sdb
change across reboots and rescans, the page-0x83 identity in the records does not.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provider.durable import write_durably
from provider.contract.hresult import HResult, vss_error


@dataclass
class ImportedSnapshot:
    snapshot_id: str
    volume: str                 # the original volume's name on the creating host
    luns: list[dict]            # the shadow LUNs' records (GetTargetLuns, from the document)
    sources: list[dict]         # the original LUNs' records
    extents: list[dict]         # {lun_index, offset_bytes, length_bytes} of the volume
    exposed: str | None = None  # mount point, or "device" when presented as a block device


@dataclass
class ImportedSet:
    set_id: str
    provider_id: str
    context: int
    originating_host: str
    created: str
    imported: str
    fingerprint: str
    snapshots: list[ImportedSnapshot] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> ImportedSet:
        return cls(**{**d, "snapshots": [ImportedSnapshot(**s) for s in d["snapshots"]]})

    def snapshot(self, snapshot_id: str) -> ImportedSnapshot | None:
        return next((s for s in self.snapshots if s.snapshot_id == snapshot_id), None)


class Catalog:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, set_id: str) -> Path:
        return self.directory / f"{set_id}.json"

    def sets(self) -> list[ImportedSet]:
        return [ImportedSet.from_dict(json.loads(p.read_text()))
                for p in sorted(self.directory.glob("*.json"))]

    def get(self, set_id: str) -> ImportedSet | None:
        path = self._path(set_id)
        return ImportedSet.from_dict(json.loads(path.read_text())) if path.exists() else None

    def require_set(self, set_id: str) -> ImportedSet:
        found = self.get(set_id)
        if found is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                            f"no imported snapshot set {set_id} on this host (see `shadowlun list`)")
        return found

    def require_snapshot(self, snapshot_id: str) -> tuple[ImportedSet, ImportedSnapshot]:
        for s in self.sets():
            snap = s.snapshot(snapshot_id)
            if snap is not None:
                return s, snap
        raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                        f"no imported shadow copy {snapshot_id} on this host (see `shadowlun list`)")

    def save(self, imported: ImportedSet) -> None:
        write_durably(self._path(imported.set_id), json.dumps(asdict(imported), indent=1))

    def remove(self, set_id: str) -> None:
        self._path(set_id).unlink(missing_ok=True)
