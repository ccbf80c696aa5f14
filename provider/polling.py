"""The one wait for work that runs elsewhere (a job on the array, the IVssAsync of a resync or of
full copies): read its status until it ends, report each reading, and give up at a deadline, so
that no wait for the array is unbounded. What to do with work still running at the deadline
(cancel it, or leave it) is the caller's decision.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from provider.contract.hresult import HResult, VssRuntimeError

_T = TypeVar("_T")


class StillRunningError(VssRuntimeError):
    """`what` still ran after `timeout_s` seconds; `last` is its last status."""

    HRESULT = HResult.VSS_E_PROVIDER_VETO

    def __init__(self, what: str, timeout_s: float, last: Any) -> None:
        super().__init__(self.HRESULT, f"{what} still running after {timeout_s:g} s")
        self.what, self.timeout_s, self.last = what, timeout_s, last


def poll(read: Callable[[], _T], running: Callable[[_T], bool], timeout_s: float, what: str, *,
         interval_s: float = 0.5, on_each: Callable[[_T], None] = lambda status: None) -> _T:
    """read() every `interval_s` until running(status) is false, and return that status; each
    status goes to on_each() first. StillRunningError once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = read()
        on_each(status)
        if not running(status):
            return status
        if time.monotonic() > deadline:
            raise StillRunningError(what, timeout_s, status)
        time.sleep(interval_s)
