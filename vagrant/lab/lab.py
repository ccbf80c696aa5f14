"""The whole lab: image, accelerator, private switches and the three VMs, up and down.

    with Lab.up() as lab:
        lab.vm("host-b").run("iscsiadm -m session")

A lab left running by `python -m lab up` is attached to instead of booted again (and then left
running), which keeps the edit-test loop short; tests always get provisioned VMs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provider.hardware.array_client import ACCESS_FILE

from . import accel as accel_mod
from . import image as image_mod
from . import topology
from .checks import until
from .errors import LabError
from .switch import Switch
from .vm import VM

PROVISION_TIMEOUT_S = 300
AGENT_TIMEOUT_S = 90
ARRAY_ACCESS = str(ACCESS_FILE)  # a host's own, from the array's access/<host>.json
HOST_ACCESS_DIR = "/etc/shadowlun/access"


def default_run_dir() -> Path:
    """$SHADOWLUN_LAB_RUN, else one folder per checkout: the VMs mount that checkout, so a lab
    of another clone (a CI run beside a developer's lab) is never attached to or clobbered."""
    if os.environ.get("SHADOWLUN_LAB_RUN"):
        return Path(os.environ["SHADOWLUN_LAB_RUN"])
    tag = hashlib.sha256(str(topology.CHECKOUT).encode()).hexdigest()[:8]
    return Path(f"/tmp/shadowlun-lab-{tag}")


@dataclass
class Timings:
    """Named durations of the lab's phases, printed so CI runs can be compared."""

    entries: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, seconds: float, note: str = "") -> None:
        self.entries.append((name, seconds, note))

    @contextmanager
    def measure(self, name: str, note: str = ""):
        started = time.monotonic()
        yield
        self.add(name, time.monotonic() - started, note)

    def report(self) -> str:
        return "\n".join(f"  {name:<28} {secs:8.1f} s  {note}" for name, secs, note in self.entries)


@dataclass
class Lab:
    run_dir: Path
    topo: topology.Topology
    image: image_mod.Image
    accel: str
    vms: dict[str, VM]
    switches: dict[str, Switch]
    timings: Timings
    attached: bool = False

    def vm(self, name: str) -> VM:
        if name not in self.vms:
            raise KeyError(f"no lab VM {name!r}; known: {', '.join(self.vms)}")
        return self.vms[name]

    @property
    def hosts(self) -> list[VM]:
        return [v for v in self.vms.values() if v.machine.role == "host"]

    @property
    def array(self) -> VM:
        return next(v for v in self.vms.values() if v.machine.role == "array")

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, run_dir: Path | None = None, log: Callable[[str], None] = print,
                build: bool = True) -> "Lab":
        """Image (built or from cache) and accelerator; no VM started yet. Without `build`,
        only enough to look at or stop a lab that is already running."""
        run_dir = run_dir or default_run_dir()
        topo = topology.load()
        timings = Timings()
        if build:
            started = time.monotonic()
            image, built = image_mod.ensure_image(topo.suite, log)
            timings.add("image", time.monotonic() - started,
                        f"{'built' if built else 'cache hit'} {image.path.name}")
            with timings.measure("accelerator probe"):
                accel = accel_mod.choose(image.kernel, image_mod.cache_root(), log)
        else:
            image = image_mod.Image(image_mod.cache_root() / f"image-{image_mod.input_key(topo.suite)}")
            state = run_dir / "lab.json"
            accel = json.loads(state.read_text())["accel"] if state.exists() else "tcg"
        switches = {net: Switch(net, run_dir / f"switch-{net}") for net in topo.networks}
        vms = {m.name: VM(m, run_dir, image, accel, switches) for m in topo.machines}
        return cls(run_dir, topo, image, accel, vms, switches, timings)

    def _state_file(self) -> Path:
        return self.run_dir / "lab.json"

    def is_running(self) -> bool:
        """A lab of this image already up in run_dir (all VMs alive)?"""
        try:
            state = json.loads(self._state_file().read_text())
        except FileNotFoundError:
            return False
        if state.get("image") != self.image.path.name or state.get("accel") != self.accel:
            return False
        for vm in self.vms.values():
            try:
                vm.load_state()
            except FileNotFoundError:
                return False
        return all(vm.pid() for vm in self.vms.values()) and all(s.pid() for s in self.switches.values())

    def boot(self, log: Callable[[str], None] = print) -> None:
        """Fresh lab: new overlays, switches, all VMs booted in parallel, then provisioned."""
        self.down(quiet=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        (self.run_dir / "ssh").mkdir(parents=True)
        (self.run_dir / "known_hosts").write_text(f"shadowlun-lab {self.image.host_key}\n")
        for s in self.switches.values():
            s.start()
        log(f"lab: booting {', '.join(self.vms)} ({self.accel}) in {self.run_dir}")
        with self.timings.measure("boot (all VMs to SSH)", self.accel):
            for vm in self.vms.values():
                vm.start()
            for vm in self.vms.values():
                secs = vm.wait_ready()
                log(f"lab: {vm.name} up after {secs:.0f} s")
        with self.timings.measure("provision (all VMs)"):
            with ThreadPoolExecutor(len(self.vms)) as pool:
                for vm, fut in [(vm, pool.submit(self.provision, vm)) for vm in self.vms.values()]:
                    fut.result()
                    log(f"lab: {vm.name} provisioned")
        with self.timings.measure("array agent to hosts"):
            self.share_array_access()
        self._state_file().write_text(json.dumps({"image": self.image.path.name, "accel": self.accel}))

    def provision(self, vm: VM) -> None:
        """The same per-machine provisioning the Vagrantfile runs."""
        vm.run("test -f /shadowlun/pyproject.toml || "
               "{ echo 'checkout not mounted at /shadowlun (virtio-9p)' >&2; exit 1; }")
        vm.run(["python3", "/shadowlun/vagrant/provision/machine.py", "setup", vm.name],
               timeout=PROVISION_TIMEOUT_S)
        # The checkout's bytecode, kept under the image's pycache prefix (image-customize.sh), as
        # an installed package has it: no command measured later compiles the product first.
        vm.run("python3 -m compileall -q /shadowlun/provider /shadowlun/targets >/dev/null",
               timeout=PROVISION_TIMEOUT_S)

    def share_array_access(self) -> None:
        """Give each host its own access file (the agent's URL and certificate, the host's token
        and CHAP credentials), which the agent writes at its start, as an admin would; then
        wait, bounded, until every host gets an answer from the agent."""
        def journal() -> str:
            return self.array.run("journalctl -u shadowlun-array-agent --no-pager -n 40", check=False).stdout

        deadline = time.monotonic() + AGENT_TIMEOUT_S
        for host in self.hosts:
            own = f"{HOST_ACCESS_DIR}/{host.name}.json"
            until(lambda: self.array.run(f"test -s {own}", check=False).ok, deadline - time.monotonic(),
                  lambda: f"array: no {own} after {AGENT_TIMEOUT_S} s (the agent writes it when it registers "
                          f"{host.name}); agent journal:\n{journal()}")
            host.put(ARRAY_ACCESS, self.array.run(f"cat {own}").stdout, mode="0600")
        for host in self.hosts:
            until(lambda: host.run("python3 -m provider.hardware.array_client GET /v1/pool", check=False).ok,
                  deadline - time.monotonic(),
                  lambda: f"{host.name}: no answer from the array agent after {AGENT_TIMEOUT_S} s; "
                          f"agent journal:\n{journal()}")

    def down(self, quiet: bool = False) -> None:
        """Stop every VM and switch; errors are collected so one stuck VM does not keep the rest up."""
        errors = []
        for vm in self.vms.values():
            try:
                vm.stop(graceful=False)
            except Exception as e:  # noqa: BLE001 - collected, reported below
                errors.append(f"{vm.name}: {e}")
        for s in self.switches.values():
            s.stop()
        self._state_file().unlink(missing_ok=True)
        # A stopped lab is never resumed (boot starts afresh); keep the console logs only. Each
        # VM's own directory: a glob over run_dir would also list the switches' directories,
        # which a stopping vde_switch removes under it.
        for vm in self.vms.values():
            for disk in vm.dir.glob("*.qcow2"):
                disk.unlink(missing_ok=True)
        if errors and not quiet:
            raise LabError("lab teardown: " + "; ".join(errors))

    @classmethod
    @contextmanager
    def up(cls, run_dir: Path | None = None, log: Callable[[str], None] = print, keep: bool = False):
        """Attach to a running lab, or boot one and tear it down on exit (unless keep)."""
        lab = cls.prepare(run_dir, log)
        lab.attached = lab.is_running()
        if lab.attached:
            log(f"lab: attached to the running lab in {lab.run_dir}")
        else:
            try:
                lab.boot(log)
            except BaseException:
                lab.down(quiet=True)
                raise
        try:
            yield lab
        finally:
            if not (lab.attached or keep):
                lab.down()
