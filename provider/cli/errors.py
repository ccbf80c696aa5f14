"""Whose fault a failed shadowlun command is, and how it is shown (as stratis-cli keeps its errors
apart from their reporting).

A command raises a VssError: a VssUserError when the caller must change the request (exit
status 2), a VssRuntimeError when the system failed (exit status 1). Only the CLI's own reads of
a file the user named are the user's errors (FileReadError); any other OSError that reaches the
CLI (a full disk, a failing device, a state file it cannot write) is the system's
(SystemFailure), so that the user is never told to fix what they cannot.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError

USER_EXIT = 2
RUNTIME_EXIT = 1


class FileReadError(VssUserError):
    """A file named on the command line cannot be read; the user names another."""

    HRESULT = HResult.E_INVALIDARG

    def __init__(self, path: str, what: str, error: OSError) -> None:
        super().__init__(self.HRESULT, f"cannot read {what} {path}: {error.strerror or error}")
        self.path, self.what, self.error = path, what, error


class SystemFailure(VssRuntimeError):
    """An OSError of this host's system, not of a file the user named."""

    HRESULT = HResult.VSS_E_UNEXPECTED

    def __init__(self, error: OSError) -> None:
        super().__init__(self.HRESULT, str(error))
        self.error = error


def read_file(path: str, what: str) -> bytes:
    """The bytes of a file the user named (`what` says which, for the message)."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FileReadError(path, what, e) from e


def report(error: VssError, as_json: bool) -> int:
    """Print `error` on stderr (its wire form with --json) and return the exit status."""
    print(json.dumps(error.to_dict()) if as_json else f"shadowlun: {error}", file=sys.stderr)
    return USER_EXIT if isinstance(error, VssUserError) else RUNTIME_EXIT
