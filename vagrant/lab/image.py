"""The lab's Debian image: built from Debian packages with mmdebstrap, cached by its inputs.

One image serves all three VMs (each boots a copy-on-write overlay of it). The cache lives
outside the checkout, in a folder named by a hash of everything that decides the image's
content (package list, provisioning scripts, suite), so a second run reuses it and a change
to any input builds a new one. The key pair the tests log in with is made with the image,
and the image's SSH host key is recorded so the lab pins it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError
from .topology import VAGRANT_DIR

# Bump when the build steps in this module change in a way the input files do not show.
IMAGE_FORMAT = 1
ROOT_SIZE = "6G"
PROVISION = VAGRANT_DIR / "provision"
INPUT_FILES = (
    PROVISION / "packages.txt",
    PROVISION / "common.sh",
    VAGRANT_DIR / "lab" / "image-customize.sh",
)
BUILD_TIMEOUT_S = 1800
HEARTBEAT_S = 30.0  # the longest a build goes without a line of progress
BUILD_TOOLS = ("mmdebstrap", "mke2fs", "ssh-keygen", "dpkg-query")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def cache_root() -> Path:
    """$SHADOWLUN_LAB_CACHE, else $XDG_CACHE_HOME/shadowlun-lab, else ~/.cache/shadowlun-lab."""
    if os.environ.get("SHADOWLUN_LAB_CACHE"):
        return Path(os.environ["SHADOWLUN_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shadowlun-lab"


def packages(path: Path = PROVISION / "packages.txt") -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def input_key(suite: str, files: tuple[Path, ...] = INPUT_FILES) -> str:
    """A short hash of everything that decides the image's content."""
    h = hashlib.sha256(f"format={IMAGE_FORMAT}\nsuite={suite}\n".encode())
    for f in files:
        h.update(f"{f.relative_to(VAGRANT_DIR)}\n".encode())
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    path: Path

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.path / "root.raw"

    @property
    def ssh_key(self) -> Path:
        return self.path / "id_ed25519"

    @property
    def host_key(self) -> str:
        """The image's SSH host public key ('ssh-ed25519 AAAA...'), pinned by the lab."""
        return " ".join((self.path / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def is_complete(self) -> bool:
        return (self.path / "manifest.json").is_file()


def _names_debian(sources: Path) -> bool:
    """A sources file with an active (uncommented) Debian archive entry."""
    return any("debian" in line and not line.lstrip().startswith("#")
               for line in sources.read_text().splitlines())


def host_apt_sources() -> list[str]:
    """Where the image's packages come from: $SHADOWLUN_LAB_MIRROR, else this host's own apt
    sources (mmdebstrap takes a sources file as a mirror argument)."""
    if os.environ.get("SHADOWLUN_LAB_MIRROR"):
        return [os.environ["SHADOWLUN_LAB_MIRROR"]]
    found: list[str] = []
    for src in APT_SOURCES:
        files = sorted(src.iterdir()) if src.is_dir() else [src]
        for f in files:
            if f.suffix in (".list", ".sources") and f.is_file() and _names_debian(f):
                found.append(str(f))
    if not found:
        raise LabError(
            "no Debian apt sources found on this host to build the lab image from; "
            "set SHADOWLUN_LAB_MIRROR to a Debian mirror URL or a sources file"
        )
    return found


def ensure_image(suite: str, log: Callable[[str], None] = print) -> tuple[Image, bool]:
    """The cached image for these inputs, built first if missing. Returns (image, built)."""
    key = input_key(suite)
    image = Image(cache_root() / f"image-{key}")
    return image, ensure_cached(image, "build.lock", lambda partial: build(partial, suite, key, log))


def ensure_cached(item: Image, lock_name: str, build_into: Callable[[Path], None]) -> bool:
    """`item`'s cache folder, built by `build_into` if not complete yet; True if built now.
    Two test runs at once must not build twice or see half a build: a lock, and a partial
    folder renamed into place when done."""
    root = item.path.parent
    root.mkdir(parents=True, exist_ok=True)
    if item.is_complete():
        return False
    with open(root / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if item.is_complete():
            return False
        partial = root / f"{item.path.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build_into(partial)
        shutil.rmtree(item.path, ignore_errors=True)  # an incomplete leftover, never a good build
        partial.rename(item.path)
    return True


def _run(argv: list[str], log_file: Path, timeout: float, what: str,
         progress: Callable[[str], None] | None = None) -> None:
    """Run a build step with its output appended to `log_file`. With `progress`, the step's
    stage lines are told to it as they come (see `_Progress`), so a long build shows it works."""
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
        watch = _Progress(progress) if progress else None
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        fd, pending = proc.stdout.fileno(), b""
        while True:  # chunks, not readline: a line without its end yet must not stop the heartbeat
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise LabError(f"{what} did not finish within {timeout:.0f} s; see {log_file}")
            if not select.select([fd], [], [], min(left, HEARTBEAT_S))[0]:
                if watch:
                    watch.heartbeat()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out.write(chunk.decode(errors="replace"))
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines if watch else ():
                watch.line(line.decode(errors="replace").rstrip("\r"))
        returncode = proc.wait()
    if returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise LabError(f"{what} failed (exit {returncode}); last lines of {log_file}:\n{tail}")


class _Progress:
    """What a newcomer sees of a build of several minutes: mmdebstrap's stage lines ("I: ...",
    e.g. downloading, extracting, installing, each hook), the packages fetched so far (apt's
    "Get:" lines) and, when nothing was said for HEARTBEAT_S, how long the stage has run."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.started = say, time.monotonic()
        self.stage, self.stage_started, self.fetched, self.said_at = "starting", self.started, 0, self.started

    def _tell(self, text: str) -> None:
        self.say(f"  [{time.monotonic() - self.started:4.0f} s] {text}")
        self.said_at = time.monotonic()

    def line(self, line: str) -> None:
        if line.startswith("Get:"):
            self.fetched += 1
        elif line.startswith("I: "):
            self.stage, self.stage_started = line[3:].strip()[:100], time.monotonic()
            self._tell(self.stage + (f" ({self.fetched} packages fetched)" if self.fetched else ""))
        if time.monotonic() - self.said_at >= HEARTBEAT_S:
            self.heartbeat()

    def heartbeat(self) -> None:
        fetched = f", {self.fetched} packages fetched" if self.fetched else ""
        self._tell(f"still at: {self.stage} ({time.monotonic() - self.stage_started:.0f} s{fetched})")


def build(dest: Path, suite: str, key: str, log: Callable[[str], None]) -> None:
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"cannot build the lab image: missing {', '.join(missing)} (run `make setup`)")
    started = time.monotonic()
    build_log = dest / "build.log"
    staging = dest / "staging"
    staging.mkdir()
    for f in INPUT_FILES:
        shutil.copy(f, staging / f.name)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "shadowlun-lab",
          "-f", str(dest / "id_ed25519")], build_log, 60, "ssh-keygen")
    shutil.copy(dest / "id_ed25519.pub", staging / "authorized_keys")

    rootfs = dest / "rootfs"
    inside = "/tmp/shadowlun-build"
    log(f"lab image {key}: mmdebstrap {suite} ({len(packages())} packages)...")
    _run(
        [
            "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
            "--include=" + ",".join(packages()),
            "--aptopt=Acquire::Retries \"3\"",
            f"--customize-hook=mkdir -p \"$1\"{inside}",
            f"--customize-hook=copy-in {' '.join(str(p) for p in sorted(staging.iterdir()))} {inside}",
            f"--customize-hook=chroot \"$1\" sh {inside}/common.sh {inside}/packages.txt",
            f"--customize-hook=chroot \"$1\" sh {inside}/image-customize.sh {inside}/authorized_keys",
            f"--customize-hook=rm -rf \"$1\"{inside}",
            suite, str(rootfs), *host_apt_sources(),
        ],
        build_log, BUILD_TIMEOUT_S, "mmdebstrap", progress=log,
    )
    kernel = os.readlink(rootfs / "vmlinuz")  # boot/vmlinuz-<release>
    shutil.copy(rootfs / kernel, dest / "vmlinuz")
    shutil.copy(rootfs / os.readlink(rootfs / "initrd.img"), dest / "initrd.img")
    shutil.copy(rootfs / "etc/ssh/ssh_host_ed25519_key.pub", dest / "ssh_host_ed25519_key.pub")
    versions = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"],
        check=True, text=True, capture_output=True,
    ).stdout.splitlines()
    log(f"lab image {key}: mke2fs {ROOT_SIZE} root filesystem...")
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "shadowlun-root", "-d", str(rootfs),
          str(dest / "root.raw"), ROOT_SIZE], build_log, 600, "mke2fs")
    shutil.rmtree(rootfs)
    shutil.rmtree(staging)
    manifest = {
        "key": key,
        "format": IMAGE_FORMAT,
        "suite": suite,
        "inputs": [str(f.relative_to(VAGRANT_DIR)) for f in INPUT_FILES],
        "kernel": kernel.removeprefix("boot/vmlinuz-"),
        "build_seconds": round(time.monotonic() - started, 1),
        "packages": versions,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"lab image {key}: built in {manifest['build_seconds']} s")
