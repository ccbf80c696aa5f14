"""Unit tests of vagrant/lab/box.py: the box's cache key follows its inputs, and a missing
Vagrant key is said plainly. (The box itself is built and booted by tests/system/test_vagrant.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from lab import box as box_mod
from lab.box import Box, box_key
from lab.errors import LabError
from lab.image import Image


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """The box's inputs as copies the test may edit: customize script and Vagrant's public key."""
    script, key = tmp_path / "box-customize.sh", tmp_path / "keys" / "vagrant.pub"
    key.parent.mkdir()
    script.write_text(box_mod.CUSTOMIZE.read_text())
    key.write_text("ssh-rsa AAAA vagrant insecure public key\n")
    monkeypatch.setattr(box_mod, "CUSTOMIZE", script)
    monkeypatch.setattr(box_mod, "INSECURE_KEY_GLOB", str(tmp_path / "*" / "vagrant.pub"))
    return script, key


def test_the_key_changes_with_the_image_the_script_and_vagrants_key(inputs):
    script, key = inputs
    image = Image(Path("/cache/image-aaaa"))
    first = box_key(image)
    assert box_key(image) == first                                   # stable
    assert box_key(Image(Path("/cache/image-bbbb"))) != first         # another lab image
    script.write_text(script.read_text() + "\n# changed\n")
    second = box_key(image)
    key.write_text("ssh-ed25519 AAAA another key\n")
    assert len({first, second, box_key(image)}) == 3


def test_names_and_files_follow_the_cache_folder():
    box = Box(Path("/cache/box-0123abcd"))
    assert box.key == "0123abcd" and box.name == "shadowlun/lab-0123abcd"
    assert box.file == Path("/cache/box-0123abcd/shadowlun-lab.box")
    assert (box.kernel.name, box.initrd.name) == ("vmlinuz", "initrd.img")
    assert not box.is_complete()


def test_without_vagrant_the_key_cannot_be_made(inputs, monkeypatch, tmp_path):
    monkeypatch.setattr(box_mod, "INSECURE_KEY_GLOB", str(tmp_path / "nowhere" / "vagrant.pub"))
    with pytest.raises(LabError, match="insecure public key not found.*make setup"):
        box_key(Image(Path("/cache/image-aaaa")))


def test_the_customize_script_gives_what_vagrant_expects_of_a_box():
    text = box_mod.CUSTOMIZE.read_text()
    for needed in ("useradd", "NOPASSWD", "authorized_keys", "sudo rsync", "DHCP=ipv4", "9p"):
        assert needed in text, needed
