"""The lab's machines and networks, read from vagrant/machines.json (the Vagrantfile reads it too)."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

VAGRANT_DIR = Path(__file__).resolve().parent.parent
CHECKOUT = VAGRANT_DIR.parent
MACHINES_FILE = VAGRANT_DIR / "machines.json"


@dataclass(frozen=True)
class Disk:
    name: str
    size_gib: int
    serial: str


@dataclass(frozen=True)
class Machine:
    name: str
    role: str
    memory_mib: int
    cpus: int
    addresses: dict[str, str]
    macs: dict[str, str]
    disks: tuple[Disk, ...]
    multipath: bool = False  # dm-multipath over both SAN paths (else one path, no multipathd)


@dataclass(frozen=True)
class Topology:
    suite: str
    networks: dict[str, ipaddress.IPv4Network]
    machines: tuple[Machine, ...]

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(f"no lab machine {name!r}; known: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.machines]


def load(path: Path = MACHINES_FILE) -> Topology:
    raw = json.loads(path.read_text())
    networks = {n: ipaddress.ip_network(spec["cidr"]) for n, spec in raw["networks"].items()}
    machines = []
    for m in raw["machines"]:
        for net in networks:
            if ipaddress.ip_address(m["addresses"][net]) not in networks[net]:
                raise ValueError(f"{m['name']}: {net} address {m['addresses'][net]} not in {networks[net]}")
        machines.append(
            Machine(
                name=m["name"],
                role=m["role"],
                memory_mib=int(m["memory_mib"]),
                cpus=int(m["cpus"]),
                addresses=dict(m["addresses"]),
                macs=dict(m["macs"]),
                disks=tuple(Disk(d["name"], int(d["size_gib"]), d["serial"]) for d in m["disks"]),
                multipath=bool(m.get("multipath", False)),
            )
        )
    return Topology(suite=raw["suite"], networks=networks, machines=tuple(machines))
