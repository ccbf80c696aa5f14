"""The coordinator's side of a provider server (spec §2.2, §8, §16.1, §17.1).

`ProviderProxy(registration)` is what the coordinator holds for a loaded provider:

* start() starts the server from the registration's `exec` when nothing answers on its socket
  (start on demand; a server already answering is used as it is), waits for it at most
  `start_timeout` seconds, then calls OnLoad once (§2.2, §17.1 "OnLoad/OnUnload");
* call(method, timeout, **params) makes one call on its own connection, so calls may overlap
  (AbortSnapshots during a long EndPrepareSnapshots, §5.2.9), bounded by a per-call deadline
  (DEFAULT_TIMEOUTS, from §16.1) after which a server this proxy started is hung: it is killed
  (§17.1 "kills/restarts a hung provider"), and the next start() makes a new one;
* on_unload(force) before stop(), which ends a server this proxy started (SIGTERM, then SIGKILL).

Failures of the transport are VssRuntimeError VSS_E_UNEXPECTED_PROVIDER_ERROR: a dead server
("provider server crashed: exit status N" with the tail of its stderr), a broken connection, a
malformed answer, and (as ProviderTimeoutError) a missed deadline. Codes returned by the provider
go through translate_error(), the rule of §8: a code the method may not return becomes
VSS_E_UNEXPECTED_PROVIDER_ERROR, with the original kept in the message and logged.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import IO, Any

from provider.contract.hresult import HResult, VssError, VssRuntimeError, vss_error
from provider.contract.methods import PROVIDER_METHODS, ProviderMethod, per_method, spec_name
from provider.hosting.registry import ProviderRegistration
from provider.hosting.rpc import (
    MAX_MESSAGE,
    PING,
    PROTOCOL_VERSION,
    MessageReader,
    ProtocolError,
    Request,
    Response,
    decode_response,
    send_message,
)

log = logging.getLogger("shadowlun.provider.proxy")

START_TIMEOUT_S = 30.0   # from spawning the server to its socket answering (its imports take seconds
                         # in a TCG VM whose host is busy)
PING_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0     # SIGTERM to SIGKILL
CRASH_WAIT_S = 1.0       # after a broken connection: how long to wait for the server's exit status
TAIL_LINES = 20
TAIL_LINE_CHARS = 500

_H = HResult
_M = ProviderMethod

# --- §8: the codes a provider may return --------------------------------------------------------

# The rows of §8's table of allowed provider return codes (S_OK aside); they apply to every method.
GENERAL_CODES: frozenset[HResult] = frozenset({
    _H.E_OUTOFMEMORY, _H.E_INVALIDARG, _H.E_ACCESSDENIED, _H.VSS_E_BAD_STATE,
    _H.VSS_E_OBJECT_NOT_FOUND, _H.VSS_E_INSUFFICIENT_STORAGE, _H.VSS_E_VOLUME_NOT_SUPPORTED,
    _H.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER, _H.VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED,
    _H.VSS_E_PROVIDER_VETO, _H.VSS_E_CANNOT_REVERT_DISKID,
})

_BASE = frozenset({_H.E_OUTOFMEMORY, _H.E_INVALIDARG, _H.VSS_E_PROVIDER_VETO})
_SET = _BASE | {_H.VSS_E_OBJECT_NOT_FOUND}

# §5.1's "Allowed codes" column, failure codes only, method by method (§8's "method-specific
# extras" row adds nothing that is not here).
DOCUMENTED_CODES: Mapping[str, frozenset[HResult]] = per_method({
    _M.ON_LOAD: _BASE,
    _M.ON_UNLOAD: frozenset(),  # S_OK; S_FALSE only when not forced
    _M.ARE_LUNS_SUPPORTED: _BASE,
    _M.BEGIN_PREPARE_SNAPSHOT: _BASE | {
        _H.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, _H.VSS_E_NESTED_VOLUME_LIMIT,
        _H.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER, _H.VSS_E_UNSUPPORTED_CONTEXT},
    _M.END_PREPARE_SNAPSHOTS: _SET | {_H.VSS_E_INSUFFICIENT_STORAGE},
    _M.PRE_COMMIT_SNAPSHOTS: _SET,
    _M.COMMIT_SNAPSHOTS: _SET,
    _M.POST_COMMIT_SNAPSHOTS: _SET,
    _M.GET_TARGET_LUNS: _BASE,
    _M.PRE_FINAL_COMMIT_SNAPSHOTS: _BASE,
    _M.POST_FINAL_COMMIT_SNAPSHOTS: _BASE,
    _M.ABORT_SNAPSHOTS: _SET,
    _M.LOCATE_LUNS: _BASE,
    _M.FILL_IN_LUN_INFO: _BASE,  # the WS2003 list; the value is ignored since 2008
    _M.ON_LUN_EMPTY: _BASE,
    _M.GET_PROVIDER_CAPABILITIES: frozenset(),  # reserved
    _M.ON_LUN_STATE_CHANGE: _BASE | {_H.VSS_E_BREAK_REVERT_ID_FAILED},  # with shadowlun's revert_identity
    _M.RESYNC_LUNS: frozenset({_H.E_OUTOFMEMORY, _H.VSS_E_PROVIDER_VETO, _H.VSS_E_INSUFFICIENT_STORAGE}),
    _M.ON_REUSE_LUNS: frozenset(),  # reserved: "S_OK or HRESULT error"
    _M.QUERY_STATUS: frozenset({_H.VSS_E_PROVIDER_VETO, _H.VSS_E_OBJECT_NOT_FOUND}),  # those of ResyncLuns' work
    _M.CANCEL: frozenset({_H.VSS_E_PROVIDER_VETO, _H.VSS_E_OBJECT_NOT_FOUND}),
    _M.RELEASE_LUNS: _BASE | {_H.VSS_E_OBJECT_NOT_FOUND},  # shadowlun's own (LocateLuns' undo)
})

# Methods whose codes the coordinator passes on untranslated: column T of §5.1 is "no"
# (AbortSnapshots, OnUnload: §8 "return values ... are not translated") or "—" (FillInLunInfo's
# value is ignored; GetProviderCapabilities and OnReuseLuns are reserved).
NOT_TRANSLATED: frozenset[str] = frozenset(m.value for m in (
    _M.ABORT_SNAPSHOTS, _M.ON_UNLOAD, _M.FILL_IN_LUN_INFO, _M.GET_PROVIDER_CAPABILITIES, _M.ON_REUSE_LUNS))

# DECISION: a translated method may return its §5.1 codes and §8's general list. §5.1 alone is
# narrower (e.g. no VSS_E_OBJECT_NOT_FOUND for PreFinalCommitSnapshots), but §8 calls its table
# "allowed provider return codes (anything else is 'unexpected')" for every method, and §16.3 #3
# has providers answer an unknown set id with VSS_E_OBJECT_NOT_FOUND whatever the method.
# None: not translated.
ALLOWED_CODES: Mapping[str, frozenset[HResult] | None] = MappingProxyType({
    method: None if method in NOT_TRANSLATED else codes | GENERAL_CODES
    for method, codes in DOCUMENTED_CODES.items()
})

# Per-call deadlines in seconds (§16.1). CommitSnapshots runs inside the 10 s hold window; Pre- and
# PostCommit inside the writers' 60 s freeze; EndPrepareSnapshots may be long (it is abortable);
# LUN operations wait for the array and for disks; ResyncLuns waits for the array's copy.
DEFAULT_TIMEOUTS: Mapping[str, float] = per_method({
    _M.ON_LOAD: 30.0, _M.ON_UNLOAD: 60.0,
    _M.ARE_LUNS_SUPPORTED: 60.0, _M.FILL_IN_LUN_INFO: 60.0,
    _M.BEGIN_PREPARE_SNAPSHOT: 300.0, _M.END_PREPARE_SNAPSHOTS: 900.0,
    _M.PRE_COMMIT_SNAPSHOTS: 20.0, _M.COMMIT_SNAPSHOTS: 10.0, _M.POST_COMMIT_SNAPSHOTS: 30.0,
    _M.GET_TARGET_LUNS: 120.0, _M.PRE_FINAL_COMMIT_SNAPSHOTS: 60.0, _M.POST_FINAL_COMMIT_SNAPSHOTS: 60.0,
    _M.ABORT_SNAPSHOTS: 300.0, _M.LOCATE_LUNS: 300.0, _M.ON_LUN_EMPTY: 300.0,
    _M.GET_PROVIDER_CAPABILITIES: 30.0, _M.ON_LUN_STATE_CHANGE: 300.0,
    _M.RESYNC_LUNS: 3700.0, _M.ON_REUSE_LUNS: 60.0, _M.QUERY_STATUS: 60.0, _M.CANCEL: 60.0,
    _M.RELEASE_LUNS: 300.0,
})

# PostCommitSnapshots has the array activate and export each new shadow LUN (LVM, udev and LIO:
# 0.85 s a LUN under TCG with 170 LUNs on the array, 53 s for 64), so its deadline grows with the
# set's LUNs. Writes flow again by then; only the requester waits.
PUBLISH_S_PER_LUN = 2.0


def post_commit_deadline(luns: int) -> float:
    """PostCommitSnapshots' deadline for a set of `luns` LUNs: its default, or more for a large set."""
    return max(DEFAULT_TIMEOUTS[_M.POST_COMMIT_SNAPSHOTS.value], PUBLISH_S_PER_LUN * luns)


class ProviderTimeoutError(VssRuntimeError):
    """VSS_E_UNEXPECTED_PROVIDER_ERROR: the provider did not answer in time (its server was killed if
    this proxy started it)."""


def translate_error(method: str, error: VssError, provider: str = "provider") -> VssError:
    """The error the coordinator reports for `error` returned by `method` (§8).

    A code outside ALLOWED_CODES[method] becomes VSS_E_UNEXPECTED_PROVIDER_ERROR naming the
    original code and message (and is logged, as VSS logs an event naming provider and method).
    Methods in NOT_TRANSLATED keep their code.
    """
    allowed = ALLOWED_CODES[method]
    if allowed is None or error.hresult in allowed:
        return error
    log.error("provider %s: %s returned %s (%s), which it may not return: %s", provider,
              spec_name(method), error.hresult.name, error.hresult.hex, error.message)
    return VssRuntimeError(
        HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR,
        f"provider {provider}: {spec_name(method)} returned {error.hresult.name} ({error.hresult.hex}), "
        f"not an allowed code: {error.message}")


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class _NotListening(Exception):
    """Nothing accepts connections on the socket (no file, or a stale one)."""


class ProviderProxy:
    """One provider server as the coordinator calls it (the `Provider` of provider.requester.coordinator)."""

    def __init__(self, registration: ProviderRegistration, *, start_timeout: float = START_TIMEOUT_S,
                 timeouts: Mapping[str, float] | None = None) -> None:
        self.registration = registration
        self.start_timeout = start_timeout
        self.timeouts: dict[str, float] = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.server_pid: int | None = None     # as the server reported it
        self.methods: frozenset[str] = frozenset()  # what the provider object implements
        self.loaded = False
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._ids = itertools.count(1)

    @property
    def provider_id(self) -> str:
        return str(self.registration.provider_id)

    @property
    def name(self) -> str:
        return self.registration.name

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server process this proxy started, or None (not started, or found running)."""
        return self._process

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Make sure the server runs and the provider is loaded (OnLoad called once).

        Nothing happens when this proxy already loaded the server that answers. A server found
        answering on the socket is used as it is; otherwise the registration's `exec` is started and
        the socket awaited at most `start_timeout` s. If OnLoad fails, a server started here is
        stopped again and the error raised.
        """
        with self._lock:
            info = self._ping(PING_TIMEOUT_S)
            if info is not None and self.loaded and info["pid"] == self.server_pid:
                return
            if info is None:
                info = self._spawn()
            self.server_pid = info["pid"]
            self.methods = frozenset(info["methods"]) & set(PROVIDER_METHODS)
            self.loaded = False
        try:
            self.on_load()
        except VssError:
            self.stop()
            raise

    def on_load(self) -> None:
        """OnLoad (§2.2); skipped if the provider has no IVssProviderNotifications."""
        if "on_load" in self.methods:
            self.call("on_load")
        self.loaded = True

    def on_unload(self, force: bool) -> bool:
        """OnUnload(force) (§2.2): True when the provider may be stopped now.

        The provider answers S_OK (None, True or 0) or S_FALSE (False or 1, "please don't unload
        now"), which counts only when not forced. Its errors are not reported (§8): they are logged,
        and the answer is True.
        """
        if "on_unload" not in self.methods:
            self.loaded = False
            return True
        try:
            answer = self.call("on_unload", None, force=force)
        except VssError as e:
            log.warning("provider %s: OnUnload(%s) failed, unloading anyway: %s", self.name, force, e)
            self.loaded = False
            return True
        declined = answer is False or (not isinstance(answer, bool) and answer == HResult.S_FALSE)
        if declined and force:
            log.warning("provider %s answered S_FALSE to a forced OnUnload; unloading anyway", self.name)
        if declined and not force:
            return False
        self.loaded = False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """End the server this proxy started: SIGTERM to its process group, SIGKILL after `timeout` s.

        A server found running (not started here) is left alone. Call on_unload() first.
        """
        with self._lock:
            proc, self._process = self._process, None
            self.loaded = False
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("provider server %s (pid %d) ignored SIGTERM for %g s; killing it",
                            self.name, proc.pid, timeout)
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self._join_reader()
        log.info("provider server %s (pid %d) stopped: %s", self.name, proc.pid, _exit_text(proc.returncode))

    def kill(self) -> None:
        """SIGKILL a server this proxy started (a hung provider, §17.1)."""
        with self._lock:
            proc = self._process
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
        self.stop()

    def __enter__(self) -> ProviderProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.on_unload(force=True)
        self.stop()

    def ping(self, timeout: float = PING_TIMEOUT_S) -> dict[str, Any]:
        """The server's {"protocol", "pid", "methods"}; VSS_E_UNEXPECTED_PROVIDER_ERROR if none answers."""
        info = self._ping(timeout)
        if info is None:
            raise self._failure("ping", f"nothing listens on {self.registration.socket}")
        return info

    # -- calls ---------------------------------------------------------------------------------

    def call(self, method: str, timeout: float | None = None, /, **params: Any) -> Any:
        """Call provider `method` with `params` (JSON values) and return its result.

        `timeout` (seconds) defaults to DEFAULT_TIMEOUTS[method]. Raises the provider's VssError
        after translate_error(), E_INVALIDARG for a method outside the contract (nothing is sent),
        VSS_E_UNEXPECTED_PROVIDER_ERROR when the server crashed or broke the protocol, and
        ProviderTimeoutError when the deadline passed (see _hung).
        """
        if method not in ALLOWED_CODES:
            raise vss_error(HResult.E_INVALIDARG, f"{method!r} is not a provider method")
        limit = self.timeouts[method] if timeout is None else timeout
        try:
            response = self._roundtrip(method, params, limit)
        except ProviderTimeoutError as e:
            raise self._hung(e) from None
        assert response is not None
        if response.error is None:
            return response.result
        raise translate_error(method, response.error, self.name)

    def _hung(self, error: ProviderTimeoutError) -> ProviderTimeoutError:
        """A call overran its deadline: the server is hung (§17.1). One started here is killed, so
        that it does not go on holding the set (or run a late commit) while the coordinator aborts
        with a new one. DECISION: a server found running is not ours to kill (systemd's, or another
        coordinator's, whose calls would die with it): it is only reported."""
        with self._lock:
            proc = self._process
        if proc is None:
            return error
        log.error("provider server %s (pid %d) is hung: killing it", self.name, proc.pid)
        self.kill()
        return ProviderTimeoutError(error.hresult, f"{error.message}; its server (pid {proc.pid}) was killed")

    def _ping(self, timeout: float) -> dict[str, Any] | None:
        """The PING answer, or None when nothing listens. A refusal (E_ACCESSDENIED) is raised."""
        response = self._roundtrip(PING, {}, timeout, absent_ok=True)
        if response is None:
            return None
        if response.error is not None:
            raise response.error
        info = response.result
        if not (isinstance(info, dict) and isinstance(info.get("pid"), int)
                and isinstance(info.get("methods"), list)):
            raise self._failure("ping", f"malformed answer {info!r}")
        if info.get("protocol") != PROTOCOL_VERSION:
            raise self._failure("ping", f"server speaks protocol {info.get('protocol')!r}, "
                                        f"this coordinator {PROTOCOL_VERSION}")
        return info

    def _roundtrip(self, method: str, params: dict[str, Any], timeout: float, *,
                   absent_ok: bool = False) -> Response | None:
        what = "ping" if method == PING else spec_name(method)
        request = Request(next(self._ids), method, params)
        try:
            data = request.encode()
        except ProtocolError as e:
            raise vss_error(HResult.E_INVALIDARG, f"{what}: parameters cannot be sent: {e}") from None
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            try:
                try:
                    self._connect(sock, deadline)
                except _NotListening as e:
                    if absent_ok:
                        return None
                    raise self._broken(what, e) from None
                try:
                    send_message(sock, data, deadline)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may have answered before hanging up (a refusal): read it
                line = MessageReader(sock, MAX_MESSAGE).read(deadline)
            except TimeoutError:
                log.error("provider %s did not answer %s within %g s", self.name, what, timeout)
                raise ProviderTimeoutError(
                    HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR,
                    f"provider {self.name} did not answer {what} within {timeout:g} s") from None
            except ProtocolError as e:
                raise self._failure(what, f"unreadable answer: {e}") from None
            except OSError as e:
                raise self._broken(what, e) from None
        if line is None:
            raise self._broken(what, "connection closed without an answer")
        try:
            response = decode_response(line)
        except ProtocolError as e:
            raise self._failure(what, f"malformed answer: {e}") from None
        if response.id is not None and response.id != request.id:
            raise self._failure(what, f"answer to request {response.id!r} instead of {request.id!r}")
        return response

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(os.fspath(self.registration.socket))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise _NotListening(f"nothing listens on {self.registration.socket} ({e.strerror})") from None

    def _failure(self, what: str, detail: str) -> VssRuntimeError:
        log.error("provider %s: %s: %s", self.name, what, detail)
        return VssRuntimeError(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR,
                               f"provider server {self.name}: {what}: {detail}")

    def _broken(self, what: str, detail: object) -> VssRuntimeError:
        """The error for a connection that failed: a crash report if the server we started died."""
        with self._lock:
            proc = self._process
        if proc is not None:
            try:
                returncode: int | None = proc.wait(CRASH_WAIT_S)
            except subprocess.TimeoutExpired:
                returncode = None
            if returncode is not None:
                self._join_reader()
                with self._lock:
                    if self._process is proc:
                        self._process = None
                        self.loaded = False
                message = (f"provider server crashed: {_exit_text(returncode)} (during {what}); "
                           f"stderr tail:\n{self.stderr_tail()}")
                log.error("provider %s: %s", self.name, message)
                return VssRuntimeError(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, message)
        return self._failure(what, f"connection to the server broke: {detail}")

    # -- the server process --------------------------------------------------------------------

    def stderr_tail(self) -> str:
        """The last lines the server started here wrote to stderr (or stdout)."""
        return "\n".join(self._tail) or "(nothing)"

    def _spawn(self) -> dict[str, Any]:
        argv = list(self.registration.exec)
        log.info("starting provider server %s: %s", self.name, argv)
        try:
            # Own session: a signal to the coordinator's process group does not hit the provider
            # in the middle of a call; the proxy decides when it ends (stop/kill).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
        except OSError as e:
            raise self._failure("start", f"cannot run {argv[0]}: {e}") from None
        self._tail = deque(maxlen=TAIL_LINES)
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._drain, args=(proc.stdout, self._tail),
                                        name=f"provider-output-{proc.pid}", daemon=True)
        self._reader.start()
        self._process = proc
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            try:
                info = self._ping(max(min(PING_TIMEOUT_S, deadline - time.monotonic()), 0.05))
            except VssError:
                self.stop()  # it answers, but not to us (refused, or another protocol)
                raise
            if info is not None:
                if proc.poll() is not None:
                    # Another server claimed the socket first and ours gave up: use that one.
                    self._process = None
                    self._join_reader()
                return info
            returncode = proc.poll()
            if returncode is not None:
                self._process = None
                self._join_reader()
                raise self._failure("start", f"server exited before answering: {_exit_text(returncode)}; "
                                             f"stderr tail:\n{self.stderr_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._process = None
                self._signal(proc, signal.SIGKILL)
                proc.wait()
                self._join_reader()
                raise self._failure("start", f"server did not answer on {self.registration.socket} within "
                                             f"{self.start_timeout:g} s (killed); stderr tail:\n{self.stderr_tail()}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    def _drain(self, stream: IO[bytes], tail: deque[str]) -> None:
        """Keep the tail of the server's output and pass each line to the coordinator's log."""
        with stream:
            for raw in iter(lambda: stream.readline(8192), b""):
                line = raw.decode("utf-8", "replace").rstrip()
                tail.append(line[:TAIL_LINE_CHARS])
                log.info("provider %s: %s", self.name, line)

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(1.0)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
        try:
            os.killpg(proc.pid, signum)  # its own session: the group is the server and its children
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass
