"""The provider server: one provider object behind a Unix socket (spec §1, §17.1 "Out-of-process COM server").

The coordinator starts it from the registration's `exec` (provider.hosting.registry), for example

    python3 -m provider.hosting.server --socket /run/shadowlun/provider.sock \\
        --provider provider.hardware.hardware_provider:make

and calls the provider's methods over provider.hosting.rpc. Every connection gets its own thread, and the
proxy opens one connection per call, so AbortSnapshots runs while a long EndPrepareSnapshots is
still waiting (§5.2.9, §17.2 #5). Thread safety of the provider object is the provider's business
(provider.contract.state_machine locks).

What the server answers on its own:
* a peer whose uid is not in `allowed_uids` (SO_PEERCRED): E_ACCESSDENIED (§17.1 "E_ACCESSDENIED");
* a line that is not a request (provider.hosting.rpc): E_INVALIDARG, and the connection stays usable; a
  message over the size limit or cut off: E_INVALIDARG, then the connection is closed;
* DECISION: a method name outside the contract (PROVIDER_METHODS): E_INVALIDARG, the provider is
  not called. A contract method the provider object does not have: E_NOTIMPL, as a COM provider
  without that interface would answer. Parameters that do not fit the method's signature:
  E_INVALIDARG.
* A VssError raised by the provider goes back unchanged: translating codes the method may not
  return is the coordinator's job (§8, provider.hosting.proxy). A MemoryError becomes E_OUTOFMEMORY, any
  other exception VSS_E_PROVIDER_VETO with the exception in the message, and a result that is not
  JSON or too large VSS_E_PROVIDER_VETO too: the provider must not return anything else (§8).

Every VETO is logged (§8: the provider MUST log an event on VETO). The command line logs through a
queue to stderr (the journal under systemd, the proxy's log when the coordinator started us), so
no provider thread ever blocks on a log write while volumes are frozen (§8 l.736-737).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import logging
import logging.handlers
import os
import queue
import secrets
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.methods import PROVIDER_METHODS, spec_name
from provider.hosting.rpc import (
    MAX_MESSAGE,
    PING,
    PROTOCOL_VERSION,
    MessageReader,
    ProtocolError,
    Request,
    Response,
    decode_request,
)

log = logging.getLogger("shadowlun.provider.server")

SOCKET_PATH_MAX = 107           # bytes of sun_path, the terminating NUL excluded
DENIED_READ_TIMEOUT_S = 1.0     # how long a refused peer may take to send its request
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a connected AF_UNIX socket."""
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid, gid


def socket_answers(path: str | os.PathLike[str]) -> bool:
    """True when a server is listening on `path` (a connect succeeds)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(os.fspath(path))
        except OSError:
            return False
        return True


class ProviderServer:
    """Serves `provider`'s contract methods on `socket_path` until stop().

    start() binds atomically: the socket is bound under a temporary name, made mode 0600, set
    listening and then hard-linked to `socket_path`, so the path never exists without a listener
    or with a looser mode. A stale socket file (nobody listening) is replaced; a live one makes
    start() fail with OSError(EADDRINUSE) rather than steal another server's clients. stop() removes
    the socket file if it is still ours.
    """

    def __init__(self, provider: object, socket_path: str | os.PathLike[str], *,
                 allowed_uids: Iterable[int] = (0,), max_message: int = MAX_MESSAGE) -> None:
        self.provider = provider
        self.socket_path = Path(socket_path)
        self.allowed_uids = frozenset(allowed_uids)
        self.max_message = max_message
        # What the provider object implements, as QueryInterface would tell (answered by PING).
        self.methods = tuple(m for m in PROVIDER_METHODS if callable(getattr(provider, m, None)))
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._connections = 0

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen, then accept connections in a background thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._listener = self._bind()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._accept_loop, name="provider-accept", daemon=True)
        self._thread.start()
        log.info("provider server pid %d listening on %s (uids %s, methods: %s)", os.getpid(),
                 self.socket_path, sorted(self.allowed_uids), ", ".join(self.methods))

    def stop(self) -> None:
        """Stop accepting and remove the socket file. Calls in progress are not waited for."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        assert self._listener is not None
        self._listener.close()
        self._listener = None
        self._remove_socket_file()
        log.info("provider server on %s stopped", self.socket_path)

    def __enter__(self) -> ProviderServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        path = self.socket_path
        if not path.is_absolute() or len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise ValueError(f"socket path must be absolute and at most {SOCKET_PATH_MAX} bytes: {path}")
        tmp = path.parent / f".{path.name[:40]}.{secrets.token_hex(6)}"
        if len(os.fsencode(tmp)) > SOCKET_PATH_MAX:
            tmp = path.parent / f".{secrets.token_hex(6)}"
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # /run/… is empty after a boot
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(os.fspath(tmp))
            try:
                os.chmod(tmp, 0o600)
                sock.listen(64)
                self._link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            st = path.stat()
            self._identity = (st.st_dev, st.st_ino)
            return sock
        except BaseException:
            sock.close()
            raise

    @staticmethod
    def _link(tmp: Path, path: Path) -> None:
        # link(2) creates the name only if it is free: two servers started at once cannot both win.
        for _ in range(3):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                if socket_answers(path):
                    raise OSError(errno.EADDRINUSE, f"another provider server is listening on {path}") from None
                log.warning("replacing stale socket file %s", path)
                path.unlink(missing_ok=True)
        raise OSError(errno.EADDRINUSE, f"could not claim {path}: it keeps reappearing")

    def _remove_socket_file(self) -> None:
        try:
            st = self.socket_path.stat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    # -- connections ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                events = sel.select()
                if any(key.fd == self._wake_r for key, _ in events):
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError as e:
                    log.warning("accept failed: %s", e)
                    time.sleep(0.05)
                    continue
                self._connections += 1
                threading.Thread(target=self._serve_connection, args=(conn,), daemon=True,
                                 name=f"provider-conn-{self._connections}").start()

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid, _gid = peer_credentials(conn)
                reader = MessageReader(conn, self.max_message)
                if uid not in self.allowed_uids:
                    self._refuse(conn, reader, pid, uid)
                    return
                while True:
                    try:
                        line = reader.read()
                    except ProtocolError as e:
                        # The framing is lost: answer once and hang up.
                        conn.sendall(Response(None, error=vss_error(HResult.E_INVALIDARG, str(e))).encode())
                        return
                    if line is None:
                        return
                    conn.sendall(self.handle(line))
            except OSError as e:
                # The client went away (timed out, or crashed) before it got its answer.
                log.info("connection closed early: %s", e)

    def _refuse(self, conn: socket.socket, reader: MessageReader, pid: int, uid: int) -> None:
        log.warning("refused connection from pid %d uid %d (allowed uids: %s)", pid, uid,
                    sorted(self.allowed_uids))
        rid = None
        try:  # read the request first, so the client is not cut off while it is still sending
            line = reader.read(time.monotonic() + DENIED_READ_TIMEOUT_S)
            if line is not None:
                rid = decode_request(line).id
        except (ProtocolError, OSError):
            pass
        error = vss_error(HResult.E_ACCESSDENIED, f"uid {uid} may not call this provider")
        conn.sendall(Response(rid, error=error).encode())

    # -- requests ------------------------------------------------------------------------------

    def handle(self, line: bytes) -> bytes:
        """The encoded response to one request line; never raises."""
        try:
            request = decode_request(line)
        except ProtocolError as e:
            log.warning("malformed request: %s", e)
            return Response(e.request_id, error=vss_error(HResult.E_INVALIDARG, f"malformed request: {e}")).encode()
        response = self.dispatch(request)
        try:
            return response.encode(self.max_message)
        except ProtocolError as e:
            error = vss_error(HResult.VSS_E_PROVIDER_VETO,
                              f"{spec_name(request.method)}: the provider's result cannot be sent: {e}")
            self._log_error(request.method, error)
            return Response(request.id, error=error).encode()

    def dispatch(self, request: Request) -> Response:
        """Call the provider for `request` and wrap what it returns or raises."""
        method, rid = request.method, request.id
        if method == PING:
            return Response(rid, result={"protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                                         "methods": list(self.methods)})
        if method not in PROVIDER_METHODS:
            return Response(rid, error=vss_error(HResult.E_INVALIDARG, f"unknown method {method!r}"))
        if method not in self.methods:
            return Response(rid, error=vss_error(HResult.E_NOTIMPL,
                                                 f"this provider does not implement {spec_name(method)}"))
        fn = getattr(self.provider, method)
        try:
            inspect.signature(fn).bind(**request.params)
        except TypeError as e:
            return Response(rid, error=vss_error(HResult.E_INVALIDARG, f"{spec_name(method)}: {e}"))
        except ValueError:  # no signature to check (a builtin): let the call decide
            pass
        started = time.monotonic()
        try:
            result = fn(**request.params)
        except VssError as e:
            error: VssError = e
        except MemoryError as e:
            error = vss_error(HResult.E_OUTOFMEMORY, f"{spec_name(method)}: out of memory {e}".rstrip())
        except Exception as e:
            log.exception("%s raised", spec_name(method))
            error = vss_error(HResult.VSS_E_PROVIDER_VETO,
                              f"{spec_name(method)} failed: {type(e).__name__}: {e}")
        else:
            log.debug("%s returned after %.3f s", spec_name(method), time.monotonic() - started)
            return Response(rid, result=result)
        self._log_error(method, error)
        return Response(rid, error=error)

    @staticmethod
    def _log_error(method: str, error: VssError) -> None:
        level = logging.ERROR if error.hresult is HResult.VSS_E_PROVIDER_VETO else logging.WARNING
        log.log(level, "method=%s hresult=%s %s: %s", spec_name(method), error.hresult.hex,
                error.hresult.name, error.message)


def serve(provider: object, socket_path: str | os.PathLike[str], *, allowed_uids: Iterable[int] = (0,),
          stop: threading.Event | None = None, max_message: int = MAX_MESSAGE) -> None:
    """Serve `provider` on `socket_path` until `stop` is set.

    Without `stop`, until SIGTERM or SIGINT (the handlers are installed only when called from the
    main thread). The socket file is removed on the way out.
    """
    event = threading.Event() if stop is None else stop
    signals = {signal.SIGTERM, signal.SIGINT}
    handle_signals = stop is None and threading.current_thread() is threading.main_thread()
    previous: dict[int, Any] = {}
    if handle_signals:
        for signum in signals:
            previous[signum] = signal.signal(signum, lambda *_: event.set())
    server = ProviderServer(provider, socket_path, allowed_uids=allowed_uids, max_message=max_message)
    try:
        # The server's threads (and every thread they start) block the signals, so the kernel
        # delivers them to this thread, whose wait they interrupt at once.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals) if handle_signals else None
        try:
            server.start()
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while not event.wait(1.0):
            pass
    finally:
        server.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)


def load_factory(spec: str) -> Any:
    """The object that "MODULE:FACTORY" names (the factory is called by main())."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--provider must be MODULE:FACTORY, not {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _log_to_stderr(level: str) -> logging.handlers.QueueListener:
    """Log records go into a queue; one thread writes them to stderr (never the caller)."""
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(level)
    listener = logging.handlers.QueueListener(q, stream)
    listener.start()
    return listener


def main(argv: list[str] | None = None) -> int:
    """`python3 -m provider.hosting.server --socket PATH --provider MODULE:FACTORY [--allow-uid UID ...]`.

    Exit status 0 after SIGTERM/SIGINT, 2 when the provider cannot be made, 1 when the socket
    cannot be served.
    """
    parser = argparse.ArgumentParser(prog="python3 -m provider.hosting.server", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True, type=Path, help="absolute path of the Unix socket")
    parser.add_argument("--provider", required=True, metavar="MODULE:FACTORY",
                        help="factory returning the provider object, e.g. provider.hardware.hardware_provider:make")
    parser.add_argument("--allow-uid", type=int, action="append", metavar="UID",
                        help="uid allowed to call (repeatable; default 0)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    listener = _log_to_stderr(args.log_level)
    try:
        try:
            provider = load_factory(args.provider)()
        except Exception:
            log.exception("cannot make the provider from %s", args.provider)
            return 2
        try:
            serve(provider, args.socket, allowed_uids=args.allow_uid or (0,))
        except (OSError, ValueError) as e:
            log.error("cannot serve on %s: %s", args.socket, e)
            return 1
        return 0
    finally:
        listener.stop()


if __name__ == "__main__":
    sys.exit(main())
