"""Unit tests of vagrant/lab/ssh.py: the ssh argv, and run() against a fake `ssh` on PATH."""
from __future__ import annotations

import os
import shlex

import pytest

from lab.errors import CommandFailed, LabError
from lab.ssh import HOST_KEY_ALIAS, SSH, Result

FAKE_SSH = """#!/bin/sh
# A stand-in for ssh: records its argv, echoes stdin and the remote command line, exits $FAKE_SSH_RC.
printf '%s\\n' "$@" > "$FAKE_SSH_ARGV"
for last; do :; done
if [ -n "$FAKE_SSH_CAT" ]; then cat; else printf 'out:%s\\n' "$last"; fi
printf 'err:%s\\n' "$last" >&2
[ -n "$FAKE_SSH_SLEEP" ] && exec sleep "$FAKE_SSH_SLEEP"
exit "${FAKE_SSH_RC:-0}"
"""


@pytest.fixture
def ssh(tmp_path):
    return SSH("host-b", 40022, tmp_path / "id_ed25519", tmp_path / "known_hosts", tmp_path / "ssh")


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ssh"
    exe.write_text(FAKE_SSH)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    argv_file = tmp_path / "argv"
    monkeypatch.setenv("FAKE_SSH_ARGV", str(argv_file))
    for var in ("FAKE_SSH_RC", "FAKE_SSH_CAT", "FAKE_SSH_SLEEP"):
        monkeypatch.delenv(var, raising=False)
    return argv_file


def _opts(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]


def test_argv_pins_the_host_key(ssh, tmp_path):
    opts = _opts(ssh.argv())
    assert "StrictHostKeyChecking=yes" in opts
    assert f"HostKeyAlias={HOST_KEY_ALIAS}" in opts and HOST_KEY_ALIAS == "shadowlun-lab"
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in opts
    assert not any(o.startswith("StrictHostKeyChecking=") and o != "StrictHostKeyChecking=yes" for o in opts)
    assert not any(o.startswith("UserKnownHostsFile=/dev/null") for o in opts)


def test_argv_uses_batch_mode_and_only_the_lab_key(ssh, tmp_path):
    argv = ssh.argv()
    opts = _opts(argv)
    assert "BatchMode=yes" in opts and "IdentitiesOnly=yes" in opts
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    assert argv[argv.index("-p") + 1] == "40022"
    assert any(o.startswith("ConnectTimeout=") for o in opts)
    assert f"ControlPath={tmp_path / 'ssh'}/%C" in opts


def test_argv_targets_root_on_loopback_last_after_extra_args(ssh):
    argv = ssh.argv("-O", "exit")
    assert argv[0] == "ssh"
    assert argv[-1] == "root@127.0.0.1"
    assert argv[-3:-1] == ["-O", "exit"]
    assert sum(a.endswith("@127.0.0.1") for a in argv) == 1


def test_run_returns_result_and_passes_the_command_as_one_argument(ssh, fake_ssh):
    r = ssh.run("echo hi && true")
    assert r == Result(0, "out:echo hi && true\n", "err:echo hi && true\n") and r.ok
    argv = fake_ssh.read_text().splitlines()
    assert argv == ssh.argv()[1:] + ["echo hi && true"]


def test_run_quotes_an_argv_for_the_remote_shell(ssh, fake_ssh):
    cmd = ["python3", "-c", "print('a b'); import sys", "$HOME; rm -rf /"]
    r = ssh.run(cmd)
    assert r.stdout == f"out:{shlex.join(cmd)}\n"
    assert shlex.split(r.stdout.removeprefix("out:")) == cmd


def test_run_raises_command_failed_on_non_zero(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_RC", "3")
    with pytest.raises(CommandFailed) as e:
        ssh.run("false")
    err = e.value
    assert isinstance(err, LabError)
    assert (err.vm, err.command, err.returncode) == ("host-b", "false", 3)
    assert err.stdout == "out:false\n" and err.stderr == "err:false\n"
    assert "host-b" in str(err) and "exited 3" in str(err) and "err:false" in str(err)


def test_run_with_check_false_returns_the_failure(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_RC", "7")
    r = ssh.run("false", check=False)
    assert r.returncode == 7 and not r.ok
    assert r.stdout == "out:false\n" and r.stderr == "err:false\n"


def test_run_feeds_text_input(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_CAT", "1")
    r = ssh.run("cat", input="hello\n")
    assert r.stdout == "hello\n" and isinstance(r.stdout, str)


def test_run_feeds_binary_input_and_decodes_output(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_CAT", "1")
    r = ssh.run("cat", input=b"bin\xffary")
    assert isinstance(r.stdout, str) and isinstance(r.stderr, str)
    assert r.stdout == "bin\ufffdary"


def test_run_without_input_does_not_inherit_stdin(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_CAT", "1")
    assert ssh.run("cat").stdout == ""  # stdin is /dev/null, not the test runner's terminal


def test_run_timeout_is_a_lab_error(ssh, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_SLEEP", "5")
    with pytest.raises(LabError, match="did not finish within") as e:
        ssh.run("sleep 100", timeout=0.3)
    assert not isinstance(e.value, CommandFailed)
