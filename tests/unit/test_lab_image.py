"""Unit tests of vagrant/lab/image.py: input key, cache dir, package list, apt sources, cache hit/build."""
from __future__ import annotations

import json
import shutil

import pytest

from lab import image as image_mod
from lab.errors import LabError
from lab.image import INPUT_FILES, Image, cache_root, ensure_image, host_apt_sources, input_key, packages
from lab.topology import VAGRANT_DIR

REQUIRED_PACKAGES = {
    "linux-image-amd64", "lvm2", "thin-provisioning-tools", "targetcli-fb", "python3-rtslib-fb",
    "open-iscsi", "python3-pyudev", "python3-pyroute2", "openssh-server",
}


# -- input_key -------------------------------------------------------------------------------

@pytest.fixture
def fake_vagrant(tmp_path, monkeypatch):
    """Copies of the image inputs under a tmp VAGRANT_DIR (input_key names files relative to it)."""
    root = tmp_path / "vagrant"
    copies = []
    for f in INPUT_FILES:
        dst = root / f.relative_to(VAGRANT_DIR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
        copies.append(dst)
    monkeypatch.setattr(image_mod, "VAGRANT_DIR", root)
    return tuple(copies)


def test_input_files_exist_and_cover_packages_provisioning_and_customize():
    assert all(f.is_file() for f in INPUT_FILES)
    names = {f.relative_to(VAGRANT_DIR).as_posix() for f in INPUT_FILES}
    assert names == {"provision/packages.txt", "provision/common.sh", "lab/image-customize.sh"}


def test_input_key_is_stable_and_short():
    k = input_key("bookworm")
    assert k == input_key("bookworm")
    assert len(k) == 16 and int(k, 16) >= 0


def test_input_key_of_copies_equals_the_real_key(fake_vagrant, monkeypatch):
    # Same relative names and contents: the key does not depend on where the checkout is.
    of_copies = input_key("bookworm", fake_vagrant)
    monkeypatch.setattr(image_mod, "VAGRANT_DIR", VAGRANT_DIR)
    assert of_copies == input_key("bookworm", INPUT_FILES) == input_key("bookworm")


def test_input_key_changes_with_suite(fake_vagrant):
    assert input_key("bookworm", fake_vagrant) != input_key("trixie", fake_vagrant)


@pytest.mark.parametrize("index", range(len(INPUT_FILES)))
def test_input_key_changes_when_any_input_changes(fake_vagrant, index):
    before = input_key("bookworm", fake_vagrant)
    f = fake_vagrant[index]
    f.write_bytes(f.read_bytes() + b"\n# changed\n")
    assert input_key("bookworm", fake_vagrant) != before


def test_input_key_changes_with_format(fake_vagrant, monkeypatch):
    before = input_key("bookworm", fake_vagrant)
    monkeypatch.setattr(image_mod, "IMAGE_FORMAT", image_mod.IMAGE_FORMAT + 1)
    assert input_key("bookworm", fake_vagrant) != before


def test_input_key_distinguishes_content_moving_between_files(fake_vagrant):
    a, b = fake_vagrant[0], fake_vagrant[1]
    a.write_bytes(b"xy")
    b.write_bytes(b"z")
    k1 = input_key("bookworm", fake_vagrant)
    a.write_bytes(b"x")
    b.write_bytes(b"yz")
    assert input_key("bookworm", fake_vagrant) != k1


def test_input_key_depends_on_the_file_names(fake_vagrant, monkeypatch):
    before = input_key("bookworm", fake_vagrant)
    renamed = fake_vagrant[1].with_name("other.sh")
    fake_vagrant[1].rename(renamed)
    assert input_key("bookworm", (fake_vagrant[0], renamed, fake_vagrant[2])) != before


# -- cache_root ------------------------------------------------------------------------------

def test_cache_root_prefers_shadowlun_lab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWLUN_LAB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "c"


def test_cache_root_then_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SHADOWLUN_LAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "shadowlun-lab"


@pytest.mark.parametrize("empty", ["SHADOWLUN_LAB_CACHE", "XDG_CACHE_HOME"])
def test_cache_root_then_home_cache(monkeypatch, tmp_path, empty):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SHADOWLUN_LAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv(empty, "")  # set but empty counts as unset
    assert cache_root() == tmp_path / "home" / ".cache" / "shadowlun-lab"


# -- packages ----------------------------------------------------------------------------------

def test_packages_include_what_the_lab_needs():
    pkgs = packages()
    assert REQUIRED_PACKAGES <= set(pkgs)
    assert len(pkgs) == len(set(pkgs))
    assert all(p and not p.startswith("#") and " " not in p for p in pkgs)


def test_packages_skip_comments_and_blank_lines(tmp_path):
    f = tmp_path / "packages.txt"
    f.write_text("# a comment\n\nlvm2\n   \n  # indented comment\n  open-iscsi  \n\tkmod\n")
    assert packages(f) == ["lvm2", "open-iscsi", "kmod"]


# -- host_apt_sources ----------------------------------------------------------------------------

def test_mirror_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWLUN_LAB_MIRROR", "http://deb.example.org/debian")
    monkeypatch.setattr(image_mod, "APT_SOURCES", (tmp_path / "missing.list",))
    assert host_apt_sources() == ["http://deb.example.org/debian"]


def test_host_sources_found_in_list_and_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SHADOWLUN_LAB_MIRROR", raising=False)
    main = tmp_path / "sources.list"
    main.write_text("deb http://deb.debian.org/debian bookworm main\n")
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "b-debian.sources").write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n")
    (d / "a-debian.list").write_text("deb http://security.debian.org/debian-security bookworm-security main\n")
    (d / "other.list").write_text("deb https://download.docker.com/linux/ubuntu jammy stable\n")
    (d / "debian.list.save").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (d / "subdir.list").mkdir()
    monkeypatch.setattr(image_mod, "APT_SOURCES", (main, d))
    assert host_apt_sources() == [str(main), str(d / "a-debian.list"), str(d / "b-debian.sources")]


def test_no_sources_raises_lab_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SHADOWLUN_LAB_MIRROR", raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "ubuntu.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    monkeypatch.setattr(image_mod, "APT_SOURCES", (tmp_path / "sources.list", d))
    with pytest.raises(LabError, match="SHADOWLUN_LAB_MIRROR"):
        host_apt_sources()


def test_missing_source_paths_raise_lab_error_not_oserror(monkeypatch, tmp_path):
    monkeypatch.delenv("SHADOWLUN_LAB_MIRROR", raising=False)
    monkeypatch.setattr(image_mod, "APT_SOURCES", (tmp_path / "nope.list", tmp_path / "nope.d"))
    with pytest.raises(LabError):
        host_apt_sources()


# -- Image ---------------------------------------------------------------------------------------

def test_image_paths_and_host_key(tmp_path):
    img = Image(tmp_path)
    assert img.kernel == tmp_path / "vmlinuz"
    assert img.initrd == tmp_path / "initrd.img"
    assert img.rootfs == tmp_path / "root.raw"
    assert img.ssh_key == tmp_path / "id_ed25519"
    (tmp_path / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAC3Nza root@builder\n")
    assert img.host_key == "ssh-ed25519 AAAAC3Nza"
    assert not img.is_complete()
    (tmp_path / "manifest.json").write_text('{"key": "k"}')
    assert img.is_complete() and img.manifest == {"key": "k"}


# -- ensure_image -------------------------------------------------------------------------------

@pytest.fixture
def cache(monkeypatch, tmp_path):
    root = tmp_path / "cache"
    monkeypatch.setenv("SHADOWLUN_LAB_CACHE", str(root))
    return root


def _no_build(*a, **kw):
    raise AssertionError("build must not run on a cache hit")


def test_cache_hit_does_not_build(cache, monkeypatch):
    key = input_key("bookworm")
    done = cache / f"image-{key}"
    done.mkdir(parents=True)
    (done / "manifest.json").write_text("{}")
    monkeypatch.setattr(image_mod, "build", _no_build)

    def no_lock(fd, op):  # a hit must not wait behind another run's (long) build of another key
        raise AssertionError("a cache hit must not take the build lock")

    monkeypatch.setattr(image_mod.fcntl, "flock", no_lock)
    img, built = ensure_image("bookworm", log=lambda m: None)
    assert img == Image(done) and built is False


def test_incomplete_image_dir_is_not_a_hit(cache, monkeypatch):
    key = input_key("bookworm")
    calls = []

    def fake_build(dest, suite, k, log):
        calls.append(dest)
        (dest / "manifest.json").write_text(json.dumps({"key": k}))

    # A .partial left by a crashed build is thrown away, not reused.
    stale = cache / f"image-{key}.partial"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    monkeypatch.setattr(image_mod, "build", fake_build)
    img, built = ensure_image("bookworm", log=lambda m: None)
    assert built is True and calls == [stale]
    assert not stale.exists()
    assert not (img.path / "junk").exists()
    assert img.manifest == {"key": key}


def test_missing_image_is_built_in_partial_then_renamed(cache, monkeypatch):
    seen = {}

    def fake_build(dest, suite, key, log):
        seen.update(dest=dest, suite=suite, key=key)
        assert dest.name == f"image-{key}.partial" and dest.is_dir() and not any(dest.iterdir())
        assert not (cache / f"image-{key}").exists()  # nobody sees a half image
        (dest / "vmlinuz").write_text("k")
        (dest / "manifest.json").write_text(json.dumps({"key": key}))

    monkeypatch.setattr(image_mod, "build", fake_build)
    img, built = ensure_image("bookworm", log=lambda m: None)
    assert built is True
    assert seen["suite"] == "bookworm" and seen["key"] == input_key("bookworm")
    assert img.path == cache / f"image-{seen['key']}"
    assert img.is_complete() and (img.path / "vmlinuz").read_text() == "k"
    assert not seen["dest"].exists()
    # The second call is a cache hit.
    monkeypatch.setattr(image_mod, "build", _no_build)
    assert ensure_image("bookworm", log=lambda m: None) == (img, False)


def test_failed_build_leaves_no_image(cache, monkeypatch):
    def failing_build(dest, suite, key, log):
        (dest / "manifest.json").write_text("{}")  # even a manifest in .partial is not an image
        raise LabError("mmdebstrap failed")

    monkeypatch.setattr(image_mod, "build", failing_build)
    with pytest.raises(LabError, match="mmdebstrap"):
        ensure_image("bookworm", log=lambda m: None)
    assert not (cache / f"image-{input_key('bookworm')}").exists()


def test_different_suite_is_a_different_image(cache, monkeypatch):
    def fake_build(dest, suite, key, log):
        (dest / "manifest.json").write_text(json.dumps({"suite": suite}))

    monkeypatch.setattr(image_mod, "build", fake_build)
    a, _ = ensure_image("bookworm", log=lambda m: None)
    b, built = ensure_image("trixie", log=lambda m: None)
    assert built is True and a.path != b.path
    assert a.manifest["suite"] == "bookworm" and b.manifest["suite"] == "trixie"


def test_build_refuses_without_tools(tmp_path, monkeypatch):
    monkeypatch.setattr(image_mod.shutil, "which", lambda name: None)
    with pytest.raises(LabError, match="mmdebstrap"):
        image_mod.build(tmp_path, "bookworm", "k", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_run_reports_failure_with_log_tail(tmp_path):
    log = tmp_path / "build.log"
    with pytest.raises(LabError) as e:
        image_mod._run(["sh", "-c", "echo first; echo boom >&2; exit 3"], log, 10, "thing")
    assert "thing failed (exit 3)" in str(e.value) and "boom" in str(e.value)
    assert "$ sh -c" in log.read_text()


def test_run_timeout_is_a_lab_error(tmp_path):
    with pytest.raises(LabError, match="did not finish"):
        image_mod._run(["sh", "-c", "exec sleep 5"], tmp_path / "build.log", 0.2, "slow")


def test_run_success(tmp_path):
    log = tmp_path / "build.log"
    image_mod._run(["sh", "-c", "echo $LC_ALL"], log, 10, "ok")
    assert log.read_text().splitlines()[-1] == "C"


def test_image_finished_by_another_run_while_waiting_for_the_lock_is_not_rebuilt(cache, monkeypatch):
    key = input_key("bookworm")
    done = cache / f"image-{key}"
    real_flock = image_mod.fcntl.flock

    def flock_while_another_run_finishes(fd, op):
        done.mkdir(parents=True)
        (done / "manifest.json").write_text("{}")
        return real_flock(fd, op)

    monkeypatch.setattr(image_mod.fcntl, "flock", flock_while_another_run_finishes)
    monkeypatch.setattr(image_mod, "build", _no_build)
    assert ensure_image("bookworm", log=lambda m: None) == (Image(done), False)
    assert not (cache / f"image-{key}.partial").exists()


def test_build_step_tells_its_stages_and_fetched_packages(tmp_path):
    said: list[str] = []
    script = ("echo 'Get:1 http://deb bookworm/main amd64 libc6'; echo 'Get:2 x'; "
              "echo 'I: extracting archives...'; echo noise; echo 'I: installing remaining packages'")
    image_mod._run(["sh", "-c", script], tmp_path / "build.log", 60, "step", progress=said.append)
    assert [s.split("] ", 1)[1] for s in said] == ["extracting archives... (2 packages fetched)",
                                                    "installing remaining packages (2 packages fetched)"]
    assert "noise" in (tmp_path / "build.log").read_text()  # the log keeps every line


def test_build_step_heartbeat_when_a_stage_is_quiet(tmp_path, monkeypatch):
    monkeypatch.setattr(image_mod, "HEARTBEAT_S", 0.2)
    said: list[str] = []
    image_mod._run(["sh", "-c", "echo 'I: installing essential packages...'; sleep 0.7; echo done"],
                   tmp_path / "build.log", 60, "step", progress=said.append)
    assert said[0].endswith("installing essential packages...")
    assert any("still at: installing essential packages..." in s for s in said[1:])


def test_build_step_over_its_time_is_killed_and_said(tmp_path):
    with pytest.raises(LabError, match="did not finish within 1 s"):
        image_mod._run(["sleep", "30"], tmp_path / "build.log", 1, "step")


def test_build_step_failure_shows_the_log_tail(tmp_path):
    with pytest.raises(LabError, match=r"(?s)exit 3.*last words"):
        image_mod._run(["sh", "-c", "echo 'last words'; exit 3"], tmp_path / "build.log", 60, "step")


def test_build_step_heartbeat_while_a_line_is_unfinished(tmp_path, monkeypatch):
    monkeypatch.setattr(image_mod, "HEARTBEAT_S", 0.2)
    said: list[str] = []
    image_mod._run(["sh", "-c", "echo 'I: configuring'; sleep 0.1; printf 'Progress: 50%%'; sleep 0.9; echo"],
                   tmp_path / "build.log", 60, "step", progress=said.append)
    assert sum("still at: configuring" in s for s in said) >= 2  # every 0.2 s, not once the line ends
