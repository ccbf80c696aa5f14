"""The lab smoke test: thin snapshot on the array, exported with rtslib-fb, CHAP-masked to
host-b, read there by WWID with the origin's checksum at snapshot time; host-a refused."""
from __future__ import annotations

import re

from lab import smoke


def test_snapshot_exported_to_host_b_only_and_nothing_left_behind(lab, timed):
    with timed("scenario: smoke"):
        r = smoke.run(lab)

    # host-b reads the snapshot, not the origin that was overwritten afterwards.
    assert r.origin_sha256_after != r.origin_sha256_at_snapshot
    assert r.host_b_sha256 == r.origin_sha256_at_snapshot

    # The disk was found by the WWID computed from the serial we chose, and says so itself.
    assert re.fullmatch(r"[0-9a-f]{32}", r.serial)
    assert r.wwid == "naa.6001405" + r.serial[:25]
    assert r.host_b_disk["wwid"] == r.wwid
    assert r.host_b_disk["serial"] == r.serial
    assert (r.host_b_disk["vendor"], r.host_b_disk["model"]) == ("LIO-ORG", "IBLOCK")
    assert r.host_b_disk["read_only"], "the LUN was mapped write-protected"

    # CHAP is enforced, and masking keeps host-a out even with host-b's secret.
    assert r.host_b_wrong_chap_refused
    assert r.host_a_login_refused
    assert r.host_a_sessions == ""
    assert not r.host_a_disk_present

    # The scenario's cleanup left nothing: no LV, target, backstore, session, node record or disk.
    lvs = lab.array.run("lvs --noheadings -o lv_name shadowlun").stdout
    assert f"smoke-{r.run_id}" not in lvs
    assert r.target_iqn not in lab.array.run("ls /sys/kernel/config/target/iscsi").stdout
    assert lab.array.run("ls /sys/kernel/config/target/core/iblock_*/ 2>/dev/null || true").stdout.count(
        f"smoke-{r.run_id}") == 0
    for host in lab.hosts:
        assert host.run("iscsiadm -m session", check=False).returncode == 21  # no sessions
        assert r.target_iqn not in host.run("iscsiadm -m node", check=False).stdout
        assert r.wwid not in host.run("cat /sys/block/*/device/wwid 2>/dev/null || true").stdout
