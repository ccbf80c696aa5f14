"""Unit tests of lab.smoke.wwid_for_serial and the smoke scenario's iSCSI node helper."""
from __future__ import annotations

import uuid

from lab import smoke
from lab.ssh import Result
from lab.initiator import Node
from lab.smoke import LIO_COMPANY_ID, wwid_for_serial


def test_naa6_prefix_and_first_25_hex_digits():
    serial = "0123456789abcdef0123456789abcdef"
    assert LIO_COMPANY_ID == "6001405"
    wwid = wwid_for_serial(serial)
    assert wwid == "naa.6001405" + serial[:25]
    # NAA-6 identifiers are 16 bytes: 32 hex digits after "naa.".
    assert len(wwid.removeprefix("naa.")) == 32


def test_dashes_are_removed_before_taking_25_digits():
    u = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    assert wwid_for_serial(str(u)) == "naa.6001405" + u.hex[:25]
    assert wwid_for_serial(str(u)) == wwid_for_serial(u.hex)


def test_short_serial_is_not_padded():
    assert wwid_for_serial("abc") == "naa.6001405abc"


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
