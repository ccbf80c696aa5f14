"""Unit tests of vagrant/lab/vm.py: the QEMU command line, console tail, state, pid handling."""
from __future__ import annotations

import json
import os

import pytest

from lab import accel as accel_mod
from lab.errors import CommandFailed, VMFailed
from lab.image import Image
from lab.switch import Switch
from lab.topology import CHECKOUT, load
from lab.vm import KERNEL_CMDLINE, SSH_MAC, VM

TOPO = load()


def _vm(tmp_path, name, accel="kvm", port=45678):
    image = Image(tmp_path / "image")
    switches = {net: Switch(net, tmp_path / "run" / f"switch-{net}") for net in TOPO.networks}
    return VM(TOPO.machine(name), tmp_path / "run", image, accel, switches, ssh_port=port)


def _opt_values(argv, opt):
    return [argv[i + 1] for i, a in enumerate(argv) if a == opt]


def _kv(value):
    """QEMU option 'a,b=c,d=e' -> (first, {b: c, d: e})."""
    parts = value.split(",")
    return parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)


@pytest.mark.parametrize("name", TOPO.names)
@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_qemu_argv_basics(tmp_path, name, accel):
    vm = _vm(tmp_path, name, accel)
    argv = vm.qemu_argv()
    m = vm.machine
    assert argv[0] == accel_mod.QEMU
    assert "-no-reboot" in argv and "-nodefaults" in argv and "-daemonize" in argv
    assert _opt_values(argv, "-machine") == [f"q35,accel={accel}"]
    assert _opt_values(argv, "-cpu") == [accel_mod.CPU[accel]]
    assert _opt_values(argv, "-m") == [str(m.memory_mib)]
    assert _opt_values(argv, "-smp") == [str(m.cpus)]
    assert _opt_values(argv, "-kernel") == [str(tmp_path / "image" / "vmlinuz")]
    assert _opt_values(argv, "-initrd") == [str(tmp_path / "image" / "initrd.img")]
    assert _opt_values(argv, "-serial") == [f"file:{vm.console_log}"]
    assert _opt_values(argv, "-pidfile") == [str(vm.pidfile)]
    (append,) = _opt_values(argv, "-append")
    assert append == KERNEL_CMDLINE
    assert "panic=-1" in append.split() and "root=/dev/vda" in append.split()
    assert "console=ttyS0" in append.split()


@pytest.mark.parametrize("name", TOPO.names)
def test_qemu_argv_has_no_host_network_access(tmp_path, name):
    argv = _vm(tmp_path, name).qemu_argv()
    netdevs = _opt_values(argv, "-netdev")
    for nd in netdevs:
        kind, _ = _kv(nd)
        assert kind in ("user", "vde"), nd
    joined = " ".join(argv)
    for forbidden in ("tap", "bridge", "socket", "-net ", "-nic"):
        assert not any(_kv(nd)[0] == forbidden for nd in netdevs)
    assert "-netdev tap" not in joined and "-netdev bridge" not in joined
    assert "-nic" not in argv and "-net" not in argv


@pytest.mark.parametrize("name", TOPO.names)
def test_qemu_argv_ssh_nic_is_restricted_and_loopback_only(tmp_path, name):
    argv = _vm(tmp_path, name, port=45678).qemu_argv()
    users = [nd for nd in _opt_values(argv, "-netdev") if nd.startswith("user,")]
    assert len(users) == 1
    parts = users[0].split(",")
    assert "restrict=on" in parts and "id=ssh" in parts
    fwds = [p for p in parts if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:45678-:22"]
    assert f"virtio-net-pci,netdev=ssh,mac={SSH_MAC}" in _opt_values(argv, "-device")


@pytest.mark.parametrize("name", TOPO.names)
def test_qemu_argv_one_vde_nic_per_network_with_its_mac(tmp_path, name):
    vm = _vm(tmp_path, name)
    argv = vm.qemu_argv()
    vdes = {_kv(nd)[1]["id"]: _kv(nd)[1] for nd in _opt_values(argv, "-netdev") if nd.startswith("vde,")}
    assert set(vdes) == set(TOPO.networks)
    devices = _opt_values(argv, "-device")
    for net in TOPO.networks:
        assert vdes[net]["sock"] == str(tmp_path / "run" / f"switch-{net}")
        assert f"virtio-net-pci,netdev={net},mac={vm.machine.macs[net]}" in devices
    nics = [d for d in devices if d.startswith("virtio-net-pci,")]
    assert len(nics) == 1 + len(TOPO.networks)


@pytest.mark.parametrize("name", TOPO.names)
def test_qemu_argv_disks_root_first_then_data_disks_by_serial(tmp_path, name):
    vm = _vm(tmp_path, name)
    argv = vm.qemu_argv()
    drives = [_kv(d)[0].removeprefix("file=") for d in _opt_values(argv, "-drive")]
    blks = [_kv(d)[1] for d in _opt_values(argv, "-device") if d.startswith("virtio-blk-pci,")]
    expected = [("root", "shadowlun-root")] + [(d.name, d.serial) for d in vm.machine.disks]
    assert drives == [str(vm.dir / f"{n}.qcow2") for n, _ in expected]
    assert [(b["drive"], b["serial"]) for b in blks] == expected
    for d in _opt_values(argv, "-drive"):
        _, kv = _kv(d)
        assert kv["if"] == "none" and kv["format"] == "qcow2"
    # The root disk's device comes before any other block device, so it is /dev/vda.
    first_blk = next(i for i, a in enumerate(argv) if a.startswith("virtio-blk-pci,"))
    assert "drive=root," in argv[first_blk]


def test_array_has_the_pool_disk_with_its_serial(tmp_path):
    argv = _vm(tmp_path, "array").qemu_argv()
    pool = TOPO.machine("array").disks[0]
    assert f"virtio-blk-pci,drive=pool,serial={pool.serial}" in _opt_values(argv, "-device")
    assert any(d.startswith(f"file={tmp_path / 'run' / 'array' / 'pool.qcow2'},") for d in _opt_values(argv, "-drive"))


def test_hosts_have_only_the_root_disk(tmp_path):
    for name in ("host-a", "host-b"):
        assert len(_opt_values(_vm(tmp_path, name).qemu_argv(), "-drive")) == 1


@pytest.mark.parametrize("name", TOPO.names)
def test_qemu_argv_shares_the_checkout_read_only(tmp_path, name):
    (virtfs,) = _opt_values(_vm(tmp_path, name).qemu_argv(), "-virtfs")
    kind, kv = _kv(virtfs)
    parts = virtfs.split(",")
    assert kind == "local"
    assert "readonly=on" in parts
    assert kv["path"] == str(CHECKOUT) and kv["mount_tag"] == "shadowlun"


def test_vm_paths(tmp_path):
    vm = _vm(tmp_path, "host-a")
    assert vm.name == "host-a"
    assert vm.dir == tmp_path / "run" / "host-a"
    assert vm.console_log == vm.dir / "console.log"
    assert vm.pidfile == vm.dir / "qemu.pid"
    s = vm.ssh
    assert (s.vm, s.port, s.key) == ("host-a", 45678, tmp_path / "image" / "id_ed25519")
    assert s.known_hosts == tmp_path / "run" / "known_hosts" and s.control_dir == tmp_path / "run" / "ssh"


# -- console tail ----------------------------------------------------------------------------

def test_console_tail_returns_the_last_lines(tmp_path):
    vm = _vm(tmp_path, "host-b")
    vm.dir.mkdir(parents=True)
    vm.console_log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert vm.console_tail(3) == "line 97\nline 98\nline 99"
    assert vm.console_tail().splitlines() == [f"line {i}" for i in range(40, 100)]


def test_console_tail_of_short_log_and_bad_bytes(tmp_path):
    vm = _vm(tmp_path, "host-b")
    vm.dir.mkdir(parents=True)
    vm.console_log.write_bytes(b"boot\n\xff\xfe garbage\n")
    assert vm.console_tail(10) == "boot\n\ufffd\ufffd garbage"


def test_console_tail_placeholder_when_missing(tmp_path):
    assert _vm(tmp_path, "array").console_tail() == "(no console output)"


# -- state ---------------------------------------------------------------------------------------

def test_state_round_trips(tmp_path):
    vm = _vm(tmp_path, "array", port=41234)
    vm.dir.mkdir(parents=True)
    vm.boots = 3
    vm.save_state()
    assert json.loads((vm.dir / "state.json").read_text()) == {"ssh_port": 41234, "boots": 3}
    other = _vm(tmp_path, "array", port=0)
    other.load_state()
    assert (other.ssh_port, other.boots) == (41234, 3)


def test_load_state_missing_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        _vm(tmp_path, "array").load_state()


# -- pid -----------------------------------------------------------------------------------------

def test_pid(tmp_path):
    vm = _vm(tmp_path, "host-a")
    assert vm.pid() is None  # no pidfile
    vm.dir.mkdir(parents=True)
    vm.pidfile.write_text(f"{os.getpid()}\n")
    assert vm.pid() == os.getpid()
    vm.pidfile.write_text("garbage")
    assert vm.pid() is None


def test_pid_of_a_dead_process_is_none(tmp_path):
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    vm = _vm(tmp_path, "host-a")
    vm.dir.mkdir(parents=True)
    vm.pidfile.write_text(str(proc.pid))
    assert vm.pid() is None


def test_switch_pid_and_stop_without_a_process(tmp_path):
    s = Switch("san", tmp_path / "switch-san")
    assert s.pidfile == tmp_path / "switch-san.pid"
    assert s.pid() is None
    s.pidfile.write_text(str(os.getpid()))
    assert s.pid() == os.getpid()
    s.pidfile.write_text("")
    assert s.pid() is None
    s.stop()  # no live pid: nothing killed, pidfile removed
    assert not s.pidfile.exists()


def test_stop_without_a_running_vm_does_nothing(tmp_path):
    _vm(tmp_path, "host-a").stop()


# -- run: a dead VM is reported with its console ---------------------------------------------------

@pytest.fixture
def failing_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ssh"
    exe.write_text("#!/bin/sh\necho 'connection refused' >&2\nexit 255\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_run_on_a_dead_vm_raises_vm_failed_with_console(tmp_path, failing_ssh):
    vm = _vm(tmp_path, "host-b")
    vm.dir.mkdir(parents=True)
    vm.console_log.write_text("Kernel panic - not syncing\n")
    with pytest.raises(VMFailed) as e:
        vm.run("true")
    assert e.value.vm == "host-b" and "Kernel panic" in e.value.console_tail
    assert isinstance(e.value.__cause__, CommandFailed)


def test_run_on_a_live_vm_keeps_the_command_failure(tmp_path, failing_ssh):
    vm = _vm(tmp_path, "host-b")
    vm.dir.mkdir(parents=True)
    vm.pidfile.write_text(str(os.getpid()))
    with pytest.raises(CommandFailed) as e:
        vm.run("true")
    assert e.value.returncode == 255 and "connection refused" in e.value.stderr


def test_switch_stop_waits_until_the_process_has_exited(tmp_path):
    import subprocess
    import threading

    proc = subprocess.Popen(["sleep", "60"])
    threading.Thread(target=proc.wait, daemon=True).start()  # reaps it, as init would a daemon
    s = Switch("san", tmp_path / "switch-san")
    s.pidfile.write_text(str(proc.pid))
    s.stop()
    assert proc.poll() is not None and not s.pidfile.exists()
