"""The array's LUNs behave like a real SAN array's (issue 16), on the real stack: thin LUNs
advertise thin provisioning, so a host's fstrim returns space to the thin pool (on a host volume
and on a broken shadow copy); SCSI-3 persistent reservations work between two hosts, and an
APTPL registration and reservation survive an array reboot, with the LUNs, masks and bytes."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from lab import checks
from lab.agent_api import ADMIN_ACCESS, AgentApi
from lab.host_volumes import VOLUME, HostVolumes, initiator
from lab.story import shadowlun
from provider.hardware.iscsi import normalize_wwid

MIB = 1 << 20
WRITTEN = 32 * MIB
KEY_A, KEY_B = "0xa1", "0xb2"
WRITE_EXCLUSIVE = 1  # PERSISTENT RESERVE OUT type code


def lv_name(api_name: str) -> str:
    """The LV (and LIO backstore) of an API LUN name: volumes are lun-<name>, snapshots keep theirs."""
    return api_name if api_name.startswith("snap-") else f"lun-{api_name}"


def lv_used_bytes(array, lv: str) -> float:
    """Bytes of the thin LV mapped in the pool, as `lvs` reports it."""
    (row,) = json.loads(array.run(f"lvs --reportformat json --units b --nosuffix -o lv_size,data_percent "
                                  f"shadowlun/{lv}").stdout)["report"][0]["lv"]
    return float(row["lv_size"]) * float(row["data_percent"]) / 100


def thin_disk(vm, disk: str) -> None:
    """The host's SCSI disk took the LUN as thin: UNMAP provisioning, discards accepted."""
    name = disk.removeprefix("/dev/")
    mode = vm.run(f"cat /sys/block/{name}/device/scsi_disk/*/provisioning_mode").stdout.strip()
    assert mode == "unmap", f"{vm.name} {disk}: provisioning_mode {mode}"
    assert int(vm.run(f"cat /sys/block/{name}/queue/discard_max_bytes").stdout) > 0


def trim_returns_space(vm, array, lv: str, mount: str) -> tuple[float, float, float]:
    """Write WRITTEN bytes under `mount`, delete them, fstrim: the LV's pool use rises by about
    that much and falls back. Returns (before, written, trimmed) bytes in use."""
    before = lv_used_bytes(array, lv)
    vm.run(f"head -c {WRITTEN} /dev/urandom > {mount}/fill && sync", timeout=300)
    written = lv_used_bytes(array, lv)
    assert written - before >= 0.9 * WRITTEN, (before, written)
    vm.run(f"rm {mount}/fill && sync && fstrim -v {mount}", timeout=300)
    after: list[float] = []
    checks.until(lambda: after.append(lv_used_bytes(array, lv)) or written - after[-1] >= 0.9 * WRITTEN, 30,
                 lambda: f"{lv}: {after[-1]:.0f} bytes in use after fstrim, {written:.0f} before it")
    return before, written, after[-1]


def test_the_pool_passes_discards_down(lab):
    array = lab.vm("array")
    discards = array.run("lvs --noheadings -o discards shadowlun/pool").stdout.strip()
    assert discards == "passdown"


def restart_agent(array) -> None:
    array.run("systemctl reset-failed shadowlun-array-agent; systemctl restart shadowlun-array-agent")
    checks.wait_for_agent(array, access=ADMIN_ACCESS)


def test_the_agent_turns_thin_provisioning_back_on_at_start(lab):
    """A backstore found with emulate_tpu/tpws off (an older agent's, or set by hand): the
    reconcile at start turns them on again."""
    array, api = lab.vm("array"), AgentApi.admin(lab)
    name = f"tpu-{uuid.uuid4().hex[:6]}"
    api.call("POST", "/v1/luns", {"name": name, "size_bytes": 64 * MIB})
    try:
        attrib = f"/sys/kernel/config/target/core/iblock_*/lun-{name}/attrib"
        read = f"cat {attrib}/emulate_tpu {attrib}/emulate_tpws"
        assert array.run(read).stdout.split() == ["1", "1"]
        array.run(f"systemctl stop shadowlun-array-agent && echo 0 > {attrib}/emulate_tpu "
                  f"&& echo 0 > {attrib}/emulate_tpws")
        assert array.run(read).stdout.split() == ["0", "0"]
        restart_agent(array)
        assert array.run(read).stdout.split() == ["1", "1"]
    finally:
        api.call("DELETE", f"/v1/luns/{name}")


def test_the_agent_refuses_to_start_without_lios_reservation_directory(lab):
    array = lab.vm("array")
    pr = array.run("cat /sys/kernel/config/target/dbroot").stdout.strip() + "/pr"
    since = array.run("date +%s").stdout.strip()
    array.run(f"systemctl stop shadowlun-array-agent && mv {pr} {pr}.away && systemctl start shadowlun-array-agent")
    try:
        journal = f"journalctl -u shadowlun-array-agent --since @{since} --no-pager"
        checks.until(lambda: "are missing" in array.run(journal).stdout, 60,
                     lambda: f"the agent started without {pr}, or said nothing: {array.run(journal).stdout[-2000:]}")
        said = array.run(journal).stdout
        assert f"LIO's state directories {pr} are missing" in said and "PERSISTENT RESERVE OUT" in said
        assert not array.run(["python3", "-m", "provider.hardware.array_client", "--access", ADMIN_ACCESS, "GET", "/v1/pool"],
                             check=False).ok
    finally:
        array.run(f"systemctl stop shadowlun-array-agent; mv {pr}.away {pr}")
        restart_agent(array)


def test_fstrim_on_a_host_volume_returns_space_to_the_pool(lab, timed):
    a, array = lab.vm("host-a"), lab.vm("array")
    vols = HostVolumes(lab, a, ["trim"], size_bytes=128 * MIB).create()
    try:
        thin_disk(a, vols.disks[vols.names[0]])
        with timed("fstrim returns 32 MiB (host volume)"):
            trim_returns_space(a, array, lv_name(vols.names[0]), vols.mounts[0])
    finally:
        assert vols.remove() == []


def scsi_devices(vm) -> dict[str, str]:
    """{H:C:T:L: WWID} of every SCSI device of the host with an identity."""
    out = vm.run("for d in /sys/bus/scsi/devices/*:*:*:*; do [ -r $d/wwid ] && echo ${d##*/} $(cat $d/wwid); done; true")
    return dict(line.split() for line in out.stdout.splitlines())


def test_a_lun_number_given_to_a_new_lu_is_cleared_of_the_old_lus_disk(lab, timed):
    """A volume deleted on the array while host-a keeps its disk (unmounted, never detached);
    the array gives the LUN number to the next LU. Linux keeps the old identity at that number
    and a scan never shows the new LU (a full CI run failed on it). The attach deletes the unused
    old device and the new LU appears; while the old disk is mounted the attach is refused and
    host-a keeps its devices, its session and its mount."""
    a, array = lab.vm("host-a"), lab.vm("array")
    old = HostVolumes(lab, a, ["stale"]).create()
    [old_name], mount = old.names, old.mounts[0]
    number = old.api.call("GET", f"/v1/luns/{old_name}")["lun_id"]
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    try:
        array.run(["python3", VOLUME, "destroy", old_name], timeout=300)  # under the host's mounted disk
        array.run(["python3", VOLUME, "make", fresh, "64", initiator(a)], timeout=300)
        assert old.api.call("GET", f"/v1/luns/{fresh}")["lun_id"] == number  # the number, given again
        devices, mounts = scsi_devices(a), a.run("findmnt -rn -o SOURCE,TARGET").stdout
        refused = a.run(["python3", VOLUME, "attach", fresh], check=False, timeout=300)
        assert refused.returncode != 0 and "VSS_E_PROVIDER_VETO" in refused.stderr, refused.stderr
        assert "is in use" in refused.stderr and old.disks[old_name].removeprefix("/dev/") in refused.stderr
        assert scsi_devices(a) == devices and a.run("findmnt -rn -o SOURCE,TARGET").stdout == mounts
        a.run(f"umount {mount}")
        with timed("attach over a stale device at the LUN's number"):
            attached = json.loads(a.run(["python3", VOLUME, "attach", fresh], timeout=300).stdout)
        fresh_wwid = normalize_wwid(old.api.call("GET", f"/v1/luns/{fresh}")["wwid"])
        assert {w for d, w in scsi_devices(a).items() if d.split(":")[3] == str(number)} == {fresh_wwid}
        assert attached[fresh].startswith("/dev/sd")
    finally:
        a.run(["python3", VOLUME, "detach", fresh], check=False, timeout=300)
        array.run(["python3", VOLUME, "destroy", fresh], check=False, timeout=300)
        old.remove()  # what is left of the old volume (its LUN is gone: those errors are expected)
        a.run(f"for d in /sys/bus/scsi/devices/*:*:*:{number}; do echo 1 > $d/delete; done; true", check=False)


def release_on_b(lab, vols: HostVolumes, set_id: str | None) -> None:
    """host-b lets go of what a test imported: a set still in its catalog (the test stopped
    before the break) is deleted by host-b itself, so no catalog entry outlives its LUN; a
    broken one's disk is detached."""
    b = lab.vm("host-b")
    if set_id is not None and any(x["set_id"] == set_id for x in shadowlun(b, "list")["sets"]):
        shadowlun(b, "delete", "--set", set_id)
    for x in vols.api.call("GET", "/v1/luns"):
        if x["origin"] == vols.names[0]:
            b.run(["python3", VOLUME, "detach", x["name"]], check=False, timeout=300)


def test_fstrim_on_a_broken_shadow_copy_returns_space_to_the_pool(lab, timed):
    """host-a's volume, a transportable shadow copy imported on host-b and broken writable: an
    ordinary thin LUN, whose trimmed blocks go back to the pool too."""
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
    vols = HostVolumes(lab, a, ["trimsnap"], size_bytes=128 * MIB).create()
    set_id = None
    try:
        a.run(f"head -c 4M /dev/urandom > {vols.mounts[0]}/data && sync")
        created = shadowlun(a, "create", "--transportable", "--bcd", "/root/trim.xml", vols.mounts[0])
        set_id = created["set_id"]
        b.put("/root/trim.xml", a.run("cat /root/trim.xml").stdout)
        shadowlun(b, "import", "/root/trim.xml")
        broken = shadowlun(b, "break", "--writable", created["set_id"])
        device = broken["volumes"][0]["device"]
        (lun,) = [x["name"] for x in vols.api.call("GET", "/v1/luns") if x["origin"] == vols.names[0]]
        disks = checks.scsi_disks(b, device)
        assert disks, f"no SCSI disk under {device}"
        for disk in disks:  # each path of a multipath map, or the one disk
            thin_disk(b, disk)
        b.run(f"mkdir -p /mnt/trim-broken && mount {device} /mnt/trim-broken")
        with timed("fstrim returns 32 MiB (broken shadow copy)"):
            trim_returns_space(b, array, lv_name(lun), "/mnt/trim-broken")
    finally:
        b.run("umount /mnt/trim-broken 2>/dev/null; rmdir /mnt/trim-broken 2>/dev/null; true", check=False)
        target = vols.api.call("GET", "/v1/target")
        release_on_b(lab, vols, set_id)
        assert vols.remove() == []
        assert checks.host_objects(b, target["iqn"])["sessions"] == set()


# --- persistent reservations -----------------------------------------------------------------

def sg_persist(vm, disk: str, *args: str, check: bool = True):
    return vm.run(["sg_persist", "--no-inquiry", *args, disk], check=check, timeout=60)


def write_one_block(vm, disk: str):
    """WRITE(10) of one block at LBA 0 with sg_raw: the SCSI status, not a guess from EIO."""
    return vm.run(f"sg_raw -s 512 -i /dev/zero {disk} 2a 00 00 00 00 00 00 00 01 00 2>&1",
                  check=False, timeout=60)


def registered_keys(vm, disk: str) -> set[str]:
    out = sg_persist(vm, disk, "--in", "--read-keys").stdout
    return {line.strip() for line in out.splitlines() if line.strip().startswith("0x")}


def reservation(vm, disk: str) -> str:
    return sg_persist(vm, disk, "--in", "--read-reservation").stdout


@pytest.fixture
def shared_lun(lab) -> Iterator[tuple[str, str, str]]:
    """One LUN masked to host-a and host-b, attached on both as a raw disk: (name, disk on a,
    disk on b)."""
    a, b = lab.vm("host-a"), lab.vm("host-b")
    vols = HostVolumes(lab, a, ["pr"], size_bytes=64 * MIB)
    name = vols.names[0]
    lab.array.run(["python3", VOLUME, "make", name, "64", initiator(a)], timeout=300)
    try:
        vols.api.call("PUT", f"/v1/luns/{name}/masks", {"initiator": initiator(b)})
        disk_a = json.loads(a.run(["python3", VOLUME, "attach", name], timeout=300).stdout)[name]
        disk_b = json.loads(b.run(["python3", VOLUME, "attach", name], timeout=300).stdout)[name]
        yield name, disk_a, disk_b
    finally:
        for vm in (a, b):
            vm.run(["python3", VOLUME, "detach", name], check=False, timeout=300)
        lab.array.run(["python3", VOLUME, "destroy", name], timeout=300)


def test_a_write_exclusive_reservation_refuses_the_other_hosts_writes(lab, shared_lun, timed):
    a, b = lab.vm("host-a"), lab.vm("host-b")
    _, disk_a, disk_b = shared_lun
    with timed("persistent reservations between two hosts"):
        sg_persist(a, disk_a, "--out", "--register", f"--param-sark={KEY_A}")
        sg_persist(b, disk_b, "--out", "--register", f"--param-sark={KEY_B}")
        assert registered_keys(a, disk_a) == registered_keys(b, disk_b) == {KEY_A, KEY_B}
        sg_persist(a, disk_a, "--out", "--reserve", f"--param-rk={KEY_A}", f"--prout-type={WRITE_EXCLUSIVE}")
        assert f"Key={KEY_A}" in reservation(b, disk_b) and "Write Exclusive" in reservation(b, disk_b)
        refused = write_one_block(b, disk_b)
        assert refused.returncode != 0 and "reservation conflict" in refused.stdout.lower(), refused.stdout
        assert write_one_block(a, disk_a).returncode == 0
        sg_persist(a, disk_a, "--out", "--release", f"--param-rk={KEY_A}", f"--prout-type={WRITE_EXCLUSIVE}")
        assert "no reservation" in reservation(b, disk_b).lower()
        written = write_one_block(b, disk_b)
        assert written.returncode == 0, written.stdout
        sg_persist(a, disk_a, "--out", "--clear", f"--param-rk={KEY_A}")
        # SPC: host-b's next command gets a UNIT ATTENTION (reservations preempted); the kernel's
        # own commands to the disk may take it first, so either answer is right here.
        told = sg_persist(b, disk_b, "--in", "--read-keys", check=False)
        assert told.returncode == 0 or "Reservations preempted" in told.stderr, told.stderr
        assert registered_keys(b, disk_b) == set()


def test_an_array_reboot_keeps_luns_masks_data_and_an_aptpl_reservation(lab, shared_lun, timed):
    """An array reboot keeps every LV, export and ACL, the LUN's serial, WWID and masks, and its
    bytes (the sessions of both hosts recover). A reservation registered with APTPL (activate
    persist through power loss): LIO writes the state to its dbroot's pr/aptpl_<serial>; after
    the reboot the agent's reconcile (or target.service) makes the backstore again with the same
    serial, and rtslib gives the kernel that state back. (A shadow LUN made before an array
    reboot is imported after one in test_transport.)"""
    a, b, array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
    name, disk_a, disk_b = shared_lun
    admin = AgentApi.admin(lab)
    lun = admin.call("GET", f"/v1/luns/{name}")
    a.run(f"head -c 1M /dev/urandom | dd of={disk_a} bs=1M oflag=direct status=none")
    data = a.run(f"head -c 1M {disk_a} | sha256sum").stdout.split()[0]
    sg_persist(a, disk_a, "--out", "--register", f"--param-sark={KEY_A}", "--param-aptpl")
    sg_persist(a, disk_a, "--out", "--reserve", f"--param-rk={KEY_A}", f"--prout-type={WRITE_EXCLUSIVE}")
    dbroot = array.run("cat /sys/kernel/config/target/dbroot").stdout.strip()
    assert "PR_REG_START" in array.run(f"cat {dbroot}/pr/aptpl_{lun['serial']}").stdout
    objects = checks.array_objects(array)
    with timed("array reboot (reservations kept)"):
        array.reboot()
        checks.wait_for_agent(a)

    assert checks.array_objects(array) == objects
    again = admin.call("GET", f"/v1/luns/{name}")
    assert (again["serial"], again["wwid"], again["masks"], again["lun_id"]) == \
        (lun["serial"], lun["wwid"], lun["masks"], lun["lun_id"])
    for vm, disk in ((a, disk_a), (b, disk_b)):  # sessions recover; a first command may get a UNIT ATTENTION
        checks.until(lambda: sg_persist(vm, disk, "--in", "--read-keys", check=False).returncode == 0, 180,
                     lambda: f"{vm.name}: {disk} did not answer within 180 s of the array's reboot")
    assert b.run(f"dd if={disk_b} bs=1M count=1 iflag=direct status=none | sha256sum").stdout.split()[0] == data
    assert registered_keys(a, disk_a) == {KEY_A}
    assert f"Key={KEY_A}" in reservation(b, disk_b) and "Write Exclusive" in reservation(b, disk_b)
    refused = write_one_block(b, disk_b)
    assert "reservation conflict" in refused.stdout.lower(), refused.stdout
    sg_persist(a, disk_a, "--out", "--clear", f"--param-rk={KEY_A}")
    assert registered_keys(a, disk_a) == set()




def test_reservations_on_an_imported_shadow_lun_hold_through_its_break(lab, timed):
    """host-b imports a transportable shadow copy (writes to it are refused by host-b's kernel,
    the LUN itself takes SCSI commands), the admin masks it to host-a too: host-b's Write
    Exclusive reservation refuses host-a's writes, and holds through `break --writable` (the
    backstore and its registrations are kept)."""
    a, b = lab.vm("host-a"), lab.vm("host-b")
    vols = HostVolumes(lab, a, ["prsnap"]).create()
    shadow, set_id = None, None
    try:
        created = shadowlun(a, "create", "--transportable", "--bcd", "/root/prsnap.xml", vols.mounts[0])
        set_id = created["set_id"]
        b.put("/root/prsnap.xml", a.run("cat /root/prsnap.xml").stdout)
        (snap,) = shadowlun(b, "import", "/root/prsnap.xml")["snapshots"]
        # One SCSI path: a registration is per I_T nexus, so on a multipath host PR commands sent
        # to the map could leave by another path than the one registered (mpathpersist's job).
        disk_b = checks.scsi_disks(b, snap["devices"][0])[0]
        (shadow,) = [x["name"] for x in vols.api.call("GET", "/v1/luns") if x["origin"] == vols.names[0]]
        vols.api.call("PUT", f"/v1/luns/{shadow}/masks", {"initiator": initiator(a)})
        disk_a = json.loads(a.run(["python3", VOLUME, "attach", shadow], timeout=300).stdout)[shadow]
        with timed("persistent reservations (shadow LUN)"):
            sg_persist(b, disk_b, "--out", "--register", f"--param-sark={KEY_B}")
            sg_persist(a, disk_a, "--out", "--register", f"--param-sark={KEY_A}")
            sg_persist(b, disk_b, "--out", "--reserve", f"--param-rk={KEY_B}", f"--prout-type={WRITE_EXCLUSIVE}")
            assert registered_keys(a, disk_a) == {KEY_A, KEY_B} and f"Key={KEY_B}" in reservation(a, disk_a)
            refused = write_one_block(a, disk_a)
            assert refused.returncode != 0 and "reservation conflict" in refused.stdout.lower(), refused.stdout
            shadowlun(b, "break", "--writable", created["set_id"])
            assert registered_keys(b, disk_b) == {KEY_A, KEY_B} and f"Key={KEY_B}" in reservation(b, disk_b)
            assert "reservation conflict" in write_one_block(a, disk_a).stdout.lower()
            assert write_one_block(b, disk_b).returncode == 0  # the holder writes
            sg_persist(b, disk_b, "--out", "--clear", f"--param-rk={KEY_B}")
    finally:
        if shadow is not None:
            a.run(["python3", VOLUME, "detach", shadow], check=False, timeout=300)
        release_on_b(lab, vols, set_id)
        assert vols.remove() == []
