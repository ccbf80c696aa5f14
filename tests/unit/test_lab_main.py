"""Unit tests of `python -m lab` argument handling that needs no VM."""
from __future__ import annotations

from lab import __main__ as lab_main


def test_bench_refuses_an_unknown_part_before_booting_anything(capsys, monkeypatch):
    def no_lab(*a, **k):
        raise AssertionError("the lab must not start for bad input")

    monkeypatch.setattr(lab_main.Lab, "up", no_lab)
    assert lab_main.main(["bench", "--only", "commit_window,nope"]) == 2
    err = capsys.readouterr().err
    assert "no part nope" in err and "many_snapshots" in err
