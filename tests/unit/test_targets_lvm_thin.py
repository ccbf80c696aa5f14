"""Unit tests of targets.lvm_thin: the LVM backend answers the whole Backend protocol, and keeps
the array id as the VG's one tag. (The parts' tests drive it over FakeLvm throughout.)"""
from __future__ import annotations

import inspect

import pytest

from targets.backend import Backend
from targets.lvm_thin import ARRAY_TAG, LvmThin
from targets_fakes import FakeLvm

MEMBERS = [name for name, _ in inspect.getmembers(Backend, inspect.isfunction) if not name.startswith("_")]


@pytest.mark.parametrize("name", MEMBERS)
def test_every_backend_operation_is_there_with_its_parameters(name):
    ours = inspect.signature(getattr(LvmThin, name)).parameters
    assert list(ours) == list(inspect.signature(getattr(Backend, name)).parameters)


def test_the_array_id_is_the_vgs_one_array_tag():
    lvm = FakeLvm()
    backend = LvmThin(lvm)
    assert backend.array_id() is None
    backend.set_array_id("a" * 32, was=None)
    backend.set_array_id("b" * 32, was="a" * 32)
    assert backend.array_id() == "b" * 32 and lvm.tags == [f"{ARRAY_TAG}={'b' * 32}"]
    assert lvm.called("retag_vg")[-1] == ((f"{ARRAY_TAG}={'a' * 32}",), (f"{ARRAY_TAG}={'b' * 32}",))
