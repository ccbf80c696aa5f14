"""vagrant/Vagrantfile stays in step with vagrant/machines.json and the shared provisioning.

Without running Vagrant. The text checks always run. With `ruby` on PATH the Vagrantfile is
also evaluated against a stand-in for Vagrant's configuration object that records every call,
for the real topology and for an edited one, so what it would configure is compared with what
machines.json says; with `vagrant` on PATH, `vagrant validate` runs on a copy too.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = CHECKOUT / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"
MACHINES_FILE = VAGRANT_DIR / "machines.json"
PROVISION = VAGRANT_DIR / "provision"
GUEST_CHECKOUT = "/shadowlun"  # where the QEMU lab mounts the checkout, and Vagrant syncs it

RUBY = shutil.which("ruby")
VAGRANT = shutil.which("vagrant")
needs_ruby = pytest.mark.skipif(
    RUBY is None, reason="ruby is not on PATH (apt-get install ruby): Vagrantfile not evaluated")


@pytest.fixture(scope="module")
def text() -> str:
    return VAGRANTFILE.read_text()


@pytest.fixture(scope="module")
def code(text) -> str:
    """The Vagrantfile without its comment lines (interpolations like "#{x}" stay)."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def topology() -> dict:
    return json.loads(MACHINES_FILE.read_text())


# --- the text: where the topology comes from ------------------------------------------------

def test_reads_machines_json_beside_itself(code):
    assert re.search(r'File\.join\(\s*__dir__\s*,\s*"machines\.json"\s*\)', code)
    assert "JSON.parse" in code
    assert re.search(r'File\.expand_path\(\s*"\.\."\s*,\s*__dir__\s*\)', code), "checkout = parent of vagrant/"


@pytest.mark.parametrize("key", ["box", "networks", "cidr", "machines", "name", "memory_mib", "cpus",
                                 "addresses", "macs", "disks", "size_gib", "serial"])
def test_takes_every_topology_field_from_the_json(code, key):
    assert re.search(rf"""\[\s*["']{key}["']\s*\]""", code), f'machines.json key "{key}" is not read'


def test_hard_codes_no_machine_name_address_mac_serial_or_box(text, code, topology):
    for m in topology["machines"]:
        assert not re.search(rf"(?<![\w-]){re.escape(m['name'])}(?![\w-])", code), m["name"]
        for mac in m["macs"].values():
            for form in (mac, mac.replace(":", "")):
                assert form.lower() not in text.lower(), mac
        for disk in m["disks"]:
            assert disk["serial"] not in text
    assert topology["box"] not in text
    nets = [ipaddress.ip_network(n["cidr"]) for n in topology["networks"].values()]
    for literal in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text):
        assert not any(ipaddress.ip_address(literal) in net for net in nets), literal
    for spec in topology["networks"].values():
        assert spec["cidr"] not in text


# --- the text: networks, checkout, provisioning ---------------------------------------------

def test_networks_are_left_to_machine_py_with_macs_per_provider(code):
    assert "auto_config: false" in code
    assert re.search(r"""mac:\s""", code), "libvirt takes the MAC as in machines.json"
    assert re.search(r"""virtualbox__mac:.*delete\(\s*["']:["']\s*\)""", code), \
        "VirtualBox needs the MAC without colons"


def test_checkout_is_rsynced_to_shadowlun_and_the_default_share_is_off(code):
    assert re.search(r'synced_folder\s+"\."\s*,\s*"/vagrant"\s*,\s*disabled:\s*true', code)
    assert re.search(r'synced_folder\s+CHECKOUT\s*,\s*SHADOWLUN\s*,\s*type:\s*"rsync"', code)
    assert re.search(rf'SHADOWLUN\s*=\s*"{GUEST_CHECKOUT}"', code)


def test_pool_disk_carries_its_serial_on_both_providers(code):
    assert re.search(r'libvirt\.storage\s+:file,.*serial:\s*disk\["serial"\]', code)
    assert re.search(r"VBoxInternal/Devices/ahci/0/Config/Port#\{port\}/SerialNumber", code)


def test_provisions_with_common_sh_then_machine_py_setup(code):
    common = code.find('path: "provision/common.sh"')
    machine = code.find("/vagrant/provision/machine.py setup #{name}")
    assert common != -1 and machine != -1 and common < machine
    assert "/vagrant/provision/packages.txt" in code


def test_the_provisioning_it_calls_exists_as_called():
    assert (PROVISION / "common.sh").is_file() and (PROVISION / "packages.txt").is_file()
    # common.sh takes the package list as its first argument (Vagrant uploads it alone).
    assert re.search(r"packages_file=\$\{1:-", (PROVISION / "common.sh").read_text())
    out = subprocess.run([sys.executable, str(PROVISION / "machine.py"), "setup", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "name" in out.stdout and "--machines" in out.stdout


@pytest.mark.skipif(RUBY is None, reason="ruby is not on PATH (apt-get install ruby): syntax not checked")
def test_ruby_accepts_it():
    out = subprocess.run([RUBY, "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Syntax OK" in out.stdout, out.stderr


# --- evaluated: what it would configure, against machines.json --------------------------------

# A stand-in for Vagrant: every call on the configuration object, and on the objects handed to
# its blocks, is recorded as {"on": path, "method", "args", "kw"}. A block's objects are named
# after the call, e.g. config.vm.define(NAME)#0 and ...vm.provider(libvirt)#1 (the override).
HARNESS = r"""
require "json"
CALLS = []
class Recorder
  def initialize(path)
    @path = path
  end

  def method_missing(meth, *args, **kw, &blk)
    CALLS << { "on" => @path, "method" => meth.to_s, "args" => args, "kw" => kw }
    child = "#{@path}.#{meth}"
    child += "(#{args.first})" if blk && !args.empty?
    blk.call(Recorder.new("#{child}#0"), Recorder.new("#{child}#1")) if blk
    Recorder.new(child)
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  def self.configure(_version)
    yield Recorder.new("config")
  end
end

load ARGV[0]
puts JSON.generate(CALLS)
"""


def _edited(topology: dict) -> dict:
    """Another topology: a fourth machine with two disks, other box, sizes and addresses."""
    t = copy.deepcopy(topology)
    t["box"] = "example/other-box"
    t["machines"][0]["memory_mib"] += 512
    t["machines"][0]["cpus"] += 1
    t["machines"][0]["disks"][0]["serial"] = "renamed-pool"
    t["machines"].append({
        "name": "host-z", "role": "host", "memory_mib": 640, "cpus": 3,
        "addresses": {"mgmt": "10.88.0.77", "san": "10.87.0.77"},
        "macs": {"mgmt": "52:54:00:88:00:4d", "san": "52:54:00:87:00:4d"},
        "disks": [{"name": "scratch", "size_gib": 2, "serial": "scratch-1"},
                  {"name": "spare", "size_gib": 3, "serial": "spare-2"}],
    })
    return t


def _evaluate(tmp_path: Path, topology: dict) -> subprocess.CompletedProcess:
    """Evaluate a copy of the Vagrantfile beside `topology` (so no real disk image is seen)."""
    vdir = tmp_path / "checkout" / "vagrant"
    vdir.mkdir(parents=True)
    shutil.copy(VAGRANTFILE, vdir / "Vagrantfile")
    (vdir / "machines.json").write_text(json.dumps(topology))
    (tmp_path / "harness.rb").write_text(HARNESS)
    return subprocess.run([RUBY, str(tmp_path / "harness.rb"), str(vdir / "Vagrantfile")],
                          capture_output=True, text=True, timeout=60)


def _record(tmp_path: Path, topology: dict) -> tuple[list[dict], Path]:
    out = _evaluate(tmp_path, topology)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), tmp_path / "checkout" / "vagrant"


def _calls(calls, on, method):
    return [c for c in calls if c["on"] == on and c["method"] == method]


def _guest_path_to_host(path: str) -> Path:
    assert path.startswith(GUEST_CHECKOUT + "/"), path
    return CHECKOUT / path[len(GUEST_CHECKOUT) + 1:]


@pytest.fixture(params=["machines.json", "edited"])
def recorded(request, tmp_path, topology):
    if RUBY is None:
        pytest.skip("ruby is not on PATH (apt-get install ruby): Vagrantfile not evaluated")
    topo = topology if request.param == "machines.json" else _edited(topology)
    calls, vdir = _record(tmp_path, topo)
    return topo, calls, vdir


def test_defines_exactly_the_machines_of_the_json(recorded):
    topo, calls, _ = recorded
    assert [c["args"][0] for c in _calls(calls, "config.vm", "define")] == \
        [m["name"] for m in topo["machines"]]
    for m in topo["machines"]:
        vm = f"config.vm.define({m['name']})#0.vm"
        assert [c["args"] for c in _calls(calls, vm, "hostname=")] == [[m["name"]]]
        boxes = _calls(calls, "config.vm", "box=") + _calls(calls, vm, "box=")
        assert [c["args"] for c in boxes] == [[topo["box"]]]


def test_each_machine_gets_its_networks_addresses_and_macs(recorded):
    topo, calls, _ = recorded
    names_per_net: dict[str, set] = {net: set() for net in topo["networks"]}
    for m in topo["machines"]:
        vm = f"config.vm.define({m['name']})#0.vm"
        nets = [c["kw"] for c in _calls(calls, vm, "network") if c["args"] == ["private_network"]]
        assert sorted(n["ip"] for n in nets) == sorted(m["addresses"].values()), m["name"]
        for net, spec in topo["networks"].items():
            (n,) = [n for n in nets if n["ip"] == m["addresses"][net]]
            assert n["auto_config"] is False
            assert n["netmask"] == str(ipaddress.ip_network(spec["cidr"]).netmask)
            assert n["mac"] == m["macs"][net]                          # libvirt: as written
            assert n["virtualbox__mac"].lower() == m["macs"][net].replace(":", "")
            assert re.fullmatch(r"[0-9A-Fa-f]{12}", n["virtualbox__mac"])
            names_per_net[net].add((n["virtualbox__intnet"], n["libvirt__network_name"]))
    # One switch per network, shared by all machines, and the networks kept apart.
    assert all(len(v) == 1 for v in names_per_net.values()), names_per_net
    switches = [next(iter(v)) for v in names_per_net.values()]
    for provider in (0, 1):  # VirtualBox internal network, libvirt network
        assert len({sw[provider] for sw in switches}) == len(topo["networks"]), switches


def test_libvirt_gets_memory_cpus_and_serial_numbered_disks(recorded):
    topo, calls, _ = recorded
    for m in topo["machines"]:
        lv = f"config.vm.define({m['name']})#0.vm.provider(libvirt)#0"
        assert [c["args"] for c in _calls(calls, lv, "memory=")] == [[m["memory_mib"]]]
        assert [c["args"] for c in _calls(calls, lv, "cpus=")] == [[m["cpus"]]]
        storage = _calls(calls, lv, "storage")
        assert [(c["args"], c["kw"]["size"], c["kw"]["serial"]) for c in storage] == \
            [(["file"], f"{d['size_gib']}G", d["serial"]) for d in m["disks"]]


def test_virtualbox_gets_memory_cpus_and_serial_numbered_disks(recorded):
    topo, calls, vdir = recorded
    for m in topo["machines"]:
        vb = f"config.vm.define({m['name']})#0.vm.provider(virtualbox)#0"
        assert [c["args"] for c in _calls(calls, vb, "memory=")] == [[m["memory_mib"]]]
        assert [c["args"] for c in _calls(calls, vb, "cpus=")] == [[m["cpus"]]]
        cmds = [c["args"][0] for c in _calls(calls, vb, "customize")]
        created = {c[c.index("--filename") + 1]: c[c.index("--size") + 1]
                   for c in cmds if c[0] == "createmedium"}
        attached = [c for c in cmds if c[0] == "storageattach"]
        serials = {c[2]: c[3] for c in cmds if c[0] == "setextradata"}
        assert len(attached) == len(m["disks"]) == len(created)
        ports = set()
        for disk, att in zip(m["disks"], attached):
            image, port = att[att.index("--medium") + 1], att[att.index("--port") + 1]
            assert att[1] == "id" and att[att.index("--type") + 1] == "hdd"
            assert created[image] == disk["size_gib"] * 1024  # MB
            # The image stays out of the rsynced checkout (Vagrant never syncs .vagrant/).
            assert ".vagrant" in Path(image).relative_to(vdir.parent).parts
            assert serials[f"VBoxInternal/Devices/ahci/0/Config/Port{port}/SerialNumber"] == disk["serial"]
            assert port != 0, "port 0 holds the box's own disk"
            ports.add(port)
        assert len(ports) == len(m["disks"])


def test_the_checkout_is_synced_to_shadowlun(recorded):
    _, calls, vdir = recorded
    folders = _calls(calls, "config.vm", "synced_folder")
    assert [c["kw"] for c in folders if c["args"][1] == "/vagrant"] == [{"disabled": True}]
    (ours,) = [c for c in folders if c["args"][1] == GUEST_CHECKOUT]
    assert Path(ours["args"][0]) == vdir.parent and ours["kw"]["type"] == "rsync"


def test_provisioners_run_common_sh_then_machine_py_setup_as_root(recorded):
    topo, calls, vdir = recorded
    for m in topo["machines"]:
        provs = _calls(calls, f"config.vm.define({m['name']})#0.vm", "provision")
        assert [p["kw"].get("type", p["args"][0]) for p in provs] == ["shell", "shell"]
        common, machine = (p["kw"] for p in provs)
        assert common["path"] == "provision/common.sh"
        assert (VAGRANT_DIR / common["path"]).is_file()
        (packages,) = common["args"]
        assert _guest_path_to_host(packages) == PROVISION / "packages.txt"
        argv = machine["inline"].split()
        assert argv[0] == "python3" and argv[2:] == ["setup", m["name"]]
        assert _guest_path_to_host(argv[1]) == PROVISION / "machine.py"
        assert common.get("privileged", True) is True and machine.get("privileged", True) is True


@pytest.mark.parametrize("breakage, message", [
    (lambda t: t["machines"][0]["disks"][0].update(serial="s" * 21), "longer than 20"),
    (lambda t: t["machines"][1]["addresses"].update(san="192.0.2.7"), "is not in"),
    (lambda t: t["machines"][2]["macs"].update(mgmt="52-54-00-88-00-16"), "MAC"),
])
@needs_ruby
def test_refuses_a_topology_the_providers_cannot_build(tmp_path, topology, breakage, message):
    broken = copy.deepcopy(topology)
    breakage(broken)
    out = _evaluate(tmp_path, broken)
    assert out.returncode != 0 and "machines.json" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.skipif(VAGRANT is None, reason="vagrant is not on PATH: `vagrant validate` not run")
def test_vagrant_validates_it(tmp_path):
    vdir = tmp_path / "checkout" / "vagrant"
    vdir.mkdir(parents=True)
    for name in ("Vagrantfile", "machines.json"):
        shutil.copy(VAGRANT_DIR / name, vdir / name)
    shutil.copytree(PROVISION, vdir / "provision")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    out = subprocess.run([VAGRANT, "validate", "--ignore-provider"], cwd=vdir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "validated successfully" in out.stdout, out.stdout + out.stderr
