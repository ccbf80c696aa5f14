"""`make bench`: what users feel, measured in the lab next to the naive way, in one run.

Absolute times in a TCG VM mean little; each figure is printed beside its baseline measured in
the same run on the same VMs, and the ratio is what we track.

  commit window       writes held on host-a by `shadowlun create --transportable` of 1, 4,
                      16, 64 LUNs (one GPT partition each, where a transportable copy keeps its
                      flags; the hold is the same in every context, and a transportable set is
                      not imported on host-a and released again, which for 64 LUNs takes
                      longer than the rest of the bench), and the array's own commit window;
                      against a loop of one `lvcreate -s`
                      per LUN, and one raw `lvcreate -s`, run on the array. Where each hold
                      went (the array's window, the calls, freeze and thaw) is printed under
                      it, and the 64-LUN hold against the 1-LUN hold as a row of its own.
  origin size         the array's commit window for a 1 GiB and a 1 TiB (thin, sparse) origin.
  import              `shadowlun import` of a 4-LUN and a 16-LUN transportable set on host-b
                      (document in hand -> disks verified by WWID), against a raw `iscsiadm
                      --login` (scan on) + `udevadm settle` of as many LUNs of the same kind
                      (one GPT partition each) on one portal; host-b runs multipathd, and
                      the import also logs in on the second portal and waits for each LUN's
                      multipath map to have both paths. host-b's iSCSI stack is started
                      first (iscsid, modules), so neither pays its start.
  IOPS                fio 4 KiB random writes on the array: a thin origin before any snapshot,
                      after a thin snapshot, and a linear LV after a classic LVM snapshot.
  many snapshots      the array's commit window, and one `lvcreate -s` (the prepare's work), with
                      the 1st and with the 500th snapshot of a volume.

Everything made is removed at the end.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .agent_api import AgentApi
from .host_volumes import VOLUME, host_chap, initiator
from .lab import Lab
from .vm import VM

MIB, GIB = 1 << 20, 1 << 30
SIZES = (1, 4, 16, 64)
IMPORT_SIZES = (4, 16)
VG, POOL = "shadowlun", "pool"
SHADOWLUN = "python3 -m provider.cli --json"
FIO = ("fio --name=bench --filename={dev} --rw=randwrite --bs=4k --direct=1 --ioengine=libaio "
       "--iodepth=16 --size=256M --time_based --runtime={seconds} --output-format=json")


@dataclass
class Figure:
    name: str
    value: float | None  # None: the operation failed (see `failed`)
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    failed: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline (below 1: better than the baseline for times, worse for IOPS)."""
        return self.value / self.baseline if self.baseline and self.value is not None else None

    def row(self) -> str:
        base = f"{self.baseline:10.3f} {self.unit:<5} {self.baseline_name}" if self.baseline is not None else ""
        ratio = f"{self.ratio:6.2f}" if self.ratio is not None else "      "
        value = f"{self.value:10.3f}" if self.value is not None else "    FAILED"
        row = f"  {self.name:<44} {value} {self.unit:<5} {ratio}  {base}"
        return row + (f"\n      ({self.failed})" if self.failed else "")


API_BATCH = """
import json, sys
from provider.hardware.array_client import ADMIN_ACCESS_FILE, ArrayAccess, ArrayClient
client = ArrayClient(ArrayAccess.load(ADMIN_ACCESS_FILE))
print(json.dumps([client.call(m, p, b) for m, p, b in json.loads(sys.stdin.read())]))
"""


def api_batch(vm: VM, calls: list[tuple[str, str, dict | None]]) -> list:
    """Many agent API calls as the admin, from one process on the array VM (one SSH round
    trip, one start-up)."""
    if not calls:
        return []
    return json.loads(vm.run(["python3", "-c", API_BATCH], input=json.dumps(calls), timeout=1800).stdout)


def timed_on(vm: VM, script: str, timeout: float = 900) -> float:
    """Seconds a shell script takes on the VM, timed there (not over SSH)."""
    out = vm.run(["python3", "-c", "import subprocess, sys, time; t = time.monotonic(); "
                  "subprocess.run(['bash', '-ec', sys.argv[1]], check=True, stdout=subprocess.DEVNULL, "
                  "stderr=subprocess.DEVNULL); print(time.monotonic() - t)", script], timeout=timeout)
    return float(out.stdout.strip())


def one_gpt_partition(device: str, reread: bool = True) -> str:
    """The shell command that writes a GPT with one partition over the whole device; without
    `reread`, the kernel is not asked to read it back (on the array, where LIO holds the LV
    open and sfdisk refuses a disk in use unless told not to reread)."""
    return f"printf 'label: gpt\\n,\\n' | sfdisk -q {'' if reread else '--no-reread '}{device}"


class Bench:
    def __init__(self, lab: Lab, say: Callable[[str], None]) -> None:
        self.lab, self.say = lab, say
        self.a, self.b, self.array = lab.vm("host-a"), lab.vm("host-b"), lab.vm("array")
        self.api = AgentApi.admin(lab)
        self.tag = uuid.uuid4().hex[:6]
        self.made: list[str] = []  # LUN names, deleted at the end
        self.figures: list[Figure] = []

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        self.say(figure.row())

    def array_commit(self, luns: list[str]) -> float:
        """The array's commit window (seconds) of one set of these LUNs, made through the API."""
        set_id = str(uuid.uuid4())
        self.api.call("POST", "/v1/snapshot-sets", {"set_id": set_id, "snapshots": [
            {"snapshot_id": str(uuid.uuid4()), "lun": n} for n in luns]})
        return self.api.call("POST", f"/v1/snapshot-sets/{set_id}/commit")["commit_window_s"]

    def drop_snapshots(self, origins: set[str]) -> None:
        api_batch(self.array, [("DELETE", f"/v1/luns/{lun['name']}", None) for lun in self.api.call("GET", "/v1/luns")
                           if lun["origin"] in origins])

    def luns(self, labels: list[str], size: int) -> list[str]:
        names = [f"b{self.tag}-{label}" for label in labels]
        api_batch(self.array, [("POST", "/v1/luns", {"name": n, "size_bytes": size}) for n in names])
        self.made += names
        return names

    def attach_to_a(self, names: list[str]) -> dict[str, str]:
        """The LUNs masked to host-a by the admin, then its disks (name -> /dev/sdX), once udev
        has handled them: with 64 new disks its workers keep host-a's one CPU busy for minutes
        after they appear, which the figures measured next are not about."""
        iqn = initiator(self.a)
        api_batch(self.array, [("PUT", f"/v1/luns/{n}/masks", {"initiator": iqn}) for n in names])
        disks = json.loads(self.a.run(["python3", VOLUME, "attach", *names], timeout=900).stdout)
        self.a.run("udevadm settle --timeout=600", timeout=660)
        return disks

    def partition_on_a(self, disks: list[str]) -> None:
        """One GPT partition over each disk on host-a (a transportable copy's flags live in it)."""
        self.a.run(" && ".join(map(one_gpt_partition, disks)) + " && udevadm settle", timeout=900)

    def partition_on_array(self, names: list[str]) -> None:
        """One GPT partition over each LUN, written on the array (for LUNs no host has)."""
        self.array.run(" && ".join(one_gpt_partition(f"/dev/{VG}/lun-{n}", reread=False) for n in names), timeout=900)

    def detach_from_a(self, names: list[str]) -> None:
        self.a.run(["python3", VOLUME, "detach", *names], timeout=900)
        iqn = initiator(self.a)
        api_batch(self.array, [("DELETE", f"/v1/luns/{n}/masks/{iqn}", None) for n in names])

    def raw_snapshots(self, origins: list[str]) -> float:
        """A loop of one `lvcreate -s` per LV on the array (the naive way), then removed."""
        names = [f"naive-{self.tag}-{i}" for i in range(len(origins))]
        took = timed_on(self.array, "; ".join(f"lvcreate -q -s -n {n} {VG}/lun-{o}" for n, o in zip(names, origins)))
        self.array.run(f"lvremove -q -y {' '.join(f'{VG}/{n}' for n in names)}", timeout=600)
        return took

    # -- the figures ---------------------------------------------------------------------------

    def commit_window(self) -> None:
        self.say("commit window by number of LUNs (host-a, `shadowlun create --transportable`, a partition a LUN)")
        names = self.luns([f"c{i}" for i in range(max(SIZES))], 64 * MIB)
        disks = self.attach_to_a(names)
        self.partition_on_a(list(disks.values()))
        held_by_size: dict[int, float] = {}
        try:
            for n in SIZES:
                chosen = names[:n]
                loop = self.raw_snapshots(chosen)
                single = self.raw_snapshots(chosen[:1])
                r = self.a.run(f"{SHADOWLUN} create --transportable --bcd /root/bench-hold.xml "
                               f"{' '.join(disks[x] + '1' for x in chosen)}", check=False, timeout=1800)
                if r.returncode:  # e.g. over the 10 s VSS allows for CommitSnapshots: a figure too
                    why = json.loads(r.stderr.strip().splitlines()[-1])
                    self.add(Figure(f"writes held, {n} LUN(s)", None, "s", f"lvcreate -s loop x{n}", loop,
                                    failed=f"{why['vss']}: {why['message'][:150]}"))
                    continue
                out = json.loads(r.stdout)
                held = out["report"]["seconds"]["writes held"]
                window = self.api.call("GET", f"/v1/snapshot-sets/{out['set_id']}")["commit_window_s"]
                self.add(Figure(f"writes held, {n} LUN(s)", held, "s", f"lvcreate -s loop x{n}", loop))
                self.add(Figure(f"array commit window, {n} LUN(s)", window, "s", "one lvcreate -s", single))
                call = out["report"]["seconds"]["CommitSnapshots"]
                self.say(f"      where the hold went: CommitSnapshots {call:.3f} s (the array's window {window:.3f} s, "
                         f"the calls to the provider server and the agent {call - window:.3f} s), "
                         f"freeze and thaw {held - call:.3f} s")
                held_by_size[n] = held
                self.drop_snapshots(set(chosen))  # after the figures are out: 64 deletes take minutes
        finally:
            self.detach_from_a(names)
        if 1 in held_by_size and max(SIZES) in held_by_size:  # the goal is a ratio: printed as one
            self.add(Figure(f"writes held, {max(SIZES)} LUNs against 1", held_by_size[max(SIZES)], "s",
                            "writes held, 1 LUN", held_by_size[1]))

    def origin_size(self) -> None:
        self.say("commit window by origin size (thin, sparse)")
        (small,), (large,) = self.luns(["1g"], GIB), self.luns(["1t"], 1 << 40)
        w_small, w_large = self.array_commit([small]), self.array_commit([large])
        self.add(Figure("array commit window, 1 TiB origin", w_large, "s", "1 GiB origin", w_small))

    def import_time(self) -> None:
        self.warm_iscsi_on_b()
        for n in IMPORT_SIZES:
            self.say(f"import: document in hand -> disks verified by WWID, {n} LUNs")
            names = self.luns([f"i{n}-{i}" for i in range(n)], 64 * MIB)
            raw = self.luns([f"r{n}-{i}" for i in range(n)], 64 * MIB)
            self.partition_on_array(raw)  # as the set's LUNs are: host-b's udev does the same work
            disks = self.attach_to_a(names)
            try:
                self.partition_on_a(list(disks.values()))
                self.a.run(f"{SHADOWLUN} create --transportable --bcd /root/bench.xml "
                           + " ".join(f"{d}1" for d in disks.values()), timeout=900)
            finally:
                self.detach_from_a(names)
            self.b.put("/root/bench.xml", self.a.run("cat /root/bench.xml").stdout)
            imported = timed_on(self.b, f"{SHADOWLUN} import /root/bench.xml")
            listed = json.loads(self.b.run(f"{SHADOWLUN} list").stdout)["sets"]
            self.b.run(f"{SHADOWLUN} delete --set {listed[0]['set_id']}", timeout=900)
            login = self.raw_login(raw)
            self.add(Figure(f"import of a {n}-LUN set (shadowlun import)", imported, "s",
                            f"iscsiadm --login + udevadm settle, {n} LUNs", login))

    def warm_iscsi_on_b(self) -> None:
        """host-b as a SAN host in service: iscsid running, the iSCSI, multipath and ALUA modules
        loaded. Otherwise the first import after boot pays their start (about 3 s) and the
        baseline, measured after it, does not: the figures are of the import and the login."""
        self.b.run("systemctl start iscsid.service && modprobe -a iscsi_tcp dm_multipath dm_service_time scsi_dh_alua")

    def raw_login(self, names: list[str]) -> float:
        """The raw way on host-b: LUNs masked, a node with automatic scan, login on one portal,
        settle, WWIDs. The import there does more: host-b runs multipathd, so it logs in on every
        portal and waits until each LUN's map has a path per portal. A by-hand wait for both
        paths of 16 fresh LUNs timed out after 300 s (multipathd never added the second paths to
        their maps), so this baseline stays a login on one portal."""
        b = self.b
        (chap_user, chap_secret), iqn = host_chap(b), initiator(b)
        luns = [self.api.call("PUT", f"/v1/luns/{n}/masks", {"initiator": iqn}) for n in names]
        target = self.api.call("GET", "/v1/target")
        node = f"iscsiadm -m node -T {target['iqn']} -p {target['portals'][0]}"
        b.run(f"{node} -o new >/dev/null && {node} -o update -n node.session.auth.authmethod -v CHAP && "
              f"{node} -o update -n node.session.auth.username -v {chap_user} && "
              f"{node} -o update -n node.session.auth.password -v {chap_secret}")
        wanted = " ".join(lun["wwid"] for lun in luns)
        try:
            return timed_on(b, f"{node} --login; udevadm settle; for w in {wanted}; do "
                               "grep -qx $w /sys/block/sd*/device/wwid; done")
        finally:
            b.run(f"for d in /sys/block/sd*; do grep -q -e {' -e '.join(lun['wwid'] for lun in luns)} "
                  "$d/device/wwid 2>/dev/null && echo 1 > $d/device/delete; done; "
                  f"{node} --logout; {node} -o delete; true", check=False)
            for n in names:
                self.api.call("DELETE", f"/v1/luns/{n}/masks/{iqn}")

    def iops(self, seconds: int = 8) -> None:
        self.say(f"random-write IOPS on the array (fio, 4 KiB, iodepth 16, {seconds} s)")
        arr = self.array

        def fio(dev: str) -> float:
            out = json.loads(arr.run(FIO.format(dev=dev, seconds=seconds), timeout=300).stdout)
            return out["jobs"][0]["write"]["iops"]

        thin, lin = f"fio-thin-{self.tag}", f"fio-lin-{self.tag}"
        arr.run(f"lvcreate -q -V 1G -T {VG}/{POOL} -n {thin} && lvcreate -q -L 512M -n {lin} {VG} -y -Wy -Zy")
        try:
            for lv in (thin, lin):  # written once, so the first run does not measure provisioning
                arr.run(f"dd if=/dev/zero of=/dev/{VG}/{lv} bs=4M count=64 oflag=direct status=none", timeout=300)
            before = fio(f"/dev/{VG}/{thin}")
            linear = fio(f"/dev/{VG}/{lin}")
            arr.run(f"lvcreate -q -s -n {thin}-s {VG}/{thin} && lvcreate -q -s -L 512M -n {lin}-s {VG}/{lin}")
            after_thin = fio(f"/dev/{VG}/{thin}")
            after_classic = fio(f"/dev/{VG}/{lin}")
        finally:
            arr.run(f"lvremove -q -y {VG}/{thin}-s {VG}/{lin}-s {VG}/{thin} {VG}/{lin}", check=False)
        self.add(Figure("IOPS after a thin snapshot", after_thin, "iops", "thin, no snapshot", before))
        self.add(Figure("IOPS after a classic snapshot", after_classic, "iops", "linear, no snapshot", linear))

    def many_snapshots(self, count: int = 500) -> None:
        """The commit window and one `lvcreate -s` (what the agent's prepare runs) with the
        volume's 1st and its `count`th snapshot. The snapshots in between are scaffolding: made
        by one lvm process without metadata archives, which would only slow this set-up."""
        self.say(f"the 1st and the {count}th snapshot of one volume")
        (name,) = self.luns(["many"], 64 * MIB)
        first, first_lvcreate = self.array_commit([name]), self.raw_snapshots([name])
        quick = '--config "backup { archive = 0 backup = 0 }"'
        self.array.put("/tmp/many.lvm", "".join(f"lvcreate -q -s {quick} -n many-{self.tag}-{i} {VG}/lun-{name}\n"
                                                for i in range(count - 2)))
        started = time.monotonic()
        self.array.run("lvm < /tmp/many.lvm > /dev/null", timeout=5400)
        self.say(f"  ({count - 2} snapshots made in {time.monotonic() - started:.0f} s)")
        try:
            last, last_lvcreate = self.array_commit([name]), self.raw_snapshots([name])
        finally:
            self.array.run(f"lvremove -q -y {quick} --select 'lv_name=~^many-{self.tag}-' {VG}", timeout=5400)
        self.add(Figure(f"array commit window, {count}th snapshot", last, "s", "1st snapshot", first))
        self.add(Figure(f"one lvcreate -s (prepare), {count}th snapshot", last_lvcreate, "s",
                        "1st snapshot", first_lvcreate))

    def cleanup(self) -> list[str]:
        try:
            self.drop_snapshots(set(self.made))
            api_batch(self.array, [("DELETE", f"/v1/luns/{n}", None) for n in self.made])
        except Exception as e:  # noqa: BLE001 - reported by `make bench`
            return [f"deleting the LUNs made: {e}"]
        return []


PARTS = ("commit_window", "origin_size", "import_time", "iops", "many_snapshots")


def run(lab: Lab, say: Callable[[str], None] = print, only: tuple[str, ...] = PARTS) -> dict:
    bench = Bench(lab, say)
    started = time.monotonic()
    try:
        for part in PARTS:
            if part in only:
                getattr(bench, part)()
    finally:
        errors = bench.cleanup()
    return {"figures": [{**asdict(f), "ratio": f.ratio} for f in bench.figures],
            "seconds": time.monotonic() - started, "cleanup_errors": errors}
