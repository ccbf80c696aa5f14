"""The array side on the real stack: every operation through the agent's HTTPS API, called
from a host VM; LUNs seen by hosts over iSCSI; LVM and LIO inspected on the array VM."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from lab import checks
from lab.agent_api import ADMIN_ACCESS, AgentApi
from lab.host_volumes import HostVolumes, host_chap
from lab.initiator import Node
from provider.contract.hresult import HResult, VssError, VssUserError

MIB = 1 << 20
SIZE = 32 * MIB


@pytest.fixture(scope="module")
def api(lab):
    return AgentApi.admin(lab)


@pytest.fixture(scope="module")
def target(lab):
    return json.loads(lab.array.run("cat /etc/shadowlun/array.json").stdout)["target_iqn"]


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def initiator(vm) -> str:
    return vm.run("sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi").stdout.strip()


def array_objects(lab) -> dict[str, set[str]]:
    return checks.array_objects(lab.array)


def write_random(lab, lun: str, mib: int = 8) -> str:
    """Random data at the start of a volume (on the array); sha256 of the whole device."""
    dev = f"/dev/shadowlun/{lun}"
    return lab.array.run(f"dd if=/dev/urandom of={dev} bs=1M count={mib} oflag=direct status=none && "
                         f"sha256sum {dev}").stdout.split()[0]


def device_sha(lab, lv: str) -> str:
    return lab.array.run(f"sha256sum /dev/shadowlun/{lv}").stdout.split()[0]


def login(lab, vm, target) -> Node:
    node = Node(vm, target, lab.array.machine.addresses["san"])
    node.create(*host_chap(vm))  # the CHAP credentials the array made for this host
    return node


def expect_error(code: HResult, fn, *args):
    with pytest.raises(VssError) as e:
        fn(*args)
    assert e.value.hresult == code, e.value
    return e.value


def test_snapshot_set_visible_with_predicted_wwids_masked_to_one_host(lab, api, target, timed):
    before = array_objects(lab)
    vols = [name("vol") for _ in range(3)]
    for v in vols:
        api.call("POST", "/v1/luns", {"name": v, "size_bytes": SIZE})
    for v in vols:
        write_random(lab, f"lun-{v}")
    set_id = str(uuid.uuid4())
    snaps = [{"snapshot_id": str(uuid.uuid4()), "lun": v} for v in vols]
    prepared = api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": snaps})
    predicted = {s["target"]: s["wwid"] for s in prepared["snapshots"]}
    assert prepared["state"] == "prepared"
    # Prepare made the snapshots in advance (LVs, not exported); the commit makes them again, so
    # what is written between the two is in the snapshots.
    made = array_objects(lab)
    assert all(t in made["lvs"] and t not in made["backstores"] for t in predicted), made
    at_snapshot = {v: write_random(lab, f"lun-{v}") for v in vols}

    with timed("array: commit of a 3-LUN set (API call)"):
        committed = api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")
    assert committed["state"] == "committed" and committed["commit_window_s"] > 0
    for v in vols:  # the origins move on after the snapshot
        write_random(lab, f"lun-{v}")

    b, a = lab.vm("host-b"), lab.vm("host-a")
    for t in predicted:
        lun = api.call("PUT", f"/v1/luns/{t}/masks",
                       {"initiator": initiator(b)})
        assert lun["wwid"] == predicted[t]
    # host-a gets one volume of its own, so it has an ACL and a session, yet sees no snapshot.
    api.call("PUT", f"/v1/luns/{vols[0]}/masks",
             {"initiator": initiator(a)})

    node_b, node_a = login(lab, b, target), login(lab, a, target)
    try:
        assert node_b.login(), "host-b could not log in with its CHAP secret"
        for s in prepared["snapshots"]:
            lun_id = api.call("GET", f"/v1/luns/{s['target']}")["lun_id"]
            disk = node_b.scan(lun_id, predicted[s["target"]])
            assert disk["serial"] == s["serial"] and disk["vendor"] == s["vendor"]
            assert b.run(f"sha256sum {disk['device']}").stdout.split()[0] == at_snapshot[s["lun"]]
        assert node_a.login(), "host-a could not log in for its own volume"
        a.run("for h in /sys/class/iscsi_host/host*; do echo '- - -' > /sys/class/scsi_host/$(basename $h)/scan; done")
        a.run("udevadm settle --timeout=30")
        seen_a = a.run("cat /sys/block/sd*/device/wwid 2>/dev/null || true").stdout
        assert not any(w in seen_a for w in predicted.values()), "host-a sees a snapshot it is not masked to"
        own = api.call("GET", f"/v1/luns/{vols[0]}")["wwid"]
        assert own in seen_a, "host-a does not see its own volume"

        listing = lab.array.run("targetcli ls /", check=True).stdout
        for t in predicted:
            assert t in listing
        assert initiator(b) in listing
    finally:
        node_b.remove()
        node_a.remove()
        api.call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        for v in vols:
            api.call("DELETE", f"/v1/luns/{v}")
    assert array_objects(lab) == before


START_AND_WATCH_JOB = """
import json, sys, time
from provider.hardware.array_client import ADMIN_ACCESS_FILE, ArrayAccess, ArrayClient
client = ArrayClient(ArrayAccess.load(ADMIN_ACCESS_FILE))
job = client.call("POST", sys.argv[1], json.loads(sys.argv[2]))
seen, deadline = [job["percent"]], time.monotonic() + 300
while job["state"] == "running" and time.monotonic() < deadline:
    time.sleep(0.05)
    job = client.job(job["job_id"])
    seen.append(job["percent"])
print(json.dumps({"job": job, "seen": seen}))
"""


def start_and_watch_job(vm, path: str, body: dict) -> tuple[dict, list[float]]:
    """Start a job as the admin and poll it from inside the array VM, one process doing both
    (no SSH or interpreter start between the start and the first poll, which a short copy
    could outrun), about ten times a second: final job, percentages seen."""
    out = json.loads(vm.run(["python3", "-c", START_AND_WATCH_JOB, path, json.dumps(body)], timeout=330).stdout)
    return out["job"], out["seen"]


def test_full_copy_with_progress(lab, api, timed):
    src, dst = name("src"), name("copy")
    api.call("POST", "/v1/luns", {"name": src, "size_bytes": 8 * SIZE})
    want = write_random(lab, f"lun-{src}", mib=64)
    try:
        with timed("array: full copy of 256 MiB (64 MiB data)"):
            job, seen = start_and_watch_job(lab.array, f"/v1/luns/{src}/copy", {"target": dst})
        assert job["state"] == "done", job
        assert job["percent"] == 100.0 and seen == sorted(seen)
        assert any(0 < p < 100 for p in seen), f"no progress between 0 and 100 reported: {seen}"
        copy = api.call("GET", f"/v1/luns/{dst}")
        assert copy["kind"] == "copy" and copy["origin"] == src and copy["serial"] != api.call(
            "GET", f"/v1/luns/{src}")["serial"]
        assert device_sha(lab, f"lun-{dst}") == want
    finally:
        for v in (src, dst):
            try:
                api.call("DELETE", f"/v1/luns/{v}")
            except VssUserError:
                pass


def test_agent_describes_its_api_with_openapi(lab, api):
    spec = api.call("GET", "/openapi.json")
    assert spec["info"]["title"] == "shadowlun array agent"
    for path in ("/v1/luns", "/v1/snapshot-sets/{set_id}/commit", "/v1/jobs/{job_id}"):
        assert path in spec["paths"]


def test_resync_restores_the_origin_bytes(lab, api):
    vol = name("rs")
    api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    original = write_random(lab, f"lun-{vol}")
    set_id, snap_id = str(uuid.uuid4()), str(uuid.uuid4())
    api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [{"snapshot_id": snap_id, "lun": vol}]})
    api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")
    try:
        assert write_random(lab, f"lun-{vol}") != original
        job, _ = start_and_watch_job(lab.array, f"/v1/luns/{vol}/resync", {"snapshot": f"snap-{snap_id}"})
        assert job["state"] == "done", job
        assert device_sha(lab, f"lun-{vol}") == original
    finally:
        api.call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        api.call("DELETE", f"/v1/luns/{vol}")


def test_bad_input_gets_its_vss_code_and_changes_nothing(lab, api):
    vol = name("bad")
    api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    before = array_objects(lab)
    try:
        expect_error(HResult.VSS_E_OBJECT_NOT_FOUND, api.call, "GET", "/v1/luns/no-such-lun")
        expect_error(HResult.VSS_E_OBJECT_NOT_FOUND, api.call, "POST", "/v1/snapshot-sets",
                     {"set_id": str(uuid.uuid4()),
                      "snapshots": [{"snapshot_id": str(uuid.uuid4()), "lun": vol},
                                    {"snapshot_id": str(uuid.uuid4()), "lun": "no-such-lun"}]})
        expect_error(HResult.E_INVALIDARG, api.call, "POST", "/v1/luns", {"name": "Bad Name", "size_bytes": SIZE})
        expect_error(HResult.E_INVALIDARG, api.call, "POST", "/v1/luns", {"name": name("x"), "size_bytes": 1000})
        expect_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, api.call, "POST", "/v1/luns",
                     {"name": vol, "size_bytes": 2 * SIZE})
        expect_error(HResult.E_INVALIDARG, api.call, "PUT", f"/v1/luns/{vol}/masks",
                     {"initiator": "not an iqn"})
        expect_error(HResult.VSS_E_OBJECT_NOT_FOUND, api.call, "POST", f"/v1/snapshot-sets/{uuid.uuid4()}/commit")
        expect_error(HResult.E_INVALIDARG, api.call, "POST", "/v1/snapshot-sets/not-a-guid/commit")
        expect_error(HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, api.call, "POST", "/v1/snapshot-sets",
                     {"set_id": str(uuid.uuid4()),
                      "snapshots": [{"snapshot_id": str(uuid.uuid4()), "lun": vol} for _ in range(65)]})
        assert array_objects(lab) == before
    finally:
        api.call("DELETE", f"/v1/luns/{vol}")


FAULT_DROPIN = "/etc/systemd/system/shadowlun-array-agent.service.d/test.conf"


def restart_agent(lab, env: str | None = None) -> None:
    """Restart the agent, optionally with a fault injected (a systemd drop-in), and wait for it."""
    a = lab.array
    if env:
        a.put(FAULT_DROPIN, f"[Service]\nEnvironment={env}\n")
    else:
        a.run(f"rm -f {FAULT_DROPIN}")
    a.run("systemctl daemon-reload && systemctl restart shadowlun-array-agent")
    try:
        checks.wait_for_agent(a, access=ADMIN_ACCESS)  # the admin: hosts' tokens are in the store
    except TimeoutError as e:
        raise AssertionError(a.run("journalctl -u shadowlun-array-agent -n 30 --no-pager").stdout) from e


def agent_without_fault(lab) -> None:
    """A test's last word: the agent restarted without its fault if the drop-in is still there
    (the test failed before its own plain restart); otherwise it already runs plain, and one
    more restart (some 30 s under TCG) would only cost time."""
    if lab.array.run(f"test -e {FAULT_DROPIN}", check=False).returncode == 0:
        restart_agent(lab)
    else:
        checks.wait_for_agent(lab.array, access=ADMIN_ACCESS)


@pytest.mark.parametrize("crash_at", ["commit-after-snapshots", "copy-before-export"])
def test_killed_agent_restarted_mid_operation_leaves_nothing_half_made(lab, api, crash_at):
    vols = [name("crash") for _ in range(2)]
    for v in vols:
        api.call("POST", "/v1/luns", {"name": v, "size_bytes": SIZE})
    before = array_objects(lab)
    set_id = str(uuid.uuid4())
    restart_agent(lab, f"SHADOWLUN_ARRAY_CRASH_AT={crash_at}")
    try:
        if crash_at.startswith("commit"):
            api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
                {"snapshot_id": str(uuid.uuid4()), "lun": v} for v in vols]})
            expect_error(HResult.VSS_E_PROVIDER_VETO, api.call, "POST", f"/v1/snapshot-sets/{set_id}/commit")
        else:
            api.call("POST", f"/v1/luns/{vols[0]}/copy", {"target": name("half")})
        # systemd restarts the killed agent (still with the fault armed); its reconcile cleans up.
        time.sleep(3)
        restart_agent(lab)
        log = lab.array.run("journalctl -u shadowlun-array-agent --no-pager -n 200").stdout
        assert f"crash point {crash_at} reached" in log
        assert array_objects(lab) == before, "the interrupted operation left objects behind"
        if crash_at.startswith("commit"):
            assert api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "aborted"
        assert sorted(lun["name"] for lun in api.call("GET", "/v1/luns")
                      if lun["name"] in vols or lun["kind"] != "volume") == sorted(vols)
    finally:
        agent_without_fault(lab)
        for v in vols:
            api.call("DELETE", f"/v1/luns/{v}")


def test_agent_killed_after_a_full_copy_swaps_it_in_when_it_starts_again(lab, api):
    """PLEX: the agent dies once a shadow LUN's full copy is made, before it takes the
    snapshot's place; the restarted agent's reconcile finishes the swap (the copy kept, under
    the LUN's name and serial), and leaves no copy LV aside."""
    vol, set_id, sid = name("plexcrash"), str(uuid.uuid4()), str(uuid.uuid4())
    snap = f"snap-{sid}"
    api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    try:
        api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [{"snapshot_id": sid, "lun": vol}]})
        api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")
        serial = api.call("GET", f"/v1/luns/{snap}")["serial"]
        restart_agent(lab, "SHADOWLUN_ARRAY_CRASH_AT=plex-copied")
        api.call("POST", f"/v1/snapshot-sets/{set_id}/plex")

        def journal() -> str:
            return lab.array.run("journalctl -u shadowlun-array-agent --no-pager -n 300").stdout

        checks.until(lambda: "crash point plex-copied reached" in journal(), 180, journal)
        restart_agent(lab)
        lvs = lab.array.run("lvs --noheadings --separator , -o lv_name,origin shadowlun").stdout.split()
        assert f"{snap}," in lvs, lvs  # the LUN's LV is the full copy: no origin
        assert not [lv for lv in lvs if lv.startswith("plex-")], lvs
        lun = api.call("GET", f"/v1/luns/{snap}")
        assert (lun["serial"], lun["kind"], lun["state"]) == (serial, "snapshot", "ready")
        assert api.call("GET", "/v1/health")["set_aside"] == []
    finally:
        agent_without_fault(lab)
        api.call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        api.call("DELETE", f"/v1/luns/{vol}")


def test_restarted_agent_rebuilds_lio_from_its_store(lab, api):
    """LIO wiped behind the agent's back (as after a lost saveconfig): the reconcile at start
    rebuilds the export with the same serial and the same masking."""
    vol = name("rebuild")
    b = lab.vm("host-b")
    lun = api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    api.call("PUT", f"/v1/luns/{vol}/masks",
             {"initiator": initiator(b)})
    try:
        lab.array.run("systemctl stop shadowlun-array-agent && targetctl clear")
        assert f"lun-{vol}" not in array_objects(lab)["backstores"]
        restart_agent(lab)
        again = api.call("GET", f"/v1/luns/{vol}")
        assert (again["serial"], again["wwid"]) == (lun["serial"], lun["wwid"])
        assert again["masks"] == [{"initiator": initiator(b), "read_only": False}]
        assert initiator(b) in array_objects(lab)["acls"]
    finally:
        api.call("DELETE", f"/v1/luns/{vol}")


def test_lio_configuration_file_follows_each_burst_of_changes(lab, api):
    """The agent saves LIO's configuration once after a burst (not per change): what
    target.service would restore at boot has the new exports and masks within the bound, is
    rtslib's own dump of LIO key for key (the agent's save skips rtslib's per-mapping search,
    lio_save), and loses the exports after they are deleted."""
    vols = [name("saved") for _ in range(3)]
    saved = "/etc/rtslib-fb-target/saveconfig.json"
    hosts = [initiator(lab.vm("host-a")), initiator(lab.vm("host-b"))]

    def file() -> dict:
        return json.loads(lab.array.run(f"cat {saved}").stdout)

    def in_file() -> set[str]:
        return {so["name"] for so in file().get("storage_objects", [])}

    def rtslib_dump() -> dict:
        return json.loads(lab.array.run("python3 -c 'import json, rtslib_fb; "
                                        "print(json.dumps(rtslib_fb.RTSRoot().dump()))'").stdout)

    for v in vols:
        api.call("POST", "/v1/luns", {"name": v, "size_bytes": SIZE})
        for h in hosts:
            api.call("PUT", f"/v1/luns/{v}/masks", {"initiator": h})
    try:
        checks.until(lambda: {f"lun-{v}" for v in vols} <= in_file(), 30,
                     lambda: f"{saved} lacks the new exports after 30 s: {sorted(in_file())}")
        checks.until(lambda: file() == rtslib_dump(), 30,
                     lambda: f"{saved} is not rtslib's dump of LIO after 30 s")
    finally:
        for v in vols:
            api.call("DELETE", f"/v1/luns/{v}")
    checks.until(lambda: not {f"lun-{v}" for v in vols} & in_file(), 30,
                 lambda: f"{saved} still has deleted exports after 30 s: {sorted(in_file())}")


def test_nearly_full_pool_refuses_new_work_and_creates_nothing(lab, api):
    vol = name("full")
    api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    pool = api.call("GET", "/v1/pool")
    config = json.loads(lab.array.run("cat /etc/shadowlun/array.json").stdout)
    # Make the pool's present use count as "nearly full" (filling 28 GiB under TCG is slow).
    limit = max(pool["data_percent"], pool["metadata_percent"]) - 0.5
    lab.array.put("/etc/shadowlun/array.json", json.dumps({**config, "pool_full_percent": limit}))
    restart_agent(lab)
    before = array_objects(lab)
    try:
        e = expect_error(HResult.VSS_E_INSUFFICIENT_STORAGE, api.call, "POST", "/v1/luns",
                         {"name": name("x"), "size_bytes": SIZE})
        assert "too full" in str(e)
        set_id = str(uuid.uuid4())
        expect_error(HResult.VSS_E_INSUFFICIENT_STORAGE, api.call, "POST", "/v1/snapshot-sets",
                     {"set_id": set_id, "snapshots": [{"snapshot_id": str(uuid.uuid4()), "lun": vol}]})
        expect_error(HResult.VSS_E_OBJECT_NOT_FOUND, api.call, "GET", f"/v1/snapshot-sets/{set_id}")
        expect_error(HResult.VSS_E_INSUFFICIENT_STORAGE, api.call, "POST", f"/v1/luns/{vol}/copy",
                     {"target": name("y")})
        assert array_objects(lab) == before
    finally:
        lab.array.put("/etc/shadowlun/array.json", json.dumps(config))
        restart_agent(lab)
        api.call("DELETE", f"/v1/luns/{vol}")


def test_commit_window_against_a_loop_of_lvcreate(lab, api, timings):
    """The set's commit (the snapshots made at prepare, made again in the pool) next to the
    naive loop of one `lvcreate -s` per LUN, on the same array, in the same run; figures go to
    the timings (`make bench` has the full comparison)."""
    vols = [name("win") for _ in range(4)]
    for v in vols:
        api.call("POST", "/v1/luns", {"name": v, "size_bytes": SIZE})
    set_id = str(uuid.uuid4())
    api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
        {"snapshot_id": str(uuid.uuid4()), "lun": v} for v in vols]})
    try:
        window = api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")["commit_window_s"]
        loop = lab.array.run(
            "s=$(date +%s.%N); for v in " + " ".join(vols) + "; do "
            "lvcreate -q -s -n naive-$v shadowlun/lun-$v >/dev/null; done; e=$(date +%s.%N); "
            "echo \"$e - $s\" | python3 -c 'import sys; a,b=sys.stdin.read().split(\" - \"); print(float(a)-float(b))'"
        ).stdout.strip()
        lab.array.run("for v in " + " ".join(vols) + "; do lvremove -qy shadowlun/naive-$v; done")
        timings.add("array: 4-LUN set commit window", window, "snapshots made again in the pool")
        timings.add("array: 4 x lvcreate -s loop", float(loop), f"ratio {float(loop) / window:.2f}x")
        assert window > 0 and float(loop) > 0
    finally:
        api.call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        for v in vols:
            api.call("DELETE", f"/v1/luns/{v}")


READ_RECORD = """
import json, sys
from pathlib import Path
from provider.contract.lio_target import predict_lio_lun_info
from provider.hardware.lun_info import read_lun_info
seen = read_lun_info(Path("/sys/block") / Path(sys.argv[1]).name)
predicted = predict_lio_lun_info(sys.argv[2])
print(json.dumps({"seen": seen.to_dict(), "predicted": predicted.to_dict(),
                  "equal": seen.canonical() == predicted.canonical(), "matches": seen.matches(predicted)}))
"""


def test_agent_gets_the_cpu_before_udev(lab):
    """The window's resumes start udev's workers on the array while the hosts' writes are held
    until the agent answers: the agent's unit weighs more than udev's for the CPU (its cgroup's
    cpu.weight, which the kernel applies only when the cpu controller is on for the slice)."""
    weights = lab.array.run("cat /sys/fs/cgroup/system.slice/shadowlun-array-agent.service/cpu.weight "
                            "/sys/fs/cgroup/system.slice/systemd-udevd.service/cpu.weight").stdout.split()
    agent, udev = (int(w) for w in weights)
    assert agent >= 10 * udev, weights


def test_predicted_snapshot_record_equals_what_a_host_reads(lab, api, target):
    """GetTargetLuns' prediction (from the serial the array chose at prepare) is exactly the
    record FillInLunInfo builds from the real disk on a host (VPD pages 0x80/0x83 in sysfs)."""
    vol = name("ident")
    b = lab.vm("host-b")
    api.call("POST", "/v1/luns", {"name": vol, "size_bytes": SIZE})
    set_id, snap_id = str(uuid.uuid4()), str(uuid.uuid4())
    prepared = api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
        {"snapshot_id": snap_id, "lun": vol}]})["snapshots"][0]
    api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")
    lun = api.call("PUT", f"/v1/luns/snap-{snap_id}/masks",
                   {"initiator": initiator(b)})
    node = login(lab, b, target)
    try:
        assert node.login()
        disk = node.scan(lun["lun_id"], prepared["wwid"])
        out = json.loads(b.run(["python3", "-c", READ_RECORD, disk["device"], prepared["serial"]]).stdout)
        assert out["seen"] == out["predicted"], (out["seen"], out["predicted"])
        assert out["equal"] and out["matches"]
        naa = [i for i in out["seen"]["device_id_descriptor"]["identifiers"] if i["type"] == 3]
        assert [i["identifier"] for i in naa] == [prepared["wwid"].removeprefix("naa.")]
    finally:
        node.remove()
        api.call("POST", f"/v1/snapshot-sets/{set_id}/abort")
        api.call("DELETE", f"/v1/luns/{vol}")


STATE = "/var/lib/shadowlun"
ASIDE = "/var/lib/shadowlun.aside"
UNIT = "shadowlun-array-agent"


def reads_and_writes(host, mount: str, name: str, timeout: int = 120) -> str:
    """Write 4 MiB to a file on the host's volume past the page cache, read it back from the
    disk; bounded, so held I/O fails the test instead of hanging it. Returns its sha256."""
    r = host.run(f"timeout {timeout} sh -c 'dd if=/dev/urandom of={mount}/{name} bs=1M count=4 "
                 f"oflag=direct conv=fsync status=none && sha256sum {mount}/{name} && "
                 f"dd if={mount}/{name} iflag=direct bs=1M status=none | sha256sum'",
                 check=False, timeout=timeout + 30)
    assert r.ok, f"I/O on {mount} failed or hung: {r.stderr}"
    written, read = (line.split()[0] for line in r.stdout.splitlines())
    assert written == read
    return written


def test_agent_started_on_a_moved_store_removes_nothing_and_serves_on(lab, api):
    """A wrong or lost store (moved aside): the agent comes up, removes no LV and no export,
    sets every LV aside and says why; with the store back every volume is served as before."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["keep"]).create()
    mount = vols.mounts[0]
    try:
        kept = reads_and_writes(a, mount, "before")
        before, luns = array_objects(lab), api.call("GET", "/v1/luns")
        lab.array.run(f"systemctl stop {UNIT} && mkdir -p {ASIDE} && mv {STATE}/array.db* {ASIDE}/")
        try:
            restart_agent(lab)
            health = api.call("GET", "/v1/health")
            assert health["store"]["trusted"] is False and "empty" in health["store"]["problem"], health
            assert {x["lv"] for x in health["set_aside"]} == before["lvs"]
            assert api.call("GET", "/v1/luns") == [] and array_objects(lab) == before
            reads_and_writes(a, mount, "while-aside")
        finally:
            lab.array.run(f"systemctl stop {UNIT} && rm -f {STATE}/array.db* && mv {ASIDE}/array.db* {STATE}/ "
                          f"&& rmdir {ASIDE}")
            restart_agent(lab)
        health = api.call("GET", "/v1/health")
        assert health["store"]["trusted"] is True and health["set_aside"] == [], health
        assert api.call("GET", "/v1/luns") == luns and array_objects(lab) == before
        assert a.run(f"sha256sum {mount}/before").stdout.split()[0] == kept
        reads_and_writes(a, mount, "after")
    finally:
        assert vols.remove() == []


def test_agent_killed_inside_the_commit_window_resumes_the_origins_at_restart(lab, api):
    """SIGKILL between the origins' suspend and their resume: systemd starts the agent again,
    which resumes them before anything else (host-a's writes complete), aborts the set, and
    leaves no snapshot LV and no LIO object."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["window"]).create()
    mount, vol = vols.mounts[0], vols.names[0]
    origin = f"shadowlun-lun--{vol.replace('-', '--')}"
    set_id = str(uuid.uuid4())
    try:
        before = array_objects(lab)
        restart_agent(lab, "SHADOWLUN_ARRAY_CRASH_AT=commit-window")
        api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
            {"snapshot_id": str(uuid.uuid4()), "lun": vol}]})
        expect_error(HResult.VSS_E_PROVIDER_VETO, api.call, "POST", f"/v1/snapshot-sets/{set_id}/commit")
        reads_and_writes(a, mount, "after-crash")  # held while suspended, bounded
        checks.wait_for_agent(a)
        log = lab.array.run(f"journalctl -u {UNIT} --no-pager -n 300").stdout
        assert "crash point commit-window reached" in log
        assert f"resumed devices left suspended (an agent killed in a commit): {origin}\n" in log, log[-3000:]
        suspended = lab.array.run("dmsetup info -c --noheadings -o name,suspended").stdout
        assert not [line for line in suspended.splitlines() if line.startswith("shadowlun-")
                    and line.split(":")[-1].strip() != "Active"], suspended
        assert api.call("GET", f"/v1/snapshot-sets/{set_id}")["state"] == "aborted"
        assert array_objects(lab) == before, "the interrupted commit left objects behind"
        health = api.call("GET", "/v1/health")
        assert health["store"]["trusted"] and health["failed_luns"] == [], health
    finally:
        restart_agent(lab)
        assert vols.remove() == []
