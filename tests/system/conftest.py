"""System tests run on the real stack in the lab VMs, booted once per test session.

A lab that cannot be built or booted fails every test that needs it, with the VM's console
in the error; it never skips. The lab's phase timings are printed at the end of the run.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from lab.lab import Lab, Timings

TIMINGS = Timings()
_SYSTEM_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _SYSTEM_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
    # Tests that boot machines of their own (the Vagrant lab) run before the shared lab boots,
    # so the two never share CI's two cores. A stable sort: the order is otherwise kept.
    items.sort(key=lambda item: _SYSTEM_DIR in Path(item.fspath).parents and "lab" in item.fixturenames)


@pytest.fixture(scope="session")
def lab(request):
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")

    def log(msg: str) -> None:
        """Live progress of a multi-minute boot, past pytest's output capture."""
        with capture.global_and_fixture_disabled():
            reporter.write_line(msg)

    with Lab.up(log=log) as running:
        TIMINGS.entries.extend(running.timings.entries)
        yield running


@pytest.fixture
def timed():
    """Record a scenario's duration in the end-of-run lab timings."""
    return TIMINGS.measure


@pytest.fixture
def timings():
    """The end-of-run lab timings, for figures measured elsewhere (e.g. inside the array)."""
    return TIMINGS


def pytest_terminal_summary(terminalreporter):
    if TIMINGS.entries:
        terminalreporter.section("lab timings")
        terminalreporter.write_line(TIMINGS.report())
