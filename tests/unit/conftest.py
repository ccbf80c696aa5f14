"""Fixtures shared by the unit tests of the array side: the real Array over in-memory fakes."""
from __future__ import annotations

import pytest

from targets.store import Store
from targets_fakes import FakeLio, FakeLvm, make_array


@pytest.fixture
def lvm():
    return FakeLvm()


@pytest.fixture
def lio():
    return FakeLio()


@pytest.fixture
def store():
    return Store(":memory:")


@pytest.fixture
def arr(store, lvm, lio):
    return make_array(store, lvm, lio)
