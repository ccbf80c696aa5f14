"""Unit tests of lab.checks.until, the bounded poll the lab tests wait with."""
from __future__ import annotations

import pytest

from lab.checks import until


def test_until_returns_once_the_condition_holds():
    answers = iter([False, False, True])
    until(lambda: next(answers), timeout=5, why=lambda: "never", interval=0)
    assert next(answers, "done") == "done"


def test_until_raises_with_why_asked_at_the_timeout():
    asked = []

    def why():
        asked.append(1)
        return "the VM said: nothing"

    with pytest.raises(TimeoutError, match="the VM said: nothing"):
        until(lambda: False, timeout=0.05, why=why, interval=0.01)
    assert asked == [1]
