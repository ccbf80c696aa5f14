"""Fault injection for the system tests: `crash_point(name)` kills the agent (SIGKILL, no
cleanup) where a test asked, through SHADOWLUN_ARRAY_CRASH_AT in the agent's environment.

The variable is read once, at import: a crash point also sits inside the commit window, where
it must cost a string comparison, not an environment lookup."""
from __future__ import annotations

import logging
import os
import signal

CRASH_ENV = "SHADOWLUN_ARRAY_CRASH_AT"
CRASH_AT = os.environ.get(CRASH_ENV)

log = logging.getLogger("shadowlun.array")


def crash_point(name: str) -> None:
    """Die here when the agent was started with SHADOWLUN_ARRAY_CRASH_AT=name."""
    if CRASH_AT == name:
        log.warning("crash point %s reached: killing the agent as asked by %s", name, CRASH_ENV)
        os.kill(os.getpid(), signal.SIGKILL)
