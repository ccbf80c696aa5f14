"""Unit tests of the smoke scenario's iSCSI node helper."""
from __future__ import annotations

from lab.ssh import Result
from lab.initiator import Node


class FakeVM:
    def __init__(self):
        self.calls = []

    def run(self, command, **kw):
        self.calls.append((command, kw))
        return Result(0, "", "")


def test_node_addresses_the_portal_on_the_iscsi_port():
    vm = FakeVM()
    node = Node(vm, "iqn.x:y", "10.87.0.10")
    assert node.portal == "10.87.0.10:3260"
    node.create("host-b", "s3cret")
    argvs = [c for c, _ in vm.calls]
    assert argvs[0] == ["iscsiadm", "-m", "node", "-T", "iqn.x:y", "-p", "10.87.0.10:3260", "-o", "new"]
    updates = {a[a.index("-n") + 1]: a[a.index("-v") + 1] for a in argvs[1:]}
    assert updates == {
        "node.startup": "manual",
        "node.session.scan": "manual",
        "node.session.auth.authmethod": "CHAP",
        "node.session.auth.username": "host-b",
        "node.session.auth.password": "s3cret",
    }


def test_node_login_reports_failure_without_raising():
    class Refusing(FakeVM):
        def run(self, command, **kw):
            self.calls.append((command, kw))
            return Result(24, "", "iscsiadm: Login failed (authorization failure)")

    vm = Refusing()
    assert Node(vm, "iqn.x:y", "10.87.0.10").login() is False
    assert vm.calls[-1][1]["check"] is False
