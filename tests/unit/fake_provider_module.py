"""A small provider for tests of provider.hosting.server and provider.hosting.proxy, in process or behind
`python3 -m provider.hosting.server --provider fake_provider_module:make` (tests/unit on PYTHONPATH).

It implements some contract methods and deliberately lacks others (E_NOTIMPL), has one public
method outside the contract (`status`, which must never be reachable over the socket), and takes
extra keyword parameters that let a test choose an error, a delay or a bad result.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from provider.contract.hresult import HResult, vss_error


class FakeProvider:
    def __init__(self) -> None:
        self.loads = 0
        self.unloads: list[bool] = []
        self.unload_answer: Any = 0
        self.calls: list[str] = []
        self.end_prepare_started = threading.Event()
        self.end_prepare_done = threading.Event()
        self.aborted = threading.Event()
        self.abort_overlapped_end_prepare: bool | None = None

    # IVssProviderNotifications
    def on_load(self) -> None:
        self.loads += 1

    def on_unload(self, force: bool, fail: bool = False) -> Any:
        self.unloads.append(force)
        if fail:
            raise vss_error(HResult.E_FAIL, "unload went wrong")
        return self.unload_answer

    # IVssHardwareSnapshotProvider(Ex)
    def are_luns_supported(self, context: int, devices: list[str], luns: list[dict]) -> dict:
        self.calls.append("are_luns_supported")
        return {"supported": True, "context": context, "devices": devices, "luns": luns}

    def fill_in_lun_info(self, device: str, lun_info: dict | None = None) -> dict:
        raise vss_error(HResult.E_FAIL, f"{device} is not ours")

    def get_provider_capabilities(self) -> dict:
        return {"mask": 0, "loads": self.loads, "unloads": self.unloads, "pid": os.getpid()}

    def get_target_luns(self, devices: list[str], source_luns: list[dict], bad: str = "") -> Any:
        if bad == "not_json":
            return {"lun": object()}
        if bad == "too_large":
            return "x" * 4096
        return [dict(lun, serial="copy") for lun in source_luns]

    # IVssProviderCreateSnapshotSet
    def begin_prepare_snapshot(self, set_id: str, snapshot_id: str, context: int,
                               devices: list[str], luns: list[dict], fail: str = "") -> list[dict]:
        if fail:
            raise vss_error(HResult[fail], f"begin prepare refused with {fail}")
        return luns

    def end_prepare_snapshots(self, set_id: str, wait: float = 0.0, marker: str = "",
                              fail: str = "", message: str = "") -> dict:
        self.end_prepare_started.set()
        try:
            if marker:
                Path(marker).touch()
            if fail:
                raise vss_error(HResult[fail], message)
            aborted = self.aborted.wait(wait) if wait else False
            return {"set_id": set_id, "aborted": aborted}
        finally:
            self.end_prepare_done.set()

    def pre_commit_snapshots(self, set_id: str, boom: str = "") -> None:
        if boom == "runtime":
            raise RuntimeError("array exploded")
        if boom == "memory":
            raise MemoryError()

    def commit_snapshots(self, set_id: str, fail: str = "", message: str = "") -> dict:
        if fail:
            raise vss_error(HResult[fail], message)
        return {"committed": set_id}

    def abort_snapshots(self, set_id: str, fail: str = "") -> None:
        self.abort_overlapped_end_prepare = (self.end_prepare_started.is_set()
                                             and not self.end_prepare_done.is_set())
        self.aborted.set()
        if fail:
            raise vss_error(HResult[fail], "abort went wrong")

    # Not a contract method: the server must refuse it although it is public.
    def status(self) -> str:
        self.calls.append("status")
        return "secret"


def make() -> FakeProvider:
    print(f"fake provider made in pid {os.getpid()}", file=sys.stderr, flush=True)
    return FakeProvider()
