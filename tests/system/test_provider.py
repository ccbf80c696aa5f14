"""The VSS provider on the real stack: the coordinator on host-a drives the out-of-process
provider server (started on demand from its registration) through a whole creation sequence;
host-b finds the shadow LUNs from the records alone."""
from __future__ import annotations

import json

import pytest

from lab import story
from lab.checks import until, whole_disk
from lab.host_volumes import HostVolumes, initiator
from lab.story import PausedCreate

MIB = 1 << 20
WRITER = """
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while not os.path.exists(stop):
    t0 = time.time()
    os.write(fd, b"x" * 512)
    os.fsync(fd)
    print(f"{t0:.6f} {time.time():.6f}", flush=True)
    time.sleep(0.02)
"""


def start_writer(vm, path: str) -> None:
    """WRITER on `path` in the background, its ticks in /tmp/ticks.txt; stop_writer() ends it."""
    vm.run(f"rm -f /tmp/stop-writer; setsid python3 -c '{WRITER}' {path} /tmp/stop-writer "
           f"> /tmp/ticks.txt 2>&1 < /dev/null & sleep 1")


def stop_writer(vm) -> list[tuple[float, float]]:
    """(started, done) of each write, in the VM's clock."""
    vm.run("touch /tmp/stop-writer; sleep 0.5")
    return read_ticks(vm)


def read_ticks(vm) -> list[tuple[float, float]]:
    return [tuple(map(float, line.split())) for line in vm.run("cat /tmp/ticks.txt").stdout.split("\n") if line]


def snapshot_luns(api) -> list[dict]:
    return [lun for lun in api.call("GET", "/v1/luns") if lun["kind"] == "snapshot"]


def cli(vm, *args: str, env: str = "", check: bool = True):
    r = vm.run(f"{env} python3 -m provider.cli --json " + " ".join(args), check=False, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def three_volumes(lab):
    """Three array LUNs masked to host-a, each with a GPT partition holding ext4 mounted at
    /mnt/pv<n>-<tag> (set up as an admin would, with the lab's own tooling) and 4 MiB of data;
    made once for this file's tests (a set of three costs over a minute to make and remove under
    TCG), everything removed at the end, with the LUNs the array derived from them."""
    vols = HostVolumes(lab, lab.vm("host-a"), ["pv0", "pv1", "pv2"]).create()
    try:
        for m in vols.mounts:
            vols.vm.run(f"head -c 4M /dev/urandom > {m}/data && sync")
        yield vols
    finally:
        assert vols.remove() == []


@pytest.fixture
def volumes_on_host_a(three_volumes):
    """The three volumes, as each test starts with them: after the test, their filesystems are
    thawed and every LUN the array derived from them is deleted."""
    vols = three_volumes
    yield {"names": vols.names, "mounts": vols.mounts, "api": vols.api}
    assert vols.clear_derived() == []


def test_set_of_three_luns_through_the_out_of_process_server_holds_writes_only_in_commit(
        lab, volumes_on_host_a, timings):
    a = lab.vm("host-a")
    api, mounts = volumes_on_host_a["api"], volumes_on_host_a["mounts"]
    start_writer(a, f"{mounts[0]}/ticks")
    try:
        out = json.loads(cli(a, "create", "--transportable", "--bcd", "/root/set.xml", *mounts).stdout)
    finally:
        ticks = stop_writer(a)
    wall, secs = out["report"]["wall"], out["report"]["seconds"]

    # Writes flowed while the set was prepared, and none completed while the filesystems were frozen.
    prep = wall["EndPrepareSnapshots"]
    frozen = wall["frozen"]
    assert any(prep[0] <= done <= prep[1] for _, done in ticks) or prep[1] - prep[0] < 0.1, "writes held in prepare"
    assert not [t for t in ticks if frozen[0] < t[1] < frozen[1]], "a write completed while frozen"
    assert any(start < frozen[0] and done >= frozen[1] for start, done in ticks) or \
        frozen[1] - frozen[0] < 0.05, "no write was held by the freeze"
    assert wall["writes held"][0] <= wall["CommitSnapshots"][0] <= wall["CommitSnapshots"][1] <= wall["writes held"][1]
    timings.add("provider: writes held (3 LUNs, host-a)", secs["writes held"],
                f"CommitSnapshots {secs['CommitSnapshots']:.2f} s")

    # The provider ran out of process, started on demand from its registration.
    assert out["provider_server_pids"] and all(out["provider_server_pids"])
    assert a.run("pgrep -f '[p]rovider.hosting.server --socket' || true").stdout.strip() == "", "server not stopped"

    # The array has the three snapshots with the identities the document promises.
    assert len(out["snapshots"]) == 3
    snaps = {lun["serial"]: lun for lun in snapshot_luns(api)}
    for s in out["snapshots"]:
        record = s["target_luns"][0]
        lun = snaps[record["serial_number"]]
        assert lun["set_id"] == out["set_id"] and lun["origin"] in volumes_on_host_a["names"]
    xml = a.run("cat /root/set.xml").stdout
    assert "SNAPSHOT_SET_DESCRIPTION" in xml and out["set_id"] in xml


LOCATE_AND_READ = """
import json, sys
from provider.hardware.hardware_provider import make
records = json.loads(sys.stdin.read())
p = make()
disks = p.locate_luns(records)
seen = [p.fill_in_lun_info(d["device"]) for d in disks]
print(json.dumps({"disks": disks, "seen": seen}))
"""

EMPTY = """
import json, sys
from provider.hardware.hardware_provider import make
pairs = json.loads(sys.stdin.read())
p = make()
for device, record in pairs:
    p.on_lun_empty(device, record)
"""


def test_target_lun_records_equal_what_host_b_reads(lab, volumes_on_host_a):
    a, b = lab.vm("host-a"), lab.vm("host-b")
    api, mounts = volumes_on_host_a["api"], volumes_on_host_a["mounts"]
    out = json.loads(cli(a, "create", "--transportable", *mounts[:2]).stdout)
    records = [s["target_luns"][0] for s in out["snapshots"]]
    # host-b's provider: only the records (as a document carries them), nothing from host-a.
    found = json.loads(b.run(["python3", "-c", LOCATE_AND_READ], input=json.dumps(records), timeout=300).stdout)
    try:
        assert [s["supported"] for s in found["seen"]] == [True, True]
        assert [s["lun_info"] for s in found["seen"]] == records
        for lun in snapshot_luns(api):
            if lun["set_id"] == out["set_id"]:
                assert lun["masks"] == [{"initiator": initiator(b), "read_only": False}]
    finally:
        b.run(["python3", "-c", EMPTY], input=json.dumps(
            [[d["device"], r] for d, r in zip(found["disks"], records)]), timeout=300)
    # OnLunEmpty removed host-b's disks, its session, and the LUNs on the array.
    assert not [lun for lun in snapshot_luns(api) if lun["set_id"] == out["set_id"]]
    for r in records:
        wwid = "naa." + r["device_id_descriptor"]["identifiers"][0]["identifier"]
        assert wwid not in b.run("cat /sys/block/*/device/wwid 2>/dev/null || true").stdout
    assert b.run("iscsiadm -m session", check=False).returncode == 21


def test_provider_server_killed_during_prepare_aborts_the_set(lab, volumes_on_host_a):
    a = lab.vm("host-a")
    api, mounts = volumes_on_host_a["api"], volumes_on_host_a["mounts"]
    create = PausedCreate(a, f"{mounts[0]} {mounts[1]}", pause_s=120)
    create.wait_paused()  # inside EndPrepareSnapshots: the array holds a prepared set
    a.run("pkill -KILL -f 'provider.hosting.server --socket'")
    assert create.wait_done() == 1
    err = create.stderr()
    assert "VSS_E_UNEXPECTED_PROVIDER_ERROR" in err and "crashed" in err
    set_ids = {line.split("snapshot set ")[1].split()[0] for line in err.splitlines() if "snapshot set " in line}
    assert set_ids, err
    for set_id in set_ids:
        assert api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "aborted"
    assert not [lun for lun in snapshot_luns(api) if lun["origin"] in volumes_on_host_a["names"]]
    # The filesystems were never frozen (the crash came before the commit) and still take writes.
    a.run(f"touch {mounts[0]}/after-crash")


def test_unsupported_context_is_refused_with_a_clear_error(lab, volumes_on_host_a):
    a = lab.vm("host-a")
    api, mounts = volumes_on_host_a["api"], volumes_on_host_a["mounts"]
    r = cli(a, "create", "--context", "client_accessible", mounts[0], check=False)
    assert r.returncode == 2
    err = json.loads(r.stderr.strip().splitlines()[-1])
    assert err["vss"] == "VSS_E_VOLUME_NOT_SUPPORTED" and "not supported" in err["message"]
    assert not [lun for lun in snapshot_luns(api) if lun["origin"] in volumes_on_host_a["names"]]
    # AreLunsSupported itself answers FALSE (not an error) for that context.
    answer = json.loads(a.run(["python3", "-c", ARE_LUNS_SUPPORTED, mounts[0]]).stdout)
    assert answer["client_accessible"]["supported"] is False
    assert answer["plex"]["supported"] is True and answer["backup"]["supported"] is True


ARE_LUNS_SUPPORTED = """
import json, sys
from provider.cli import providers
from provider.requester.volumes import resolve_volume
from provider.hardware.lun_info import read_lun_info
from provider.contract.vss_types import SnapshotContext, VolumeSnapshotAttributes as A
from pathlib import Path
disks = resolve_volume(sys.argv[1])
records = [read_lun_info(Path("/sys/block") / d).to_dict() for d in disks]
p = providers()[0]
p.start()
try:
    out = {name: p.call("are_luns_supported", context=ctx, devices=[f"/dev/{d}" for d in disks], luns=records)
           for name, ctx in (("plex", int(A.VSS_VOLSNAP_ATTR_PLEX)),
                             ("client_accessible", int(SnapshotContext.VSS_CTX_CLIENT_ACCESSIBLE)),
                             ("backup", int(SnapshotContext.VSS_CTX_BACKUP)))}
finally:
    p.on_unload(True); p.stop()
print(json.dumps(out))
"""


def test_transportable_set_imports_once_on_another_host_with_the_bytes_of_snapshot_time(lab, volumes_on_host_a):
    a, b = lab.vm("host-a"), lab.vm("host-b")
    api, mounts, names = volumes_on_host_a["api"], volumes_on_host_a["mounts"], volumes_on_host_a["names"]
    at_snapshot = {m: a.run(f"sha256sum {m}/data").stdout.split()[0] for m in mounts[:2]}
    out = json.loads(cli(a, "create", "--transportable", "--bcd", "/root/set.xml", *mounts[:2]).stdout)
    for m in mounts[:2]:  # host-a keeps writing after the snapshot
        a.run(f"head -c 4M /dev/urandom > {m}/data && sync")
    b.put("/root/set.xml", a.run("cat /root/set.xml").stdout)

    imported = json.loads(cli(b, "import", "/root/set.xml").stdout)
    try:
        assert imported["status"] == "S_OK" and imported["missing"] == []
        assert [s["volume"] for s in imported["snapshots"]] == mounts[:2]
        for s in imported["snapshots"]:
            assert s["devices"] == [whole_disk(b, s["device"])]  # a partition of its LUN's disk, as on host-a
            b.run(f"mkdir -p /mnt/imp && mount -o ro,noload {s['device']} /mnt/imp")
            try:
                assert b.run("sha256sum /mnt/imp/data").stdout.split()[0] == at_snapshot[s["volume"]]
            finally:
                b.run("umount /mnt/imp")
        # The same document again on host-b, and on host-a: refused, and nothing more is exposed.
        again = cli(b, "import", "/root/set.xml", check=False)
        assert again.returncode == 2 and json.loads(again.stderr.splitlines()[-1])["vss"] == "VSS_E_BAD_STATE"
        elsewhere = cli(a, "import", "/root/set.xml", check=False)
        err = json.loads(elsewhere.stderr.splitlines()[-1])
        assert elsewhere.returncode == 2 and err["vss"] == "VSS_E_BAD_STATE" and "host-b" in err["message"], err
        for s in out["snapshots"]:
            wwid = "naa." + s["target_luns"][0]["device_id_descriptor"]["identifiers"][0]["identifier"]
            assert wwid not in a.run("cat /sys/block/*/device/wwid 2>/dev/null || true").stdout
    finally:
        cli(b, "delete", "--set", out["set_id"])
    assert not [lun for lun in snapshot_luns(api) if lun["origin"] in names]


def progress_of(vm, state: str) -> list[str]:
    """The ids of the sets this host's coordinator persisted in `state`."""
    return json.loads(vm.run(["python3", "-c", "import glob, json, sys; print(json.dumps([p['set_id'] for p in "
                              "(json.load(open(f)) for f in glob.glob('/var/lib/shadowlun/coordinator/sets/*.json')) "
                              "if p['state'] == sys.argv[1]]))", state]).stdout)


def held_write(ticks: list[tuple[float, float]], at: float) -> tuple[float, float]:
    """The write under way at `at`, during a freeze: the writer writes every 20 ms, so it started
    at most ~20 ms after the freeze (or before it) and completed when writes flowed again."""
    under_way = [t for t in ticks if t[0] < at < t[1]]
    assert under_way, f"no write was under way at {at:.3f}: {[t for t in ticks if abs(t[0] - at) < 15]}"
    return under_way[0]


def test_create_killed_while_frozen_is_thawed_by_its_guard_and_recover_cleans_the_set(lab, volumes_on_host_a):
    """Issue 13 point 10: `shadowlun create` SIGKILLed while its filesystems are frozen (the provider
    held in CommitSnapshots, after the array's commit): its own watchdog dies with it, the thaw
    guard thaws at once, an independent writer's held write completes within 12 s of the freeze,
    and `recover` aborts the set: nothing of it is left on the array."""
    a = lab.vm("host-a")
    api, mounts, names = volumes_on_host_a["api"], volumes_on_host_a["mounts"], volumes_on_host_a["names"]
    start_writer(a, f"{mounts[0]}/ticks")
    left_before = set(progress_of(a, "committing"))  # by an earlier run that failed, for recover to abort too
    try:
        create = PausedCreate(a, f"{mounts[0]} {mounts[1]}", pause_s=60, name="killed", point="commit_snapshots")
        create.kill_when_paused()  # inside CommitSnapshots, while writes are held
        killed_at = create.killed_at()
        assert create.wait_done() == 137  # the shell's report of a SIGKILL
        until(lambda: any(done > killed_at for _, done in read_ticks(a)), 15,
              lambda: f"no write completed in 15 s after the kill: {create.stderr()[-2000:]}", interval=0.5)
        ticks = stop_writer(a)
        [set_id] = set(progress_of(a, "committing")) - left_before
        assert api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "committed"
        assert [lun for lun in snapshot_luns(api) if lun["set_id"] == set_id]

        started, done = held_write(ticks, killed_at)
        # Killed during the hold: the write under way at the kill was held by the freeze (it ended
        # only after the kill; the guard's message below says it thawed a hold), and before the
        # requester's own 10 s watchdog. How soon after the freeze is our speed, not the point.
        assert killed_at - started < 10, "killed after the requester's own watchdog would have thawed"
        assert done - started < 11.9, f"writes held {done - started:.1f} s"
        err = create.stderr()
        assert "shadowlun-thaw-guard: the requester went away during the hold without thawing" in err, err
        assert f"{mounts[0]}: thawed" in err and f"{mounts[1]}: thawed" in err, err
        assert a.run("pgrep -f 'provider[.]requester[.]thaw_guard' || true").stdout.strip() == "", "the guard lingers"

        # The provider server (its own session) outlived the requester, still paused: recover uses it.
        assert set_id in json.loads(cli(a, "recover").stdout)["aborted"]
        assert progress_of(a, "committing") == []
        assert api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "aborted"
        assert not [lun for lun in snapshot_luns(api) if lun["origin"] in names]
        a.run(f"touch {mounts[1]}/after-recover")
    finally:
        a.run("touch /tmp/stop-writer; pkill -KILL -f '[p]rovider.hosting.server --socket'; true")


def test_a_provider_hung_in_commit_is_killed_at_its_deadline_and_the_set_aborted(lab, volumes_on_host_a):
    """Issue 13 point 10: CommitSnapshots overruns its 10 s deadline: the requester's watchdog
    thaws, the hung server is killed, a new one aborts the set, and the requester answers
    VSS_E_HOLD_WRITES_TIMEOUT with nothing left on the array or running."""
    a = lab.vm("host-a")
    api, mounts, names = volumes_on_host_a["api"], volumes_on_host_a["mounts"], volumes_on_host_a["names"]
    start_writer(a, f"{mounts[0]}/ticks")
    try:
        create = PausedCreate(a, mounts[0], pause_s=60, name="hung", point="commit_snapshots")
        create.wait_paused()
        assert create.wait_done(timeout=60) == 1
        assert a.run("pgrep -f '[p]rovider.hosting.server --socket|provider[.]requester[.]thaw_guard' || true").stdout.strip() == ""
    finally:
        ticks = stop_writer(a)
        a.run("pkill -KILL -f '[p]rovider.hosting.server --socket'; true")
    err = create.stderr()
    assert json.loads(err.strip().splitlines()[-1])["vss"] == "VSS_E_HOLD_WRITES_TIMEOUT", err
    assert "is hung: killing it" in err, err
    # The write held from the freeze to the watchdog is the longest of the run (the writer's
    # others take milliseconds); read from the ticks, not from a clock read over SSH after the
    # create ended, which comes as late as the new server's start and abort let it.
    started, done = max(ticks, key=lambda t: t[1] - t[0])
    assert 9 < done - started < 11.9, f"writes held {done - started:.1f} s"
    set_ids = {line.split("snapshot set ")[1].split()[0] for line in err.splitlines() if "snapshot set " in line}
    assert len(set_ids) == 1 and set_ids <= set(progress_of(a, "aborted")), err
    assert api.call("GET", f"/v1/snapshot-sets/{set_ids.pop()}")["state"] == "aborted"
    assert not [lun for lun in snapshot_luns(api) if lun["origin"] in names]


def test_a_plex_set_is_made_of_full_copies_with_the_bytes_of_snapshot_time(lab, volumes_on_host_a):
    """PLEX: the array copies each snapshot whole after the commit (the CLI shows the copy's
    progress) and the copy takes the shadow LUN's place: on the array an LV that is no thin
    snapshot of its origin; on host-b, after import, the bytes host-a had at snapshot time."""
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
    api, mounts, names = volumes_on_host_a["api"], volumes_on_host_a["mounts"], volumes_on_host_a["names"]
    at_snapshot = story.sha256(a, f"{mounts[0]}/data")
    r = a.run(f"python3 -m provider.cli create --plex --transportable --bcd /root/plex.xml {mounts[0]}",
              timeout=900)
    assert "full copies on the array" in r.stderr, r.stderr  # the progress bar
    a.run(f"head -c 4M /dev/urandom > {mounts[0]}/data && sync")
    [lun] = [x for x in snapshot_luns(api) if x["origin"] == names[0]]
    lv = json.loads(array.run(f"lvs --reportformat json -o lv_name,origin,lv_tags shadowlun/{lun['name']}").stdout)
    [row] = lv["report"][0]["lv"]
    assert row["origin"] == "" and "shadowlun.kind=snapshot" in row["lv_tags"], row
    assert not [x for x in json.loads(array.run("lvs --reportformat json -o lv_name shadowlun").stdout)
                ["report"][0]["lv"] if x["lv_name"].startswith("plex-")]
    b.put("/root/plex.xml", a.run("cat /root/plex.xml").stdout)
    imported = story.shadowlun(b, "import", "/root/plex.xml")
    try:
        story.shadowlun(b, "expose", imported["snapshots"][0]["snapshot_id"], "/mnt/plex-shadow")
        assert story.sha256(b, "/mnt/plex-shadow/data") == at_snapshot != story.sha256(a, f"{mounts[0]}/data")
    finally:
        story.shadowlun(b, "delete", "--all")
