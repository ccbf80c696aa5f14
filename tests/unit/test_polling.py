"""provider.polling: the one bounded wait for work running elsewhere."""
from __future__ import annotations

import pytest

from provider import polling
from provider.contract.hresult import HResult, VssRuntimeError
from provider.polling import StillRunningError, poll


def test_reads_until_the_work_ends_and_reports_every_reading(monkeypatch):
    monkeypatch.setattr(polling.time, "sleep", lambda s: None)
    readings, seen = iter([10, 50, 100]), []
    assert poll(lambda: next(readings), lambda done: done < 100, 60, "copy", on_each=seen.append) == 100
    assert seen == [10, 50, 100]


def test_gives_up_at_the_deadline_with_the_last_reading(monkeypatch):
    now = iter(range(0, 1000, 10))
    monkeypatch.setattr(polling.time, "monotonic", lambda: next(now))
    monkeypatch.setattr(polling.time, "sleep", lambda s: None)
    with pytest.raises(StillRunningError) as e:
        poll(lambda: {"percent": 40}, lambda status: True, 25, "job j1")
    assert isinstance(e.value, VssRuntimeError) and e.value.hresult is HResult.VSS_E_PROVIDER_VETO
    assert (e.value.what, e.value.timeout_s, e.value.last) == ("job j1", 25, {"percent": 40})
    assert str(e.value) == "VSS_E_PROVIDER_VETO (0x80042306): job j1 still running after 25 s"
