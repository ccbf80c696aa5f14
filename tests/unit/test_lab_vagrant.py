"""Unit tests of vagrant/lab/vagrant_lab.py without Vagrant: how a `vagrant` command's output,
progress and failures are reported, and how a command reaches a machine (through sudo, quoted).
The real thing runs in tests/system/test_vagrant.py."""
from __future__ import annotations

import pytest

from lab.box import Box
from lab.errors import LabError
from lab.topology import load
from lab.vagrant_lab import VagrantLab, VagrantVM

# A stand-in for sudo on the far side: drops `-n` and runs the rest (sh -c LINE), so the quoting
# the machine's shell gets is checked for real.
FAKE_SSH = ("sh", "-c", 'sudo() { shift; "$@"; }; eval "$0"')


@pytest.fixture
def lab(tmp_path) -> tuple[VagrantLab, list[str]]:
    said: list[str] = []
    lab = VagrantLab(tmp_path, log=said.append)
    lab.box = Box(tmp_path / "box-0123")
    return lab, said


def fake_vagrant(lab: VagrantLab, script: str) -> None:
    """`vagrant ARGS` becomes `sh -c SCRIPT vagrant ARGS` (the namespace is not needed here)."""
    lab.confinement.command = lambda argv: ["sh", "-c", script, *argv]


def test_a_commands_output_is_its_own_and_its_status_lines_are_progress(lab):
    lab, said = lab
    lab.vagrant_log.write_text("an earlier command's output, ü\n")
    fake_vagrant(lab, 'echo "==> host-a: Booting VM (größe)..."; echo "    host-a:  -- Cpus: 1"; echo "Host host-a"')
    out = lab.vagrant("ssh-config")
    assert out == "==> host-a: Booting VM (größe)...\n    host-a:  -- Cpus: 1\nHost host-a\n"
    assert said == ["vagrant: host-a: Booting VM (größe)..."]
    assert "$ vagrant ssh-config" in lab.vagrant_log.read_text()


def test_a_failure_says_which_command_and_how_the_log_ends(lab):
    lab, _ = lab
    fake_vagrant(lab, 'echo "The box could not be found." >&2; exit 3')
    with pytest.raises(LabError, match=r"(?s)`vagrant up --provider=libvirt` failed \(exit 3\).*box could not"):
        lab.vagrant("up", "--provider=libvirt")


def test_a_command_past_its_time_is_ended_and_said(lab):
    lab, _ = lab
    fake_vagrant(lab, "sleep 30")
    with pytest.raises(LabError, match="`vagrant destroy -f` did not finish within 1 s"):
        lab.vagrant("destroy", "-f", timeout=1)


def test_commands_reach_the_machine_as_root_through_sudo_quoted_as_written(tmp_path):
    vm = VagrantVM(load().machines[0], FAKE_SSH)
    r = vm.run(["printf", "%s|", "it's", "a b", "$HOME"])
    assert r.ok and r.stdout == "it's|a b|$HOME|"
    target = tmp_path / "deep" / "file"
    vm.put(str(target), "content\n", mode="0600")
    assert target.read_text() == "content\n" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert not vm.run("exit 4", check=False).ok
