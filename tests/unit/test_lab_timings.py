"""Unit tests of lab.lab: Timings, and Lab.prepare / is_running without VMs."""
from __future__ import annotations

import json
import os

from pathlib import Path

import pytest

from lab import accel as accel_mod
from lab import image as image_mod
from lab import lab as lab_mod
from lab.image import Image
from lab.lab import Lab, Timings
from lab.switch import Switch
from lab.vm import VM


def test_add_and_report_format():
    t = Timings()
    t.add("image", 12.345, "cache hit image-abc")
    t.add("provision", 3.0)
    assert t.entries == [("image", 12.345, "cache hit image-abc"), ("provision", 3.0, "")]
    lines = t.report().splitlines()
    assert lines[0] == f"  {'image':<28} {12.345:8.1f} s  cache hit image-abc"
    assert lines[0] == "  image                            12.3 s  cache hit image-abc"
    assert lines[1].rstrip() == "  provision                         3.0 s"


def test_report_of_nothing_is_empty():
    assert Timings().report() == ""


def test_measure_records_the_elapsed_time(monkeypatch):
    clock = iter([100.0, 102.5])
    monkeypatch.setattr(lab_mod.time, "monotonic", lambda: next(clock))
    t = Timings()
    with t.measure("boot", "kvm"):
        pass
    assert t.entries == [("boot", 2.5, "kvm")]


def test_measure_really_times():
    t = Timings()
    with t.measure("x"):
        sum(range(1000))
    (name, secs, note), = t.entries
    assert name == "x" and note == "" and 0 <= secs < 1


def test_timings_do_not_share_entries():
    a, b = Timings(), Timings()
    a.add("x", 1)
    assert b.entries == []


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    img = Image(tmp_path / "cache" / "image-0123456789abcdef")
    calls = {}

    def fake_ensure(suite, log):
        calls["suite"] = suite
        return img, True

    def fake_choose(kernel, cache_dir, log):
        calls["kernel"], calls["cache_dir"] = kernel, cache_dir
        return "tcg"

    monkeypatch.setattr(image_mod, "ensure_image", fake_ensure)
    monkeypatch.setattr(accel_mod, "choose", fake_choose)
    monkeypatch.setenv("SHADOWLUN_LAB_CACHE", str(tmp_path / "cache"))
    lab = Lab.prepare(tmp_path / "run", log=lambda msg: None)
    return lab, img, calls


def test_prepare_wires_image_accel_switches_and_vms(prepared, tmp_path):
    lab, img, calls = prepared
    assert calls["suite"] == "bookworm"
    assert calls["kernel"] == img.kernel
    assert calls["cache_dir"] == tmp_path / "cache"
    assert lab.run_dir == tmp_path / "run"
    assert lab.image == img and lab.accel == "tcg"
    assert set(lab.switches) == {"mgmt", "san", "san2"}
    for net, s in lab.switches.items():
        assert isinstance(s, Switch) and s.directory == tmp_path / "run" / f"switch-{net}"
    assert list(lab.vms) == ["array", "host-a", "host-b"]
    for vm in lab.vms.values():
        assert isinstance(vm, VM) and vm.accel == "tcg" and vm.image == img and vm.switches is lab.switches
    assert [v.name for v in lab.hosts] == ["host-a", "host-b"]
    assert lab.array.name == "array"
    names = [e[0] for e in lab.timings.entries]
    assert names == ["image", "accelerator probe"]
    assert "built image-0123456789abcdef" in lab.timings.entries[0][2]
    assert not lab.attached


def test_prepare_default_run_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOWLUN_LAB_RUN", str(tmp_path / "elsewhere"))
    assert lab_mod.default_run_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SHADOWLUN_LAB_RUN")
    mine = lab_mod.default_run_dir()
    assert mine.parent == Path("/tmp") and mine.name.startswith("shadowlun-lab-")
    # Another checkout gets another folder; the same checkout always the same one.
    monkeypatch.setattr(lab_mod.topology, "CHECKOUT", tmp_path / "other-clone")
    assert lab_mod.default_run_dir() != mine
    monkeypatch.undo()
    assert lab_mod.default_run_dir() == mine


def test_vm_lookup(prepared):
    lab, _, _ = prepared
    assert lab.vm("host-a").name == "host-a"
    with pytest.raises(KeyError, match="host-c.*array, host-a, host-b"):
        lab.vm("host-c")


def _write_running_state(lab, image_name=None, accel=None):
    lab.run_dir.mkdir(parents=True, exist_ok=True)
    (lab.run_dir / "lab.json").write_text(json.dumps(
        {"image": image_name or lab.image.path.name, "accel": accel or lab.accel}))
    for i, vm in enumerate(lab.vms.values()):
        vm.dir.mkdir(parents=True, exist_ok=True)
        (vm.dir / "state.json").write_text(json.dumps({"ssh_port": 40000 + i, "boots": 1}))
        vm.pidfile.write_text(str(os.getpid()))  # a live process of ours
    for s in lab.switches.values():
        s.pidfile.write_text(str(os.getpid()))


def test_is_running_false_without_state(prepared):
    lab, _, _ = prepared
    assert lab.is_running() is False


def test_is_running_true_and_loads_ports_when_all_alive(prepared):
    lab, _, _ = prepared
    _write_running_state(lab)
    assert lab.is_running() is True
    assert [vm.ssh_port for vm in lab.vms.values()] == [40000, 40001, 40002]
    assert all(vm.boots == 1 for vm in lab.vms.values())


@pytest.mark.parametrize("field", ["image", "accel"])
def test_is_running_false_for_another_image_or_accel(prepared, field):
    lab, _, _ = prepared
    kw = {"image_name": "image-other"} if field == "image" else {"accel": "kvm"}
    _write_running_state(lab, **kw)
    assert lab.is_running() is False


def test_is_running_false_when_a_vm_has_no_state(prepared):
    lab, _, _ = prepared
    _write_running_state(lab)
    (lab.vm("host-b").dir / "state.json").unlink()
    assert lab.is_running() is False


def test_is_running_false_when_a_vm_or_switch_is_dead(prepared):
    lab, _, _ = prepared
    _write_running_state(lab)
    lab.vm("host-a").pidfile.unlink()
    assert lab.is_running() is False
    _write_running_state(lab)
    lab.switches["san"].pidfile.write_text("not a pid")
    assert lab.is_running() is False


def _forbid_build_and_probe(monkeypatch):
    def no(*a, **kw):
        raise AssertionError("prepare(build=False) must not build the image or probe KVM")

    monkeypatch.setattr(image_mod, "ensure_image", no)
    monkeypatch.setattr(image_mod, "build", no)
    monkeypatch.setattr(accel_mod, "choose", no)


def test_prepare_without_build_names_the_cached_image_and_reads_accel_from_state(tmp_path, monkeypatch):
    import inspect

    if "build" not in inspect.signature(Lab.prepare).parameters:
        pytest.skip("Lab.prepare has no build= parameter in this version")
    _forbid_build_and_probe(monkeypatch)
    monkeypatch.setenv("SHADOWLUN_LAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    lab = Lab.prepare(run, log=lambda m: None, build=False)
    assert lab.image.path == tmp_path / "cache" / f"image-{image_mod.input_key('bookworm')}"
    assert lab.accel == "tcg" and lab.timings.entries == []
    run.mkdir()
    (run / "lab.json").write_text(json.dumps({"image": lab.image.path.name, "accel": "kvm"}))
    lab = Lab.prepare(run, log=lambda m: None, build=False)
    assert lab.accel == "kvm" and all(vm.accel == "kvm" for vm in lab.vms.values())
    assert not (tmp_path / "cache").exists()


def test_down_removes_each_vms_disks_and_keeps_consoles_and_other_directories(prepared):
    """Teardown deletes only the VMs' own disks: a switch's directory, which a stopping
    vde_switch removes on its own, is never listed (that race once failed a CI teardown)."""
    lab, _, _ = prepared
    for vm in lab.vms.values():
        vm.dir.mkdir(parents=True)
        (vm.dir / "root.qcow2").write_text("disk")
        vm.console_log.write_text("console")
    elsewhere = lab.run_dir / "switch-san" / "left.qcow2"
    elsewhere.parent.mkdir()
    elsewhere.write_text("not a VM's")
    lab.down()
    for vm in lab.vms.values():
        assert not (vm.dir / "root.qcow2").exists() and vm.console_log.read_text() == "console"
    assert elsewhere.exists()
