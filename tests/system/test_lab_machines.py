"""The lab's machines are what vagrant/machines.json and the provisioning say they are."""
from __future__ import annotations

import hashlib
import json

from lab.topology import CHECKOUT, MACHINES_FILE

# Each network's link name inside the VMs, as machines.json gives it (provisioning renames the NICs).
LINKS = {net: spec["link"] for net, spec in json.loads(MACHINES_FILE.read_text())["networks"].items()}


def test_each_vm_is_provisioned_as_its_topology_entry(lab):
    for vm in lab.vms.values():
        m = vm.machine
        assert vm.run("hostname").stdout.strip() == m.name
        assert vm.run("cat /etc/iscsi/initiatorname.iscsi").stdout.strip() == (
            f"InitiatorName=iqn.2026-11.lab.shadowlun:{m.name}")
        links = {a["ifname"]: a for a in json.loads(vm.run("ip -j addr").stdout)}
        for net, address in m.addresses.items():
            link = links[LINKS[net]]
            assert link["address"] == m.macs[net]
            assert address in [i["local"] for i in link["addr_info"]]


def test_vms_reach_each_other_on_san_and_mgmt_only_inside_the_lab(lab):
    array = lab.array.machine.addresses
    for host in lab.hosts:
        for net in ("san", "mgmt"):
            host.run(["python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 22), 5)",
                      array[net]])
        # No default route in any VM: the SSH NIC is QEMU user networking with restrict=on.
        assert host.run("ip route show default").stdout.strip() == ""


def test_checkout_is_mounted_read_only_at_the_same_content(lab):
    local = hashlib.sha256((CHECKOUT / "vagrant/lab/smoke.py").read_bytes()).hexdigest()
    for vm in lab.vms.values():
        assert vm.run("sha256sum /shadowlun/vagrant/lab/smoke.py").stdout.split()[0] == local
        assert vm.run("touch /shadowlun/x", check=False).returncode != 0
        # The product's packages import with the VM's own rtslib-fb, pyudev, pyroute2.
        vm.run("python3 -c 'import provider, targets, rtslib_fb, pyudev, pyroute2'")


def test_array_has_the_thin_pool_on_its_pool_disk(lab):
    report = json.loads(lab.array.run(
        "lvs --reportformat json -o lv_name,lv_attr,lv_size --units g shadowlun").stdout)
    pools = [lv for lv in report["report"][0]["lv"] if lv["lv_attr"].startswith("t")]
    assert [p["lv_name"] for p in pools] == ["pool"]
    pv = lab.array.run("pvs --noheadings -o pv_name").stdout.strip()
    assert lab.array.run("readlink -f /dev/disk/by-id/virtio-shadowlun-pool").stdout.strip() == pv
    for mod in ("dm_thin_pool", "target_core_iblock", "iscsi_target_mod"):
        lab.array.run(f"modprobe {mod} && grep -q ^{mod} /proc/modules")


def test_reboot_keeps_provisioning(lab):
    """A rebooted VM comes back with its disks, name and addresses (issue: reboots in tests)."""
    host = lab.vm("host-a")
    host.run("echo kept > /root/reboot-marker && sync")
    boots = host.boots
    host.reboot()
    assert host.boots == boots + 1
    assert host.run("cat /root/reboot-marker").stdout.strip() == "kept"
    assert host.machine.addresses["san"] in host.run("ip -br addr show san0").stdout
    host.run("rm /root/reboot-marker")
