"""The array agent's configuration (/etc/shadowlun/array.json) and the SAN portals it binds."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_FILE = Path("/etc/shadowlun/array.json")


@dataclass
class ArrayConfig:
    target_iqn: str
    san_cidrs: list[str]  # the SAN networks; a portal on this machine's address in each
    vg: str = "shadowlun"
    pool: str = "pool"
    listen: str = "127.0.0.1"
    port: int = 8443
    state_dir: str = "/var/lib/shadowlun"
    pool_full_percent: float = 90.0
    max_volume_bytes: int = 16 << 40  # one volume's virtual size, at most
    overcommit_ratio: float = 10.0    # the volumes' and copies' virtual sizes, at most this times the pool
    prepared_set_max_age_s: float = 1800.0  # a set prepared and never committed is aborted after this
    token_file: str = "/etc/shadowlun/agent.token"  # the admin's bearer token
    access_dir: str = "/etc/shadowlun/access"      # <host name>.json: each configured host's access file
    cert_file: str = "/etc/shadowlun/agent.crt"
    key_file: str = "/etc/shadowlun/agent.key"
    hosts: dict[str, str] = field(default_factory=dict)  # initiator -> host name, registered at start

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> "ArrayConfig":
        raw = json.loads(path.read_text())
        if "san_cidr" in raw:  # a config from before there could be several SAN networks
            if "san_cidrs" in raw:
                raise ValueError(f"{path}: both san_cidr and san_cidrs; keep san_cidrs")
            raw["san_cidrs"] = [raw.pop("san_cidr")]
        return cls(**raw)


def san_portals(cidrs: list[str]) -> list[str]:
    """This machine's addresses inside the SAN networks (pyroute2): portals bind only there,
    one per network address, so a host can reach the target on every path. In the order of the
    networks: a single-path host uses the first."""
    from pyroute2 import IPRoute

    nets = [ipaddress.ip_network(c) for c in cidrs]
    with IPRoute() as ipr:
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
    return [a for n in nets for a in sorted(a for a in addrs if a and ipaddress.ip_address(a) in n)]
