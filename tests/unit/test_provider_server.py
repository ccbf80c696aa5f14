"""Unit tests of the out-of-process provider: provider.hosting.rpc (wire format), provider.hosting.server (a real
server on a Unix socket, in a thread or as `python3 -m provider.hosting.server`), provider.hosting.proxy (the
coordinator's side, spec §8 translation) and provider.hosting.registry (registration files).

The expected allowed-code sets are transcribed here from spec §5.1/§8, not read from the proxy's
table, so that a typo there fails a test. Every wait is bounded; each test takes well under 2 s.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import contract_doc as contract
import pytest

from fake_provider_module import FakeProvider
from provider.contract.hresult import HResult, VssRuntimeError, VssUserError, vss_error
from provider.hosting.proxy import (
    ALLOWED_CODES,
    DEFAULT_TIMEOUTS,
    DOCUMENTED_CODES,
    GENERAL_CODES,
    NOT_TRANSLATED,
    ProviderProxy,
    ProviderTimeoutError,
    translate_error,
)
from provider.hosting.registry import ProviderRegistration, ProviderRegistry
from provider.contract.methods import PROVIDER_METHODS, ProviderMethod, per_method
from provider.hosting.rpc import (
    PING,
    PROTOCOL_VERSION,
    MessageReader,
    ProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode,
)
from provider.hosting.server import ProviderServer, socket_answers

H = HResult
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SET_ID = "7f0c5d2e-3b1a-4c8d-9e6f-1a2b3c4d5e6f"
NEVER_START = [sys.executable, "-c", "raise SystemExit('the proxy must not start this')"]


# --- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture
def sockdir():
    """A short directory for sockets (sun_path holds 107 bytes; pytest's tmp_path can be longer)."""
    d = Path(tempfile.mkdtemp(prefix="slp-", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(sockdir):
    """A FakeProvider served in this process by a real ProviderServer."""
    fake = FakeProvider()
    server = ProviderServer(fake, sockdir / "p.sock", allowed_uids={os.getuid()})
    server.start()
    yield fake, server
    server.stop()


def registration(sock: Path, exec_: list[str] = NEVER_START, provider_id: str | None = None) -> ProviderRegistration:
    return ProviderRegistration(provider_id=provider_id or str(uuid.uuid4()), version_id=str(uuid.uuid4()),
                                name="fake", version="1.0", exec=exec_, socket=sock)


@pytest.fixture
def proxy(served):
    _fake, server = served
    p = ProviderProxy(registration(server.socket_path))
    p.start()
    yield p
    p.stop()


def raw_exchange(path: Path, data: bytes, answers: int = 1, *, shut_write: bool = False) -> list[dict | None]:
    """Send raw bytes and read `answers` response lines (None for EOF) as JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(path))
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        reader = MessageReader(s)
        out: list[dict | None] = []
        for _ in range(answers):
            line = reader.read(time.monotonic() + 2.0)
            out.append(None if line is None else json.loads(line))
        return out


def request_line(method: str, rid: int | str = 1, **params) -> bytes:
    return json.dumps({"id": rid, "method": method, "params": params}).encode() + b"\n"


def error_code(answer: dict | None) -> HResult:
    assert answer is not None and "error" in answer, answer
    return HResult(int(answer["error"]["hresult"], 16))


def server_env(monkeypatch) -> None:
    """`python3 -m provider.hosting.server` finds the project and the fake module from any directory."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(HERE)]))


def server_argv(sock: Path, factory: str = "fake_provider_module:make") -> list[str]:
    return [sys.executable, "-m", "provider.hosting.server", "--socket", str(sock), "--provider", factory,
            "--allow-uid", str(os.getuid())]


# --- provider.hosting.rpc --------------------------------------------------------------------------------

def test_messages_round_trip_as_single_ascii_lines():
    req = Request(7, "are_luns_supported", {"context": 1, "luns": [{"vendor": "LIO-ORG\n", "é": True}]})
    line = req.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert decode_request(line[:-1]) == req
    ok = decode_response(Response("a", result={"x": [1, "two", None, False]}).encode()[:-1])
    assert ok == Response("a", result={"x": [1, "two", None, False]})
    err = decode_response(Response(3, error=vss_error(H.VSS_E_OBJECT_NOT_FOUND, "no set")).encode()[:-1])
    assert err.id == 3 and isinstance(err.error, VssUserError)
    assert (err.error.hresult, err.error.message) == (H.VSS_E_OBJECT_NOT_FOUND, "no set")


@pytest.mark.parametrize("line, words", [
    (b"", "empty"),
    (b"not json", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"id": 1}', "method"),
    (b'{"id": 1, "method": "Commit-Snapshots"}', "snake_case"),
    (b'{"id": 1, "method": "_private"}', "snake_case"),
    (b'{"id": true, "method": "on_load"}', "id must be"),
    (b'{"method": "on_load"}', "id must be"),
    (b'{"id": 1, "method": "on_load", "params": [1]}', "params must be"),
    (b'{"id": 1, "method": "on_load", "params": {"_x": 1}}', "not an identifier"),
    (b'{"id": 1, "method": "on_load", "params": {"x": NaN}}', "not JSON"),
    (b'{"id": 1, "method": "on_load", "jsonrpc": "2.0"}', "unexpected request fields"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_garbage_requests_are_refused_with_a_reason(line, words):
    with pytest.raises(ProtocolError, match=words):
        decode_request(line)


def test_a_bad_request_keeps_its_id_for_the_answer():
    with pytest.raises(ProtocolError) as e:
        decode_request(b'{"id": 42, "method": "on_load", "params": "x"}')
    assert e.value.request_id == 42


def test_garbage_responses_are_refused_and_unreadable_errors_become_vss_e_unexpected():
    for line in (b'{"id": 1}', b'{"id": 1, "result": 1, "error": {}}', b'{"id": [1], "result": 1}', b"1"):
        with pytest.raises(ProtocolError):
            decode_response(line)
    odd = decode_response(b'{"id": 1, "error": {"hresult": "0x00000000", "vss": "S_OK", "message": ""}}')
    assert odd.error is not None and odd.error.hresult is H.VSS_E_UNEXPECTED


def test_encode_refuses_what_is_not_plain_json_or_too_large():
    with pytest.raises(ProtocolError, match="not JSON"):
        encode({"x": object()})
    with pytest.raises(ProtocolError, match="not JSON"):
        encode({"x": float("nan")})
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        encode({"x": "y" * 100}, limit=50)


def test_message_reader_limits_and_cut_off_messages():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b'{"a":1}\n' + b"z" * 100 + b"\n")
        reader = MessageReader(b, limit=50)
        assert reader.read(time.monotonic() + 1) == b'{"a":1}'
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            reader.read(time.monotonic() + 1)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b'{"a":')
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="middle of a message"):
            MessageReader(b).read(time.monotonic() + 1)
    a, b = socket.socketpair()
    with a, b:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            MessageReader(b).read(time.monotonic() + 0.1)
        assert time.monotonic() - started < 1


# --- provider.hosting.server on its socket -------------------------------------------------------------

def test_socket_is_private_and_removed_on_stop(sockdir):
    path = sockdir / "p.sock"
    server = ProviderServer(FakeProvider(), path, allowed_uids={os.getuid()})
    server.start()
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in sockdir.iterdir()] == ["p.sock"]  # no temporary name left
    finally:
        server.stop()
    assert not path.exists()


def test_a_live_socket_is_not_stolen_and_a_stale_one_is_replaced(sockdir, served):
    _fake, server = served
    with pytest.raises(OSError, match="another provider server is listening"):
        ProviderServer(FakeProvider(), server.socket_path, allowed_uids={os.getuid()}).start()
    assert socket_answers(server.socket_path)
    stale = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    assert stale.exists() and not socket_answers(stale)
    with ProviderServer(FakeProvider(), stale, allowed_uids={os.getuid()}):
        assert socket_answers(stale)
    assert not stale.exists()


def test_ping_answers_protocol_pid_and_implemented_methods(served):
    fake, server = served
    [answer] = raw_exchange(server.socket_path, request_line(PING, "p"))
    assert answer["id"] == "p"
    result = answer["result"]
    assert result["protocol"] == PROTOCOL_VERSION and result["pid"] == os.getpid()
    assert "on_load" in result["methods"] and "end_prepare_snapshots" in result["methods"]
    assert "resync_luns" not in result["methods"] and "status" not in result["methods"]


def test_garbage_on_the_socket_is_answered_and_the_connection_stays_usable(served):
    fake, server = served
    data = b"hello there\n" + b"\xff\xfe\n" + b"[]\n" + request_line("commit_snapshots", 9, set_id=SET_ID)
    bad1, bad2, bad3, good = raw_exchange(server.socket_path, data, answers=4)
    for bad in (bad1, bad2, bad3):
        assert bad["id"] is None and error_code(bad) is H.E_INVALIDARG
        assert bad["error"]["message"].startswith("malformed request")
    assert good == {"id": 9, "result": {"committed": SET_ID}}


def test_oversized_and_cut_off_messages_end_the_connection_not_the_server(sockdir):
    path = sockdir / "small.sock"
    with ProviderServer(FakeProvider(), path, allowed_uids={os.getuid()}, max_message=1024):
        big = b'{"id": 1, "method": "on_load", "params": {"x": "' + b"y" * 2000 + b'"}}\n'
        answer, eof = raw_exchange(path, big, answers=2)
        assert error_code(answer) is H.E_INVALIDARG and "exceeds the limit" in answer["error"]["message"]
        assert eof is None  # hung up
        answer, eof = raw_exchange(path, b'{"id": 1, "meth', answers=2, shut_write=True)
        assert error_code(answer) is H.E_INVALIDARG and "middle of a message" in answer["error"]["message"]
        assert eof is None
        # The client vanishes without reading: the server goes on.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(request_line("commit_snapshots", set_id=SET_ID))
        [answer] = raw_exchange(path, request_line("commit_snapshots", 2, set_id=SET_ID))
        assert answer == {"id": 2, "result": {"committed": SET_ID}}


def test_only_contract_methods_are_callable(served):
    """DECISION: a name outside the contract is E_INVALIDARG (the provider is not touched); a
    contract method the provider lacks is E_NOTIMPL; unbindable parameters are E_INVALIDARG."""
    fake, server = served
    answers = raw_exchange(server.socket_path, b"".join([
        request_line("status", 1),                      # public on the object, not in the contract
        request_line("delete_everything", 2),
        request_line("rpc.shutdown", 3),
        b'{"id": 4, "method": "__init__", "params": {}}\n',
        request_line("resync_luns", 5, source_luns=[], target_luns=[]),   # contract, not implemented
        request_line("commit_snapshots", 6, set_id=SET_ID, colour="blue"),  # unknown parameter
        request_line("commit_snapshots", 7),                               # missing parameter
    ]), answers=7)
    codes = [error_code(a) for a in answers]
    assert codes == [H.E_INVALIDARG] * 4 + [H.E_NOTIMPL] + [H.E_INVALIDARG] * 2
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5, 6, 7]
    assert "unknown method 'status'" in answers[0]["error"]["message"]
    assert "ResyncLuns" in answers[4]["error"]["message"]
    assert fake.calls == []


def test_peer_credentials_are_checked(sockdir):
    path = sockdir / "root-only.sock"
    fake = FakeProvider()
    with ProviderServer(fake, path, allowed_uids={os.getuid() + 1}):
        [answer] = raw_exchange(path, request_line("on_load", 5))
        assert answer["id"] == 5 and error_code(answer) is H.E_ACCESSDENIED
        with pytest.raises(VssUserError) as e:
            ProviderProxy(registration(path)).start()
        assert e.value.hresult is H.E_ACCESSDENIED
    assert fake.loads == 0


def test_provider_exceptions_become_veto_or_out_of_memory_and_veto_is_logged(served, caplog):
    fake, server = served
    caplog.set_level(logging.WARNING, logger="shadowlun.provider.server")
    out = raw_exchange(server.socket_path, b"".join([
        request_line("pre_commit_snapshots", 1, set_id=SET_ID, boom="runtime"),
        request_line("pre_commit_snapshots", 2, set_id=SET_ID, boom="memory"),
        request_line("get_target_luns", 3, devices=[], source_luns=[], bad="not_json"),
    ]), answers=3)
    assert [error_code(a) for a in out] == [H.VSS_E_PROVIDER_VETO, H.E_OUTOFMEMORY, H.VSS_E_PROVIDER_VETO]
    assert "RuntimeError: array exploded" in out[0]["error"]["message"]
    assert "cannot be sent" in out[2]["error"]["message"]
    vetoes = [r for r in caplog.records if r.levelno == logging.ERROR and "VSS_E_PROVIDER_VETO" in r.getMessage()]
    assert len(vetoes) == 2 and "PreCommitSnapshots" in vetoes[0].getMessage()


def test_a_result_over_the_size_limit_is_a_veto(sockdir):
    path = sockdir / "small.sock"
    with ProviderServer(FakeProvider(), path, allowed_uids={os.getuid()}, max_message=1024):
        [answer] = raw_exchange(path, request_line("get_target_luns", 1, devices=[], source_luns=[], bad="too_large"))
        assert error_code(answer) is H.VSS_E_PROVIDER_VETO and "exceeds the limit" in answer["error"]["message"]


# --- provider.hosting.proxy against the in-process server -------------------------------------------------

def test_results_round_trip_and_on_load_is_called_once(served, proxy):
    fake, _server = served
    assert fake.loads == 1 and proxy.loaded and proxy.server_pid == os.getpid()
    assert proxy.process is None  # found running: not ours to stop
    luns = [{"vendor": "LIO-ORG", "serial": "ü-1", "ids": [[1, 2], {"a": None}], "big": 2**62}]
    assert proxy.call("are_luns_supported", context=5, devices=["/dev/sdb"], luns=luns) == {
        "supported": True, "context": 5, "devices": ["/dev/sdb"], "luns": luns}
    assert proxy.call("commit_snapshots", set_id=SET_ID) == {"committed": SET_ID}
    assert proxy.call("pre_commit_snapshots", set_id=SET_ID) is None
    proxy.start()  # already loaded and answering: nothing happens
    assert fake.loads == 1
    assert proxy.provider_id == str(proxy.registration.provider_id)


def test_allowed_vss_errors_come_back_unchanged(proxy):
    with pytest.raises(VssUserError) as e:
        proxy.call("end_prepare_snapshots", set_id=SET_ID, fail="VSS_E_INSUFFICIENT_STORAGE", message="pool full")
    assert (e.value.hresult, e.value.message) == (H.VSS_E_INSUFFICIENT_STORAGE, "pool full")
    with pytest.raises(VssUserError) as e:
        proxy.call("commit_snapshots", set_id=SET_ID, fail="VSS_E_OBJECT_NOT_FOUND", message="which set?")
    assert (e.value.hresult, e.value.message) == (H.VSS_E_OBJECT_NOT_FOUND, "which set?")
    with pytest.raises(VssUserError) as e:
        proxy.call("begin_prepare_snapshot", set_id=SET_ID, snapshot_id=SET_ID, context=0, devices=[],
                   luns=[], fail="VSS_E_UNSUPPORTED_CONTEXT")
    assert e.value.hresult is H.VSS_E_UNSUPPORTED_CONTEXT


def test_codes_a_method_may_not_return_are_translated(proxy, caplog):
    for fail in ("E_FAIL", "VSS_E_UNSUPPORTED_CONTEXT"):  # the latter is BeginPrepareSnapshot's only
        with pytest.raises(VssRuntimeError) as e:
            proxy.call("commit_snapshots", set_id=SET_ID, fail=fail, message="original words")
        assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR
        assert fail in e.value.message and "CommitSnapshots" in e.value.message
        assert "original words" in e.value.message
    assert any("CommitSnapshots returned E_FAIL" in r.getMessage() for r in caplog.records)
    # A contract method the provider lacks: E_NOTIMPL, which ResyncLuns may not return.
    with pytest.raises(VssRuntimeError) as e:
        proxy.call("resync_luns", source_luns=[], target_luns=[])
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR and "E_NOTIMPL" in e.value.message


def test_abort_unload_and_fill_in_lun_info_codes_are_not_translated(served, proxy):
    fake, _server = served
    with pytest.raises(VssRuntimeError) as e:
        proxy.call("abort_snapshots", set_id=SET_ID, fail="E_FAIL")
    assert e.value.hresult is H.E_FAIL and e.value.message == "abort went wrong"
    with pytest.raises(VssRuntimeError) as e:
        proxy.call("fill_in_lun_info", device="/dev/sdz")
    assert e.value.hresult is H.E_FAIL
    # call() passes OnUnload's code on; on_unload() then ignores it (next test).
    with pytest.raises(VssRuntimeError) as e:
        proxy.call("on_unload", None, force=True, fail=True)
    assert e.value.hresult is H.E_FAIL


def test_on_unload_honours_s_false_only_when_not_forced(served, proxy, caplog):
    fake, _server = served
    fake.unload_answer = 1  # S_FALSE
    assert proxy.on_unload(False) is False and proxy.loaded
    assert proxy.on_unload(True) is True and not proxy.loaded
    assert any("forced OnUnload" in r.getMessage() for r in caplog.records)
    fake.unload_answer = False
    assert proxy.on_unload(False) is False
    fake.unload_answer = None
    assert proxy.on_unload(False) is True
    assert fake.unloads == [False, True, False, False]


def test_on_unload_errors_are_logged_and_ignored(served, proxy, caplog, monkeypatch):
    fake, _server = served
    monkeypatch.setattr(fake, "on_unload", lambda force: (_ for _ in ()).throw(vss_error(H.E_FAIL, "nope")))
    assert proxy.on_unload(False) is True
    assert any("OnUnload(False) failed" in r.getMessage() for r in caplog.records)


def test_abort_runs_while_a_slow_end_prepare_waits(served, proxy):
    """Spec §5.2.9 / §17.2 #5: AbortSnapshots during a long EndPrepareSnapshots, both complete."""
    fake, _server = served
    results: list = []
    worker = threading.Thread(target=lambda: results.append(
        proxy.call("end_prepare_snapshots", 5.0, set_id=SET_ID, wait=3.0)))
    worker.start()
    assert fake.end_prepare_started.wait(2.0)
    started = time.monotonic()
    assert proxy.call("abort_snapshots", 2.0, set_id=SET_ID) is None
    assert time.monotonic() - started < 1.0
    worker.join(2.0)
    assert not worker.is_alive()
    assert fake.abort_overlapped_end_prepare is True
    assert results == [{"set_id": SET_ID, "aborted": True}]


def test_a_missed_deadline_is_a_timeout_error_and_the_server_goes_on(served, proxy):
    """A server found running (here, in this process) is not the proxy's to kill."""
    fake, _server = served
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as e:
        proxy.call("end_prepare_snapshots", 0.2, set_id=SET_ID, wait=0.5)
    assert time.monotonic() - started < 1.0
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR and "within 0.2 s" in e.value.message
    assert proxy.call("commit_snapshots", set_id=SET_ID) == {"committed": SET_ID}
    assert fake.end_prepare_done.wait(2.0)


def test_the_proxy_refuses_names_outside_the_contract_without_sending(served, proxy):
    fake, _server = served
    with pytest.raises(VssUserError) as e:
        proxy.call("status")
    assert e.value.hresult is H.E_INVALIDARG and fake.calls == []
    with pytest.raises(VssUserError, match="cannot be sent"):
        proxy.call("commit_snapshots", set_id=uuid.UUID(SET_ID))  # a UUID is not JSON: send str()


def test_a_failed_on_load_fails_start(sockdir):
    class Refuses(FakeProvider):
        def on_load(self) -> None:
            raise vss_error(H.E_FAIL, "no licence")

    path = sockdir / "refuses.sock"
    with ProviderServer(Refuses(), path, allowed_uids={os.getuid()}):
        proxy = ProviderProxy(registration(path))
        with pytest.raises(VssRuntimeError) as e:
            proxy.start()
        assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR  # E_FAIL is not OnLoad's to give
        assert "OnLoad returned E_FAIL" in e.value.message and "no licence" in e.value.message
        assert not proxy.loaded


def test_a_missing_socket_directory_is_created(sockdir):
    path = sockdir / "run" / "shadowlun" / "p.sock"
    with ProviderServer(FakeProvider(), path, allowed_uids={os.getuid()}):
        assert socket_answers(path)


def test_a_server_that_is_not_running_is_reported(sockdir):
    p = ProviderProxy(registration(sockdir / "nobody.sock"))
    with pytest.raises(VssRuntimeError) as e:
        p.call("commit_snapshots", set_id=SET_ID)
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR and "nothing listens" in e.value.message


# --- §8 table ------------------------------------------------------------------------------------

# §5.1 "Allowed codes", transcribed again, plus §8's general list (the DECISION in provider.hosting.proxy).
GENERAL = {H.E_OUTOFMEMORY, H.E_INVALIDARG, H.E_ACCESSDENIED, H.VSS_E_BAD_STATE, H.VSS_E_OBJECT_NOT_FOUND,
           H.VSS_E_INSUFFICIENT_STORAGE, H.VSS_E_VOLUME_NOT_SUPPORTED, H.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
           H.VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED, H.VSS_E_PROVIDER_VETO, H.VSS_E_CANNOT_REVERT_DISKID}
BEGIN_PREPARE_ONLY = {H.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, H.VSS_E_NESTED_VOLUME_LIMIT,
                      H.VSS_E_UNSUPPORTED_CONTEXT}


def test_the_allowed_code_table_follows_the_spec():
    assert set(ALLOWED_CODES) == set(PROVIDER_METHODS) == set(DEFAULT_TIMEOUTS)
    assert NOT_TRANSLATED == {"abort_snapshots", "on_unload", "fill_in_lun_info",
                              "get_provider_capabilities", "on_reuse_luns"}
    for method, allowed in ALLOWED_CODES.items():
        if method in NOT_TRANSLATED:
            assert allowed is None
        elif method == "begin_prepare_snapshot":
            assert allowed == GENERAL | BEGIN_PREPARE_ONLY
        elif method == "on_lun_state_change":  # shadowlun's revert_identity (CONTRACT.md 10)
            assert allowed == GENERAL | {H.VSS_E_BREAK_REVERT_ID_FAILED}
        else:
            assert allowed == GENERAL, method
    assert DEFAULT_TIMEOUTS["commit_snapshots"] <= 10.0  # §16.1: the hold window


def test_a_table_per_method_must_name_every_method():
    with pytest.raises(ValueError, match="no entry for cancel"):
        per_method({m: 1 for m in ProviderMethod if m is not ProviderMethod.CANCEL})
    names = per_method({m: m.spec_name for m in ProviderMethod})
    assert tuple(names) == PROVIDER_METHODS and names["end_prepare_snapshots"] == "EndPrepareSnapshots"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_the_contract_method_tables_are_the_proxy_tables():
    """provider/CONTRACT.md §2: every provider method once, its codes and whether it is translated."""
    rows = [r for sub in (r"2\.1 ", r"2\.2 ", r"2\.3 ", r"2\.4 ", r"2\.5 ", r"2\.6 ")
            for r in contract.table(contract.section(sub))]
    names = [_snake(r[0]) for r in rows]
    assert sorted(names) == sorted(PROVIDER_METHODS)
    for name, (_, _, codes, translated) in zip(names, rows, strict=True):
        said = frozenset() if codes == "—" else frozenset(H[c.strip()] for c in codes.split(","))
        assert said == DOCUMENTED_CODES[name], name
        assert (translated == "no") == (name in NOT_TRANSLATED), name
    general = contract.section(r"8\. ").split("these general ones:", 1)[1].split(".", 1)[0]
    assert {H[c.strip()] for c in general.split(",")} == GENERAL_CODES


@pytest.mark.parametrize("method, code, kept", [
    ("commit_snapshots", H.VSS_E_PROVIDER_VETO, True),
    ("commit_snapshots", H.E_FAIL, False),
    ("commit_snapshots", H.E_NOTIMPL, False),
    ("commit_snapshots", H.VSS_E_UNEXPECTED, False),
    ("pre_final_commit_snapshots", H.VSS_E_OBJECT_NOT_FOUND, True),
    ("on_load", H.E_ABORT, False),
    ("begin_prepare_snapshot", H.VSS_E_NESTED_VOLUME_LIMIT, True),
    ("end_prepare_snapshots", H.VSS_E_NESTED_VOLUME_LIMIT, False),
    ("abort_snapshots", H.E_UNEXPECTED, True),
    ("on_unload", H.E_FAIL, True),
    ("fill_in_lun_info", H.E_POINTER, True),
])
def test_translate_error(method, code, kept):
    original = vss_error(code, "why")
    result = translate_error(method, original, "p")
    if kept:
        assert result is original
    else:
        assert result.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR and code.name in result.message
        assert result.message.endswith("why")


# --- the server as a process, started on demand --------------------------------------------------

def test_start_on_demand_from_a_registration_and_stop(sockdir, monkeypatch):
    server_env(monkeypatch)
    sock = sockdir / "demand.sock"
    registry = ProviderRegistry(sockdir / "providers.d")
    reg = registration(sock, server_argv(sock))
    registry.register(reg)
    proxy = ProviderProxy(registry.get(reg.provider_id), start_timeout=10)
    assert not sock.exists()
    proxy.start()
    try:
        assert proxy.process is not None and proxy.server_pid == proxy.process.pid
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        caps = proxy.call("get_provider_capabilities")
        assert caps == {"mask": 0, "loads": 1, "unloads": [], "pid": proxy.process.pid}
        # A second coordinator-side proxy finds it answering and does not start another.
        other = ProviderProxy(reg)
        other.start()
        assert other.process is None and other.server_pid == proxy.server_pid
        other.stop()
        assert proxy.call("get_provider_capabilities")["loads"] == 2
        assert proxy.on_unload(True) is True
    finally:
        proxy.stop()
    assert proxy.process is None
    assert not sock.exists()


def test_server_killed_mid_call_is_an_unexpected_provider_error(sockdir, monkeypatch):
    server_env(monkeypatch)
    sock, marker = sockdir / "victim.sock", sockdir / "in-call"
    proxy = ProviderProxy(registration(sock, server_argv(sock)), start_timeout=10)
    proxy.start()
    proc = proxy.process
    assert proc is not None

    def kill_when_called() -> None:
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_called)
    killer.start()
    try:
        with pytest.raises(VssRuntimeError) as e:
            proxy.call("end_prepare_snapshots", 5.0, set_id=SET_ID, wait=30.0, marker=str(marker))
    finally:
        killer.join(5)
        proxy.stop()
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR
    assert "provider server crashed: killed by signal SIGKILL" in e.value.message
    assert "fake provider made in pid" in e.value.message  # the stderr tail
    assert proc.returncode == -signal.SIGKILL
    # Further calls say the same (the socket file is left behind, nobody listens).
    with pytest.raises(VssRuntimeError) as e:
        proxy.call("commit_snapshots", set_id=SET_ID)
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR


def test_a_started_server_that_misses_a_deadline_is_killed_and_restarted_by_the_next_start(sockdir, monkeypatch):
    """§17.1: a hung provider is killed at its deadline (the call answers
    VSS_E_UNEXPECTED_PROVIDER_ERROR); a server found running is not (see the test above)."""
    server_env(monkeypatch)
    sock = sockdir / "hung.sock"
    proxy = ProviderProxy(registration(sock, server_argv(sock)), start_timeout=10)
    proxy.start()
    hung = proxy.process
    assert hung is not None
    try:
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as e:
            proxy.call("end_prepare_snapshots", 0.3, set_id=SET_ID, wait=30.0)
        assert time.monotonic() - started < 5.0
        assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR
        assert e.value.message.endswith(f"within 0.3 s; its server (pid {hung.pid}) was killed")
        assert hung.returncode == -signal.SIGKILL and proxy.process is None
        proxy.start()  # as the coordinator does before its abort
        assert proxy.process is not None and proxy.process.pid != hung.pid
        assert proxy.call("commit_snapshots", set_id=SET_ID) == {"committed": SET_ID}
    finally:
        proxy.stop()


def test_a_server_that_fails_to_start_is_reported_with_its_stderr(sockdir, monkeypatch):
    server_env(monkeypatch)
    sock = sockdir / "broken.sock"
    proxy = ProviderProxy(registration(sock, server_argv(sock, "fake_provider_module:no_such_factory")))
    with pytest.raises(VssRuntimeError) as e:
        proxy.start()
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR
    assert "exit status 2" in e.value.message and "no_such_factory" in e.value.message
    assert proxy.process is None and not sock.exists()


def test_a_server_that_never_answers_is_killed_after_the_start_timeout(sockdir):
    sock = sockdir / "silent.sock"
    argv = [sys.executable, "-c", "import sys, time; print('napping', file=sys.stderr, flush=True); time.sleep(30)"]
    proxy = ProviderProxy(registration(sock, argv), start_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(VssRuntimeError) as e:
        proxy.start()
    assert time.monotonic() - started < 2.0
    assert "did not answer" in e.value.message and "within 0.5 s" in e.value.message
    assert "napping" in e.value.message
    assert proxy.process is None


def test_an_exec_that_does_not_exist_is_reported(sockdir):
    proxy = ProviderProxy(registration(sockdir / "x.sock", ["/nonexistent/provider-server"]))
    with pytest.raises(VssRuntimeError) as e:
        proxy.start()
    assert e.value.hresult is H.VSS_E_UNEXPECTED_PROVIDER_ERROR and "cannot run" in e.value.message


def test_sigterm_stops_the_server_cleanly(sockdir, monkeypatch):
    server_env(monkeypatch)
    sock = sockdir / "term.sock"
    proc = subprocess.Popen(server_argv(sock), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while not socket_answers(sock):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not sock.exists()


# --- provider.hosting.registry ---------------------------------------------------------------------------

def test_register_get_load_all_unregister(tmp_path):
    registry = ProviderRegistry(tmp_path / "providers.d")
    assert registry.load_all() == []
    reg = registration(Path("/run/shadowlun/p.sock"), ["/usr/bin/python3", "-m", "provider.hosting.server"])
    path = registry.register(reg)
    assert path == tmp_path / "providers.d" / f"{reg.provider_id}.json"
    assert json.loads(path.read_text()) == {
        "provider_id": str(reg.provider_id), "version_id": str(reg.version_id), "name": "fake",
        "version": "1.0", "type": 3, "exec": ["/usr/bin/python3", "-m", "provider.hosting.server"],
        "socket": "/run/shadowlun/p.sock"}
    assert registry.get(str(reg.provider_id).upper()) == reg
    assert registry.load_all() == [reg]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    registry.unregister(reg.provider_id)
    assert registry.load_all() == [] and not path.exists()


def test_registry_errors(tmp_path):
    registry = ProviderRegistry(tmp_path)
    reg = registration(Path("/run/p.sock"), ["/bin/true"])
    registry.register(reg)
    again = registration(Path("/run/q.sock"), ["/bin/false"], provider_id=str(reg.provider_id))
    with pytest.raises(VssRuntimeError) as e:
        registry.register(again)
    assert e.value.hresult is H.VSS_E_PROVIDER_ALREADY_REGISTERED
    assert registry.get(reg.provider_id) == reg  # the first one is untouched
    registry.unregister(reg.provider_id)
    for action in (registry.unregister, registry.get):
        with pytest.raises(VssRuntimeError) as e:
            action(reg.provider_id)
        assert e.value.hresult is H.VSS_E_PROVIDER_NOT_REGISTERED
    with pytest.raises(VssUserError) as e:
        registry.get("not-a-guid")
    assert e.value.hresult is H.E_INVALIDARG


GOOD = {"provider_id": str(uuid.uuid4()), "version_id": str(uuid.uuid4()), "name": "p", "version": "1",
        "type": 3, "exec": ["/usr/bin/p"], "socket": "/run/p.sock"}


@pytest.mark.parametrize("change", [
    {"provider_id": "nope"}, {"provider_id": "00000000-0000-0000-0000-000000000000"}, {"version_id": 5},
    {"type": 2}, {"type": True}, {"type": "3"}, {"name": ""}, {"name": "a\nb"}, {"version": None},
    {"exec": []}, {"exec": "/usr/bin/p"}, {"exec": ["p"]}, {"exec": ["/usr/bin/p", 3]},
    {"socket": "run/p.sock"}, {"socket": "/run/" + "s" * 120}, {"socket": 7}, {"extra": 1},
])
def test_invalid_registrations_are_e_invalidarg(tmp_path, change):
    d = {**GOOD, **change}
    with pytest.raises(VssUserError) as e:
        ProviderRegistry(tmp_path).register(ProviderRegistration.from_dict(d))
    assert e.value.hresult is H.E_INVALIDARG
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_registration_is_skipped_by_load_all(tmp_path, caplog):
    registry = ProviderRegistry(tmp_path)
    good = ProviderRegistration.from_dict(GOOD)
    registry.register(good)
    bad_id = uuid.uuid4()
    (tmp_path / f"{bad_id}.json").write_text("{not json")
    other = uuid.uuid4()
    (tmp_path / f"{other}.json").write_text(json.dumps(GOOD))  # describes another provider
    (tmp_path / "README").write_text("not a registration")
    assert registry.load_all() == [good]
    assert sum("skipping provider registration" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(VssRuntimeError) as e:
        registry.get(bad_id)
    assert e.value.hresult is H.VSS_E_UNEXPECTED and "corrupt" in e.value.message
