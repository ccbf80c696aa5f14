"""One lab VM: a QEMU process booting a copy-on-write overlay of the lab image.

Direct kernel boot (the image's own Debian kernel and initrd), serial console to a file that
every failure report quotes, -no-reboot and panic=-1 so a dying guest ends its QEMU instead of
looping. NICs: SSH over QEMU user networking with restrict=on (a loopback-forwarded port and
nothing else), plus one NIC on each private switch (mgmt, san). The checkout is shared
read-only over virtio-9p at /shadowlun, so tests run the code under test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import accel as accel_mod
from .process import alive_pid
from .errors import LabError, VMFailed
from .image import Image
from .ssh import SSH, Result
from .switch import Switch
from .topology import CHECKOUT, Machine

SSH_MAC = "52:54:00:ee:00:01"
BOOT_TIMEOUT_S = {"kvm": 120, "tcg": 420}
STOP_TIMEOUT_S = 60
CONSOLE_TAIL_LINES = 60
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=5 systemd.show_status=auto"


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VM:
    machine: Machine
    run_dir: Path
    image: Image
    accel: str
    switches: dict[str, Switch]
    ssh_port: int = 0
    boots: int = field(default=0)

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def ssh(self) -> SSH:
        return SSH(self.name, self.ssh_port, self.image.ssh_key, self.run_dir / "known_hosts",
                   self.run_dir / "ssh")

    # -- process ---------------------------------------------------------------------------

    def qemu_argv(self) -> list[str]:
        m = self.machine
        argv = [
            accel_mod.QEMU, "-name", m.name,
            "-machine", f"q35,accel={self.accel}", "-cpu", accel_mod.CPU[self.accel],
            "-smp", str(m.cpus), "-m", str(m.memory_mib),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_CMDLINE,
            "-serial", f"file:{self.console_log}",
            "-pidfile", str(self.pidfile), "-daemonize",
            "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
        ]
        # The root disk first, so it is /dev/vda; data disks are found by serial, not order.
        for name, serial in [("root", "shadowlun-root")] + [(d.name, d.serial) for d in m.disks]:
            argv += ["-drive", f"file={self.dir / (name + '.qcow2')},if=none,id={name},format=qcow2,"
                               "cache=unsafe,discard=unmap",
                     "-device", f"virtio-blk-pci,drive={name},serial={serial}"]
        argv += [
            "-netdev", f"user,id=ssh,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=ssh,mac={SSH_MAC}",
        ]
        for net, switch in self.switches.items():
            argv += ["-netdev", f"vde,id={net},sock={switch.directory}",
                     "-device", f"virtio-net-pci,netdev={net},mac={m.macs[net]}"]
        argv += ["-virtfs", f"local,path={CHECKOUT},mount_tag=shadowlun,security_model=none,"
                            f"readonly=on,id=src"]
        return argv

    def create_disks(self) -> None:
        """Fresh overlays over the cached image, and empty data disks (sparse)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        img = ["qemu-img", "create", "-q", "-f", "qcow2"]
        subprocess.run([*img, "-b", str(self.image.rootfs), "-F", "raw", str(self.dir / "root.qcow2")],
                       check=True, capture_output=True)
        for disk in self.machine.disks:
            subprocess.run([*img, str(self.dir / f"{disk.name}.qcow2"), f"{disk.size_gib}G"],
                           check=True, capture_output=True)

    def pid(self) -> int | None:
        return alive_pid(self.pidfile)

    def start(self) -> None:
        if self.pid():
            return
        if not (self.dir / "root.qcow2").exists():
            self.create_disks()
        self.ssh_port = free_loopback_port()
        with open(self.console_log, "a") as con:
            con.write(f"\n===== lab: boot {self.boots + 1} of {self.name} ({self.accel}) =====\n")
        proc = subprocess.run(self.qemu_argv(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise VMFailed(self.name, f"QEMU failed to start: {proc.stderr.strip()}", self.console_tail())
        self.boots += 1
        self.save_state()

    def wait_ready(self, timeout: float | None = None) -> float:
        """Until SSH answers (bounded); returns seconds waited. A dead QEMU fails at once."""
        timeout = timeout or BOOT_TIMEOUT_S[self.accel]
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.pid():
                raise VMFailed(self.name, "QEMU exited while booting", self.console_tail())
            try:
                if self.ssh.run("true", check=False, timeout=20).ok:
                    return time.monotonic() - started
            except LabError:
                pass
            if time.monotonic() > deadline:
                raise VMFailed(self.name, f"no SSH after {timeout} s of boot", self.console_tail())
            time.sleep(1)

    def stop(self, graceful: bool = True) -> None:
        """Power off (guest shutdown first when graceful), bounded; kill QEMU after that."""
        pid = self.pid()
        if not pid:
            return
        if graceful:
            self.ssh.run("systemctl poweroff", check=False, timeout=20)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.5)
        self.ssh.close()
        if self.pid():
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid():
                os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def reboot(self) -> float:
        """A clean guest reboot keeping its disks (QEMU runs with -no-reboot, so restart it)."""
        self.stop(graceful=True)
        self.start()
        return self.wait_ready()

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    # -- state, so `python -m lab up` can leave a lab running for later test runs ---------

    def save_state(self) -> None:
        (self.dir / "state.json").write_text(json.dumps({"ssh_port": self.ssh_port, "boots": self.boots}))

    def load_state(self) -> None:
        state = json.loads((self.dir / "state.json").read_text())
        self.ssh_port, self.boots = state["ssh_port"], state["boots"]

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str | list[str], **kw) -> Result:
        try:
            return self.ssh.run(command, **kw)
        except LabError as e:
            if not self.pid():
                raise VMFailed(self.name, f"VM died: {e}", self.console_tail()) from e
            raise

    def put(self, path: str, content: str | bytes, mode: str = "0644") -> None:
        self.run(f"install -D -m {mode} /dev/stdin {path}", input=content)
