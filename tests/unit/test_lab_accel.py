"""Unit tests of vagrant/lab/accel.py: the KVM/TCG choice, without booting anything."""
from __future__ import annotations

import json
import os

import pytest

from lab import accel
from lab.errors import LabError

REAL_ACCESS = os.access


def _kvm_access(ok: bool):
    def access(path, mode, *a, **kw):
        if str(path) == "/dev/kvm":
            return ok
        return REAL_ACCESS(path, mode, *a, **kw)
    return access


def _no_probe(kernel):
    raise AssertionError("probe_kvm must not run")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("SHADOWLUN_LAB_ACCEL", raising=False)
    monkeypatch.setattr(accel, "qemu_version", lambda: "QEMU emulator version 7.2.0 (unit test)")


@pytest.mark.parametrize("forced", ["tcg", "kvm"])
def test_env_override_is_obeyed_without_probing(monkeypatch, tmp_path, forced):
    monkeypatch.setenv("SHADOWLUN_LAB_ACCEL", forced)
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    monkeypatch.setattr(accel.os, "access", _kvm_access(False))
    assert accel.choose(tmp_path / "vmlinuz", tmp_path / "cache", log=lambda m: None) == forced
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("bad", ["KVM", "hvf", "kvm,tcg", "xen"])
def test_invalid_override_raises(monkeypatch, tmp_path, bad):
    monkeypatch.setenv("SHADOWLUN_LAB_ACCEL", bad)
    with pytest.raises(LabError, match="SHADOWLUN_LAB_ACCEL"):
        accel.choose(tmp_path / "vmlinuz", tmp_path, log=lambda m: None)


def test_no_dev_kvm_access_means_tcg(monkeypatch, tmp_path):
    monkeypatch.setattr(accel.os, "access", _kvm_access(False))
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    logs = []
    assert accel.choose(tmp_path / "vmlinuz", tmp_path / "cache", log=logs.append) == "tcg"
    assert any("TCG" in m for m in logs)


@pytest.mark.parametrize("works, expected", [(True, "kvm"), (False, "tcg")])
def test_probe_answer_is_cached_and_reused(monkeypatch, tmp_path, works, expected):
    monkeypatch.setattr(accel.os, "access", _kvm_access(True))
    probed = []

    def probe(kernel):
        probed.append(kernel)
        return works, "because"

    monkeypatch.setattr(accel, "probe_kvm", probe)
    cache = tmp_path / "cache"
    assert accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None) == expected
    assert probed == [tmp_path / "vmlinuz"]
    (cached,) = cache.glob("accel-*.json")
    assert json.loads(cached.read_text()) == {"accel": expected, "why": "because"}

    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    assert accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None) == expected


def test_cached_answer_file_is_used_without_probing(monkeypatch, tmp_path):
    monkeypatch.setattr(accel.os, "access", _kvm_access(True))
    monkeypatch.setattr(accel, "probe_kvm", lambda k: (True, "probe"))
    cache = tmp_path / "cache"
    accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None)
    (cached,) = cache.glob("accel-*.json")
    # Whatever the file says wins: the probe is not run again.
    cached.write_text(json.dumps({"accel": "tcg", "why": "recorded earlier"}))
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    logs = []
    assert accel.choose(tmp_path / "vmlinuz", cache, log=logs.append) == "tcg"
    assert logs == ["lab: accelerator tcg (recorded earlier)"]


def test_cache_key_depends_on_qemu_and_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(accel.os, "access", _kvm_access(True))
    monkeypatch.setattr(accel, "probe_kvm", lambda k: (True, "ok"))
    cache = tmp_path / "cache"
    accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None)
    monkeypatch.setattr(accel, "qemu_version", lambda: "QEMU emulator version 9.0.0")
    accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None)
    monkeypatch.setattr(accel.platform, "release", lambda: "0.0.0-unit-test")
    accel.choose(tmp_path / "vmlinuz", cache, log=lambda m: None)
    assert len(list(cache.glob("accel-*.json"))) == 3


def test_cpu_model_per_accel():
    assert accel.CPU == {"kvm": "host", "tcg": "max"}


def test_qemu_version_missing_binary_is_a_lab_error(monkeypatch):
    monkeypatch.undo()  # the autouse fixture replaced qemu_version
    monkeypatch.setattr(accel, "QEMU", "shadowlun-no-such-qemu-binary")
    with pytest.raises(LabError, match="make setup"):
        accel.qemu_version()
