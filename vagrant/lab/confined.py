"""A network namespace of the lab's own, with libvirtd inside, for the Vagrant lab.

libvirtd, the networks it makes (bridges, dnsmasq, firewall rules), the VMs' taps and the VMs
all live in a network namespace made here, so nothing appears in the machine's own namespace
and nothing can leave the machine (the namespace has no link out). A process holding the
namespace also holds a private mount namespace in which libvirt's state, runtime and
configuration directories are folders of the run directory, so nothing system-wide changes:
  - /run is a fresh tmpfs, and /etc/libvirt, /var/lib/libvirt (the storage pool),
    /var/log/libvirt and /var/cache/libvirt are bind mounts of folders under `dir`;
  - qemu.conf there says `namespaces = [ ]`, and /dev/kvm is hidden behind an empty file
    where QEMU cannot run under KVM (libvirtd re-probes a failing KVM for every define, ~50 s),
    which also makes the Vagrantfile choose libvirt's `qemu` driver.
Every command that talks to libvirtd (vagrant, virsh, ssh to the VMs) runs through `command`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .checks import until
from .errors import LabError
from .process import alive_pid

LIBVIRT_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
                "cache": "/var/cache/libvirt"}
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
QEMU_CONF_EXTRA = """
# shadowlun Vagrant lab: QEMU in this private mount namespace keeps it (no per-VM namespace),
# which a hidden /dev/kvm needs.
namespaces = [ ]
"""


def root_links() -> set[str]:
    """The links of the namespace this process runs in (the machine's own, for the tests)."""
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, text=True, capture_output=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


class Confinement:
    """The namespace, its holder process, virtlogd and libvirtd; `stop` removes all of it."""

    def __init__(self, name: str, dir: Path, hide_kvm: bool = True) -> None:
        self.name, self.dir, self.hide_kvm = name, dir, hide_kvm
        self.holder: subprocess.Popen | None = None

    @property
    def pidfiles(self) -> dict[str, Path]:
        return {d: self.dir / f"{d}.pid" for d in ("libvirtd", "virtlogd")}

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (network and mounts), as libvirtd sees the machine."""
        if self.holder is None:
            raise LabError("the Vagrant lab's namespace is not started")
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--", *argv]

    def _mount_script(self) -> str:
        lines = ["set -e", "mount -t tmpfs -o mode=0755 shadowlun-run /run"]
        for sub, target in LIBVIRT_DIRS.items():
            lines.append(f"mount --bind {self.dir / sub} {target}")
        if self.hide_kvm and Path("/dev/kvm").exists():
            lines.append(f"mount --bind {self.dir / 'no-kvm'} /dev/kvm")
        lines += [f"touch {self.dir / 'ready'}", "exec sleep infinity"]
        return "\n".join(lines)

    def _prepare_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in LIBVIRT_DIRS:
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        shutil.copytree("/etc/libvirt", self.dir / "etc", symlinks=True)
        for autostart in (self.dir / "etc" / "qemu" / "networks" / "autostart").glob("*"):
            autostart.unlink()  # libvirt's default NAT network stays off
        with open(self.dir / "etc" / "qemu.conf", "a") as conf:
            conf.write(QEMU_CONF_EXTRA)
        for sub in ("lib", "log", "cache"):
            (self.dir / sub).mkdir()
        (self.dir / "no-kvm").write_text("")
        (self.dir / "ready").unlink(missing_ok=True)

    def start(self) -> None:
        """Namespace, holder, virtlogd, libvirtd; bounded waits, libvirtd's log on failure."""
        missing = [t for t in ("ip", "nsenter", "libvirtd", "virtlogd", "virsh") if shutil.which(t) is None]
        if missing:
            raise LabError(f"Vagrant lab: missing {', '.join(missing)} (run `make setup`)")
        self._prepare_dirs()
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        # `ip netns exec` gives the command its own mount namespace, a slave of the machine's.
        self.holder = subprocess.Popen(["ip", "netns", "exec", self.name, "sh", "-c", self._mount_script()],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=open(self.dir / "holder.log", "w"))
        until(lambda: (self.dir / "ready").exists() or self.holder.poll() is not None, READY_TIMEOUT_S,
              lambda: "namespace holder not ready")
        if self.holder.poll() is not None:
            raise LabError(f"namespace {self.name}: mounts failed: {(self.dir / 'holder.log').read_text()}")
        log = self.dir / "log"
        subprocess.run(self.command(["virtlogd", "-d", "-p", str(self.pidfiles["virtlogd"])]), check=True)
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{log / 'libvirtd.log'}")
        subprocess.run(self.command(["libvirtd", "-d", "-p", str(self.pidfiles["libvirtd"])]), check=True, env=env)

        def answers() -> bool:
            return subprocess.run(self.command(["virsh", "-c", "qemu:///system", "version"]),
                                  capture_output=True, timeout=30).returncode == 0

        until(answers, READY_TIMEOUT_S, lambda: f"libvirtd in namespace {self.name} did not answer within "
              f"{READY_TIMEOUT_S} s; its log:\n{self._log_tail()}", interval=0.5)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / "log" / "libvirtd.log").read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no libvirtd log)"

    def stop(self) -> list[str]:
        """Whatever is left in the namespace is ended by PID (VMs that `vagrant destroy` did not
        take down, dnsmasq, libvirtd, virtlogd, the holder); the namespace is deleted. Errors
        are collected and returned, so one failure does not leave the rest behind."""
        errors: list[str] = []
        if not (Path("/run/netns") / self.name).exists():
            return errors
        ours = [alive_pid(p) for p in self.pidfiles.values()]
        listed = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        others = [int(p) for p in listed if int(p) not in ours and (not self.holder or int(p) != self.holder.pid)]
        for pid in [*others, *[p for p in ours if p], *([self.holder.pid] if self.holder else [])]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
                errors.append(f"pid {pid} in {self.name} ignored SIGTERM for {STOP_TIMEOUT_S} s; killed")
        if self.holder:
            self.holder.wait(timeout=STOP_TIMEOUT_S)
        r = subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, text=True)
        if r.returncode:
            errors.append(f"ip netns delete {self.name}: {r.stderr.strip()}")
        return errors


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of ours stays a zombie until waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
