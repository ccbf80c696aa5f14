"""Unit tests of the array's provisioning steps in vagrant/provision/machine.py that need no VM."""
from __future__ import annotations

import os

from provision import machine


def test_lios_state_directories_are_made_root_only_under_the_dbroot_rtslib_uses(tmp_path, monkeypatch):
    """pr/ (persistent reservations, APTPL) and alua/, under the dbroot rtslib-fb reports;
    made again as they were, and a second run changes nothing."""
    dbroot = tmp_path / "rtslib-fb-target"
    asked = []

    def run(*argv: str) -> str:
        asked.append(argv)
        return f"{dbroot}\n"

    monkeypatch.setattr(machine, "run", run)
    old = os.umask(0)
    try:
        machine.setup_target_dbroot()
        (dbroot / "pr" / "aptpl_abc").write_text("PR_REG_START: 0\n")
        machine.setup_target_dbroot()
    finally:
        os.umask(old)
    assert "RTSRoot().dbroot" in asked[0][-1]
    for sub in ("pr", "alua"):
        assert (dbroot / sub).is_dir() and (dbroot / sub).stat().st_mode & 0o777 == 0o700
    assert (dbroot / "pr" / "aptpl_abc").read_text() == "PR_REG_START: 0\n"  # kept
