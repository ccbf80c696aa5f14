"""LUN resync at its edges on the real stack (issue 13): a destination larger than the shadow
copy ends the size the copy is, with its bytes; a resync the user stops (SIGTERM to the CLI) is
cancelled on the array, where the copy stops."""
from __future__ import annotations

import json

from lab import checks
from lab.host_volumes import HostVolumes
from lab.provider_call import provider_call
from lab.story import SHADOWLUN, forget_set, imported_snapshot, shadowlun
from provider.contract.hresult import HResult

MIB = 1 << 20
STORE = "/var/lib/shadowlun/array.db"


def disk_sha256(vm, disk: str, size_bytes: int) -> str:
    return vm.run(f"head -c {size_bytes} {disk} | sha256sum").stdout.split()[0]


def resync_jobs(array, lv: str) -> list[dict]:
    """The array's resync jobs onto `lv`, from its store (what the agent recorded)."""
    out = array.run(["python3", "-c", "import json, sqlite3, sys; print(json.dumps([dict(zip(('state', 'done', "
                     "'total'), r)) for r in sqlite3.connect(sys.argv[1]).execute(\"SELECT state, done_bytes, "
                     "total_bytes FROM jobs WHERE kind = 'resync' AND target = ?\", (sys.argv[2],))]))",
                     STORE, lv]).stdout
    return json.loads(out)


def test_a_resync_onto_a_larger_lun_leaves_it_the_size_and_bytes_of_the_copy(lab):
    a, array = lab.vm("host-a"), lab.vm("array")
    small = HostVolumes(lab, a, ["rsmall"]).create()
    big = HostVolumes(lab, a, ["rbig"], size_bytes=96 * MIB).create()
    made: dict = {}
    try:
        a.run(f"head -c 8M /dev/urandom > {small.mounts[0]}/data && sync")
        made = shadowlun(a, "create", "--context", "app_rollback", small.mounts[0])  # imported here, read-only
        shadow = imported_snapshot(a, made["set_id"])["disks"][0]
        [big_name], big_disk = big.names, big.disks[big.names[0]]
        a.run(f"umount {big.mounts[0]}")
        done = provider_call(a, "resync_luns", source_disks=[shadow.removeprefix("/dev/")],
                             target_disks=[big_disk.removeprefix("/dev/")])
        assert done["ok"]["status"] == int(HResult.VSS_S_ASYNC_FINISHED), done
        assert big.api.call("GET", f"/v1/luns/{big_name}")["size_bytes"] == 64 * MIB
        lv_size = array.run(f"lvs --noheadings --units b --nosuffix -o lv_size shadowlun/lun-{big_name}").stdout
        assert int(lv_size.strip()) == 64 * MIB
        a.run(f"echo 1 > /sys/block/{big_disk.removeprefix('/dev/')}/device/rescan")
        checks.until(lambda: int(a.run(f"blockdev --getsize64 {big_disk}").stdout) == 64 * MIB, 60,
                     lambda: f"host-a still sees {big_disk} at {a.run(f'blockdev --getsize64 {big_disk}').stdout}")
        assert disk_sha256(a, big_disk, 64 * MIB) == disk_sha256(a, shadow, 64 * MIB)
        assert len(shadowlun(a, "delete", "--set", made["set_id"])["deleted"]) == 1
    finally:
        forget_set(a, made)
        errors = big.remove() + small.remove()
        assert errors == []


def test_a_resync_stopped_by_the_user_is_cancelled_on_the_array(lab):
    a, array = lab.vm("host-a"), lab.vm("array")
    vols = HostVolumes(lab, a, ["rcan"]).create()
    mount, [name] = vols.mounts[0], vols.names
    lv = f"lun-{name}"
    made: dict = {}
    try:
        a.run(f"head -c 4M /dev/urandom > {mount}/data && sync")
        made = shadowlun(a, "create", "--context", "app_rollback", "--bcd", "/root/rc.xml", mount)
        a.run(f"head -c 4M /dev/urandom > {mount}/data && sync && umount {mount}")
        # The destination's device suspended on the array: the copy's first read of it waits
        # there, so the resync is surely running when the user stops it.
        dm = array.run(f"lvs --noheadings -o lv_dm_path shadowlun/{lv}").stdout.strip()
        array.run(f"dmsetup suspend {dm}")
        try:
            a.run(f"setsid sh -c '{SHADOWLUN} --json resync --bcd /root/rc.xml > /root/rc.out 2> /root/rc.err' "
                  f"< /dev/null > /dev/null 2>&1 & echo $! > /root/rc.pid")
            checks.until(lambda: [j["state"] for j in resync_jobs(array, lv)] == ["running"], 180,
                         lambda: f"no running resync onto {lv}: {resync_jobs(array, lv)}")
            a.run("pkill -TERM -f 'provider.cli --json resync'")
            checks.until(lambda: a.run("pgrep -f 'provider.cli --json resync'", check=False).returncode != 0, 120,
                         lambda: "the CLI did not end after SIGTERM: " + a.run("cat /root/rc.err").stdout[-500:])
        finally:
            array.run(f"dmsetup resume {dm}")
        err = json.loads(a.run("cat /root/rc.err").stdout.strip().splitlines()[-1])
        assert err["vss"] == "E_ABORT" and "cancelled on the array" in err["message"], err
        checks.until(lambda: [j["state"] for j in resync_jobs(array, lv)] == ["cancelled"], 120,
                     lambda: f"the resync onto {lv} did not stop: {resync_jobs(array, lv)}")
        [job] = resync_jobs(array, lv)
        assert job["done"] < job["total"]  # it stopped at its next chunk
        assert len(shadowlun(a, "delete", "--set", made["set_id"])["deleted"]) == 1
    finally:
        forget_set(a, made)
        assert vols.remove() == []


def test_a_second_resync_from_the_same_copy_brings_its_bytes_back_again(lab):
    """Restore, write, restore again from the same shadow copy: the second resync must compare
    against what is on the LUN now. Hosts write through LIO, which bypasses the array's page
    cache, so a copy that reads the destination through that cache sees the first resync's
    bytes, finds nothing changed and leaves the host's new writes in place. Compared: the
    partition (the GPT differs, the copy's flags are cleared on the original), read direct."""
    a = lab.vm("host-a")
    vols = HostVolumes(lab, a, ["rtwice"]).create()
    mount, [name] = vols.mounts[0], vols.names
    disk = vols.disks[name]

    def partition_sha256(dev: str) -> str:
        return a.run(f"dd if={dev}1 iflag=direct bs=1M status=none | sha256sum").stdout.split()[0]

    made: dict = {}
    try:
        a.run(f"head -c 8M /dev/urandom > {mount}/data && sync")
        made = shadowlun(a, "create", "--context", "app_rollback", "--bcd", "/root/rt.xml", mount)
        at_snapshot = partition_sha256(imported_snapshot(a, made["set_id"])["disks"][0])
        for round_ in (1, 2):
            a.run(f"head -c 8M /dev/urandom > {mount}/data && sync && umount {mount}")
            assert partition_sha256(disk) != at_snapshot
            shadowlun(a, "resync", "--bcd", "/root/rt.xml")
            assert partition_sha256(disk) == at_snapshot, f"resync {round_}"
            a.run(f"mount {disk}1 {mount}")
        assert len(shadowlun(a, "delete", "--set", made["set_id"])["deleted"]) == 1
    finally:
        forget_set(a, made)
        assert vols.remove() == []
