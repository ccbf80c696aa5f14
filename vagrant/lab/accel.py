"""KVM when it really works, TCG otherwise.

/dev/kvm existing is not enough: on some hosts (nested, PVM) QEMU aborts on KVM or the guest
hangs. So boot the image's kernel once under KVM with no root disk and panic=-1: a working KVM
reaches the panic and QEMU exits within seconds. The answer is cached per host kernel and QEMU
build; $SHADOWLUN_LAB_ACCEL=kvm|tcg overrides it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import LabError

PROBE_TIMEOUT_S = 30
QEMU = "qemu-system-x86_64"
CPU = {"kvm": "host", "tcg": "max"}


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise LabError(f"{QEMU} not found (run `make setup`)") from None
    return out.splitlines()[0]


def probe_kvm(kernel: Path) -> tuple[bool, str]:
    """Boot `kernel` under KVM until its expected panic; (works, why)."""
    with tempfile.TemporaryDirectory(prefix="shadowlun-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", f"file:{console}",
                "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/shadowlun-no-root"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"guest kernel did not reach its test panic within {PROBE_TIMEOUT_S} s under KVM"
        text = console.read_text(errors="replace") if console.exists() else ""
        if proc.returncode == 0 and "Kernel panic" in text:
            return True, "guest kernel booted under KVM"
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"QEMU exited {proc.returncode} under KVM: {err}"


def choose(kernel: Path, cache_dir: Path, log: Callable[[str], None] = print) -> str:
    forced = os.environ.get("SHADOWLUN_LAB_ACCEL")
    if forced:
        if forced not in CPU:
            raise LabError(f"SHADOWLUN_LAB_ACCEL={forced!r}: expected one of {', '.join(CPU)}")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("lab: no usable /dev/kvm, using TCG (software emulation)")
        return "tcg"
    key = hashlib.sha256(f"{platform.release()}\n{qemu_version()}".encode()).hexdigest()[:16]
    cached = cache_dir / f"accel-{key}.json"
    if cached.exists():
        answer = json.loads(cached.read_text())
    else:
        works, why = probe_kvm(kernel)
        answer = {"accel": "kvm" if works else "tcg", "why": why}
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(answer) + "\n")
    log(f"lab: accelerator {answer['accel']} ({answer['why']})")
    return answer["accel"]
