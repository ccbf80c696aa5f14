"""The lab's machines brought up by Vagrant, as a Vagrant user does, for the story and its test.

    with VagrantLab.up() as lab:
        story.run(lab)

`vagrant up --provider=libvirt` with vagrant/Vagrantfile, unchanged but for the environment
variables that select the local box (box.py) and its direct kernel boot; libvirtd and the VMs
run confined (confined.py). The machines are reached as `vagrant ssh` reaches them, with the
configuration `vagrant ssh-config` prints, and offer what the story uses of the QEMU lab's
machines: a name, `run` (as root, through sudo) and `put`. Everything lives in one run
directory, Vagrant's own state included (VAGRANT_HOME, the .vagrant folder), so a run leaves
nothing behind but its logs (vagrant.log, console/NAME.log): `down` destroys the machines,
stops libvirtd, removes the namespace and the disk images, whatever failed before.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import box as box_mod
from . import checks, topology
from .confined import Confinement
from .errors import LabError
from .lab import ARRAY_ACCESS, Timings
from .ssh import DEFAULT_TIMEOUT_S, Result, run_remote

UP_TIMEOUT_S = 1800
DESTROY_TIMEOUT_S = 600
VAGRANT_CLI_TIMEOUT_S = 120
# Vagrant's per-machine status lines ("==> host-a: Booting VM..."), shown as progress;
# their indented details are not.
PROGRESS = re.compile(r"==> ([\w.-]+: [A-Z].*)")
LOG_TAIL_LINES = 60
BULK = ("vagrant.d", "libvirt/lib", "boot")   # what a finished run need not keep


def default_run_dir() -> Path:
    """$SHADOWLUN_VAGRANT_RUN, else one folder per checkout (beside the QEMU lab's)."""
    if os.environ.get("SHADOWLUN_VAGRANT_RUN"):
        return Path(os.environ["SHADOWLUN_VAGRANT_RUN"])
    return Path(f"/tmp/shadowlun-vagrant-{_checkout_tag()}")


def _checkout_tag() -> str:
    return hashlib.sha256(str(topology.CHECKOUT).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class VagrantVM:
    """One machine, over ssh as Vagrant configures it; commands run as root through sudo."""

    machine: topology.Machine
    ssh_argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.machine.name

    def run(self, command: str | list[str], *, check: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
            input: str | bytes | None = None) -> Result:
        line = command if isinstance(command, str) else shlex.join(command)
        return run_remote(self.name, list(self.ssh_argv), f"sudo -n sh -c {shlex.quote(line)}",
                          check=check, timeout=timeout, input=input)

    def put(self, path: str, content: str | bytes, mode: str = "0644") -> None:
        self.run(f"install -D -m {mode} /dev/stdin {path}", input=content)


class VagrantLab:
    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.run_dir, self.log = run_dir, log
        self.topo = topology.load()
        self.timings = Timings()
        self.confinement = Confinement(f"shadowlun-vg-{_checkout_tag()}", run_dir / "libvirt")
        self.box: box_mod.Box | None = None
        self.vms: dict[str, VagrantVM] = {}

    # -- the interface the story uses (as the QEMU lab's) ---------------------------------------

    def vm(self, name: str) -> VagrantVM:
        if name not in self.vms:
            raise KeyError(f"no Vagrant machine {name!r}; known: {', '.join(self.vms)}")
        return self.vms[name]

    @property
    def hosts(self) -> list[VagrantVM]:
        return [v for v in self.vms.values() if v.machine.role == "host"]

    @property
    def array(self) -> VagrantVM:
        return next(v for v in self.vms.values() if v.machine.role == "array")

    # -- Vagrant ----------------------------------------------------------------------------

    @property
    def vagrant_log(self) -> Path:
        return self.run_dir / "vagrant.log"

    def env(self) -> dict[str, str]:
        """Vagrant's environment: its state in the run directory, and the local box."""
        assert self.box is not None
        return dict(
            os.environ,
            VAGRANT_HOME=str(self.run_dir / "vagrant.d"),
            VAGRANT_CWD=str(topology.VAGRANT_DIR),
            VAGRANT_DOTFILE_PATH=str(self.run_dir / "dot-vagrant"),
            VAGRANT_CHECKPOINT_DISABLE="1",
            VAGRANT_NO_COLOR="1",
            VAGRANT_DEFAULT_PROVIDER="libvirt",
            SHADOWLUN_VAGRANT_BOX=self.box.name,
            SHADOWLUN_VAGRANT_KERNEL=str(self.run_dir / "boot" / self.box.kernel.name),
            SHADOWLUN_VAGRANT_INITRD=str(self.run_dir / "boot" / self.box.initrd.name),
            SHADOWLUN_VAGRANT_CONSOLE_DIR=str(self.run_dir / "console"),
        )

    def vagrant(self, *args: str, timeout: float = VAGRANT_CLI_TIMEOUT_S) -> str:
        """`vagrant ARGS` in the namespace, bounded; its output is appended to vagrant.log and
        its status lines are logged as progress. Failure: LabError with the log's tail."""
        with open(self.vagrant_log, "a") as out:
            out.write(f"\n$ vagrant {' '.join(args)}\n")
            start = out.tell()
            out.flush()
            proc = subprocess.Popen(self.confinement.command(["vagrant", *args]), env=self.env(),
                                    cwd=topology.VAGRANT_DIR, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            seen = start
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
                seen = self._progress(seen)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise LabError(f"`vagrant {' '.join(args)}` did not finish within {timeout:.0f} s; "
                               f"{self.vagrant_log} ends:\n{self.tail()}{self.consoles()}")
            self._progress(seen)
        text = self.vagrant_log.read_bytes()[start:].decode(errors="replace")  # start: a byte offset
        if proc.returncode:
            raise LabError(f"`vagrant {' '.join(args)}` failed (exit {proc.returncode}); "
                           f"{self.vagrant_log} ends:\n{self.tail()}{self.consoles()}")
        return text

    def _progress(self, offset: int) -> int:
        """Logs the status lines completed since byte `offset`; the offset after them."""
        with open(self.vagrant_log, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        done = chunk.rfind(b"\n") + 1
        for line in chunk[:done].decode(errors="replace").splitlines():
            if (status := PROGRESS.fullmatch(line)):
                self.log(f"vagrant: {status.group(1)}")
        return offset + done

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.vagrant_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no vagrant output)"

    def consoles(self, lines: int = 15) -> str:
        out = ""
        for console in sorted((self.run_dir / "console").glob("*.log")):
            text = "\n".join(console.read_text(errors="replace").splitlines()[-lines:])
            out += f"\n--- {console.stem} console (last lines) ---\n{text}"
        return out

    # -- lifecycle ----------------------------------------------------------------------------

    def boot(self) -> None:
        """Box (cached), namespace and libvirtd, `vagrant up`, then the machines as ssh reaches them."""
        with self.timings.measure("box"):
            self.box, built = box_mod.ensure_box(self.topo.suite, self.log)
        self.run_dir.mkdir(parents=True)
        self.run_dir.chmod(0o755)  # QEMU (libvirt's user) opens the kernel copies and consoles here
        (self.run_dir / "console").mkdir()
        (self.run_dir / "boot").mkdir()
        for f in (self.box.kernel, self.box.initrd):  # libvirt takes ownership of these: copies
            shutil.copy(f, self.run_dir / "boot" / f.name)
        with self.timings.measure("libvirtd (namespace)"):
            self.confinement.start()
        with self.timings.measure("box add"):
            self.vagrant("box", "add", "--name", self.box.name, str(self.box.file), timeout=600)
        self.log(f"vagrant: up {', '.join(self.topo.names)} from box {self.box.name} in {self.run_dir}")
        with self.timings.measure("up (all machines)", "libvirt"):
            self.vagrant("up", "--provider=libvirt", timeout=UP_TIMEOUT_S)
        config = self.run_dir / "ssh_config"
        config.write_text(self.vagrant("ssh-config"))
        control = self.run_dir / "ssh"
        control.mkdir()
        for m in self.topo.machines:
            argv = self.confinement.command([
                "ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C", "-o", "ControlPersist=300",
                "-o", "LogLevel=ERROR", m.name])
            self.vms[m.name] = VagrantVM(m, tuple(argv))
        with self.timings.measure("agent to hosts"):
            for host in self.hosts:
                if not host.run(f"test -s {ARRAY_ACCESS}", check=False).ok:
                    raise LabError(f"{host.name}: no {ARRAY_ACCESS} after `vagrant up` (the Vagrantfile's "
                                   f"triggers copy it from the array); {self.vagrant_log} ends:\n{self.tail()}")
                checks.wait_for_agent(host)

    def down(self) -> list[str]:
        """`vagrant destroy -f`, then libvirtd and the namespace go, whatever failed; the errors."""
        errors: list[str] = []
        if self.box is not None and self.confinement.holder is not None:
            try:
                with self.timings.measure("destroy"):
                    self.vagrant("destroy", "-f", timeout=DESTROY_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - collected; the namespace still goes below
                errors.append(f"vagrant destroy: {e}")
        errors += self.confinement.stop()
        for bulk in BULK:  # the box twice over (Vagrant's copy, libvirt's pool); logs stay
            shutil.rmtree(self.run_dir / bulk, ignore_errors=True)
        return errors

    @classmethod
    @contextmanager
    def up(cls, run_dir: Path | None = None, log: Callable[[str], None] = print) -> Iterator["VagrantLab"]:
        """A fresh Vagrant lab for the block, destroyed afterwards (errors of that raised, unless
        the block itself failed: then they are logged and the block's error goes on)."""
        run_dir = run_dir or default_run_dir()
        lab = cls(run_dir, log)
        lab.confinement.stop()       # a run killed before its cleanup left these behind
        shutil.rmtree(run_dir, ignore_errors=True)
        failed = True
        try:
            lab.boot()
            yield lab
            failed = False
        finally:
            errors = lab.down()
            if errors and failed:
                log("vagrant lab teardown: " + "; ".join(errors))
            elif errors:
                raise LabError("vagrant lab teardown: " + "; ".join(errors))
