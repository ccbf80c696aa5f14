"""HRESULT codes of the VSS hardware-provider contract, and the errors that carry them.

The numeric codes (spec §3.9) are kept here and nowhere else, so the provider, the array agent and the
CLI all report a failure with the same code that a Windows requester would see. Both the provider
and the array agent raise `VssError`s. The subclass tells the caller who has to act:
`VssUserError` means the request is wrong or refers to nothing; `VssRuntimeError` means the system
failed. Over the agent's REST API an error travels as `to_dict()`, with `http_status()` as the
response status, and the receiver rebuilds it with `VssError.from_dict()`.
"""
from __future__ import annotations

import enum
from typing import Any, ClassVar


@enum.unique
class HResult(enum.IntEnum):
    """HRESULTs of spec §3.9, with the unsigned 32-bit values of the Windows SDK headers."""

    S_OK = 0x00000000
    S_FALSE = 0x00000001
    E_NOTIMPL = 0x80004001
    E_POINTER = 0x80004003
    E_ABORT = 0x80004004
    E_FAIL = 0x80004005
    E_UNEXPECTED = 0x8000FFFF
    E_ACCESSDENIED = 0x80070005
    E_OUTOFMEMORY = 0x8007000E
    E_INVALIDARG = 0x80070057
    VSS_E_BAD_STATE = 0x80042301
    VSS_E_UNEXPECTED = 0x80042302
    VSS_E_PROVIDER_ALREADY_REGISTERED = 0x80042303
    VSS_E_PROVIDER_NOT_REGISTERED = 0x80042304
    VSS_E_PROVIDER_VETO = 0x80042306
    VSS_E_PROVIDER_IN_USE = 0x80042307
    VSS_E_OBJECT_NOT_FOUND = 0x80042308
    VSS_S_ASYNC_PENDING = 0x00042309
    VSS_S_ASYNC_FINISHED = 0x0004230A
    VSS_S_ASYNC_CANCELLED = 0x0004230B
    VSS_E_VOLUME_NOT_SUPPORTED = 0x8004230C
    VSS_E_OBJECT_ALREADY_EXISTS = 0x8004230D
    VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER = 0x8004230E
    VSS_E_UNEXPECTED_PROVIDER_ERROR = 0x8004230F
    VSS_E_CORRUPT_XML_DOCUMENT = 0x80042310
    VSS_E_INVALID_XML_DOCUMENT = 0x80042311
    VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED = 0x80042312
    VSS_E_FLUSH_WRITES_TIMEOUT = 0x80042313
    VSS_E_HOLD_WRITES_TIMEOUT = 0x80042314
    VSS_E_UNEXPECTED_WRITER_ERROR = 0x80042315
    VSS_E_SNAPSHOT_SET_IN_PROGRESS = 0x80042316
    VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED = 0x80042317
    VSS_E_WRITER_INFRASTRUCTURE = 0x80042318
    VSS_E_WRITER_NOT_RESPONDING = 0x80042319
    VSS_E_WRITER_ALREADY_SUBSCRIBED = 0x8004231A
    VSS_E_UNSUPPORTED_CONTEXT = 0x8004231B
    VSS_E_VOLUME_IN_USE = 0x8004231D
    VSS_E_MAXIMUM_DIFFAREA_ASSOCIATIONS_REACHED = 0x8004231E
    VSS_E_INSUFFICIENT_STORAGE = 0x8004231F
    VSS_E_NO_SNAPSHOTS_IMPORTED = 0x80042320
    VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED = 0x00042321
    VSS_E_SOME_SNAPSHOTS_NOT_IMPORTED = 0x80042321
    VSS_E_MAXIMUM_NUMBER_OF_REMOTE_MACHINES_REACHED = 0x80042322
    VSS_E_REMOTE_SERVER_UNAVAILABLE = 0x80042323
    VSS_E_REMOTE_SERVER_UNSUPPORTED = 0x80042324
    VSS_E_REVERT_IN_PROGRESS = 0x80042325
    VSS_E_REVERT_VOLUME_LOST = 0x80042326
    VSS_E_REBOOT_REQUIRED = 0x80042327
    VSS_E_TRANSACTION_FREEZE_TIMEOUT = 0x80042328
    VSS_E_TRANSACTION_THAW_TIMEOUT = 0x80042329
    VSS_E_UNSELECTED_VOLUME = 0x8004232A
    VSS_E_SNAPSHOT_NOT_IN_SET = 0x8004232B
    VSS_E_NESTED_VOLUME_LIMIT = 0x8004232C
    VSS_E_VOLUME_NOT_LOCAL = 0x8004232D
    VSS_E_CLUSTER_TIMEOUT = 0x8004232E
    VSS_E_NOT_SUPPORTED = 0x8004232F
    # The spec's row "VSS_E_WRITERERROR_* 0x800423F0–F5", in the order of the SDK's vss.h.
    VSS_E_WRITERERROR_INCONSISTENTSNAPSHOT = 0x800423F0
    VSS_E_WRITERERROR_OUTOFRESOURCES = 0x800423F1
    VSS_E_WRITERERROR_TIMEOUT = 0x800423F2
    VSS_E_WRITERERROR_RETRYABLE = 0x800423F3
    VSS_E_WRITERERROR_NONRETRYABLE = 0x800423F4
    VSS_E_WRITERERROR_RECOVERY_FAILED = 0x800423F5
    VSS_E_BREAK_REVERT_ID_FAILED = 0x800423F6
    VSS_E_LEGACY_PROVIDER = 0x800423F7
    VSS_E_MISSING_DISK = 0x800423F8
    VSS_E_MISSING_HIDDEN_VOLUME = 0x800423F9
    VSS_E_MISSING_VOLUME = 0x800423FA
    VSS_E_AUTORECOVERY_FAILED = 0x800423FB
    VSS_E_DYNAMIC_DISK_ERROR = 0x800423FC
    VSS_E_NONTRANSPORTABLE_BCD = 0x800423FD
    VSS_E_CANNOT_REVERT_DISKID = 0x800423FE
    VSS_E_RESYNC_IN_PROGRESS = 0x800423FF
    VSS_E_CLUSTER_ERROR = 0x80042400

    @property
    def hex(self) -> str:
        """The code as written in the SDK and on the wire: "0x80042308"."""
        return f"0x{self.value:08X}"

    @property
    def is_success(self) -> bool:
        """True when the severity (high) bit is clear, including S_FALSE and the VSS_S_* codes."""
        return not self.value & 0x80000000

    @property
    def is_failure(self) -> bool:
        return not self.is_success


# Failures caused by the caller's request (bad input, or a reference to nothing or to the wrong
# state). Every other failure code is a runtime error: the system failed.
USER_ERROR_CODES: frozenset[HResult] = frozenset({
    HResult.E_INVALIDARG,
    HResult.E_ACCESSDENIED,
    HResult.VSS_E_OBJECT_NOT_FOUND,
    HResult.VSS_E_OBJECT_ALREADY_EXISTS,
    HResult.VSS_E_BAD_STATE,
    HResult.VSS_E_UNSUPPORTED_CONTEXT,
    HResult.VSS_E_VOLUME_NOT_SUPPORTED,
    HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
    HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED,
    HResult.VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED,
    HResult.VSS_E_INVALID_XML_DOCUMENT,
    HResult.VSS_E_CORRUPT_XML_DOCUMENT,
    HResult.VSS_E_SNAPSHOT_NOT_IN_SET,
    HResult.VSS_E_SNAPSHOT_SET_IN_PROGRESS,
    HResult.VSS_E_INSUFFICIENT_STORAGE,
    HResult.VSS_E_RESYNC_IN_PROGRESS,
    HResult.VSS_E_VOLUME_IN_USE,
    HResult.VSS_E_BREAK_REVERT_ID_FAILED,  # an original still presented: the identity would collide
})

_HTTP_STATUS: dict[HResult, int] = {
    HResult.E_INVALIDARG: 400,
    HResult.E_ACCESSDENIED: 403,
    HResult.VSS_E_OBJECT_NOT_FOUND: 404,
    HResult.VSS_E_OBJECT_ALREADY_EXISTS: 409,
    HResult.VSS_E_BAD_STATE: 409,
    HResult.VSS_E_SNAPSHOT_SET_IN_PROGRESS: 409,
    HResult.VSS_E_RESYNC_IN_PROGRESS: 409,
    HResult.VSS_E_VOLUME_IN_USE: 409,
    HResult.VSS_E_BREAK_REVERT_ID_FAILED: 409,
    HResult.VSS_E_INSUFFICIENT_STORAGE: 507,
}

_RAW_LIMIT = 1000  # characters of an unreadable peer error that are kept in the replacement message


def http_status(hresult: HResult | int) -> int:
    """The HTTP status of the array agent's response that carries `hresult`.

    Success codes give 200. User errors give 4xx (507 for VSS_E_INSUFFICIENT_STORAGE), and a user
    error without its own status gives 422. Runtime errors give 500.
    """
    code = HResult(hresult)
    if code.is_success:
        return 200
    if code in USER_ERROR_CODES:
        return _HTTP_STATUS.get(code, 422)
    return 500


class VssError(Exception):
    """A failed operation with its HRESULT.

    `VssError(code, message)` returns a `VssUserError` or a `VssRuntimeError`, chosen by `code`.
    A success code, or a code that does not fit the subclass named explicitly, raises ValueError.

    A typed error (as stratis-cli has them) names its code in `HRESULT` and takes its own fields
    as arguments; its __init__ passes `HRESULT` and the message it makes of them to this one.
    """

    HRESULT: ClassVar[HResult | None] = None
    hresult: HResult
    message: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.HRESULT is not None and (cls.HRESULT in USER_ERROR_CODES) != issubclass(cls, VssUserError):
            raise TypeError(f"{cls.__name__}: {cls.HRESULT.name} is not a {cls.__base__.__name__} code")

    def __new__(cls, *args: Any, **kwargs: Any) -> VssError:
        if cls.HRESULT is not None:
            return super().__new__(cls)
        return cls._new(*args, **kwargs)

    @classmethod
    def _new(cls, hresult: HResult | int, message: str = "") -> VssError:
        code = HResult(hresult)
        if code.is_success:
            raise ValueError(f"{code.name} is a success code, not an error")
        kind = VssUserError if code in USER_ERROR_CODES else VssRuntimeError
        if cls is VssError:
            cls = kind
        elif not issubclass(cls, kind):
            raise ValueError(f"{code.name} is not a {cls.__name__} code (it is a {kind.__name__} code)")
        return super().__new__(cls, code, message)

    def __init__(self, hresult: HResult | int, message: str = "") -> None:
        self.hresult = HResult(hresult)
        self.message = message
        super().__init__(self.hresult, message)

    def __str__(self) -> str:
        head = f"{self.hresult.name} ({self.hresult.hex})"
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(HResult.{self.hresult.name}, {self.message!r})"

    def to_dict(self) -> dict[str, str]:
        """The wire form: {"hresult": "0x80042308", "vss": "VSS_E_OBJECT_NOT_FOUND", "message": "..."}."""
        return {"hresult": self.hresult.hex, "vss": self.hresult.name, "message": self.message}

    @classmethod
    def from_dict(cls, d: Any) -> VssError:
        """Rebuild an error from `to_dict()` output; this never raises.

        The hex string must give a known failure code, "vss" must be its name, and "message" must
        be a string. Anything else becomes a VssRuntimeError with VSS_E_UNEXPECTED, whose message
        quotes what was received.
        """
        try:
            raw = d["hresult"]
            if isinstance(raw, str):
                value = int(raw, 16)
            elif isinstance(raw, int) and not isinstance(raw, bool):
                value = raw
            else:
                raise TypeError(raw)
            code = HResult(value)
            if d["vss"] != code.name or not isinstance(d["message"], str) or code.is_success:
                raise ValueError(d)
            return VssError(code, d["message"])
        except Exception:
            text = repr(d)
            if len(text) > _RAW_LIMIT:
                text = text[:_RAW_LIMIT] + "..."
            return VssRuntimeError(HResult.VSS_E_UNEXPECTED, f"unreadable VSS error: {text}")


class VssUserError(VssError):
    """The caller's request is wrong or refers to nothing (a code in USER_ERROR_CODES)."""


class VssRuntimeError(VssError):
    """The system failed (any failure code outside USER_ERROR_CODES)."""


def vss_error(hresult: HResult | int, message: str = "") -> VssError:
    """The error for `hresult`: a VssUserError or a VssRuntimeError."""
    return VssError(hresult, message)
