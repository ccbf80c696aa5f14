"""The Vagrant path for real (issue 17): `vagrant up --provider=libvirt` with vagrant/Vagrantfile
boots the machines of machines.json from the local box, with libvirtd, its networks and the VMs
confined to a network namespace of the test's own; the transport story of `make demo` runs on
them; `vagrant destroy` and the namespace go. The machine's own network namespace never sees a
new link. Nothing here skips: without vagrant or libvirtd the test fails, saying why.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from lab import story
from lab.confined import root_links
from lab.topology import load
from lab.vagrant_lab import VagrantLab


def test_the_story_on_vagrant_machines(request, timings):
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")

    def log(msg: str) -> None:
        """Live progress of a multi-minute `vagrant up`, past pytest's output capture."""
        with capture.global_and_fixture_disabled():
            reporter.write_line(msg)

    before = root_links()
    with timings.measure("vagrant: up, story, destroy"):
        with VagrantLab.up(log=log) as lab:
            links_while_up = root_links()
            domains = subprocess.run(lab.confinement.command(["virsh", "-c", "qemu:///system", "list", "--name"]),
                                     capture_output=True, text=True, check=True).stdout.split()
            users = {vm.name: vm.run("id -un; test -d /home/vagrant && echo has-vagrant-user").stdout.split()
                     for vm in lab.vms.values()}
            with timings.measure("vagrant: story"):
                r = story.run(lab, say=log)
    timings.entries.extend((f"vagrant: {name}", secs, note) for name, secs, note in lab.timings.entries)

    # Vagrant's libvirt domains ran the machines of machines.json, reached as Vagrant reaches them.
    names = load().names
    assert sorted(d.rsplit("_", 1)[-1] for d in domains) == sorted(names), domains
    assert users == {n: ["root", "has-vagrant-user"] for n in names}
    # The story: host-b read the bytes of snapshot time while host-a kept writing, and the rest.
    assert r.problems() == []
    assert r.volumes == ["/mnt/db", "/mnt/logs"]
    for v in r.volumes:
        assert r.host_b_read[v] == r.at_snapshot[v] != r.host_a_after[v]
        assert r.flags[v] == ["read-only", "shadow-copy", "hidden", "no-drive-letter"]
    assert r.second_import == "VSS_E_BAD_STATE"
    assert all(r.deleted_gone.values()) and r.broken_writable
    # Confined: no link of libvirt's (bridge, tap) in this namespace then or now, and the
    # namespace is gone.
    assert links_while_up == before
    assert root_links() == before
    assert not (Path("/run/netns") / lab.confinement.name).exists()
