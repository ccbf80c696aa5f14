"""A local Vagrant box (libvirt format) made from the lab image, cached by its inputs.

No box can be downloaded where the project is built and tested, and the public Debian box
would install the lab's packages over the network at every `vagrant up`. This box is the lab
image (same package list, same provisioning scripts) with what Vagrant expects of a box added
by box-customize.sh. Its cache key covers the image's key and the box's own inputs, so a change
to either makes a new box. Direct kernel boot: the image's kernel and initrd sit beside the
box, and the Vagrantfile hands copies of them to libvirt (SHADOWLUN_VAGRANT_KERNEL/INITRD).
"""
from __future__ import annotations

import glob
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import image as image_mod
from .errors import LabError
from .topology import VAGRANT_DIR

# Bump when the steps below change in a way the input files do not show.
BOX_FORMAT = 1
CUSTOMIZE = VAGRANT_DIR / "lab" / "box-customize.sh"
# Vagrant's insecure public key, as the vagrant package ships it (its keys/ folder).
INSECURE_KEY_GLOB = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"
VIRTUAL_SIZE_GIB = int(image_mod.ROOT_SIZE.removesuffix("G"))
BUILD_TOOLS = ("qemu-img", "tar", "mount", "umount", "chroot")


@dataclass(frozen=True)
class Box(image_mod.Image):
    """A cache folder laid out as the image's (vmlinuz, initrd.img, manifest.json when complete),
    with the box file instead of the root filesystem."""

    @property
    def key(self) -> str:
        return self.path.name.removeprefix("box-")

    @property
    def name(self) -> str:
        """The name `vagrant box add` gives it, and config.vm.box (SHADOWLUN_VAGRANT_BOX)."""
        return f"shadowlun/lab-{self.key}"

    @property
    def file(self) -> Path:
        return self.path / "shadowlun-lab.box"


def insecure_key() -> Path:
    found = sorted(glob.glob(INSECURE_KEY_GLOB))
    if not found:
        raise LabError(f"Vagrant's insecure public key not found ({INSECURE_KEY_GLOB}): "
                       "is the vagrant package installed? (run `make setup`)")
    return Path(found[-1])


def box_key(image: image_mod.Image) -> str:
    h = hashlib.sha256(f"format={BOX_FORMAT}\nimage={image.path.name}\n".encode())
    for f in (CUSTOMIZE, insecure_key()):
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_box(suite: str, log: Callable[[str], None] = print) -> tuple[Box, bool]:
    """The cached box for these inputs (and the lab image under it), built if missing."""
    image, _ = image_mod.ensure_image(suite, log)
    box = Box(image_mod.cache_root() / f"box-{box_key(image)}")
    return box, image_mod.ensure_cached(box, "box.lock", lambda partial: build(image, partial, box.key, log))


def _customize(rootfs: Path, build_log: Path) -> None:
    """box-customize.sh in a loop-mounted copy of the image's root filesystem."""
    with tempfile.TemporaryDirectory(prefix="shadowlun-box-") as mnt:
        image_mod._run(["mount", "-o", "loop", str(rootfs), mnt], build_log, 60, "mount the box's root")
        resolv = Path(mnt) / "etc" / "resolv.conf"
        saved = resolv.read_bytes() if resolv.exists() else None
        try:
            inside = Path(mnt) / "tmp" / "shadowlun-box"
            inside.mkdir()
            shutil.copy(CUSTOMIZE, inside / CUSTOMIZE.name)
            shutil.copy(insecure_key(), inside / "vagrant.pub")
            resolv.unlink(missing_ok=True)
            shutil.copy("/etc/resolv.conf", resolv)  # apt in the chroot, for sudo and rsync
            image_mod._run(["chroot", mnt, "sh", f"/tmp/shadowlun-box/{CUSTOMIZE.name}",
                            "/tmp/shadowlun-box/vagrant.pub"], build_log, 600, CUSTOMIZE.name)
            shutil.rmtree(inside)
        finally:
            resolv.unlink(missing_ok=True)
            if saved is not None:
                resolv.write_bytes(saved)
            image_mod._run(["umount", mnt], build_log, 60, "umount the box's root")


def build(image: image_mod.Image, dest: Path, key: str, log: Callable[[str], None]) -> None:
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"cannot build the Vagrant box: missing {', '.join(missing)} (run `make setup`)")
    started = time.monotonic()
    build_log = dest / "build.log"
    log(f"vagrant box {key}: from lab image {image.path.name}...")
    rootfs = dest / "root.raw"
    subprocess.run(["cp", "--sparse=always", str(image.rootfs), str(rootfs)], check=True)
    _customize(rootfs, build_log)
    image_mod._run(["qemu-img", "convert", "-O", "qcow2", str(rootfs), str(dest / "box.img")],
                   build_log, 600, "qemu-img convert")
    rootfs.unlink()
    (dest / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": VIRTUAL_SIZE_GIB}) + "\n")
    image_mod._run(["tar", "-cf", str(dest / "shadowlun-lab.box"), "-C", str(dest), "metadata.json", "box.img"],
                   build_log, 600, "tar the box")
    (dest / "box.img").unlink()
    shutil.copy(image.kernel, dest / "vmlinuz")
    shutil.copy(image.initrd, dest / "initrd.img")
    manifest = {"key": key, "format": BOX_FORMAT, "image": image.path.name,
                "build_seconds": round(time.monotonic() - started, 1)}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"vagrant box {key}: built in {manifest['build_seconds']} s")
