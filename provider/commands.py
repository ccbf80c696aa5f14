"""Commands the host side runs (iscsiadm, mount, sfdisk, udevadm, ...): one runner with a timeout
and the C locale, so a hung tool cannot hang the provider and its messages can be quoted; the
failures as VSS errors with the command (secrets hidden) and the tail of its output."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from provider.contract.hresult import HResult, vss_error

DEFAULT_COMMAND_TIMEOUT = 90.0  # s; bounds every command (an iSCSI login with its retries included)
SECRET_OPTIONS = ("node.session.auth.password", "node.session.auth.password_in")  # iscsiadm -n NAME -v SECRET


class CommandResult(Protocol):
    """What a Runner returns; subprocess.CompletedProcess fits."""

    stdout: str
    stderr: str
    returncode: int


class Runner(Protocol):
    """Runs a command. With check=True a non-zero exit raises a VSS error; callers that know
    several exit codes as success paths pass check=False and read the code themselves."""

    def __call__(self, argv: list[str], check: bool = True) -> CommandResult: ...


def command_text(argv: Sequence[str]) -> str:
    """`argv` for messages and logs, with secrets (CHAP passwords) replaced by '***'."""
    shown = list(argv)
    for i in range(len(shown) - 2):
        if shown[i] == "-n" and shown[i + 1] in SECRET_OPTIONS and shown[i + 2] == "-v" and i + 3 < len(shown):
            shown[i + 3] = "***"
    return " ".join(shown)


@dataclass(frozen=True)
class SubprocessRunner:
    """The real Runner: LC_ALL=C (messages are quoted to users), no stdin, and a timeout, so a hung
    iscsid cannot hang the provider."""

    timeout: float = DEFAULT_COMMAND_TIMEOUT

    def __call__(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C"}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO, f"{argv[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                            f"{command_text(argv)}: no answer within {self.timeout:g} s") from None
        if check and done.returncode:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                            f"{command_text(argv)} failed (exit {done.returncode}): {tail(done)}")
        return done


DEFAULT_RUNNER: Runner = SubprocessRunner()


def tail(result: CommandResult) -> str:
    """The useful part of a failed command's output: stderr, else stdout, trimmed."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    return text[-1000:] if text else "no message"


def run_checked(runner: Runner, argv: list[str], code: HResult = HResult.VSS_E_UNEXPECTED,
                tolerated: str | None = None) -> str | None:
    """The command's stdout; a failure raises `code` with the command and the tail of its output,
    except one whose stderr says `tolerated` (then None)."""
    done = runner(argv, check=False)
    if done.returncode and tolerated and tolerated in (done.stderr or ""):
        return None
    if done.returncode:
        raise vss_error(code, f"{command_text(argv)} failed (exit {done.returncode}): {tail(done)}")
    return done.stdout
