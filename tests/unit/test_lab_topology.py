"""Unit tests of vagrant/lab/topology.py: the lab's machines and networks from machines.json."""
from __future__ import annotations

import ipaddress
import json

import pytest

from lab import topology
from lab.topology import MACHINES_FILE, load


@pytest.fixture(scope="module")
def topo():
    return load()


def test_loads_the_real_machines_json(topo):
    assert MACHINES_FILE.name == "machines.json" and MACHINES_FILE.is_file()
    assert topo.suite == "bookworm"
    assert set(topo.networks) == {"mgmt", "san", "san2"}
    assert all(isinstance(n, ipaddress.IPv4Network) for n in topo.networks.values())


def test_three_machines_with_their_roles(topo):
    assert topo.names == ["array", "host-a", "host-b"]
    assert {m.name: m.role for m in topo.machines} == {"array": "array", "host-a": "host", "host-b": "host"}


def test_every_machine_has_an_address_and_mac_on_every_network(topo):
    for m in topo.machines:
        assert set(m.addresses) == set(topo.networks), m.name
        assert set(m.macs) == set(topo.networks), m.name
        for net, cidr in topo.networks.items():
            assert ipaddress.ip_address(m.addresses[net]) in cidr, (m.name, net)


def test_addresses_are_unique_per_network(topo):
    for net in topo.networks:
        addrs = [m.addresses[net] for m in topo.machines]
        assert len(set(addrs)) == len(addrs), net


def test_macs_are_unique_and_well_formed_across_all_nics(topo):
    from lab.vm import SSH_MAC

    macs = [mac.lower() for m in topo.machines for mac in m.macs.values()]
    assert len(set(macs)) == len(macs)
    # The SSH NIC uses one fixed MAC in every VM (each on its own user netdev); it must not
    # collide with any NIC on the shared switches.
    assert SSH_MAC.lower() not in macs
    for mac in macs:
        octets = mac.split(":")
        assert len(octets) == 6 and all(len(o) == 2 and int(o, 16) >= 0 for o in octets), mac
        assert int(octets[0], 16) & 1 == 0, f"{mac} is a multicast MAC"


def test_the_array_has_a_pool_disk_with_a_serial(topo):
    array = topo.machine("array")
    pool = [d for d in array.disks if d.name == "pool"]
    assert len(pool) == 1
    assert pool[0].serial
    assert pool[0].size_gib > 0
    # Hosts get their disks over iSCSI only.
    assert topo.machine("host-a").disks == () and topo.machine("host-b").disks == ()


def test_disk_serials_fit_virtio_blk(topo):
    # virtio-blk serials are at most 20 bytes; a longer one is silently truncated in the guest.
    for m in topo.machines:
        for d in m.disks:
            assert len(d.serial.encode()) <= 20, d.serial
            assert "," not in d.serial  # would break QEMU's -device option parsing


def test_machine_lookup(topo):
    assert topo.machine("host-b").name == "host-b"
    with pytest.raises(KeyError) as e:
        topo.machine("host-c")
    msg = str(e.value)
    assert "host-c" in msg
    for name in ("array", "host-a", "host-b"):
        assert name in msg


def test_types_are_converted(topo):
    for m in topo.machines:
        assert isinstance(m.memory_mib, int) and m.memory_mib > 0
        assert isinstance(m.cpus, int) and m.cpus > 0
        assert isinstance(m.disks, tuple)
        for d in m.disks:
            assert isinstance(d.size_gib, int)


def _copy(tmp_path, mutate):
    raw = json.loads(MACHINES_FILE.read_text())
    mutate(raw)
    path = tmp_path / "machines.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_copy_loads_the_same(tmp_path, topo):
    assert load(_copy(tmp_path, lambda raw: None)) == topo


@pytest.mark.parametrize("net, address", [("san", "10.88.0.10"), ("mgmt", "192.168.1.5"), ("san", "10.87.1.10")])
def test_address_outside_its_network_is_refused(tmp_path, net, address):
    def mutate(raw):
        raw["machines"][1]["addresses"][net] = address

    with pytest.raises(ValueError) as e:
        load(_copy(tmp_path, mutate))
    assert "host-a" in str(e.value) and address in str(e.value)


def test_load_default_path_is_machines_file():
    assert load.__defaults__ == (topology.MACHINES_FILE,)
    assert topology.VAGRANT_DIR / "machines.json" == topology.MACHINES_FILE
    assert topology.CHECKOUT == topology.VAGRANT_DIR.parent
    assert (topology.CHECKOUT / "pyproject.toml").is_file()
