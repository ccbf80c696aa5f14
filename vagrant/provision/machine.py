#!/usr/bin/python3
"""Per-machine provisioning of a lab VM: the part that depends on which machine it is.

Shared by the QEMU lab (run over SSH after first boot) and the Vagrantfile (a shell
provisioner), so both build the same machines from vagrant/machines.json:

  machine.py setup NAME [--machines FILE]   once: hostname, initiator name, networks, pool
  machine.py network                        every boot (systemd unit): SAN and mgmt addresses

Addresses are set with pyroute2 on the interfaces found by MAC address, as the product finds
its own SAN addresses; the links are renamed as machines.json says (mgmt0, san0, san1) so logs
and portals read plainly. A host marked `multipath` gets dm-multipath (multipathd and the lab's
/etc/multipath.conf); every other machine has multipathd disabled, so it sees single paths.
Everything is create-or-lookup, so running it again changes nothing.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path("/etc/shadowlun/machine.json")
INSTALLED = Path("/usr/local/sbin/shadowlun-machine")
UNIT = Path("/etc/systemd/system/shadowlun-lab-net.service")
IQN_PREFIX = "iqn.2026-11.lab.shadowlun"
LINK_WAIT_S = 20.0
AGENT_START_TIMEOUT_S = 120  # the agent under TCG: imports, reconcile, then the access files
VG, POOL = "shadowlun", "pool"

UNIT_TEXT = f"""[Unit]
Description=shadowlun lab: SAN and management addresses (pyroute2)
DefaultDependencies=no
After=systemd-udevd.service
Before=network.target iscsid.service ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={INSTALLED} network

[Install]
WantedBy=multi-user.target
"""


def log(msg: str) -> None:
    print(f"provision: {msg}", flush=True)


def run(*argv: str) -> str:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(argv, check=True, text=True, capture_output=True, env=env).stdout


def machine_entry(machines_file: Path, name: str) -> dict:
    topology = json.loads(machines_file.read_text())
    for m in topology["machines"]:
        if m["name"] == name:
            nets = {
                net: {
                    "mac": m["macs"][net],
                    "address": m["addresses"][net],
                    "prefixlen": ipaddress.ip_network(spec["cidr"]).prefixlen,
                    "link": spec["link"],
                }
                for net, spec in topology["networks"].items()
            }
            return {"name": name, "role": m["role"], "networks": nets, "disks": m["disks"],
                    "multipath": bool(m.get("multipath", False))}
    raise SystemExit(f"provision: no machine {name!r} in {machines_file}")


def setup_hostname(name: str) -> None:
    Path("/etc/hostname").write_text(name + "\n")
    hosts = Path("/etc/hosts")
    old = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    lines = [ln for ln in old if not ln.startswith("127.0.1.1")]
    hosts.write_text("\n".join(lines + [f"127.0.1.1\t{name}"]) + "\n")
    subprocess.run(["hostname", name], check=False)


def initiator_name(name: str) -> str:
    """The iSCSI initiator name of lab machine `name`: its own, and for a host, the one the array
    registers (setup_agent)."""
    return f"{IQN_PREFIX}:{name}"


def setup_initiator(name: str) -> None:
    path = Path("/etc/iscsi/initiatorname.iscsi")
    wanted = f"InitiatorName={initiator_name(name)}\n"
    if path.exists() and path.read_text() == wanted:
        return
    path.write_text(wanted)
    subprocess.run(["systemctl", "try-restart", "iscsid.service"], check=False)
    log(f"initiator name {wanted.strip()}")


MULTIPATH_CONF = Path("/etc/multipath.conf")
# multipath-tools' built-in find_multipaths is "strict": a map only for a WWID already listed in
# /etc/multipath/wwids. Every shadow copy is a new WWID, so the lab says "no" (a map for every
# path device not blacklisted) and names maps by WWID, as the provider looks for them.
MULTIPATH_CONF_TEXT = """# shadowlun lab: dm-multipath over the array's iSCSI LUNs (written by machine.py)
defaults {
    user_friendly_names no
    find_multipaths no
}
blacklist {
    devnode "^vd[a-z]+"
}
"""
MULTIPATH_UNITS = ("multipathd.service", "multipathd.socket")


def setup_multipath(enabled: bool) -> None:
    """multipathd on a host marked `multipath`, with the lab's configuration; disabled and masked
    everywhere else (the package is in every image), so those machines see single paths."""
    if enabled:
        MULTIPATH_CONF.write_text(MULTIPATH_CONF_TEXT)
        run("systemctl", "unmask", *MULTIPATH_UNITS)
        run("systemctl", "enable", *MULTIPATH_UNITS)
        run("systemctl", "restart", "multipathd.service")
        log("multipathd on, maps named by WWID")
    else:
        subprocess.run(["systemctl", "disable", "--now", *MULTIPATH_UNITS], check=False, capture_output=True)
        run("systemctl", "mask", *MULTIPATH_UNITS)
        log("multipathd off (single paths)")


def wait_for_link(ipr, mac: str) -> int:
    """Interfaces appear as udev probes the virtio devices; bounded wait, then a clear error."""
    deadline = time.monotonic() + LINK_WAIT_S
    while True:
        found = ipr.link_lookup(address=mac)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise SystemExit(f"provision: no interface with MAC {mac} after {LINK_WAIT_S:.0f} s")
        time.sleep(0.2)


def configure_networks(networks: dict) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for net, spec in networks.items():
            idx = wait_for_link(ipr, spec["mac"])
            link = ipr.get_links(idx)[0]
            wanted_name = spec["link"]
            if link.get_attr("IFLA_IFNAME") != wanted_name:
                ipr.link("set", index=idx, state="down")
                ipr.link("set", index=idx, ifname=wanted_name)
            ipr.link("set", index=idx, state="up")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
            if (spec["address"], spec["prefixlen"]) not in have:
                ipr.addr("add", index=idx, address=spec["address"], prefixlen=spec["prefixlen"])
            log(f"{wanted_name} {spec['address']}/{spec['prefixlen']} up")


def install_network_unit() -> None:
    if Path(__file__).resolve() != INSTALLED:
        shutil.copyfile(__file__, INSTALLED)
        INSTALLED.chmod(0o755)
    UNIT.write_text(UNIT_TEXT)
    run("systemctl", "daemon-reload")
    run("systemctl", "enable", UNIT.name)


def find_disk(serial: str) -> Path:
    """By serial (QEMU virtio and libvirt name it), never by probe order."""
    by_id = Path("/dev/disk/by-id")
    for link in sorted(by_id.glob(f"*{serial}*")):
        if "-part" not in link.name:
            return link.resolve()
    raise SystemExit(f"provision: no disk with serial {serial!r} under {by_id}")


def setup_pool(disks: list[dict]) -> None:
    """The array's storage: one VG on the pool disk and one thin pool, as an admin would make."""
    pool_disk = next(d for d in disks if d["name"] == "pool")
    vgs = json.loads(run("vgs", "--reportformat", "json", "-o", "vg_name"))["report"][0]["vg"]
    if not any(v["vg_name"] == VG for v in vgs):
        dev = find_disk(pool_disk["serial"])
        run("pvcreate", "-q", str(dev))
        run("vgcreate", "-q", VG, str(dev))
        log(f"volume group {VG} on {dev}")
    lvs = json.loads(run("lvs", "--reportformat", "json", "-o", "lv_name", VG))["report"][0]["lv"]
    if not any(lv["lv_name"] == POOL for lv in lvs):
        # passdown (LVM's default, said here): a discard a host sends frees the pool's blocks
        # and reaches the disk under it
        run("lvcreate", "-q", "--type", "thin-pool", "--discards", "passdown", "-l", "90%VG", "-n", POOL, VG)
        log(f"thin pool {VG}/{POOL}")


def setup_target_dbroot() -> None:
    """LIO keeps persistent-reservation (APTPL) and ALUA state in files under its dbroot; the
    kernel does not make the directories, and without `pr` every PERSISTENT RESERVE OUT fails
    NOT READY (the kernel rewrites the APTPL file, or its "no registrations" stub, on each). The dbroot is the one rtslib-fb settles on (it may move it from the
    kernel's default), read the way the agent reads it."""
    dbroot = Path(run("python3", "-c", "from rtslib_fb import RTSRoot; print(RTSRoot().dbroot)").strip())
    for sub in ("pr", "alua"):
        (dbroot / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    log(f"LIO dbroot {dbroot}: pr/ and alua/ ready")


def setup_agent(entry: dict, topology: dict) -> None:
    """The array agent: config, the admin's bearer token, TLS certificate for the mgmt address,
    unit. admin-access.json (url, admin token, certificate) stays on the array, for admin tools.
    The agent registers the config's hosts when it starts and writes each one's own access file
    (its token and CHAP credentials) as access/<host>.json; the lab, or Vagrant, copies it to
    that host alone, as /etc/shadowlun/array-access.json."""
    etc = Path("/etc/shadowlun")
    mgmt = entry["networks"]["mgmt"]["address"]
    port = 8443
    config = {
        "target_iqn": f"{IQN_PREFIX}:{entry['name']}.target",
        # portals on every SAN network (san, san2): a multipath host logs in on each
        "san_cidrs": [spec["cidr"] for net, spec in topology["networks"].items() if net.startswith("san")],
        "vg": VG, "pool": POOL, "listen": mgmt, "port": port,
        # the hosts the array serves (registered by the agent at start): every lab host
        "hosts": {initiator_name(m["name"]): m["name"] for m in topology["machines"] if m["role"] == "host"},
        # The lab's 29 GiB pool holds thin volumes of up to 1 TiB (the benchmark's large origin).
        "overcommit_ratio": 64,
    }
    (etc / "array.json").write_text(json.dumps(config, indent=2) + "\n")
    token, key, cert = etc / "agent.token", etc / "agent.key", etc / "agent.crt"
    if not token.exists():
        import secrets

        token.touch(mode=0o600)
        token.write_text(secrets.token_urlsafe(32) + "\n")
    if not cert.exists():
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3650",
            "-subj", f"/CN={entry['name']}", "-addext", f"subjectAltName=IP:{mgmt}")
        key.chmod(0o600)
    access = etc / "admin-access.json"
    access.touch(mode=0o600)
    access.write_text(json.dumps({"url": f"https://{mgmt}:{port}", "token": token.read_text().strip(),
                                  "certificate": cert.read_text()}, indent=2) + "\n")
    unit = Path("/shadowlun/targets/shadowlun-array-agent.service")
    shutil.copyfile(unit, Path("/etc/systemd/system") / unit.name)
    run("systemctl", "daemon-reload")
    run("systemctl", "enable", unit.name)
    run("systemctl", "restart", unit.name)
    # Provisioning ends when every host's own access file is there (the agent writes them when
    # it registers the hosts, seconds after it starts), so whatever copies them next (the lab,
    # or the Vagrantfile's triggers) finds them.
    wanted = [etc / "access" / f"{m['name']}.json" for m in topology["machines"] if m["role"] == "host"]
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while not all(p.exists() for p in wanted):
        if time.monotonic() > deadline:
            journal = subprocess.run(["journalctl", "-u", unit.name, "--no-pager", "-n", "30"],
                                     capture_output=True, text=True).stdout
            sys.exit(f"the array agent wrote no {', '.join(str(p) for p in wanted if not p.exists())} within "
                     f"{AGENT_START_TIMEOUT_S} s; its journal:\n{journal}")
        time.sleep(1)
    log(f"array agent on https://{mgmt}:{port}; access files for {', '.join(p.stem for p in wanted)}")


def cmd_setup(args: argparse.Namespace) -> None:
    entry = machine_entry(args.machines, args.name)
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(json.dumps(entry, indent=2) + "\n")
    setup_hostname(entry["name"])
    setup_initiator(entry["name"])
    install_network_unit()
    configure_networks(entry["networks"])
    setup_multipath(entry["multipath"])
    if entry["role"] == "host":
        run("python3", "-m", "provider.cli", "register-provider")
    if entry["role"] == "array":
        setup_pool(entry["disks"])
        setup_target_dbroot()
        setup_agent(entry, json.loads(args.machines.read_text()))
    log(f"{entry['name']} ({entry['role']}) ready")


def cmd_network(_: argparse.Namespace) -> None:
    configure_networks(json.loads(CONFIG.read_text())["networks"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="provision this machine as NAME")
    setup.add_argument("name")
    setup.add_argument(
        "--machines",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "machines.json",
        help="the lab topology (default: vagrant/machines.json of this checkout)",
    )
    setup.set_defaults(func=cmd_setup)
    sub.add_parser("network", help="bring up this machine's lab addresses").set_defaults(
        func=cmd_network
    )
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
