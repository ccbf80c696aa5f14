"""The transport story, on the real stack: a transportable shadow copy made on host-a moves to
host-b, is read there with the bytes of snapshot time, and is broken and deleted.

  1. host-a: two array LUNs with a filesystem each (/mnt/db, /mnt/logs), data written.
  2. host-a: `shadowlun create --transportable --bcd` of both volumes; host-a keeps writing.
  3. the Backup Components Document is copied to host-b.
  4. host-b: `shadowlun import`: the shadow LUNs arrive, found by WWID, read-only and hidden.
  5. host-b: `shadowlun expose` mounts each read-only; checksums = host-a's at snapshot time;
     writes are refused by the kernel.
  6. host-b: `shadowlun delete --snapshot` of the logs copy: its LUN is gone from host and array.
  7. host-b: `shadowlun break --writable` of the set: db becomes an ordinary disk; written to.
  8. cleanup: host-b releases the broken disk, the array deletes it, host-a's volumes go.

Used by the system test (which asserts on the result) and by `make demo` (which narrates it).
Each step runs the real CLI on the VMs (`python3 -m provider.cli`, the `shadowlun` command).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .agent_api import AgentApi
from .checks import until
from .host_volumes import HostVolumes
from .initiator import Node
from .lab import Lab
from .vm import VM

MIB = 1 << 20
SHADOWLUN = "python3 -m provider.cli"


def shadowlun(vm: VM, *args: str) -> dict:
    """The CLI with --json; a failure raises with the CLI's own message."""
    r = vm.run(f"{SHADOWLUN} --json " + " ".join(args), check=False, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{vm.name}: shadowlun {' '.join(args)} failed (exit {r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


def shadowlun_table(vm: VM, *args: str) -> str:
    """The CLI's human output (tables), as a user sees it."""
    return vm.run(f"COLUMNS=160 {SHADOWLUN} " + " ".join(args), timeout=600).stdout.rstrip()


def imported_snapshot(vm: VM, set_id: str) -> dict:
    """The one shadow copy of a set imported on this host, as `shadowlun list` shows it."""
    [s] = [s for s in shadowlun(vm, "list")["sets"] if s["set_id"] == set_id]
    [snap] = s["snapshots"]
    return snap


def forget_set(vm: VM, made: dict) -> None:
    """After a failed test, the set it created (`made`: create's answer, or {} if create did not
    answer) deleted on the host while its LUNs still exist on the array, so that no later test
    finds it in the host's catalog. Best effort: a set already deleted is no error."""
    if made.get("set_id"):
        vm.run(f"{SHADOWLUN} delete --set {made['set_id']}", check=False, timeout=600)


def sha256(vm: VM, path: str) -> str:
    return vm.run(f"sha256sum {path}").stdout.split()[0]


@dataclass
class StoryResult:
    set_id: str = ""
    volumes: list[str] = field(default_factory=list)
    at_snapshot: dict[str, str] = field(default_factory=dict)    # volume -> sha256 on host-a at create
    host_a_after: dict[str, str] = field(default_factory=dict)   # volume -> sha256 on host-a afterwards
    host_b_read: dict[str, str] = field(default_factory=dict)    # volume -> sha256 of the copy on host-b
    wwids_expected: dict[str, str] = field(default_factory=dict)  # volume -> WWID the document promises
    wwids_found: dict[str, str] = field(default_factory=dict)     # volume -> WWID of host-b's disk
    flags: dict[str, list[str]] = field(default_factory=dict)     # volume -> flags on host-b
    write_refused: dict[str, str] = field(default_factory=dict)   # volume -> the kernel's refusal
    second_import: str = ""                                       # the VSS code of importing again
    deleted_gone: dict[str, bool] = field(default_factory=dict)   # what delete left: nothing anywhere
    broken_writable: bool = False
    listed_after_break: list = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    cleanup_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for v in self.volumes:
            if self.host_b_read.get(v) != self.at_snapshot.get(v):
                out.append(f"{v}: host-b read other bytes than host-a had at snapshot time")
            if self.host_a_after.get(v) == self.at_snapshot.get(v):
                out.append(f"{v}: host-a did not keep writing")
            if self.wwids_found.get(v) != self.wwids_expected.get(v):
                out.append(f"{v}: host-b's disk has another WWID")
            if "read-only" not in self.flags.get(v, []) or "hidden" not in self.flags.get(v, []):
                out.append(f"{v}: the shadow copy did not arrive read-only and hidden")
            if not self.write_refused.get(v):
                out.append(f"{v}: a write to the shadow copy was not refused")
        if self.second_import != "VSS_E_BAD_STATE":
            out.append(f"a second import answered {self.second_import or 'success'}")
        out += [f"delete left {what}" for what, gone in self.deleted_gone.items() if not gone]
        if not self.broken_writable:
            out.append("the broken shadow copy could not be written")
        if self.listed_after_break:
            out.append("the broken set is still listed")
        out += [f"cleanup: {e}" for e in self.cleanup_errors]
        return out


def _wwid_of(record: dict) -> str:
    return "naa." + record["device_id_descriptor"]["identifiers"][0]["identifier"]


def run(lab: Lab, say: Callable[[str], None] = lambda s: None) -> StoryResult:
    a, b = lab.vm("host-a"), lab.vm("host-b")
    api = AgentApi.admin(lab)
    r = StoryResult()
    vols = HostVolumes(lab, a, ["db", "logs"], 64 * MIB, mounts=["/mnt/db", "/mnt/logs"])
    r.volumes = vols.mounts
    try:
        t0 = time.monotonic()
        say("1. host-a: two array LUNs, a GPT partition with ext4 on each, mounted at /mnt/db and /mnt/logs")
        vols.create()
        a.run("head -c 8M /dev/urandom > /mnt/db/data && seq 1 200000 > /mnt/logs/data && sync")
        r.at_snapshot = {v: sha256(a, f"{v}/data") for v in r.volumes}
        for v in r.volumes:
            say(f"   {v}/data  sha256 {r.at_snapshot[v][:16]}...")
        r.seconds["host-a volumes"] = time.monotonic() - t0

        say("2. host-a: shadowlun create --transportable --bcd /root/set.xml /mnt/db /mnt/logs")
        t0 = time.monotonic()
        created = shadowlun(a, "create", "--transportable", "--bcd", "/root/set.xml", *r.volumes)
        r.seconds["create"] = time.monotonic() - t0
        r.set_id = created["set_id"]
        held = created["report"]["seconds"]["writes held"]
        say(f"   snapshot set {r.set_id}: writes held {held:.2f} s, in {r.seconds['create']:.1f} s in all")
        for s in created["snapshots"]:
            r.wwids_expected[s["volume"]] = _wwid_of(s["target_luns"][0])
        a.run("head -c 8M /dev/urandom > /mnt/db/data && seq 7 300000 > /mnt/logs/data && sync")
        r.host_a_after = {v: sha256(a, f"{v}/data") for v in r.volumes}
        say("   host-a kept writing: both files rewritten after the snapshot")

        say("3. the Backup Components Document goes to host-b")
        b.put("/root/set.xml", a.run("cat /root/set.xml").stdout)

        say("4. host-b: shadowlun import /root/set.xml")
        t0 = time.monotonic()
        imported = shadowlun(b, "import", "/root/set.xml")
        r.seconds["import"] = time.monotonic() - t0
        by_volume = {s["volume"]: s for s in imported["snapshots"]}
        for v in r.volumes:
            s = by_volume[v]
            disk = s["devices"][0].removeprefix("/dev/")
            # a multipath map's WWID is its paths' (host-b runs multipathd)
            r.wwids_found[v] = b.run(f"d=/sys/block/{disk}; [ -e $d/device ] || d=$(ls -d $d/slaves/* | head -n1); "
                                     "cat $d/device/wwid").stdout.strip()
            r.flags[v] = s["flags"]
            say(f"   {v} -> {s['device']} on {r.wwids_found[v]} ({', '.join(s['flags'])})")
        again = b.run(f"{SHADOWLUN} --json import /root/set.xml", check=False)
        r.second_import = json.loads(again.stderr.strip().splitlines()[-1])["vss"] if again.returncode else ""
        say(f"   importing the same document again: {r.second_import}")

        say("5. host-b: shadowlun expose SNAPSHOT /mnt/shadow/<volume> (read-only), checksums")
        for v in r.volumes:
            s = by_volume[v]
            where = "/mnt/shadow/" + v.rsplit("/", 1)[1]
            shadowlun(b, "expose", s["snapshot_id"], where)
            r.host_b_read[v] = sha256(b, f"{where}/data")
            refused = b.run(f"dd if=/dev/zero of={s['device']} bs=4k count=1 oflag=direct 2>&1", check=False)
            r.write_refused[v] = next((line for line in refused.stdout.splitlines() if line.startswith("dd:")),
                                      "refused") if refused.returncode else ""
            say(f"   {v}: sha256 {r.host_b_read[v][:16]}... (at snapshot time {r.at_snapshot[v][:16]}..., "
                f"host-a now {r.host_a_after[v][:16]}...); a write: {r.write_refused[v] or 'ACCEPTED'}")
        r.tables["list"] = shadowlun_table(b, "list")
        say(r.tables["list"])

        logs = by_volume["/mnt/logs"]
        say("6. host-b: shadowlun delete --snapshot <the logs copy>")
        logs_serial = created["snapshots"][1]["target_luns"][0]["serial_number"]
        logs_lun = next(x["name"] for x in api.call("GET", "/v1/luns") if x["serial"] == logs_serial)
        shadowlun(b, "delete", "--snapshot", logs["snapshot_id"])
        array = lab.vm("array")
        r.deleted_gone = {
            "a LUN in the agent": not [x for x in api.call("GET", "/v1/luns") if x["serial"] == logs_serial],
            "an LV": array.run(f"lvs shadowlun/{logs_lun}", check=False).returncode != 0,
            "a LIO backstore": not array.run(f"ls -d /sys/kernel/config/target/core/*/{logs_lun} 2>/dev/null || true"
                                             ).stdout.strip(),
            "a mapping for host-b": logs_lun not in array.run(
                "targetcli ls /iscsi 2>/dev/null || true", timeout=120).stdout,
            "a disk on host-b": r.wwids_found["/mnt/logs"] not in
            b.run("cat /sys/block/*/device/wwid 2>/dev/null || true").stdout,
        }
        say("   gone: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r.deleted_gone.items()))

        say("7. host-b: shadowlun break --writable <set>: db becomes an ordinary writable disk")
        broken = shadowlun(b, "break", "--writable", r.set_id)
        device = broken["volumes"][0]["device"]
        b.run(f"mkdir -p /mnt/broken && mount {device} /mnt/broken && echo written-on-host-b > /mnt/broken/note "
              "&& sync && umount /mnt/broken && mount -o ro {device} /mnt/broken".replace("{device}", device))
        r.broken_writable = b.run("cat /mnt/broken/note").stdout.strip() == "written-on-host-b"
        r.listed_after_break = shadowlun(b, "list")["sets"]
        say(f"   wrote a file on {device} and read it back: {'yes' if r.broken_writable else 'NO'}; "
            f"shadow copies left on host-b: {len(r.listed_after_break)}")
    finally:
        say("8. cleanup: host-b releases the broken disk, the array deletes it, host-a's volumes go")
        b.run("umount /mnt/broken /mnt/shadow/* 2>/dev/null; true", check=False)
        target = api.call("GET", "/v1/target")
        if b.machine.multipath:  # the maps first (multipath -F: every map not in use), then each path's session
            b.run("multipath -F", check=False)
        for portal in target["portals"]:
            Node(b, target["iqn"], portal.split(":")[0]).remove()
        for x in api.call("GET", "/v1/luns"):
            if x["origin"] in vols.names:
                try:
                    api.call("DELETE", f"/v1/luns/{x['name']}")
                except Exception as e:  # noqa: BLE001 - collected, the rest is still cleaned
                    r.cleanup_errors.append(f"delete {x['name']}: {e}")
        r.cleanup_errors += vols.remove()
    return r


class PausedCreate:
    """`shadowlun create` run in the background on a VM with the provider server held at a pause
    point (SHADOWLUN_PROVIDER_PAUSE_AT), so a test can act meanwhile: at EndPrepareSnapshots the
    array holds a prepared set (kill the server, or write to the volumes before the freeze); at
    CommitSnapshots the volumes are frozen (kill the requester)."""

    def __init__(self, vm: VM, args: str, pause_s: int, name: str = "create",
                 point: str = "end_prepare_snapshots") -> None:
        self.vm, self.files = vm, {k: f"/tmp/{name}.{k}" for k in ("out", "err", "rc", "killed")}
        vm.run(f"rm -f {' '.join(self.files.values())}; setsid sh -c "
               f"'SHADOWLUN_PROVIDER_PAUSE_AT={point}:{pause_s} {SHADOWLUN} --json --verbose "
               f"create {args} > {self.files['out']} 2> {self.files['err']}; echo $? > {self.files['rc']}' "
               "< /dev/null > /dev/null 2>&1 &")

    def stderr(self) -> str:
        return self.vm.run(f"cat {self.files['err']} 2>/dev/null || true").stdout

    def wait_paused(self, timeout: float = 120) -> None:
        """Until the provider server says it is pausing (it logs that with --verbose), bounded."""
        until(lambda: "pausing" in self.stderr(), timeout,
              lambda: f"create never paused within {timeout:g} s: {self.stderr()}", interval=0.5)

    def wait_done(self, timeout: float = 120) -> int:
        """The CLI's exit status once it ended, bounded."""
        until(lambda: self.vm.run(f"test -f {self.files['rc']}", check=False).returncode == 0, timeout,
              lambda: f"create still running after {timeout:g} s: {self.stderr()}", interval=0.5)
        return int(self.vm.run(f"cat {self.files['rc']}").stdout.strip())

    def kill_when_paused(self) -> None:
        """SIGKILL the requester from inside the VM as soon as the server says it is pausing:
        a kill driven over SSH polls could come only after the requester's own 10 s watchdog
        under TCG load, and so would not test a requester that died during the hold."""
        err, at = self.files["err"], self.files["killed"]
        # tail -F follows the log with inotify, through a FIFO so that the kill waits only for
        # grep: no process started per poll, which on the VM's one TCG CPU would slow the very
        # create under test (its thaw guard's start, say).
        self.vm.run(f"setsid sh -c 'f=$(mktemp -u); mkfifo $f; tail -n +1 -F {err} 2>/dev/null > $f & t=$!; "
                    f"grep -q -m1 pausing < $f; date +%s.%N > {at}.new; "
                    f"pkill -KILL -f \"^python3 -m provider[.]cli\"; mv {at}.new {at}; kill $t; rm -f $f' "
                    "< /dev/null > /dev/null 2>&1 &")

    def killed_at(self, timeout: float = 120) -> float:
        """When kill_when_paused killed the requester (the VM's clock, read just before the
        kill: the guard may thaw before a clock read after it), bounded."""
        until(lambda: self.vm.run(f"test -s {self.files['killed']}", check=False).returncode == 0, timeout,
              lambda: f"create not killed within {timeout:g} s: {self.stderr()}", interval=0.5)
        return float(self.vm.run(f"cat {self.files['killed']}").stdout)
