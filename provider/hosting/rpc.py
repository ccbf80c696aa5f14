"""Wire protocol between the coordinator and an out-of-process provider server (spec §1, §17.1).

Hardware providers must be out-of-process servers (§1), so a crash or a hang of the provider cannot
take the coordinator with it. The transport is one JSON object per line over an AF_UNIX stream
socket, with the standard library only: the lab VMs have Debian 12's python3 and nothing else we
could lean on (the varlink Python library is not packaged for Debian 12, and python3-jsonrpc only
formats messages, which is the easy part).

    request   {"id": 7, "method": "end_prepare_snapshots", "params": {"set_id": "…"}}
    response  {"id": 7, "result": <JSON>}
          or  {"id": 7, "error": {"hresult": "0x8004231F", "vss": "VSS_E_…", "message": "…"}}

Method names are the snake_case names of the COM methods (provider.contract.methods); names with a dot
belong to the protocol itself (PING). The error object is VssError.to_dict(), the same form the
array agent uses. A response whose request could not be read carries "id": null. Messages are
ASCII (json's escapes), NaN and Infinity are refused, and one message is at most MAX_MESSAGE bytes.
"""
from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from provider.contract.hresult import VssError

PROTOCOL_VERSION = 1
MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one message, the newline excluded
PING = "rpc.ping"  # answered by the server itself: {"protocol", "pid", "methods"}

RequestId = int | str
_METHOD_RE = re.compile(r"[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63})?")
_ID_LIMIT = 128
_QUOTE_LIMIT = 80  # characters of a bad value quoted in an error message


class ProtocolError(ValueError):
    """A message that breaks the protocol: not JSON, wrong shape, too large or cut off.

    `request_id` is the id of the offending request when it could still be read, so the server's
    error answer can name it.
    """

    def __init__(self, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


def encode(message: dict[str, Any], limit: int = MAX_MESSAGE) -> bytes:
    """One message as its line. ProtocolError if it is not plain JSON or exceeds `limit`."""
    try:
        text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if len(text) > limit:
        raise ProtocolError(f"message of {len(text)} bytes exceeds the limit of {limit} bytes")
    return text.encode("ascii") + b"\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_object(line: bytes, what: str) -> dict[str, Any]:
    if not line.strip():
        raise ProtocolError(f"empty {what}")
    try:
        value = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not UTF-8: {e}") from None
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{what} is not JSON: {e}; starts {_quote(line[:40])}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object but {type(value).__name__}")
    return value


def _check_id(value: Any, *, nullable: bool) -> RequestId | None:
    if value is None and nullable:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= _ID_LIMIT:
        return value
    raise ProtocolError(f"id must be an integer or a string of at most {_ID_LIMIT} characters, "
                        f"not {_quote(value)}")


@dataclass(frozen=True)
class Request:
    """A call of `method` with keyword arguments `params`."""

    id: RequestId
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self, limit: int = MAX_MESSAGE) -> bytes:
        return encode({"id": self.id, "method": self.method, "params": self.params}, limit)


@dataclass(frozen=True)
class Response:
    """The answer to request `id`: `result` when `error` is None."""

    id: RequestId | None
    result: Any = None
    error: VssError | None = None

    def encode(self, limit: int = MAX_MESSAGE) -> bytes:
        if self.error is not None:
            return encode({"id": self.id, "error": self.error.to_dict()}, limit)
        return encode({"id": self.id, "result": self.result}, limit)


def decode_request(line: bytes) -> Request:
    """Parse one request line (without its newline); ProtocolError says what is wrong."""
    d = _decode_object(line, "request")
    try:
        rid: RequestId | None = _check_id(d.get("id"), nullable=False)
        bad_id = None
    except ProtocolError as e:
        rid, bad_id = None, e
    extra = sorted(set(d) - {"id", "method", "params"})
    if extra:
        raise ProtocolError(f"unexpected request fields {extra}", rid)
    if rid is None:
        raise bad_id or ProtocolError("request without an id")
    method = d.get("method")
    if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
        raise ProtocolError(f"method must be a lower-case snake_case name, not {_quote(method)}", rid)
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"params must be a JSON object, not {type(params).__name__}", rid)
    for key in params:
        if not key.isidentifier() or key.startswith("_"):
            raise ProtocolError(f"parameter name {_quote(key)} is not an identifier", rid)
    return Request(rid, method, params)


def decode_response(line: bytes) -> Response:
    """Parse one response line (without its newline); ProtocolError says what is wrong.

    The error object goes through VssError.from_dict, which never fails: an unreadable one becomes
    VSS_E_UNEXPECTED quoting what arrived.
    """
    d = _decode_object(line, "response")
    rid = _check_id(d.get("id"), nullable=True)
    keys = set(d) - {"id"}
    if keys == {"result"}:
        return Response(rid, result=d["result"])
    if keys == {"error"}:
        return Response(rid, error=VssError.from_dict(d["error"]))
    raise ProtocolError(f"a response has an id and either result or error, not fields {sorted(d)}")


class MessageReader:
    """Reads message lines from a stream socket, each at most `limit` bytes.

    A message longer than the limit, or a connection closed in the middle of one, raises
    ProtocolError; the connection cannot be trusted after that. OSErrors of the socket pass through,
    and a passed `deadline` (time.monotonic()) raises TimeoutError.
    """

    def __init__(self, sock: socket.socket, limit: int = MAX_MESSAGE) -> None:
        self._sock, self._limit = sock, limit
        self._buf = bytearray()
        self._scanned = 0

    def read(self, deadline: float | None = None) -> bytes | None:
        """The next message without its newline, or None when the peer closed between messages."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                self._scanned = 0
                if len(line) > self._limit:
                    raise ProtocolError(f"message of {len(line)} bytes exceeds the limit of {self._limit} bytes")
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:
                raise ProtocolError(f"message exceeds the limit of {self._limit} bytes")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed while waiting for a message")
                self._sock.settimeout(remaining)
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                if self._buf:
                    raise ProtocolError(f"connection closed in the middle of a message "
                                        f"({len(self._buf)} bytes without a newline)")
                return None
            self._buf += chunk


def send_message(sock: socket.socket, data: bytes, deadline: float | None = None) -> None:
    """Send one encoded message, within `deadline` (time.monotonic()) if given."""
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before the message was sent")
        sock.settimeout(remaining)
    sock.sendall(data)
