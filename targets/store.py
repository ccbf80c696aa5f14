"""The array's wanted state: LUNs, serials, masking, the hosts allowed, snapshot sets, jobs.

SQLite (transactions, crash-safe, in the standard library). Every change that makes kernel
objects is written here *first* as an intent (state 'creating' / 'deleting', set 'committing',
job 'running'), so the reconcile at start knows what an interrupted operation left half-made
and removes it, and what is 'ready' it rebuilds in LIO and LVM if missing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS luns (
    name        TEXT PRIMARY KEY,           -- LV name == LIO backstore name
    kind        TEXT NOT NULL CHECK (kind IN ('volume', 'snapshot', 'copy')),
    size_bytes  INTEGER NOT NULL,
    serial      TEXT NOT NULL UNIQUE,       -- VPD 0x80, chosen before the first export
    origin      TEXT,                       -- snapshot/copy: the LUN it was taken from
    set_id      TEXT,
    snapshot_id TEXT UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
    created     REAL NOT NULL,
    holder      TEXT,                       -- the host initiator that made or imported it; NULL: the admin's
    taken_serial TEXT                       -- a broken shadow copy that took its original's identity
                                            -- (REVERT_IDENTITY_ALL): the serial hosts read instead of `serial`
);
CREATE TABLE IF NOT EXISTS masks (
    lun         TEXT NOT NULL REFERENCES luns(name) ON DELETE CASCADE,
    initiator   TEXT NOT NULL REFERENCES hosts(initiator),
    read_only   INTEGER NOT NULL,
    PRIMARY KEY (lun, initiator)
);
CREATE TABLE IF NOT EXISTS sets (
    set_id      TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('prepared', 'committing', 'committed', 'aborted')),
    created     REAL NOT NULL,
    commit_window_s REAL,
    owner       TEXT,                       -- the host initiator that prepared it; NULL: the admin
    transportable INTEGER NOT NULL DEFAULT 0, -- importable by any host of this array, not only the owner
    handed_out  REAL                        -- when its requester got it whole (PostFinalCommitSnapshots):
                                            -- from then on only a delete, never an abort, removes it
);
CREATE TABLE IF NOT EXISTS set_members (
    set_id      TEXT NOT NULL REFERENCES sets(set_id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL PRIMARY KEY,
    origin      TEXT NOT NULL,
    name        TEXT NOT NULL UNIQUE,       -- the snapshot LV to be made
    serial      TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS imports (
    set_id      TEXT PRIMARY KEY REFERENCES sets(set_id) ON DELETE CASCADE,
    host        TEXT NOT NULL,              -- the initiator that located the set's LUNs first
    since       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    initiator   TEXT PRIMARY KEY,           -- the host's iSCSI initiator name (IQN)
    name        TEXT NOT NULL UNIQUE,
    added       REAL NOT NULL,
    chap_user   TEXT NOT NULL,              -- the CHAP credentials of its NodeACL, made by the array
    chap_secret TEXT NOT NULL,
    token_digest TEXT NOT NULL UNIQUE       -- SHA-256 of its bearer token (the token is not kept)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('copy', 'resync')),
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
    done_bytes  INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL,
    error       TEXT,
    created     REAL NOT NULL,
    requester   TEXT                        -- the host initiator that started it; NULL: the admin
);
CREATE TABLE IF NOT EXISTS meta (
    key         TEXT PRIMARY KEY,           -- 'array_id': the array this store belongs to
    value       TEXT NOT NULL
);
"""


SCHEMA_VERSION = 4  # 2: hosts with their credentials, masks without; holders, set owners. 3: hand-out, cancel.
#                    4: identities taken by broken copies
MIGRATIONS = {  # from version N to N + 1, statement by statement
    2: ["ALTER TABLE sets ADD COLUMN handed_out REAL",
        # jobs may be cancelled: a new CHECK, so the table is made again (SQLite's way)
        "ALTER TABLE jobs RENAME TO jobs_v2",
        SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS jobs"):SCHEMA.index("CREATE TABLE IF NOT EXISTS meta")],
        "INSERT INTO jobs SELECT * FROM jobs_v2",
        "DROP TABLE jobs_v2"],
    3: ["ALTER TABLE luns ADD COLUMN taken_serial TEXT"],
}


class StoreError(RuntimeError):
    """The store cannot be used as it is (e.g. made by an older version)."""


@dataclass(frozen=True)
class Lun:
    name: str
    kind: str
    size_bytes: int
    serial: str
    origin: str | None
    set_id: str | None
    snapshot_id: str | None
    state: str
    created: float
    holder: str | None = None
    taken_serial: str | None = None

    @property
    def exported_serial(self) -> str:
        """The unit serial hosts read (VPD 0x80, and page 0x83's NAA id made from it): the LUN's
        own, or the original's for a broken copy that took its identity."""
        return self.taken_serial or self.serial


@dataclass(frozen=True)
class Mask:
    lun: str
    initiator: str
    read_only: bool


@dataclass(frozen=True)
class Host:
    initiator: str
    name: str
    added: float
    chap_user: str
    chap_secret: str
    token_digest: str


@dataclass(frozen=True)
class SetMember:
    set_id: str
    snapshot_id: str
    origin: str
    name: str
    serial: str


@dataclass(frozen=True)
class SnapshotSet:
    set_id: str
    state: str
    created: float
    commit_window_s: float | None
    owner: str | None
    transportable: bool
    handed_out: float | None
    members: tuple[SetMember, ...]


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    source: str
    target: str
    state: str
    done_bytes: int
    total_bytes: int
    error: str | None
    created: float
    requester: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0


class Store:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            # Root's only: the store holds every host's CHAP secret. SQLite gives its -wal and
            # -shm files the database file's mode.
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path(path).parent.chmod(0o700)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL") if str(path) != ":memory:" else None
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        self._lock = threading.RLock()
        while tables and version in MIGRATIONS:
            with self.tx():
                for statement in MIGRATIONS[version]:
                    self._db.execute(statement)
                version += 1
                self._db.execute(f"PRAGMA user_version = {version}")
        if tables and version != SCHEMA_VERSION:
            raise StoreError(f"{path}: a store of schema {version}, not {SCHEMA_VERSION} (an older shadowlun's); "
                             f"move it aside to start afresh (its LVs are kept and reported by the reconcile)")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested calls join the outer one."""
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, *args) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- LUNs -----------------------------------------------------------------------------

    INSERT_LUN = ("INSERT INTO luns (name, kind, size_bytes, serial, origin, set_id, snapshot_id, state, "
                  "created, holder) VALUES (?,?,?,?,?,?,?,?,?,?)")

    def add_lun(self, name: str, kind: str, size_bytes: int, serial: str, *, origin: str | None = None,
                set_id: str | None = None, snapshot_id: str | None = None, state: str = "creating",
                holder: str | None = None) -> Lun:
        with self.tx() as db:
            db.execute(self.INSERT_LUN, (name, kind, size_bytes, serial, origin, set_id, snapshot_id, state,
                                         time.time(), holder))
        return self.lun(name)  # type: ignore[return-value]

    def add_snapshot_luns(self, members: Sequence[SetMember], sizes: Mapping[str, int],
                          holder: str | None) -> None:
        """A committing set's shadow LUNs, one per member, each its origin's size (`sizes`, by
        origin): one statement for the set, as its commit holds the hosts' writes."""
        now = time.time()
        with self.tx() as db:
            db.executemany(self.INSERT_LUN, [(m.name, "snapshot", sizes[m.origin], m.serial, m.origin, m.set_id,
                                              m.snapshot_id, "creating", now, holder) for m in members])

    def lun(self, name: str) -> Lun | None:
        rows = self._rows("SELECT * FROM luns WHERE name = ?", name)
        return Lun(*rows[0]) if rows else None

    def luns_named(self, names: Sequence[str]) -> dict[str, Lun]:
        """The LUNs of these names that exist, by name, in one query (a set's worth)."""
        return {r[0]: Lun(*r) for r in self._rows(
            "SELECT * FROM luns WHERE name IN (SELECT value FROM json_each(?))", json.dumps(list(names)))}

    def lun_by_serial(self, serial: str) -> Lun | None:
        rows = self._rows("SELECT * FROM luns WHERE serial = ?", serial)
        return Lun(*rows[0]) if rows else None

    def luns_presenting(self, serial: str) -> list[Lun]:
        """The LUNs hosts read with this serial: the one it belongs to, and broken copies that
        took it as their original's identity."""
        return [Lun(*r) for r in self._rows("SELECT * FROM luns WHERE serial = ? OR taken_serial = ? "
                                             "ORDER BY name", serial, serial)]

    def luns(self, state: str | None = None) -> list[Lun]:
        if state:
            return [Lun(*r) for r in self._rows("SELECT * FROM luns WHERE state = ? ORDER BY name", state)]
        return [Lun(*r) for r in self._rows("SELECT * FROM luns ORDER BY name")]

    def set_lun_size(self, name: str, size_bytes: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE luns SET size_bytes = ? WHERE name = ?", (size_bytes, name))

    def set_lun_state(self, name: str, state: str) -> None:
        self.set_luns_state([name], state)

    def set_luns_state(self, names: Sequence[str], state: str) -> None:
        with self.tx() as db:
            db.executemany("UPDATE luns SET state = ? WHERE name = ?", [(state, n) for n in names])

    def set_holder(self, names: list[str], holder: str | None) -> None:
        """Who answers for these LUNs now (an import hands a set's shadow LUNs to the importer)."""
        with self.tx() as db:
            db.executemany("UPDATE luns SET holder = ? WHERE name = ?", [(holder, n) for n in names])

    def remove_lun(self, name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM luns WHERE name = ?", (name,))

    def set_lun_kind(self, name: str, kind: str, *, set_id: str | None = None,
                     snapshot_id: str | None = None) -> None:
        """What a LUN is: a detached snapshot becomes a 'volume' with no set and no snapshot id
        (its origin is kept, for information)."""
        with self.tx() as db:
            db.execute("UPDATE luns SET kind = ?, set_id = ?, snapshot_id = ? WHERE name = ?",
                       (kind, set_id, snapshot_id, name))

    def set_taken_serial(self, name: str, serial: str | None) -> None:
        """The identity a broken copy presents instead of its own (None: its own again)."""
        with self.tx() as db:
            db.execute("UPDATE luns SET taken_serial = ? WHERE name = ?", (serial, name))

    def serial_in_use(self, serial: str) -> bool:
        return bool(self._rows("SELECT 1 FROM luns WHERE serial = ? OR taken_serial = ? UNION "
                               "SELECT 1 FROM set_members WHERE serial = ?", serial, serial, serial))

    # -- masking --------------------------------------------------------------------------

    def put_mask(self, mask: Mask) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO masks VALUES (?,?,?)",
                       (mask.lun, mask.initiator, int(mask.read_only)))

    def remove_mask(self, lun: str, initiator: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM masks WHERE lun = ? AND initiator = ?", (lun, initiator))

    def masks(self, lun: str | None = None, *, initiator: str | None = None) -> list[Mask]:
        """The masks of one LUN, or of one initiator, or all."""
        if lun:
            rows = self._rows("SELECT * FROM masks WHERE lun = ? ORDER BY initiator", lun)
        elif initiator:
            rows = self._rows("SELECT * FROM masks WHERE initiator = ? ORDER BY lun", initiator)
        else:
            rows = self._rows("SELECT * FROM masks ORDER BY lun, initiator")
        return [Mask(r[0], r[1], bool(r[2])) for r in rows]

    # -- hosts allowed by the array -------------------------------------------------------

    def add_host(self, initiator: str, name: str, chap_user: str, chap_secret: str, token_digest: str) -> Host:
        """Create-or-lookup: the host stored for `initiator` (its first name and credentials stand)."""
        with self.tx() as db:
            if db.execute("SELECT 1 FROM hosts WHERE initiator = ?", (initiator,)).fetchone() is None:
                db.execute("INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?)",
                           (initiator, name, time.time(), chap_user, chap_secret, token_digest))
            return Host(*db.execute("SELECT * FROM hosts WHERE initiator = ?", (initiator,)).fetchone())

    def host_by_token(self, token_digest: str) -> Host | None:
        rows = self._rows("SELECT * FROM hosts WHERE token_digest = ?", token_digest)
        return Host(*rows[0]) if rows else None

    def host_named(self, name: str) -> Host | None:
        rows = self._rows("SELECT * FROM hosts WHERE name = ?", name)
        return Host(*rows[0]) if rows else None

    def set_host_token(self, initiator: str, token_digest: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE hosts SET token_digest = ? WHERE initiator = ?", (token_digest, initiator))

    def host(self, initiator: str) -> Host | None:
        rows = self._rows("SELECT * FROM hosts WHERE initiator = ?", initiator)
        return Host(*rows[0]) if rows else None

    def hosts(self) -> list[Host]:
        return [Host(*r) for r in self._rows("SELECT * FROM hosts ORDER BY name, initiator")]

    def remove_host(self, initiator: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM hosts WHERE initiator = ?", (initiator,))

    # -- snapshot sets --------------------------------------------------------------------

    def add_set(self, set_id: str, members: list[SetMember], owner: str | None = None,
                transportable: bool = False) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO sets VALUES (?, 'prepared', ?, NULL, ?, ?, NULL)",
                       (set_id, time.time(), owner, int(transportable)))
            db.executemany("INSERT INTO set_members VALUES (?,?,?,?,?)",
                           [(m.set_id, m.snapshot_id, m.origin, m.name, m.serial) for m in members])

    def snapshot_set(self, set_id: str) -> SnapshotSet | None:
        rows = self._rows("SELECT * FROM sets WHERE set_id = ?", set_id)
        if not rows:
            return None
        members = tuple(SetMember(*r) for r in self._rows(
            "SELECT * FROM set_members WHERE set_id = ? ORDER BY rowid", set_id))
        set_id, state, created, window, owner, transportable, handed_out = rows[0]
        return SnapshotSet(set_id, state, created, window, owner, bool(transportable), handed_out, members)

    def sets(self, state: str | None = None) -> list[SnapshotSet]:
        ids = [r[0] for r in (self._rows("SELECT set_id FROM sets WHERE state = ?", state) if state
                              else self._rows("SELECT set_id FROM sets"))]
        return [s for s in map(self.snapshot_set, ids) if s]

    def set_state(self, set_id: str, state: str, commit_window_s: float | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE sets SET state = ?, commit_window_s = COALESCE(?, commit_window_s) "
                       "WHERE set_id = ?", (state, commit_window_s, set_id))

    def hand_out(self, set_id: str) -> float:
        """Mark the set as its requester's for good (once; the first time is kept)."""
        with self.tx() as db:
            db.execute("UPDATE sets SET handed_out = COALESCE(handed_out, ?) WHERE set_id = ?",
                       (time.time(), set_id))
            return db.execute("SELECT handed_out FROM sets WHERE set_id = ?", (set_id,)).fetchone()[0]

    # -- imports: a transportable set is imported by one host only -------------------------

    def claim_import(self, set_id: str, host: str) -> tuple[str, float]:
        """Record `host` as the set's importer unless another host is; returns (host, since)
        of the claim that stands, atomically (two hosts racing cannot both win)."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO imports VALUES (?, ?, ?)", (set_id, host, time.time()))
            return db.execute("SELECT host, since FROM imports WHERE set_id = ?", (set_id,)).fetchone()

    def drop_import(self, set_id: str) -> None:
        """Forget the set's importer (the undo of a failed import)."""
        with self.tx() as db:
            db.execute("DELETE FROM imports WHERE set_id = ?", (set_id,))

    def import_of(self, set_id: str) -> tuple[str, float] | None:
        rows = self._rows("SELECT host, since FROM imports WHERE set_id = ?", set_id)
        return rows[0] if rows else None

    # -- jobs -----------------------------------------------------------------------------

    def add_job(self, job_id: str, kind: str, source: str, target: str, total_bytes: int,
                requester: str | None = None) -> Job:
        with self.tx() as db:
            db.execute("INSERT INTO jobs VALUES (?,?,?,?, 'running', 0, ?, NULL, ?, ?)",
                       (job_id, kind, source, target, total_bytes, time.time(), requester))
        return self.job(job_id)  # type: ignore[return-value]

    def job(self, job_id: str) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", job_id)
        return Job(*rows[0]) if rows else None

    def jobs(self, state: str | None = None) -> list[Job]:
        rows = (self._rows("SELECT * FROM jobs WHERE state = ?", state) if state
                else self._rows("SELECT * FROM jobs ORDER BY created"))
        return [Job(*r) for r in rows]

    def update_job(self, job_id: str, *, done_bytes: int | None = None, state: str | None = None,
                   error: str | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE jobs SET done_bytes = COALESCE(?, done_bytes), state = COALESCE(?, state), "
                       "error = COALESCE(?, error) WHERE job_id = ?", (done_bytes, state, error, job_id))

    # -- identity: which array this store belongs to ------------------------------------------

    def array_id(self) -> str | None:
        """The id of the array this store was made for (also a tag of its volume group), so that
        an agent started on an empty or another array's store can tell."""
        rows = self._rows("SELECT value FROM meta WHERE key = 'array_id'")
        return rows[0][0] if rows else None

    def set_array_id(self, array_id: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('array_id', ?)", (array_id,))

    def is_empty(self) -> bool:
        """No LUN and no snapshot set: what a new (or lost) store looks like."""
        return not self._rows("SELECT 1 FROM luns UNION ALL SELECT 1 FROM sets LIMIT 1")
