"""vagrant/Vagrantfile stays in step with vagrant/machines.json and the shared provisioning.

Without running Vagrant. The text checks always run. With `ruby` on PATH the Vagrantfile is
also evaluated against a stand-in for Vagrant's configuration object that records every call,
for the real topology and for an edited one, so what it would configure is compared with what
machines.json says. The triggers that give the hosts the array's access file are fired too, in
a small simulated world of machines (the ssh commands they run are interpreted, not
run); with `vagrant` on PATH, `vagrant validate` runs on a copy too.
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
ARRAY_ACCESS = "/etc/shadowlun/array-access.json"  # where a host reads its access to the array agent
ACCESS_DIR = "/etc/shadowlun/access"  # on the array: HOST.json, one per host (machine.py writes them)
LOCAL_BOX_ENV = ("SHADOWLUN_VAGRANT_BOX", "SHADOWLUN_VAGRANT_KERNEL", "SHADOWLUN_VAGRANT_INITRD",
                 "SHADOWLUN_VAGRANT_DRIVER", "SHADOWLUN_VAGRANT_CONSOLE_DIR")

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


# The roles are the only literals a machine name may coincide with ("array" is both).
ROLE_CONSTANTS = re.compile(r'^[ \t]*(ARRAY|HOST)_ROLE[ \t]*=[ \t]*"(array|host)"[ \t]*$', re.M)


def test_names_the_roles_once(code):
    assert sorted(ROLE_CONSTANTS.findall(code)) == [("ARRAY", "array"), ("HOST", "host")]


def test_hard_codes_no_machine_name_address_mac_serial_or_box(text, code, topology):
    code = ROLE_CONSTANTS.sub("", code)
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
# its blocks, is recorded as {"on": path, "method", "args", "kw", "parent"}. A block's objects are
# named after the call, e.g. config.vm.define(NAME)#0 and ...vm.provider(libvirt)#1 (the
# override); "parent" is the index of the call whose block made the call. A trigger's `ruby`
# block is kept rather than called (its call records "block": its index).
#
# Given a scenario file too, it then plays the scenario's steps in a simulated world of machines:
# "set" changes machines (state, ssh reachable, files), "fire" fires the after-triggers of a
# machine for a command as Vagrant would (those of config.trigger and of the machine's define
# block, for that command, honouring only_on), with the ruby blocks getting a stand-in for the
# environment and the machine. Vagrant::Util::Subprocess is replaced: `ssh [-p|-o|-i ARG]...
# vagrant@ADDRESS COMMAND`, to the address and with the key a machine's ssh_info gives, is
# interpreted in the world for the commands the triggers may run (`sudo cat PATH`, `sudo install
# [-D] [-o U] [-g G] [-m MODE] /dev/stdin PATH`); a `vagrant` command is refused, as a second
# Vagrant process would contend for the machines' locks. It prints {"calls", "runs", "ui", "world"}.
HARNESS = r"""
require "json"
require "shellwords"
CALLS = []
BLOCKS = []
class Recorder
  def initialize(path, parent = nil)
    @path = path
    @parent = parent
  end

  def method_missing(meth, *args, **kw, &blk)
    call = { "on" => @path, "method" => meth.to_s, "args" => args, "kw" => kw, "parent" => @parent }
    CALLS << call
    index = CALLS.length - 1
    if meth == :ruby && blk
      BLOCKS << blk
      call["block"] = BLOCKS.length - 1
      return Recorder.new("#{@path}.ruby", index)
    end
    child = "#{@path}.#{meth}"
    child += "(#{args.first})" if blk && !args.empty?
    blk.call(Recorder.new("#{child}#0", index), Recorder.new("#{child}#1", index)) if blk
    Recorder.new(child, index)
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  def self.configure(_version)
    yield Recorder.new("config")
  end

  module Util
    class Subprocess
      class TimeoutExceeded < StandardError; end
      class LaunchError < StandardError; end
      Result = Struct.new(:exit_code, :stdout, :stderr)

      class Input
        attr_reader :data
        def initialize; @data = +""; @closed = false; end
        def write(s); raise IOError, "stdin closed" if @closed; @data << s; s.length; end
        def close; @closed = true; end
        def closed?; @closed; end
      end

      def self.execute(*command, **opts, &blk)
        input = Input.new
        blk.call(:stdin, input) if blk && Array(opts[:notify]).include?(:stdin)
        run = { "command" => command, "workdir" => opts[:workdir], "stdin" => input.data,
                "stdin_closed" => input.closed? }
        RUNS << run
        code, out, err = World.run(command, input.data)
        run["exit_code"] = code
        Result.new(code, out, err)
      end
    end
  end
end

RUNS = []
UI = []

module World
  MACHINES = {}

  def self.machine(name)
    MACHINES[name.to_s] ||= { "state" => "not_created", "files" => {} }
  end

  # The address FakeMachine#ssh_info gives a machine, and back.
  def self.address(name)
    "#{name}.machines.test"
  end

  def self.run(command, stdin)
    if command.first == "vagrant"
      return [1, "", "the stand-in runs no `vagrant`: a second Vagrant process contends for " \
                     "the machine locks of this one\n"]
    end
    return [127, "", "#{command.first}: not simulated\n"] unless command.first == "ssh"
    args = command[1..].dup
    opts = []
    while args.first&.start_with?("-")
      flag = args.shift
      return [255, "", "ssh: option #{flag} not simulated\n"] unless %w[-p -o -i].include?(flag)
      opts << [flag, args.shift]
    end
    return [255, "", "ssh: USER@HOST COMMAND expected\n"] unless args.length == 2
    destination, line = args
    user, host = destination.split("@", 2)
    name = MACHINES.keys.find { |n| address(n) == host }
    return [255, "", "ssh: Could not resolve hostname #{host}\n"] unless name
    m = machine(name)
    unless opts.include?(["-o", "BatchMode=yes"]) && opts.include?(["-i", "/keys/#{name}"]) && user == "vagrant"
      return [255, "", "vagrant@#{host}: Permission denied (publickey).\n"]
    end
    return [255, "", "ssh: connect to host #{host} port 22: No route to host\n"] \
      unless m["state"] == "running"
    return [255, "", "ssh: connect to host #{host} port 22: Connection refused\n"] if m["ssh"] == false
    remote(m, line, stdin)
  end

  def self.remote(m, line, stdin)
    argv = Shellwords.split(line)
    return [1, "", "sudo: needed for #{line}\n"] unless argv.shift == "sudo"
    case argv.shift
    when "cat"
      path = argv.first
      f = m["files"][path]
      return [1, "", "cat: #{path}: No such file or directory\n"] unless argv.length == 1 && f
      [0, f["content"], ""]
    when "install"
      file = { "owner" => "root", "group" => "root", "mode" => "0755", "parents" => false }
      while argv.first&.start_with?("-")
        case argv.shift
        when "-D" then file["parents"] = true
        when "-o" then file["owner"] = argv.shift
        when "-g" then file["group"] = argv.shift
        when "-m" then file["mode"] = argv.shift
        else return [1, "", "install: option not simulated in #{line}\n"]
        end
      end
      return [1, "", "install: simulated only as install ... /dev/stdin PATH\n"] \
        unless argv.length == 2 && argv[0] == "/dev/stdin"
      path = argv[1]
      dir = File.dirname(path)
      unless file.delete("parents") || m["files"].keys.any? { |p| p.start_with?(dir + "/") }
        return [1, "", "install: cannot create regular file '#{path}': No such file or directory\n"]
      end
      m["files"][path] = file.merge("content" => stdin)
      [0, "", ""]
    else
      [127, "", "not simulated: #{line}\n"]
    end
  end
end

class FakeUI
  def initialize(name); @name = name; end
  %w[info warn error success detail output].each do |level|
    define_method(level) do |message, **_|
      UI << { "machine" => @name, "level" => level, "message" => message.to_s }
    end
  end
end

FakeState = Struct.new(:id)

class FakeMachine
  attr_reader :name, :provider_name, :ui
  def initialize(name, provider)
    @name = name.to_sym
    @provider_name = provider
    @ui = FakeUI.new(name.to_s)
  end
  def state
    FakeState.new(World.machine(@name)["state"].to_sym)
  end
  # As Machine#ssh_info: nil until the machine runs (a libvirt domain has no address before).
  def ssh_info
    return nil unless World.machine(@name)["state"] == "running"
    { host: World.address(@name), port: 22, username: "vagrant", private_key_path: ["/keys/#{@name}"] }
  end
  def method_missing(meth, *)
    raise NoMethodError, "the machine stand-in has no #{meth}"
  end
end

class FakeEnv
  def initialize(provider); @provider = provider; end
  def machine(name, provider)
    raise ArgumentError, "machine name #{name.inspect} is not a Symbol" unless name.is_a?(Symbol)
    FakeMachine.new(name, provider)
  end
  def method_missing(meth, *)
    raise NoMethodError, "the environment stand-in has no #{meth}"
  end
end

def triggers_for(name, command)
  scopes = ["config.trigger", "config.vm.define(#{name})#0.trigger"]
  CALLS.each_index.select do |i|
    c = CALLS[i]
    next false unless c["method"] == "after" && scopes.include?(c["on"])
    next false unless c["args"].flatten.map(&:to_s).include?(command)
    set = CALLS.select { |o| o["parent"] == i && o["method"] == "only_on=" }.map { |o| o["args"].first }
    only = ([c["kw"][:only_on]] + set).compact.flatten
    only.empty? || only.any? { |o| o.is_a?(Regexp) ? o.match?(name) : o.to_s == name }
  end
end

load ARGV[0]

if ARGV[1]
  scenario = JSON.parse(File.read(ARGV[1]))
  provider = scenario.fetch("provider", "libvirt").to_sym
  scenario["steps"].each do |step|
    (step["set"] || {}).each { |name, changes| World.machine(name).merge!(changes) }
    next unless step["fire"]
    name, command = step["fire"]
    triggers_for(name, command).each do |t|
      CALLS.select { |c| c["parent"] == t && c["method"] == "ruby" }.each do |c|
        BLOCKS[c["block"]].call(FakeEnv.new(provider), FakeMachine.new(name, provider))
      end
    end
  end
  puts JSON.generate({ "calls" => CALLS, "runs" => RUNS, "ui" => UI, "world" => World::MACHINES })
else
  puts JSON.generate(CALLS)
end
"""


def _edited(topology: dict) -> dict:
    """Another topology: other box, sizes and addresses, the array renamed, and a fourth
    machine, a host with two disks, defined first (before the array)."""
    t = copy.deepcopy(topology)
    t["box"] = "example/other-box"
    (array,) = [m for m in t["machines"] if m["role"] == "array"]
    array["name"] = "shelf-1"
    array["memory_mib"] += 512
    array["cpus"] += 1
    array["disks"][0]["serial"] = "renamed-pool"
    t["machines"].insert(0, {
        "name": "host-z", "role": "host", "memory_mib": 640, "cpus": 3,
        "addresses": {"mgmt": "10.88.0.77", "san": "10.87.0.77", "san2": "10.86.0.77"},
        "macs": {"mgmt": "52:54:00:88:00:4d", "san": "52:54:00:87:00:4d", "san2": "52:54:00:86:00:4d"},
        "disks": [{"name": "scratch", "size_gib": 2, "serial": "scratch-1"},
                  {"name": "spare", "size_gib": 3, "serial": "spare-2"}],
    })
    return t


def _evaluate(tmp_path: Path, topology: dict, scenario: dict | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Evaluate a copy of the Vagrantfile beside `topology` (so no real disk image is seen),
    then play `scenario` if given (see HARNESS). The local box's variables are only those of
    `env`, never the caller's."""
    vdir = tmp_path / "checkout" / "vagrant"
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(VAGRANTFILE, vdir / "Vagrantfile")
    (vdir / "machines.json").write_text(json.dumps(topology))
    (tmp_path / "harness.rb").write_text(HARNESS)
    argv = [RUBY, str(tmp_path / "harness.rb"), str(vdir / "Vagrantfile")]
    if scenario is not None:
        (tmp_path / "scenario.json").write_text(json.dumps(scenario))
        argv.append(str(tmp_path / "scenario.json"))
    clean = {k: v for k, v in os.environ.items() if k not in LOCAL_BOX_ENV}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


def _record(tmp_path: Path, topology: dict, env: dict[str, str] | None = None) -> tuple[list[dict], Path]:
    out = _evaluate(tmp_path, topology, env=env)
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


# --- evaluated: the hosts get the array's access file -----------------------------------------

def _access(host: str) -> dict:
    """A host's access file: its own token (the array writes one file per host)."""
    content = json.dumps({"url": "https://192.0.2.10:8443", "token": f"t0ken-Xy_z-{host}",
                          "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
                         indent=2) + "\n"
    return {"content": content, "owner": "root", "group": "root", "mode": "0600"}


def _array_files(hosts: list[str]) -> dict:
    return {f"{ACCESS_DIR}/{host}.json": _access(host) for host in hosts}


def _roles(topo: dict) -> tuple[str, list[str]]:
    (array,) = [m["name"] for m in topo["machines"] if m["role"] == "array"]
    return array, [m["name"] for m in topo["machines"] if m["role"] == "host"]


def _play(tmp_path: Path, topo: dict, steps: list[dict]) -> tuple[dict, Path]:
    out = _evaluate(tmp_path, topo, {"provider": "libvirt", "steps": steps})
    assert out.returncode == 0, out.stderr  # a trigger never aborts Vagrant with a Ruby error
    return json.loads(out.stdout), tmp_path / "checkout" / "vagrant"


def _up(*names, files: dict | None = None) -> dict:
    """A step: the machines are running (and have these files)."""
    have = {"files": copy.deepcopy(files)} if files else {}
    return {"set": {n: {"state": "running", **have} for n in names}}


def _assert_hosts_have_the_access_file(result, hosts, vdir):
    for host in hosts:  # each its own, not another host's
        assert result["world"][host]["files"].get(ARRAY_ACCESS) == _access(host), (host, result["ui"])
    for run in result["runs"]:
        # Plain ssh (no second Vagrant process, which would contend for the machines' locks
        # while they come up in parallel), run in the Vagrantfile's directory; the token and
        # certificate never go on a command line.
        assert run["command"][0] == "ssh", run
        assert Path(run["workdir"]) == vdir and run["stdin_closed"], run
        assert "t0ken" not in " ".join(run["command"]), run


def _warnings(result):
    return [u for u in result["ui"] if u["level"] in ("warn", "error")]


@pytest.fixture(params=["machines.json", "edited"])
def topo(request, topology):
    if RUBY is None:
        pytest.skip("ruby is not on PATH (apt-get install ruby): Vagrantfile not evaluated")
    return topology if request.param == "machines.json" else _edited(topology)


@pytest.mark.parametrize("command", ["up", "provision"])
def test_hosts_coming_up_after_the_array_copy_its_access_file(tmp_path, topo, command):
    array, hosts = _roles(topo)
    assert hosts
    steps = [_up(array, files=_array_files(hosts)), {"fire": [array, command]}]
    for host in hosts:
        steps += [_up(host), {"fire": [host, command]}]
    result, vdir = _play(tmp_path, topo, steps)
    _assert_hosts_have_the_access_file(result, hosts, vdir)
    assert result["world"][array]["files"] == _array_files(hosts)
    assert not _warnings(result), result["ui"]


def test_the_array_coming_up_last_gives_its_access_file_to_the_running_hosts(tmp_path, topo):
    """`vagrant up` in parallel (libvirt's default): the hosts are provisioned before the array's
    agent exists; they say so without failing, and the array hands the file over when it is up."""
    array, hosts = _roles(topo)
    steps = [_up(array)]                       # running, still being provisioned: no file yet
    for host in hosts:
        steps += [_up(host), {"fire": [host, "up"]}]
    steps += [_up(array, files=_array_files(hosts)), {"fire": [array, "up"]}]
    result, vdir = _play(tmp_path, topo, steps)
    _assert_hosts_have_the_access_file(result, hosts, vdir)
    early = _warnings(result)
    assert [w["machine"] for w in early] == hosts
    for w in early:
        assert f"vagrant provision {w['machine']}" in w["message"] and array in w["message"], w
        assert "No such file" in w["message"], w  # what went wrong, as the array said it


def test_a_host_without_the_array_says_what_to_run(tmp_path, topo):
    array, hosts = _roles(topo)
    steps = []
    for host in hosts:
        steps += [_up(host), {"fire": [host, "up"]}]
    result, _ = _play(tmp_path, topo, steps)
    assert [w["machine"] for w in _warnings(result)] == hosts
    for w in _warnings(result):
        assert f"vagrant up {array}" in w["message"], w
        assert f"vagrant provision {w['machine']}" in w["message"], w
    for host in hosts:
        assert ARRAY_ACCESS not in result["world"][host]["files"]


def test_the_array_skips_hosts_that_are_not_running(tmp_path, topo):
    array, hosts = _roles(topo)
    down, running = hosts[0], hosts[1:]
    result, vdir = _play(tmp_path, topo, [_up(array, *running), _up(array, files=_array_files(hosts)),
                                          {"fire": [array, "up"]}])
    _assert_hosts_have_the_access_file(result, running, vdir)
    assert ARRAY_ACCESS not in result["world"][down]["files"]
    assert not [r for r in result["runs"] if any(f"@{down}." in arg for arg in r["command"])]
    assert not _warnings(result), result["ui"]
    # ... and that host copies it itself when it comes up.
    result, vdir = _play(tmp_path, topo, [_up(array, *running), _up(array, files=_array_files(hosts)),
                                          {"fire": [array, "up"]},
                                          _up(down), {"fire": [down, "up"]}])
    _assert_hosts_have_the_access_file(result, hosts, vdir)


def test_the_triggers_do_nothing_for_a_machine_that_is_not_running(tmp_path, topo):
    """Vagrant fires them after `vagrant provision` of a machine never brought up, too."""
    array, hosts = _roles(topo)
    result, _ = _play(tmp_path, topo, [{"fire": [array, "provision"]}]
                      + [{"fire": [h, "provision"]} for h in hosts])
    assert result["runs"] == [] and result["ui"] == []
    result, _ = _play(tmp_path, topo,
                      [_up(array, files=_array_files(hosts))] + [{"fire": [h, "up"]} for h in hosts])
    assert result["runs"] == [] and result["ui"] == []


def test_a_host_that_cannot_install_the_file_says_what_to_run(tmp_path, topo):
    array, hosts = _roles(topo)
    host = hosts[-1]
    result, _ = _play(tmp_path, topo, [_up(*hosts), _up(array, files=_array_files(hosts)),
                                       {"set": {host: {"ssh": False}}}, {"fire": [host, "up"]}])
    (w,) = _warnings(result)
    assert w["machine"] == host and f"vagrant provision {host}" in w["message"], w


@pytest.mark.parametrize("access, why", [
    ("not json at all\n", "not JSON"),
    (json.dumps({"url": "https://192.0.2.10:8443"}), "token"),
])
def test_an_unusable_access_file_is_not_copied(tmp_path, topo, access, why):
    array, hosts = _roles(topo)
    unusable = {path: dict(f, content=access) for path, f in _array_files(hosts).items()}
    steps = [_up(array, *hosts), {"set": {array: {"files": unusable}}}]
    steps += [{"fire": [host, "up"]} for host in hosts] + [{"fire": [array, "up"]}]
    result, _ = _play(tmp_path, topo, steps)
    for host in hosts:
        assert ARRAY_ACCESS not in result["world"][host]["files"]
    assert len(_warnings(result)) == 2 * len(hosts)  # each host's trigger, and the array's per host
    assert all(why in w["message"] for w in _warnings(result)), result["ui"]


def test_the_access_file_triggers_follow_the_roles_not_the_names(tmp_path, topo):
    """Renaming machines, or adding a host, needs no change to the Vagrantfile: every machine
    with role "host", whatever its name, gets the file from the one with role "array"."""
    renamed = copy.deepcopy(topo)
    for i, m in enumerate(renamed["machines"]):
        m["name"] = f"{m['role']}-renamed-{i}"
    array, hosts = _roles(renamed)
    steps = [_up(*hosts), _up(array, files=_array_files(hosts))] + [{"fire": [h, "up"]} for h in hosts]
    result, vdir = _play(tmp_path, renamed, steps)
    _assert_hosts_have_the_access_file(result, hosts, vdir)
    assert not _warnings(result), result["ui"]


@pytest.mark.parametrize("breakage, message", [
    (lambda t: t["machines"][0]["disks"][0].update(serial="s" * 21), "longer than 20"),
    (lambda t: t["machines"][1].update(role="array"), "exactly one machine with role"),
    (lambda t: t["machines"][0].update(role="host"), "exactly one machine with role"),
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


def test_a_host_whose_file_the_array_lacks_gets_none_and_the_others_theirs(tmp_path, topo):
    """One file per host: a missing one is that host's problem only, and both sides say which file."""
    array, hosts = _roles(topo)
    lacking, served = hosts[0], hosts[1:]
    result, vdir = _play(tmp_path, topo, [_up(*hosts), _up(array, files=_array_files(served)),
                                          {"fire": [array, "up"]}, {"fire": [lacking, "up"]}])
    _assert_hosts_have_the_access_file(result, served, vdir)
    assert ARRAY_ACCESS not in result["world"][lacking]["files"]
    warned = _warnings(result)
    assert [w["machine"] for w in warned] == [array, lacking], result["ui"]
    assert all(f"{ACCESS_DIR}/{lacking}.json" in w["message"] for w in warned), warned
    assert f"vagrant provision {array}" in warned[0]["message"]


# --- evaluated: the local box (SHADOWLUN_VAGRANT_BOX), and libvirt's driver --------------------

def _libvirt_settings(calls: list[dict]) -> dict:
    """What the Vagrantfile sets on libvirt for every machine (its top-level provider block)."""
    return {c["method"].rstrip("="): c["args"][0]
            for c in calls if c["on"] == "config.vm.provider(libvirt)#0" and c["method"].endswith("=")}


@needs_ruby
def test_without_the_local_box_it_is_the_public_box_as_before(tmp_path, topology):
    calls, _ = _record(tmp_path, topology)
    assert [c["args"] for c in _calls(calls, "config.vm", "box=")] == [[topology["box"]]]
    settings = _libvirt_settings(calls)
    assert not {"kernel", "initrd", "cmd_line", "management_network_mode"} & set(settings)
    assert settings["driver"] == ("kvm" if Path("/dev/kvm").is_char_device() else "qemu")
    assert not [c for c in calls if c["method"] == "serial"]


@needs_ruby
def test_the_local_box_boots_its_kernel_on_an_isolated_management_network(tmp_path, topology):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    consoles = tmp_path / "console"
    calls, _ = _record(tmp_path, topology, env={
        "SHADOWLUN_VAGRANT_BOX": "shadowlun/lab-0123", "SHADOWLUN_VAGRANT_KERNEL": str(kernel),
        "SHADOWLUN_VAGRANT_INITRD": str(initrd), "SHADOWLUN_VAGRANT_DRIVER": "qemu",
        "SHADOWLUN_VAGRANT_CONSOLE_DIR": str(consoles)})
    assert [c["args"] for c in _calls(calls, "config.vm", "box=")] == [["shadowlun/lab-0123"]]
    assert _libvirt_settings(calls) == {
        "driver": "qemu", "cpu_mode": "custom", "cpu_model": "qemu64",
        "kernel": str(kernel), "initrd": str(initrd), "cmd_line": "root=/dev/vda rw console=ttyS0",
        "management_network_mode": "none"}
    for m in topology["machines"]:
        (serial,) = _calls(calls, f"config.vm.define({m['name']})#0.vm.provider(libvirt)#0", "serial")
        assert serial["kw"] == {"type": "file", "source": {"path": str(consoles / f"{m['name']}.log")}}
    # The lab networks stay private and unforwarded, whichever box.
    for c in calls:
        if c["method"] == "network" and c["args"] == ["private_network"]:
            assert c["kw"]["libvirt__forward_mode"] == "none" and c["kw"]["libvirt__dhcp_enabled"] is False


@needs_ruby
@pytest.mark.parametrize("missing", ["SHADOWLUN_VAGRANT_KERNEL", "SHADOWLUN_VAGRANT_INITRD"])
def test_the_local_box_without_its_kernel_or_initrd_is_refused(tmp_path, topology, missing):
    env = {"SHADOWLUN_VAGRANT_BOX": "shadowlun/lab-0123"}
    for var in ("SHADOWLUN_VAGRANT_KERNEL", "SHADOWLUN_VAGRANT_INITRD"):
        if var != missing:
            (tmp_path / var).write_bytes(b"x")
            env[var] = str(tmp_path / var)
    out = _evaluate(tmp_path, topology, env=env)
    assert out.returncode != 0 and missing in out.stderr and "not set" in out.stderr, out.stderr
