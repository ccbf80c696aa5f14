"""Unit tests of targets.store: the array's wanted state in SQLite (in memory and on disk)."""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import pytest

from targets.store import Host, Mask, SetMember, Store, StoreError

SERIAL_A = "0123456789abcdef0123456789abcdef"
SERIAL_B = "fedcba9876543210fedcba9876543210"


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    return Store(":memory:") if request.param == "memory" else Store(tmp_path / "x.db")


def with_hosts(store: Store) -> Store:
    """Masks name registered hosts (a foreign key)."""
    for iqn, name in ((IQN1, "host1"), (IQN2, "host2")):
        store.add_host(iqn, name, name, f"chap-secret-{name}", f"digest-{name}")
    return store


def _members(set_id: str, *ids: str) -> list[SetMember]:
    return [SetMember(set_id, sid, "lun-" + sid, "snap-" + sid, f"{i:032x}") for i, sid in enumerate(ids, 1)]


# --- LUNs --------------------------------------------------------------------------------------

def test_add_and_get_lun(store):
    lun = store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    assert lun == store.lun("lun-a")
    assert (lun.name, lun.kind, lun.size_bytes, lun.serial) == ("lun-a", "volume", 1 << 20, SERIAL_A)
    assert lun.origin is None and lun.set_id is None and lun.snapshot_id is None
    assert lun.state == "creating"
    assert isinstance(lun.created, float) and lun.created > 0


def test_add_snapshot_lun(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A, state="ready")
    snap = store.add_lun("snap-1", "snapshot", 1 << 20, SERIAL_B, origin="lun-a", set_id="s", snapshot_id="1")
    assert (snap.origin, snap.set_id, snap.snapshot_id) == ("lun-a", "s", "1")


def test_missing_lun_is_none(store):
    assert store.lun("nope") is None
    assert store.lun_by_serial(SERIAL_A) is None


def test_lun_by_serial(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    assert store.lun_by_serial(SERIAL_A).name == "lun-a"


def test_unique_serial(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_lun("lun-b", "volume", 1 << 20, SERIAL_A)
    assert [lun.name for lun in store.luns()] == ["lun-a"]


def test_unique_name(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_lun("lun-a", "volume", 1 << 20, SERIAL_B)


def test_unique_snapshot_id(store):
    store.add_lun("snap-1", "snapshot", 1 << 20, SERIAL_A, snapshot_id="1")
    with pytest.raises(sqlite3.IntegrityError):
        store.add_lun("snap-2", "snapshot", 1 << 20, SERIAL_B, snapshot_id="1")


@pytest.mark.parametrize("kind, state", [("disk", "creating"), ("volume", "gone")])
def test_kind_and_state_are_checked(store, kind, state):
    with pytest.raises(sqlite3.IntegrityError):
        store.add_lun("lun-a", kind, 1 << 20, SERIAL_A, state=state)
    assert store.luns() == []


def test_states(store):
    store.add_lun("lun-b", "volume", 1 << 20, SERIAL_B)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.set_lun_state("lun-a", "ready")
    assert store.lun("lun-a").state == "ready"
    assert [lun.name for lun in store.luns("ready")] == ["lun-a"]
    assert [lun.name for lun in store.luns("creating")] == ["lun-b"]
    assert [lun.name for lun in store.luns()] == ["lun-a", "lun-b"]  # by name
    store.set_lun_state("lun-a", "deleting")
    assert store.luns("ready") == []
    with pytest.raises(sqlite3.IntegrityError):
        store.set_lun_state("lun-a", "bogus")
    assert store.lun("lun-a").state == "deleting"


def test_remove_lun(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.remove_lun("lun-a")
    assert store.lun("lun-a") is None
    store.remove_lun("lun-a")  # removing what is gone is fine


def test_set_lun_kind_detaches_and_back(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A, state="ready")
    store.add_lun("snap-1", "snapshot", 1 << 20, SERIAL_B, origin="lun-a", set_id="s", snapshot_id="1",
                  state="ready")
    store.set_lun_kind("snap-1", "volume")
    lun = store.lun("snap-1")
    assert (lun.kind, lun.origin, lun.set_id, lun.snapshot_id, lun.serial, lun.state) == (
        "volume", "lun-a", None, None, SERIAL_B, "ready")
    store.set_lun_kind("snap-1", "snapshot", set_id="s", snapshot_id="1")
    assert store.lun("snap-1") == replace(lun, kind="snapshot", set_id="s", snapshot_id="1")
    with pytest.raises(sqlite3.IntegrityError):
        store.set_lun_kind("snap-1", "disk")


# --- masks -------------------------------------------------------------------------------------

IQN1 = "iqn.1991-05.com.microsoft:host1"
IQN2 = "iqn.1991-05.com.microsoft:host2"


def test_put_mask_and_list(store):
    with_hosts(store)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.put_mask(Mask("lun-a", IQN2, False))
    store.put_mask(Mask("lun-a", IQN1, True))
    assert store.masks("lun-a") == [Mask("lun-a", IQN1, True),
                                     Mask("lun-a", IQN2, False)]
    assert store.masks() == store.masks("lun-a")
    assert isinstance(store.masks("lun-a")[0].read_only, bool)


def test_put_mask_replaces(store):
    with_hosts(store)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.put_mask(Mask("lun-a", IQN1, False))
    store.put_mask(Mask("lun-a", IQN1, True))
    assert store.masks("lun-a") == [Mask("lun-a", IQN1, True)]


def test_remove_mask(store):
    with_hosts(store)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.put_mask(Mask("lun-a", IQN1, False))
    store.put_mask(Mask("lun-a", IQN2, False))
    store.remove_mask("lun-a", IQN1)
    assert [m.initiator for m in store.masks("lun-a")] == [IQN2]


def test_masks_per_lun(store):
    with_hosts(store)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.add_lun("lun-b", "volume", 1 << 20, SERIAL_B)
    store.put_mask(Mask("lun-a", IQN1, False))
    store.put_mask(Mask("lun-b", IQN1, False))
    assert [m.lun for m in store.masks("lun-b")] == ["lun-b"]
    assert [m.lun for m in store.masks()] == ["lun-a", "lun-b"]


def test_masks_cascade_on_lun_removal(store):
    with_hosts(store)
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.add_lun("lun-b", "volume", 1 << 20, SERIAL_B)
    store.put_mask(Mask("lun-a", IQN1, False))
    store.put_mask(Mask("lun-b", IQN1, False))
    store.remove_lun("lun-a")
    assert [m.lun for m in store.masks()] == ["lun-b"]


def test_mask_of_an_unknown_lun_is_refused(store):
    with_hosts(store)
    with pytest.raises(sqlite3.IntegrityError):
        store.put_mask(Mask("lun-x", IQN1, False))


# --- snapshot sets -----------------------------------------------------------------------------

def test_set_with_members_in_order(store):
    members = _members("set-1", "zz", "aa", "mm")
    store.add_set("set-1", members)
    s = store.snapshot_set("set-1")
    assert s.set_id == "set-1" and s.state == "prepared" and s.commit_window_s is None
    assert s.members == tuple(members)


def test_missing_set_is_none(store):
    assert store.snapshot_set("nope") is None


def test_set_state_and_commit_window(store):
    store.add_set("set-1", _members("set-1", "a"))
    store.set_state("set-1", "committing")
    assert store.snapshot_set("set-1").state == "committing"
    store.set_state("set-1", "committed", commit_window_s=0.25)
    assert store.snapshot_set("set-1").commit_window_s == 0.25
    store.set_state("set-1", "aborted")  # None keeps the recorded window
    s = store.snapshot_set("set-1")
    assert s.state == "aborted" and s.commit_window_s == 0.25


def test_set_state_is_checked(store):
    store.add_set("set-1", _members("set-1", "a"))
    with pytest.raises(sqlite3.IntegrityError):
        store.set_state("set-1", "done")


def test_sets_by_state(store):
    store.add_set("set-1", _members("set-1", "a"))
    store.add_set("set-2", _members("set-2", "b", "c")[1:])
    store.set_state("set-2", "committing")
    assert [s.set_id for s in store.sets("committing")] == ["set-2"]
    assert [s.set_id for s in store.sets("prepared")] == ["set-1"]
    assert {s.set_id for s in store.sets()} == {"set-1", "set-2"}


def test_add_set_is_all_or_nothing(store):
    store.add_set("set-1", _members("set-1", "a"))
    clash = [SetMember("set-2", "b", "lun-b", "snap-b", f"{9:032x}"),
             SetMember("set-2", "c", "lun-c", "snap-c", f"{1:032x}")]  # serial of set-1's member
    with pytest.raises(sqlite3.IntegrityError):
        store.add_set("set-2", clash)
    assert store.snapshot_set("set-2") is None
    assert not store.serial_in_use(f"{9:032x}")


def test_serial_in_use_covers_luns_and_set_members(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    store.add_set("set-1", _members("set-1", "a"))
    assert store.serial_in_use(SERIAL_A)
    assert store.serial_in_use(f"{1:032x}")
    assert not store.serial_in_use(SERIAL_B)


# --- jobs --------------------------------------------------------------------------------------

def test_jobs(store):
    job = store.add_job("j1", "copy", "lun-a", "lun-b", 1000)
    assert (job.state, job.done_bytes, job.total_bytes, job.error) == ("running", 0, 1000, None)
    assert job.percent == 0.0
    store.update_job("j1", done_bytes=250)
    assert store.job("j1").percent == 25.0
    store.update_job("j1", state="failed", error="boom")
    job = store.job("j1")
    assert (job.state, job.done_bytes, job.error) == ("failed", 250, "boom")
    store.update_job("j1", done_bytes=300)  # None leaves the other fields alone
    assert (store.job("j1").state, store.job("j1").error) == ("failed", "boom")


def test_job_percent_of_nothing_is_done(store):
    assert store.add_job("j0", "resync", "snap-1", "lun-a", 0).percent == 100.0


def test_jobs_by_state(store):
    store.add_job("j1", "copy", "lun-a", "lun-b", 10)
    store.add_job("j2", "resync", "snap-1", "lun-a", 10)
    store.update_job("j1", state="done")
    assert [j.job_id for j in store.jobs("running")] == ["j2"]
    assert {j.job_id for j in store.jobs()} == {"j1", "j2"}
    assert store.job("nope") is None


def test_job_kind_is_checked(store):
    with pytest.raises(sqlite3.IntegrityError):
        store.add_job("j1", "move", "a", "b", 10)


# --- transactions ------------------------------------------------------------------------------

def test_tx_rolls_back_on_exception(store):
    with_hosts(store)
    with pytest.raises(RuntimeError):
        with store.tx():
            store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
            store.add_set("set-1", _members("set-1", "a"))
            store.put_mask(Mask("lun-a", IQN1, False))
            raise RuntimeError("crash")
    assert store.luns() == [] and store.sets() == [] and store.masks() == []
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)  # the connection is usable again
    assert store.lun("lun-a") is not None


def test_tx_rolls_back_an_integrity_error_with_what_came_before(store):
    store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    with pytest.raises(sqlite3.IntegrityError):
        with store.tx():
            store.set_lun_state("lun-a", "ready")
            store.add_lun("lun-b", "volume", 1 << 20, SERIAL_A)
    assert store.lun("lun-a").state == "creating" and store.lun("lun-b") is None


def test_nested_tx_joins_the_outer_one(store):
    with pytest.raises(RuntimeError):
        with store.tx():
            with store.tx():
                store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
            assert store.lun("lun-a") is not None  # visible inside the outer transaction
            raise RuntimeError("after the inner one finished")
    assert store.lun("lun-a") is None  # the inner one did not commit on its own


def test_nested_tx_commits_with_the_outer_one(tmp_path):
    store = Store(tmp_path / "x.db")
    other = sqlite3.connect(str(tmp_path / "x.db"))
    with store.tx():
        with store.tx():
            store.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
        assert other.execute("SELECT count(*) FROM luns").fetchone() == (0,)
    assert other.execute("SELECT count(*) FROM luns").fetchone() == (1,)


def test_concurrent_writers(store):
    def work(t: int) -> None:
        for i in range(25):
            store.add_lun(f"lun-{t}-{i}", "volume", 1 << 20, f"{t:04x}{i:028x}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(store.luns()) == 100


# --- hosts -------------------------------------------------------------------------------------

def test_hosts_create_or_lookup(store):
    h = store.add_host(IQN2, "host2", "host2", "chap-secret-host2", "digest-host2")
    assert isinstance(h, Host) and (h.initiator, h.name) == (IQN2, "host2") and h.added > 0
    assert store.add_host(IQN2, "another-name", "another-name", "chap-secret-another-name", "digest-another-name") == h  # the first stands
    store.add_host(IQN1, "host1", "host1", "chap-secret-host1", "digest-host1")
    assert [x.initiator for x in store.hosts()] == [IQN1, IQN2]
    assert store.host(IQN2) == h and store.host("iqn.1991-05.com.microsoft:nobody") is None


def test_remove_host(store):
    store.add_host(IQN1, "host1", "host1", "chap-secret-host1", "digest-host1")
    store.remove_host(IQN1)
    assert store.hosts() == [] and store.host(IQN1) is None
    store.remove_host(IQN1)  # gone already: fine


def test_masks_of_an_initiator(store):
    with_hosts(store)
    for name, serial in (("lun-b", SERIAL_B), ("lun-a", SERIAL_A)):
        store.add_lun(name, "volume", 1 << 20, serial)
        store.put_mask(Mask(name, IQN1, False))
    store.put_mask(Mask("lun-a", IQN2, False))
    assert [m.lun for m in store.masks(initiator=IQN1)] == ["lun-a", "lun-b"]
    assert [m.lun for m in store.masks(initiator=IQN2)] == ["lun-a"]
    assert store.masks(initiator="iqn.1991-05.com.microsoft:nobody") == []


# --- on disk -----------------------------------------------------------------------------------

def test_persists_across_reopen(tmp_path):
    path = tmp_path / "state" / "x.db"  # the directory is made
    s1 = Store(path)
    with_hosts(s1)
    s1.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    s1.set_lun_state("lun-a", "ready")
    s1.put_mask(Mask("lun-a", IQN1, True))
    s1.add_set("set-1", _members("set-1", "a", "b"))
    s1.set_state("set-1", "committed", commit_window_s=0.5)
    s1.add_job("j1", "copy", "lun-a", "lun-c", 100)
    s1.update_job("j1", done_bytes=40)
    del s1

    s2 = Store(path)
    assert s2.lun("lun-a").state == "ready" and s2.lun("lun-a").serial == SERIAL_A
    assert s2.masks("lun-a") == [Mask("lun-a", IQN1, True)]
    s = s2.snapshot_set("set-1")
    assert s.state == "committed" and s.commit_window_s == 0.5 and [m.snapshot_id for m in s.members] == ["a", "b"]
    assert s2.job("j1").done_bytes == 40 and s2.job("j1").state == "running"
    with pytest.raises(sqlite3.IntegrityError):  # constraints hold after reopening too
        s2.add_lun("lun-b", "volume", 1 << 20, SERIAL_A)


def test_rolled_back_work_is_not_on_disk(tmp_path):
    s1 = Store(tmp_path / "x.db")
    with pytest.raises(RuntimeError):
        with s1.tx():
            s1.add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
            raise RuntimeError
    assert Store(tmp_path / "x.db").lun("lun-a") is None


def test_foreign_keys_on_after_reopen(tmp_path):
    with_hosts(Store(tmp_path / "x.db")).add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    s2 = Store(tmp_path / "x.db")
    with_hosts(s2)
    s2.put_mask(Mask("lun-a", IQN1, False))
    s2.remove_lun("lun-a")
    assert s2.masks() == []


def test_a_database_of_an_older_schema_is_refused(tmp_path):
    """An older store (masks with their own CHAP, hosts without credentials) is not opened and
    silently half-used: the agent stops with a clear message instead."""
    path = tmp_path / "x.db"
    Store(path)._db.execute("PRAGMA user_version = 1")
    with pytest.raises(StoreError, match="schema 1"):
        Store(path)


def test_a_store_of_schema_2_is_migrated_and_keeps_its_sets(tmp_path):
    """Schema 2 (sets without `handed_out`, LUNs without `taken_serial`) becomes 4 in place: every
    row kept, no set handed out, every LUN with its own identity."""
    import sqlite3

    path = tmp_path / "x.db"
    db = sqlite3.connect(path)
    db.executescript(_schema_2())
    db.execute("INSERT INTO sets VALUES ('s1', 'committed', 1.0, 0.5, NULL, 1)")
    db.execute("INSERT INTO jobs VALUES ('j1', 'copy', 'a', 'b', 'done', 5, 5, NULL, 1.0, NULL)")
    db.execute(f"INSERT INTO luns VALUES ('lun-a', 'volume', 1048576, '{SERIAL_A}', NULL, NULL, NULL, "
               f"'ready', 1.0, NULL)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    s = Store(path)
    got = s.snapshot_set("s1")
    assert (got.state, got.commit_window_s, got.transportable, got.handed_out) == ("committed", 0.5, True, None)
    assert s.hand_out("s1") > 0 and s.snapshot_set("s1").handed_out is not None
    assert [(j.job_id, j.state, j.done_bytes) for j in s.jobs()] == [("j1", "done", 5)]
    s.update_job("j1", state="cancelled")  # the new state is allowed
    lun = s.lun("lun-a")
    assert (lun.serial, lun.taken_serial, lun.exported_serial) == (SERIAL_A, None, SERIAL_A)
    s.set_taken_serial("lun-a", SERIAL_B)
    assert s.lun("lun-a").exported_serial == SERIAL_B and s.serial_in_use(SERIAL_B)
    assert Store(path).snapshot_set("s1").handed_out is not None  # version 4 now: opened as is


def _schema_2() -> str:
    """Version 2's tables: this version's without the columns versions 3 and 4 added."""
    from targets.store import SCHEMA

    luns_head, luns_tail = SCHEMA.split("    holder      TEXT,", 1)
    schema = luns_head + "    holder      TEXT\n);" + luns_tail.split(");", 1)[1]
    head, tail = schema.split("    transportable INTEGER NOT NULL DEFAULT 0,", 1)
    return (head + "    transportable INTEGER NOT NULL DEFAULT 0\n);" + tail.split(");", 1)[1]).replace(
        "'failed', 'cancelled'", "'failed'")


def test_the_store_is_root_only(tmp_path):
    path = tmp_path / "state" / "x.db"
    Store(path).add_lun("lun-a", "volume", 1 << 20, SERIAL_A)
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    for f in path.parent.iterdir():
        assert (f.stat().st_mode & 0o777) == 0o600, f


def test_hosts_by_token_and_name(store):
    with_hosts(store)
    assert store.host_by_token("digest-host1").initiator == IQN1
    assert store.host_named("host2").initiator == IQN2
    assert store.host_by_token("nope") is None and store.host_named("nope") is None
    store.set_host_token(IQN1, "digest-new")
    assert store.host_by_token("digest-host1") is None and store.host_by_token("digest-new").name == "host1"
