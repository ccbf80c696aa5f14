"""Unit tests of targets.lvm: parsing recorded lvs JSON, the commands Lvm runs (fake runner),
and run_lvm on harmless commands. No root, no LVM."""
from __future__ import annotations

import json
import sys

import pytest

from targets import lvm as lvm_mod
from targets.dm import DmError
from targets.lvm import (
    ThinDevice,
    dm_name,
    parse_thin_devices,
    LV_FIELDS,
    OWNER_TAG,
    Lvm,
    LvmError,
    parse_lvs,
    pool_status,
    run_lvm,
    tags_args,
)

# `lvs --reportformat json --units b --nosuffix -o <LV_FIELDS> shadowlun` on the lab array, verbatim.
LVS_REPORT = """\
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "lv_uuid":"zzUioN-dWRh-fVWa-w11e-CYdd-S9Mn-ljgilq", "lv_size":"30916214784", "lv_attr":"twi-aotz--", "pool_lv":"", "origin":"", "lv_tags":"", "data_percent":"0.00", "metadata_percent":"10.46"},
                  {"lv_name":"s1", "lv_uuid":"lSob3x-MaFC-tftG-YkQu-o4YZ-x3vB-3RHkqD", "lv_size":"67108864", "lv_attr":"Vwi---tz-k", "pool_lv":"pool", "origin":"t1", "lv_tags":"shadowlun", "data_percent":"", "metadata_percent":""},
                  {"lv_name":"s3", "lv_uuid":"L1e8cn-j5cE-69jk-Cn0Z-RkWA-xTXl-Xbx0wN", "lv_size":"67108864", "lv_attr":"Vwi---tz-k", "pool_lv":"pool", "origin":"t1", "lv_tags":"", "data_percent":"", "metadata_percent":""},
                  {"lv_name":"t1", "lv_uuid":"UkjCSU-2RQA-4wNK-NBqv-Lln2-7NNn-SaysbE", "lv_size":"67108864", "lv_attr":"Vwi-a-tz--", "pool_lv":"pool", "origin":"", "lv_tags":"shadowlun,shadowlun.x=abc-1", "data_percent":"0.00", "metadata_percent":""}
              ]
          }
      ]
  }
"""

VG = "shadowlun"


@pytest.fixture
def lvs():
    return {lv.name: lv for lv in parse_lvs(LVS_REPORT, VG)}


# --- parse_lvs ---------------------------------------------------------------------------------

def test_parse_lvs_reads_every_row_in_order():
    assert [lv.name for lv in parse_lvs(LVS_REPORT, VG)] == ["pool", "s1", "s3", "t1"]


def test_the_recorded_report_has_exactly_the_fields_lvm_asks_for():
    row = json.loads(LVS_REPORT)["report"][0]["lv"][0]
    assert list(row) == LV_FIELDS.split(",")


def test_parse_lvs_fields(lvs):
    t1 = lvs["t1"]
    assert t1.vg == VG
    assert t1.uuid == "UkjCSU-2RQA-4wNK-NBqv-Lln2-7NNn-SaysbE"
    assert t1.size_bytes == 67108864 and isinstance(t1.size_bytes, int)
    assert lvs["pool"].size_bytes == 30916214784 and isinstance(lvs["pool"].size_bytes, int)
    assert t1.attr == "Vwi-a-tz--"
    assert t1.pool == "pool" and t1.origin == ""
    assert lvs["s1"].origin == "t1" and lvs["s1"].pool == "pool"
    assert lvs["pool"].pool == ""


def test_parse_lvs_tags(lvs):
    assert lvs["t1"].tags == ("shadowlun", "shadowlun.x=abc-1")
    assert lvs["s1"].tags == ("shadowlun",)
    assert lvs["s3"].tags == ()
    assert lvs["pool"].tags == ()
    assert all(isinstance(lv.tags, tuple) for lv in lvs.values())


def test_key_value_tag_lookup(lvs):
    assert lvs["t1"].tag("shadowlun.x") == "abc-1"
    assert lvs["t1"].tag("shadowlun.set") is None
    assert lvs["t1"].tag("shadowlun") is None  # the bare owner tag has no value
    assert lvs["s3"].tag("shadowlun.x") is None


def test_owned_means_the_owner_tag(lvs):
    assert OWNER_TAG == "shadowlun"
    assert {n for n, lv in lvs.items() if lv.owned} == {"s1", "t1"}


def test_active_is_the_fifth_attr_character(lvs):
    assert lvs["pool"].active is True
    assert lvs["t1"].active is True
    assert lvs["s1"].active is False
    assert lvs["s3"].active is False


def test_a_suspended_lv_counts_as_active_so_nobody_activates_it_again(lvs):
    """lvchange -ay on a suspended LV resumes it: whoever suspended it keeps it suspended."""
    from dataclasses import replace
    suspended = replace(lvs["t1"], attr="Vwi-s-tz--")
    assert suspended.active is True
    assert replace(lvs["t1"], attr="Vwi-d-tz--").active is False  # mapped without a table


def test_thin_pool_and_thin_volume(lvs):
    assert lvs["pool"].is_thin_pool and not lvs["pool"].is_thin_volume
    for name in ("s1", "s3", "t1"):
        assert lvs[name].is_thin_volume and not lvs[name].is_thin_pool


def test_percents_empty_is_none(lvs):
    assert lvs["pool"].data_percent == 0.0 and lvs["pool"].metadata_percent == 10.46
    assert lvs["t1"].data_percent == 0.0 and lvs["t1"].metadata_percent is None
    assert lvs["s1"].data_percent is None and lvs["s1"].metadata_percent is None


def test_device_path(lvs):
    assert lvs["t1"].device == "/dev/shadowlun/t1"
    assert parse_lvs(LVS_REPORT, "othervg")[0].device == "/dev/othervg/pool"


def test_parse_lvs_of_an_empty_vg():
    assert parse_lvs('{"report": [{"lv": []}]}', VG) == []


# --- pool_status -------------------------------------------------------------------------------

def test_pool_status(lvs):
    p = pool_status(list(lvs.values()), "pool")
    assert (p.group, p.name, p.size_bytes) == (VG, "pool", 30916214784)
    assert p.data_percent == 0.0 and p.metadata_percent == 10.46
    assert p.used_bytes == 0 and p.free_bytes == 30916214784


def test_pool_status_used_and_free_bytes():
    report = LVS_REPORT.replace('"data_percent":"0.00", "metadata_percent":"10.46"',
                                '"data_percent":"25.00", "metadata_percent":"10.46"')
    p = pool_status(parse_lvs(report, VG), "pool")
    assert p.data_percent == 25.0
    assert p.used_bytes == 30916214784 // 4
    assert p.free_bytes == 30916214784 - 30916214784 // 4
    assert isinstance(p.used_bytes, int) and isinstance(p.free_bytes, int)


def test_pool_status_missing_pool(lvs):
    with pytest.raises(LookupError):
        pool_status(list(lvs.values()), "nopool")


def test_pool_status_of_a_thin_volume_is_not_a_pool(lvs):
    with pytest.raises(LookupError):
        pool_status(list(lvs.values()), "t1")


# --- tags_args ---------------------------------------------------------------------------------

def test_tags_args_always_has_the_owner_tag():
    assert tags_args(None) == ["--addtag", "shadowlun"]
    assert tags_args({}) == ["--addtag", "shadowlun"]


def test_tags_args_key_values_in_order():
    assert tags_args({"shadowlun.set": "s", "shadowlun.snapshot": "x"}) == [
        "--addtag", "shadowlun", "--addtag", "shadowlun.set=s", "--addtag", "shadowlun.snapshot=x"]


# --- Lvm with a fake runner --------------------------------------------------------------------

class FakeRunner:
    """Records (argv, stdin); answers lvs from `rows`, and an `lvm` shell script by adding a row
    per `lvcreate -s` line whose name is not in `fail` (the lvm shell exits 0 regardless)."""

    def __init__(self, report: str = LVS_REPORT, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.rows = json.loads(report)["report"][0]["lv"]
        self.fail = set(fail)

    def __call__(self, argv, stdin):
        self.calls.append((list(argv), stdin))
        if argv[0] == "lvs":
            return json.dumps({"report": [{"lv": self.rows}]})
        if argv == ["lvm"]:
            for line in (stdin or "").splitlines():
                words = line.split()
                name = words[words.index("-n") + 1]
                if name not in self.fail:
                    tags = [words[i + 1] for i, w in enumerate(words) if w == "--addtag"]
                    self.rows.append({"lv_name": name, "lv_uuid": "u-" + name, "lv_size": "67108864",
                                      "lv_attr": "Vwi---tz-k", "pool_lv": "pool",
                                      "origin": words[-1].split("/")[1], "lv_tags": ",".join(tags),
                                      "data_percent": "", "metadata_percent": ""})
            return ""
        return ""

    def argvs(self, program: str) -> list[list[str]]:
        return [a for a, _ in self.calls if a[0] == program]


@pytest.fixture
def runner():
    return FakeRunner()


@pytest.fixture
def lv(runner):
    return Lvm(VG, "pool", run=runner)


def test_volumes_runs_lvs_with_json_report(lv, runner):
    vols = lv.volumes()
    assert [v.name for v in vols] == ["pool", "s1", "s3", "t1"]
    assert runner.calls == [(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                              "-o", LV_FIELDS, VG], None)]


def test_get_and_pool_status_and_device(lv):
    assert lv.get("t1").uuid == "UkjCSU-2RQA-4wNK-NBqv-Lln2-7NNn-SaysbE"
    assert lv.get("nope") is None
    assert lv.pool_status().metadata_percent == 10.46
    assert lv.device("lun-a") == "/dev/shadowlun/lun-a"


def test_pool_status_of_a_wrongly_named_pool(runner):
    with pytest.raises(LookupError):
        Lvm(VG, "otherpool", run=runner).pool_status()


def test_create_volume_argv(lv, runner):
    lv.create_volume("lun-a", 67108864, {"shadowlun.kind": "volume"})
    assert runner.calls == [([
        "lvcreate", "-q", "-V", "67108864b", "-T", "shadowlun/pool", "-n", "lun-a",
        "--addtag", "shadowlun", "--addtag", "shadowlun.kind=volume"], None)]


def test_create_volume_without_tags_still_owned(lv, runner):
    lv.create_volume("lun-b", 1 << 20)
    argv = runner.calls[0][0]
    assert "1048576b" in argv and argv[-2:] == ["--addtag", "shadowlun"]


SNAPS = [
    ("lun-a", "snap-1", {"shadowlun.set": "set-1", "shadowlun.snapshot": "1"}),
    ("lun-b", "snap-2", {"shadowlun.set": "set-1", "shadowlun.snapshot": "2"}),
    ("lun-c", "snap-3", {"shadowlun.set": "set-1", "shadowlun.snapshot": "3"}),
]


def test_create_snapshots_is_one_lvm_invocation(lv, runner):
    took = lv.create_snapshots(SNAPS)
    assert isinstance(took, float) and took >= 0
    lvm_calls = [(a, s) for a, s in runner.calls if a[0] not in ("lvs",)]
    assert len(lvm_calls) == 1
    argv, script = lvm_calls[0]
    assert argv == ["lvm"]
    assert script.endswith("\n")
    assert script.splitlines() == [
        "lvcreate -q -s -n snap-1 --addtag shadowlun --addtag shadowlun.set=set-1 "
        "--addtag shadowlun.snapshot=1 shadowlun/lun-a",
        "lvcreate -q -s -n snap-2 --addtag shadowlun --addtag shadowlun.set=set-1 "
        "--addtag shadowlun.snapshot=2 shadowlun/lun-b",
        "lvcreate -q -s -n snap-3 --addtag shadowlun --addtag shadowlun.set=set-1 "
        "--addtag shadowlun.snapshot=3 shadowlun/lun-c",
    ]
    assert not runner.argvs("lvcreate")  # never one process per snapshot


def test_create_snapshots_checks_with_lvs_afterwards(lv, runner):
    lv.create_snapshots(SNAPS)
    assert [a[0] for a, _ in runner.calls] == ["lvm", "lvs"]
    made = {v.name: v for v in lv.volumes()}
    assert made["snap-2"].tag("shadowlun.snapshot") == "2" and made["snap-2"].owned


def test_create_snapshots_names_the_missing_ones():
    runner = FakeRunner(fail=("snap-2", "snap-3"))
    with pytest.raises(LvmError) as e:
        Lvm(VG, "pool", run=runner).create_snapshots(SNAPS)
    assert "snap-2" in str(e.value) and "snap-3" in str(e.value)
    assert "snap-1" not in e.value.stderr
    assert e.value.returncode != 0


def test_create_snapshots_all_missing():
    runner = FakeRunner(fail=("snap-1", "snap-2", "snap-3"))
    with pytest.raises(LvmError, match="snap-1, snap-2, snap-3"):
        Lvm(VG, "pool", run=runner).create_snapshots(SNAPS)


def test_activate_uses_K(lv, runner):
    lv.activate("s1")
    assert runner.calls == [(["lvchange", "-q", "-ay", "-K", "shadowlun/s1"], None)]


def test_remove_uses_y(lv, runner):
    lv.remove("s1")
    assert runner.calls == [(["lvremove", "-q", "-y", "shadowlun/s1"], None)]


def test_retag_is_one_lvchange(lv, runner):
    lv.retag("snap-1", ["shadowlun.set=set-1", "shadowlun.snapshot=1"], {"shadowlun.kind": "volume"})
    assert runner.calls == [(["lvchange", "-q", "--deltag", "shadowlun.set=set-1", "--deltag", "shadowlun.snapshot=1",
                              "--addtag", "shadowlun.kind=volume", "shadowlun/snap-1"], None)]


def test_retag_with_nothing_to_change_runs_nothing(lv, runner):
    lv.retag("snap-1")
    lv.retag("snap-1", [], {})
    assert runner.calls == []


def test_runner_errors_propagate(runner):
    def failing(argv, stdin):
        raise LvmError(argv, 5, "Volume group \"shadowlun\" not found")

    with pytest.raises(LvmError, match="not found"):
        Lvm(VG, "pool", run=failing).create_volume("lun-a", 1 << 20)


# --- run_lvm -----------------------------------------------------------------------------------

def test_run_lvm_returns_stdout_and_passes_stdin():
    assert run_lvm(["cat"], "lvcreate -s\n") == "lvcreate -s\n"


def test_run_lvm_failure_is_lvm_error():
    with pytest.raises(LvmError) as e:
        run_lvm(["false"])
    assert e.value.returncode == 1 and e.value.argv == ["false"]


def test_run_lvm_error_carries_stderr():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('  Volume group not found\\n'); sys.exit(5)"]
    with pytest.raises(LvmError) as e:
        run_lvm(argv)
    assert e.value.returncode == 5
    assert "Volume group not found" in e.value.stderr
    assert "exited 5: Volume group not found" in str(e.value)


def test_run_lvm_sets_lc_all_c(monkeypatch):
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    assert run_lvm(["sh", "-c", "echo $LC_ALL"]) == "C\n"


def test_run_lvm_keeps_the_rest_of_the_environment(monkeypatch):
    monkeypatch.setenv("SHADOWLUN_TEST_VAR", "kept")
    assert run_lvm(["sh", "-c", "echo $SHADOWLUN_TEST_VAR"]) == "kept\n"


def test_run_lvm_is_bounded(monkeypatch):
    monkeypatch.setattr(lvm_mod, "COMMAND_TIMEOUT_S", 0.2)
    import subprocess

    with pytest.raises(subprocess.TimeoutExpired):
        run_lvm(["sleep", "5"])


# --- the commit window in the pool: pre-made snapshots made again -------------------------------

THIN_REPORT = json.dumps({"report": [{"lv": [
    {"lv_name": "pool", "thin_id": "", "lv_dm_path": "/dev/mapper/shadowlun-pool", "lv_attr": "twi-aotz--"},
    {"lv_name": "lun-db-1", "thin_id": "1", "lv_dm_path": "/dev/mapper/shadowlun-lun--db--1", "lv_attr": "Vwi-aotz--"},
    {"lv_name": "snap-x", "thin_id": "7", "lv_dm_path": "/dev/mapper/shadowlun-snap--x", "lv_attr": "Vwi---tz-k"},
]}]})


def test_thin_devices_and_dm_names():
    devs = parse_thin_devices(THIN_REPORT, ["lun-db-1", "snap-x", "absent"])
    assert devs == {"lun-db-1": ThinDevice("lun-db-1", 1, "shadowlun-lun--db--1"),
                    "snap-x": ThinDevice("snap-x", 7, None)}  # inactive: no dm device
    assert dm_name("shadowlun", "lun-db-1") == "shadowlun-lun--db--1"


class FakeDm:
    """The device-mapper control as `Lvm.repoint_snapshots` sees it: records each step;
    the steps in `fail` raise DmError."""

    def __init__(self, *fail: tuple[str, ...]) -> None:
        self.ran: list[tuple[str, ...]] = []
        self.fail = set(fail)
        self.open = False

    def __enter__(self) -> "FakeDm":
        self.open = True
        return self

    def __exit__(self, *exc) -> None:
        self.open = False

    def _step(self, what: str, *step: str) -> None:
        assert self.open, "used outside `with`"
        self.ran.append(step)
        if step in self.fail:
            raise DmError(what, step[1], 22)

    def suspend(self, name: str) -> None:
        self._step("suspend", "suspend", name)

    def resume(self, name: str) -> None:
        self._step("resume", "resume", name)

    def message(self, name: str, text: str, sector: int = 0) -> None:
        self._step(f"message '{text}'", "message", name, text)


PAIRS = [(ThinDevice("lun-a", 1, "shadowlun-lun--a"), ThinDevice("snap-a", 7, None)),
         (ThinDevice("lun-b", 2, "shadowlun-lun--b"), ThinDevice("snap-b", 8, None))]


def repoint(dm: FakeDm, pairs=PAIRS) -> float:
    def no_commands(argv, stdin):
        raise AssertionError(f"no command may run in the commit window: {argv}")

    return Lvm("shadowlun", "pool", run=no_commands, dm=lambda: dm).repoint_snapshots(pairs)


def test_repoint_suspends_the_origins_remakes_each_snapshot_under_its_id_and_resumes():
    dm = FakeDm()
    assert repoint(dm) >= 0
    assert dm.ran == [
        ("suspend", "shadowlun-lun--a"), ("suspend", "shadowlun-lun--b"),
        ("message", "shadowlun-pool-tpool", "delete 7"), ("message", "shadowlun-pool-tpool", "create_snap 7 1"),
        ("message", "shadowlun-pool-tpool", "delete 8"), ("message", "shadowlun-pool-tpool", "create_snap 8 2"),
        ("resume", "shadowlun-lun--a"), ("resume", "shadowlun-lun--b"),
    ]


def test_an_inactive_origin_is_not_suspended():
    dm = FakeDm()
    repoint(dm, [(ThinDevice("lun-a", 1, None), ThinDevice("snap-a", 7, None))])
    assert [s[0] for s in dm.ran] == ["message", "message"]


def test_a_failed_create_snap_gives_the_deleted_id_an_empty_thin_resumes_all_and_raises():
    """The pool must keep every id LVM knows, or the set's undo (lvremove) would fail."""
    dm = FakeDm(("message", "shadowlun-pool-tpool", "create_snap 8 2"))
    with pytest.raises(DmError, match="create_snap 8 2"):
        repoint(dm)
    assert dm.ran[-3:] == [("message", "shadowlun-pool-tpool", "create_thin 8"),
                           ("resume", "shadowlun-lun--a"), ("resume", "shadowlun-lun--b")]
    assert ("message", "shadowlun-pool-tpool", "create_thin 7") not in dm.ran  # 7 was made again


def test_a_failed_suspend_resumes_what_was_suspended_and_sends_no_message():
    dm = FakeDm(("suspend", "shadowlun-lun--b"))
    with pytest.raises(DmError, match="suspend of shadowlun-lun--b"):
        repoint(dm)
    assert dm.ran == [("suspend", "shadowlun-lun--a"), ("suspend", "shadowlun-lun--b"),
                      ("resume", "shadowlun-lun--a")]


def test_every_origin_is_resumed_even_when_one_resume_fails_and_both_failures_are_told():
    dm = FakeDm(("message", "shadowlun-pool-tpool", "delete 7"), ("resume", "shadowlun-lun--a"))
    with pytest.raises(DmError) as raised:
        repoint(dm)
    assert dm.ran[-2:] == [("resume", "shadowlun-lun--a"), ("resume", "shadowlun-lun--b")]
    assert str(raised.value).startswith("device-mapper message 'delete 7' of shadowlun-pool-tpool failed")
    assert "; also: device-mapper resume of shadowlun-lun--a failed" in str(raised.value)
    assert ("message", "shadowlun-pool-tpool", "create_thin 7") not in dm.ran  # never deleted


def test_any_other_failure_in_the_window_still_resumes_and_restores_the_id():
    class Broken(FakeDm):
        def message(self, name, text, sector=0):
            super().message(name, text, sector)
            if text == "create_snap 8 2":
                raise KeyboardInterrupt  # e.g. the agent stopped mid-window

    dm = Broken()
    with pytest.raises(KeyboardInterrupt):
        repoint(dm)
    assert dm.ran[-3:] == [("message", "shadowlun-pool-tpool", "create_thin 8"),
                           ("resume", "shadowlun-lun--a"), ("resume", "shadowlun-lun--b")]


def test_the_commit_window_has_a_crash_point_between_suspend_and_the_messages(monkeypatch):
    """Where the lab test kills the agent: origins suspended, the pool not yet told anything."""
    dm = FakeDm()
    monkeypatch.setattr(lvm_mod, "crash_point", lambda name: dm.ran.append(("crash point", name)))
    repoint(dm)
    assert dm.ran[2:4] == [("crash point", "commit-window"), ("message", "shadowlun-pool-tpool", "delete 7")]


# --- what a killed commit left: suspended devices, resumed at start ------------------------------

def sysfs(tmp_path, names: dict[str, str]):
    """/sys/block with dm-N/dm/name for each (dm-N, name)."""
    for dev, name in names.items():
        (tmp_path / dev / "dm").mkdir(parents=True)
        (tmp_path / dev / "dm" / "name").write_text(name + "\n")
    (tmp_path / "sda").mkdir()
    return tmp_path


def test_vg_dm_names_are_this_vgs_only(tmp_path):
    root = sysfs(tmp_path, {"dm-0": "shadowlun-pool_tmeta", "dm-1": "shadowlun-lun--db",
                            "dm-2": "shadowlun--x-lun--a", "dm-3": "other-lv", "dm-4": "shadowlunx-a"})
    assert lvm_mod.vg_dm_names("shadowlun", root) == ["shadowlun-pool_tmeta", "shadowlun-lun--db"]
    assert lvm_mod.vg_dm_names("shadowlun-x", root) == ["shadowlun--x-lun--a"]


class StatusDm(FakeDm):
    def __init__(self, flags: dict[str, int], *fail) -> None:
        super().__init__(*fail)
        self.flags = flags

    def status(self, name: str) -> int:
        self._step("status", "status", name)
        return self.flags[name]


def test_resume_suspended_resumes_only_suspended_devices_of_the_vg(tmp_path):
    root = sysfs(tmp_path, {"dm-1": "shadowlun-lun--a", "dm-2": "shadowlun-lun--b", "dm-3": "shadowlun-lun--c",
                            "dm-4": "other-lun"})
    dm = StatusDm({"shadowlun-lun--a": 2 | 32, "shadowlun-lun--b": 32, "shadowlun-lun--c": 2 | 64 | 32})
    lv = Lvm("shadowlun", "pool", run=lambda argv, stdin: pytest.fail(f"no command: {argv}"), dm=lambda: dm,
             sys_block=root)
    resumed, errors = lv.resume_suspended()
    assert resumed == ["shadowlun-lun--a"]
    assert ("resume", "shadowlun-lun--a") in dm.ran and ("resume", "shadowlun-lun--c") not in dm.ran
    assert [e.device for e in errors] == ["shadowlun-lun--c"] and "operator" in str(errors[0])


def test_resume_suspended_tries_every_device_and_reports_each_failure(tmp_path):
    root = sysfs(tmp_path, {"dm-1": "shadowlun-lun--a", "dm-2": "shadowlun-lun--b"})
    dm = StatusDm({"shadowlun-lun--a": 2, "shadowlun-lun--b": 2}, ("resume", "shadowlun-lun--a"))
    resumed, errors = Lvm("shadowlun", "pool", dm=lambda: dm, sys_block=root).resume_suspended()
    assert resumed == ["shadowlun-lun--b"] and [e.device for e in errors] == ["shadowlun-lun--a"]


VGS_REPORT = """{"report": [{"vg": [{"vg_tags":"shadowlun.array=ab12,other"}]}]}"""


def test_vg_tags_and_retag_vg():
    answers = {"vgs": VGS_REPORT}
    calls = []
    lv = Lvm(VG, "pool", run=lambda argv, stdin: calls.append(list(argv)) or answers.get(argv[0], ""))
    assert lv.vg_tags() == ("shadowlun.array=ab12", "other")
    assert calls[0] == ["vgs", "--reportformat", "json", "-o", "vg_tags", VG]
    lv.retag_vg(remove=["shadowlun.array=ab12"], add=["shadowlun.array=cd34"])
    assert calls[1] == ["vgchange", "-q", "--deltag", "shadowlun.array=ab12", "--addtag", "shadowlun.array=cd34", VG]
    assert lvm_mod.parse_vg_tags("""{"report": [{"vg": [{"vg_tags":""}]}]}""") == ()
