"""What the array's parts (LUNs, hosts, snapshot sets, jobs) share: its configuration, the
store, the storage backend and LIO, the one lock of changing operations, and whether the store is trusted."""
from __future__ import annotations

import threading

from provider.contract.hresult import HResult, vss_error

from .backend import Backend
from .config import ArrayConfig
from .lio import Lio
from .store import Store


class ArrayContext:
    def __init__(self, config: ArrayConfig, store: Store, backend: Backend, lio: Lio) -> None:
        self.config, self.store, self.backend, self.lio = config, store, backend, lio
        self.lock = threading.RLock()  # one changing operation at a time; reads are free
        # False while the store is not known to be this array's (targets.reconcile decides at
        # start): then nothing that removes or overwrites data runs.
        self.store_trusted = True

    def require_trusted(self, what: str) -> None:
        if not self.store_trusted:
            raise vss_error(HResult.VSS_E_BAD_STATE,
                             f"{what}: refused until an admin confirms this array's store "
                             f"(GET /v1/health, then POST /v1/store/confirm)")


class ArrayPart:
    """One part of the array, over the context all parts share."""

    def __init__(self, ctx: ArrayContext) -> None:
        self.ctx = ctx
        self.config, self.store, self.backend, self.lio = ctx.config, ctx.store, ctx.backend, ctx.lio
