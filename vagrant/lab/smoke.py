"""The lab smoke scenario: the real kernel stack end to end, no product code involved (but the
array's rule for the WWID of a LIO LUN, targets.lio.naa_wwid, which the scenario checks).

On `array`: a thin volume with a filesystem and data in the thin pool, a thin snapshot of it,
the origin changed afterwards, the snapshot exported with rtslib-fb as a read-only iSCSI LUN
whose unit serial we chose, masked to host-b's initiator with CHAP. On `host-b`: a wrong CHAP
secret is refused, the right one logs in with node.session.scan=manual, the LUN is scanned and
found by the WWID computed from the serial, and its data has the checksum the origin had at
snapshot time. On `host-a` (not masked): the login fails and no such disk appears.

Used by the system test (which asserts on the result) and by `make demo` (which narrates it).
Everything made is removed at the end, with cleanup errors collected, not stopping at the first.
"""
from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from targets.lio import naa_wwid

from .errors import LabError
from .lab import Lab
from .initiator import GUEST, Node, sessions_to

VG, POOL = "shadowlun", "pool"


@dataclass
class SmokeResult:
    run_id: str  # every object made is named smoke-<run_id>...
    target_iqn: str
    serial: str
    wwid: str
    origin_sha256_at_snapshot: str
    origin_sha256_after: str
    host_b_disk: dict
    host_b_sha256: str
    host_b_wrong_chap_refused: bool
    host_a_login_refused: bool
    host_a_sessions: str
    host_a_disk_present: bool
    seconds: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What the demo reports as failed expectations (the tests assert each one themselves)."""
        checks = [
            (self.host_b_sha256 == self.origin_sha256_at_snapshot,
             "host-b's data differs from the origin at snapshot time"),
            (self.origin_sha256_after != self.origin_sha256_at_snapshot, "the origin did not change"),
            (self.host_b_disk.get("wwid") == self.wwid, "host-b's disk has another WWID"),
            (self.host_b_disk.get("serial") == self.serial, "host-b's disk has another serial"),
            (self.host_b_wrong_chap_refused, "a wrong CHAP secret was accepted"),
            (self.host_a_login_refused and not self.host_a_sessions, "host-a logged in"),
            (not self.host_a_disk_present, "host-a sees the LUN"),
        ]
        return [msg for ok, msg in checks if not ok]


def run(lab: Lab, log: Callable[[str], None] = print) -> SmokeResult:
    array, host_a, host_b = lab.array, lab.vm("host-a"), lab.vm("host-b")
    run_id = uuid.uuid4().hex[:8]
    serial = uuid.uuid4().hex  # chosen by us before the first export; LIO cannot change it later
    wwid = naa_wwid(serial)
    origin, snap = f"smoke-{run_id}", f"smoke-{run_id}-snap"
    iqn = f"iqn.2026-11.lab.shadowlun.array:{origin}"
    portal = array.machine.addresses["san"]
    chap_user, chap_password = "host-b", secrets.token_hex(8)
    mnt = f"/mnt/{origin}"
    seconds: dict[str, float] = {}
    cleanups: list[tuple[str, Callable[[], object]]] = []

    def step(name: str, fn: Callable[[], object]) -> object:
        log(f"smoke: {name}")
        started = time.monotonic()
        out = fn()
        seconds[name] = round(time.monotonic() - started, 2)
        return out

    try:
        def make_origin() -> str:
            cleanups.append(("array: remove origin LV", lambda: array.run(
                f"umount {mnt} 2>/dev/null; rmdir {mnt}; lvremove -qy {VG}/{origin}", check=False)))
            array.run(f"lvcreate -q -V 256M -T {VG}/{POOL} -n {origin} && "
                      f"mkfs.ext4 -q /dev/{VG}/{origin} && mkdir -p {mnt} && "
                      f"mount /dev/{VG}/{origin} {mnt} && "
                      f"head -c 16M /dev/urandom > {mnt}/data.bin && echo '{origin}' > {mnt}/hello.txt && "
                      f"umount {mnt}")
            return array.run(f"mount -o ro /dev/{VG}/{origin} {mnt} && cat {mnt}/data.bin {mnt}/hello.txt "
                             f"| sha256sum && umount {mnt}").stdout.split()[0]

        origin_sha = step("array: thin volume with ext4 and 16 MiB of data", make_origin)

        def make_snapshot() -> None:
            cleanups.append(("array: remove snapshot LV", lambda: array.run(
                f"lvremove -qy {VG}/{snap}", check=False)))
            array.run(f"lvcreate -q -s -n {snap} {VG}/{origin} && lvchange -q -ay -K {VG}/{snap}")

        step("array: thin snapshot", make_snapshot)

        def change_origin() -> str:
            return array.run(f"mount /dev/{VG}/{origin} {mnt} && head -c 16M /dev/urandom > {mnt}/data.bin "
                             f"&& cat {mnt}/data.bin {mnt}/hello.txt | sha256sum && umount {mnt}"
                             ).stdout.split()[0]

        origin_after = step("array: origin overwritten after the snapshot", change_origin)

        initiator_b = host_b.run("sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi").stdout.strip()

        def export() -> dict:
            cleanups.append(("array: remove LIO export", lambda: array.run(
                ["python3", f"{GUEST}/lio_export.py", "unexport", "--name", origin, "--iqn", iqn], check=False)))
            return json.loads(array.run([
                "python3", f"{GUEST}/lio_export.py", "export", "--name", origin,
                "--dev", f"/dev/{VG}/{snap}", "--serial", serial, "--iqn", iqn, "--portal", portal,
                "--initiator", initiator_b, "--chap-user", chap_user, "--chap-password", chap_password,
            ]).stdout)

        exported = step(f"array: export snapshot (serial {serial}) to {initiator_b} with CHAP", export)
        if exported["serial"] != serial:
            raise LabError(f"LIO kept serial {exported['serial']!r}, not the chosen {serial!r}")

        node_b = Node(host_b, iqn, portal)
        cleanups.append(("host-b: remove disk, session and node", node_b.remove))

        def wrong_chap() -> bool:
            node_b.create(chap_user, "not-" + chap_password)
            return not node_b.login()

        wrong_refused = step("host-b: login with a wrong CHAP secret", wrong_chap)

        def login_b() -> dict:
            node_b.iscsiadm("-o", "update", "-n", "node.session.auth.password", "-v", chap_password)
            if not node_b.login():
                raise LabError(f"host-b could not log in to {iqn} with the right CHAP secret")
            return node_b.scan(0, wwid)

        disk = step(f"host-b: login (manual scan), find the LUN by WWID {wwid}", login_b)

        def read_b() -> str:
            cleanups.append(("host-b: unmount", lambda: host_b.run(f"umount {mnt}; rmdir {mnt}", check=False)))
            return host_b.run(f"mkdir -p {mnt} && mount -o ro,noload {disk['device']} {mnt} && "
                              f"cat {mnt}/data.bin {mnt}/hello.txt | sha256sum && umount {mnt}"
                              ).stdout.split()[0]

        host_b_sha = step("host-b: mount read-only, checksum the data", read_b)

        node_a = Node(host_a, iqn, portal)
        cleanups.append(("host-a: remove node", node_a.remove))

        def try_a() -> bool:
            node_a.create(chap_user, chap_password)  # even with host-b's secret
            return not node_a.login()

        a_refused = step("host-a (not masked): login attempt", try_a)
        a_sessions = sessions_to(host_a, iqn)
        a_disk = host_a.run(f"grep -lx {wwid} /sys/block/sd*/device/wwid || true").stdout.strip() != ""

        return SmokeResult(
            run_id=run_id, target_iqn=iqn, serial=serial, wwid=wwid, origin_sha256_at_snapshot=origin_sha, origin_sha256_after=origin_after,
            host_b_disk=disk, host_b_sha256=host_b_sha, host_b_wrong_chap_refused=wrong_refused,
            host_a_login_refused=a_refused, host_a_sessions=a_sessions, host_a_disk_present=a_disk,
            seconds=seconds,
        )
    finally:
        errors = []
        for what, fn in reversed(cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup collects errors, then reports them all
                errors.append(f"{what}: {e}")
        if errors:
            raise LabError("smoke cleanup failed:\n" + "\n".join(errors))
