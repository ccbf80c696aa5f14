"""The requester CLI: arguments, exit codes that name the VSS code, JSON and human output."""
from __future__ import annotations

import errno
import json
from types import SimpleNamespace

import pytest

from provider import cli
from provider.cli.tables import RENDERERS, render
from provider.requester.coordinator import Coordinator
from provider.cli.errors import FileReadError, read_file
from provider.contract.hresult import HResult, VssUserError, vss_error

SET = "7f0c5d2e-3b1a-4c8d-9e6f-1a2b3c4d5e6f"
SNAP = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def empty_host(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "coordinator", lambda loaded=None: Coordinator(loaded or [], state_dir=tmp_path,
                                                                           list_disks=lambda: []))
    monkeypatch.setattr(cli, "providers", lambda: [])


def test_list_on_a_host_with_nothing_imported(empty_host, capsys):
    assert cli.main(["--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sets": []}
    assert cli.main(["list"]) == 0
    assert "no shadow copies are imported" in capsys.readouterr().out


@pytest.mark.parametrize("argv, code", [
    (["expose", SNAP, "/mnt/x"], HResult.VSS_E_OBJECT_NOT_FOUND),
    (["unexpose", SNAP], HResult.VSS_E_OBJECT_NOT_FOUND),
    (["break", SET], HResult.VSS_E_OBJECT_NOT_FOUND),
    (["delete", "--set", SET], HResult.VSS_E_OBJECT_NOT_FOUND),
    (["import", "/nonexistent/set.xml"], HResult.E_INVALIDARG),
    (["resync", "--bcd", "/nonexistent/set.xml"], HResult.E_INVALIDARG),
])
def test_refusals_exit_2_and_name_the_code(empty_host, capsys, argv, code):
    assert cli.main(["--json", *argv]) == 2
    err = json.loads(capsys.readouterr().err)
    assert err["hresult"] == code.hex and err["vss"] == code.name
    assert cli.main(argv) == 2
    assert f"{code.name} ({code.hex})" in capsys.readouterr().err


def test_runtime_failures_exit_1(monkeypatch, capsys):
    def broken(args):
        raise vss_error(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, "the provider server died")

    monkeypatch.setattr(cli, "cmd_list", broken)
    assert cli.main(["list"]) == 1
    assert "VSS_E_UNEXPECTED_PROVIDER_ERROR" in capsys.readouterr().err


def test_an_unreadable_file_the_user_named_is_their_error(empty_host, capsys, tmp_path):
    assert cli.main(["import", str(tmp_path)]) == 2  # a directory, not a document
    assert f"E_INVALIDARG (0x80070057): cannot read the document {tmp_path}: Is a directory" in capsys.readouterr().err
    with pytest.raises(FileReadError) as e:
        read_file(str(tmp_path / "absent.xml"), "the document")
    assert (e.value.path, e.value.what, e.value.hresult) == (str(tmp_path / "absent.xml"), "the document",
                                                             HResult.E_INVALIDARG)
    assert isinstance(e.value.error, FileNotFoundError) and isinstance(e.value, VssUserError)


def test_any_other_os_error_is_the_systems(monkeypatch, capsys):
    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/shadowlun/catalog.json")

    monkeypatch.setattr(cli, "cmd_list", full_disk)
    assert cli.main(["--json", "list"]) == 1
    err = json.loads(capsys.readouterr().err)
    assert err["vss"] == "VSS_E_UNEXPECTED" and "No space left on device" in err["message"]
    assert "catalog.json" in err["message"]


def test_a_file_in_the_way_of_an_expose_directory_is_the_callers_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    coord = Coordinator([], state_dir=tmp_path / "state", list_disks=lambda: [])
    coord.catalog.require_snapshot = lambda sid: (None, SimpleNamespace(exposed=None))
    coord._located = lambda entry: (None, {"device": "/dev/sdz1"})
    with pytest.raises(VssUserError, match="not an empty directory"):
        coord.expose(SNAP, str(blocker / "mnt"))


def test_delete_needs_exactly_one_choice(empty_host, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["delete", "--set", SET, "--all"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["delete"])


SAMPLES = {
    "create": {"set_id": SET, "context": 0x20, "provider_id": "p", "bcd": "/root/set.xml",
               "report": {"seconds": {"writes held": 1.5}}, "provider_server_pids": [1],
               "snapshots": [{"snapshot_id": SNAP, "volume": "/mnt/db",
                              "target_luns": [{"serial_number": "0f3c"}]}]},
    "import": {"set_id": SET, "status": "S_OK", "hresult": "0x00000000", "missing": [],
               "snapshots": [{"snapshot_id": SNAP, "volume": "/mnt/db", "devices": ["/dev/sdb"],
                              "device": "/dev/sdb1", "flags": ["read-only", "hidden"]}]},
    "list": {"sets": [{"set_id": SET, "provider_id": "p", "context": 0x20, "originating_host": "host-a",
                       "created": "t0", "imported": "t1",
                       "snapshots": [{"snapshot_id": SNAP, "volume": "/mnt/db", "exposed": "/mnt/shadow",
                                      "device": "/dev/sdb1", "flags": ["read-only"], "read_only": True}]}]},
    "expose": {"snapshot_id": SNAP, "device": "/dev/sdb1", "exposed": "/mnt/shadow"},
    "unexpose": {"snapshot_id": SNAP, "unexposed": "/mnt/shadow"},
    "break": {"set_id": SET, "writable": True, "masked": False, "volumes": [{"snapshot_id": SNAP, "volume": "/mnt/db",
                                                            "device": "/dev/sdb1"}]},
    "delete": {"deleted": [SNAP], "non_deleted": None},
    "resync": {"set_id": SET, "resynced": [{"snapshot_id": SNAP, "volume": "/mnt/db"}], "disks": ["/dev/sdb"]},
    "recover": {"aborted": [SET]},
    "register-provider": {"registered": "p", "changed": False, "udev_rule": "/etc/udev/rules.d/x.rules",
                          "udev_rule_changed": False},
}


def test_every_command_has_a_human_rendering():
    assert set(RENDERERS) == set(SAMPLES)


@pytest.mark.parametrize("command", sorted(SAMPLES))
def test_human_output_shows_the_ids_and_devices(command, capsys):
    from rich.console import Console

    render(command, SAMPLES[command], Console(width=300, soft_wrap=True))
    out = capsys.readouterr().out
    for value in (SAMPLES[command].get("set_id"), SAMPLES[command].get("snapshot_id"),
                  SAMPLES[command].get("device")):
        if value:
            assert value in out
    if command in ("import", "list", "break"):
        assert "/dev/sdb1" in out and SNAP in out


def test_the_command_exits_with_the_status_of_a_refusal(tmp_path):
    """`python3 -m provider.cli` as users and the lab run it: a refused request is exit 2 with the
    error's JSON on stderr (here a document that cannot be read, refused before anything runs)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "provider.cli", "--json", "import", str(tmp_path / "none.xml")],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert json.loads(done.stderr.strip().splitlines()[-1])["vss"] == "E_INVALIDARG"
