"""The array agent: the array's management API over HTTPS with a bearer token.

The "provider-specific mechanism" of the VSS seeds: hosts reach the array only here and over
iSCSI. FastAPI serves it (on uvicorn, both Debian packages on the array) and describes it at
/openapi.json. Errors are JSON {hresult, vss, message} with an HTTP status per VSS code.

    python3 -m targets.agent [--config /etc/shadowlun/array.json]
"""
from __future__ import annotations

import argparse
import hmac
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from provider.hresult import HResult, VssError, VssUserError, http_status, vss_error

from .array import Array, ArrayConfig, LunView, san_portals
from .lio import ISCSI_PORT, Lio
from .lvm import Lvm
from .reconcile import Reconciler
from .store import Job, Store

log = logging.getLogger("shadowlun.agent")
API_VERSION = "1"


class VolumeIn(BaseModel):
    name: str = Field(..., description="1-48 of a-z, 0-9, '-'")
    size_bytes: int = Field(..., description="virtual size; at least 1 MiB, a multiple of 512")


class MaskIn(BaseModel):
    initiator: str = Field(..., description="the host's iSCSI initiator name (IQN)")
    chap_user: str
    chap_secret: str = Field(..., description="12 to 16 characters")
    read_only: bool = False


class HostIn(BaseModel):
    name: str = Field(..., description="the host's name: 1-48 of a-z, 0-9, '-'")


class SnapshotIn(BaseModel):
    snapshot_id: str
    lun: str


class SetIn(BaseModel):
    set_id: str
    snapshots: list[SnapshotIn]


class ImportIn(BaseModel):
    serials: list[str] = Field(..., description="serials of the shadow LUNs about to be located")
    host: str = Field(..., description="the importing host's initiator name")


class CopyIn(BaseModel):
    target: str = Field(..., description="name of the new volume holding the full copy")


class ResyncIn(BaseModel):
    snapshot: str = Field(..., description="the snapshot LUN whose bytes the target gets back")


class TokenRejected(VssUserError):
    """E_ACCESSDENIED for a missing or wrong bearer token: answered 401 (the caller is not
    authenticated), where the array's own E_ACCESSDENIED (an initiator that is not a registered
    host) is 403 (authenticated, not allowed)."""


def job_dict(job: Job) -> dict:
    return {**asdict(job), "percent": round(job.percent, 1)}


def lun_dict(view: LunView) -> dict:
    return asdict(view)


def create_app(array: Array, token: str, keeper: Reconciler | None = None) -> FastAPI:
    """The API over `array`; `keeper` is the reconciler that brought it up (its health)."""
    keeper = keeper or Reconciler(array)
    app = FastAPI(title="shadowlun array agent", version=API_VERSION,
                  description="LVM thin volumes and snapshots served as iSCSI LUNs by LIO.")
    bearer = HTTPBearer(auto_error=False)

    def authorized(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not hmac.compare_digest(cred.credentials.encode(), token.encode()):
            raise TokenRejected(HResult.E_ACCESSDENIED, "missing or wrong bearer token")

    @app.exception_handler(TokenRejected)
    async def token_rejected(_: Request, e: TokenRejected) -> JSONResponse:
        return JSONResponse(e.to_dict(), status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(VssError)
    async def vss_failed(_: Request, e: VssError) -> JSONResponse:
        (log.info if http_status(e.hresult) < 500 else log.error)("%s", e)
        return JSONResponse(e.to_dict(), status_code=http_status(e.hresult))

    @app.exception_handler(Exception)
    async def failed(_: Request, e: Exception) -> JSONResponse:
        """Anything not a VssError is still answered in the VSS error form, and logged."""
        log.exception("unexpected error: %r", e)
        err = vss_error(HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, f"{type(e).__name__}: {e}")
        return JSONResponse(err.to_dict(), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        err = vss_error(HResult.E_INVALIDARG, f"malformed request: {e.errors()}")
        return JSONResponse(err.to_dict(), status_code=400)

    guard = [Depends(authorized)]

    @app.get("/v1/pool", dependencies=guard, summary="thin pool data and metadata use")
    def pool() -> dict:
        return array.pool()

    @app.get("/v1/target", dependencies=guard, summary="the iSCSI target hosts log in to, and its portals")
    def target() -> dict:
        return {"iqn": array.lio.target_iqn, "portals": [f"{ip}:{ISCSI_PORT}" for ip in array.lio.portals]}

    @app.get("/v1/luns", dependencies=guard, summary="every LUN with the identity hosts will read")
    def luns() -> list[dict]:
        return [lun_dict(v) for v in array.inventory()]

    @app.post("/v1/luns", dependencies=guard, status_code=201, summary="create a thin volume LUN")
    def create_lun(body: VolumeIn) -> dict:
        return lun_dict(array.create_volume(body.name, body.size_bytes))

    @app.get("/v1/luns/{name}", dependencies=guard)
    def get_lun(name: str) -> dict:
        return lun_dict(array.lun(name))

    @app.delete("/v1/luns/{name}", dependencies=guard, status_code=204, response_class=Response,
                summary="unmask everywhere, unexport, remove the LV")
    def delete_lun(name: str) -> Response:
        array.delete(name)
        return Response(status_code=204)

    @app.post("/v1/luns/{name}/detach", dependencies=guard,
              summary="break: the shadow copy becomes an ordinary LUN (serial, masks, export kept)")
    def detach(name: str) -> dict:
        return lun_dict(array.detach(name))

    @app.put("/v1/luns/{name}/masks", dependencies=guard,
             summary="mask (show) the LUN to an initiator, which must be a registered host")
    def mask(name: str, body: MaskIn) -> dict:
        return lun_dict(array.mask(name, body.initiator, body.chap_user, body.chap_secret, body.read_only))

    @app.delete("/v1/luns/{name}/masks/{initiator}", dependencies=guard, summary="hide the LUN from an initiator")
    def unmask(name: str, initiator: str) -> dict:
        return lun_dict(array.unmask(name, initiator))

    @app.get("/v1/hosts", dependencies=guard, summary="the hosts (initiators) this array serves")
    def hosts() -> list[dict]:
        return array.hosts()

    @app.put("/v1/hosts/{initiator}", dependencies=guard,
             summary="register a host: its initiator may then be masked to and import sets")
    def register_host(initiator: str, body: HostIn) -> dict:
        return array.register_host(initiator, body.name)

    @app.delete("/v1/hosts/{initiator}", dependencies=guard, status_code=204, response_class=Response,
                summary="forget a host (refused while LUNs are masked to it)")
    def unregister_host(initiator: str) -> Response:
        array.unregister_host(initiator)
        return Response(status_code=204)

    @app.post("/v1/snapshot-sets", dependencies=guard, status_code=201,
              summary="prepare a set: check, choose names and serials (no snapshot yet)")
    def prepare(body: SetIn) -> dict:
        return array.prepare_set(body.set_id, [s.dict() for s in body.snapshots])

    @app.get("/v1/snapshot-sets/{set_id}", dependencies=guard)
    def get_set(set_id: str) -> dict:
        return array.set_view(set_id)

    @app.post("/v1/snapshot-sets/{set_id}/commit", dependencies=guard,
              summary="create every snapshot of the set in one short window (nothing else)")
    def commit(set_id: str) -> dict:
        return array.commit_set(set_id)

    @app.post("/v1/snapshot-sets/{set_id}/publish", dependencies=guard,
              summary="activate and export the committed snapshots (masked to nobody)")
    def publish(set_id: str) -> dict:
        return array.publish_set(set_id)

    @app.post("/v1/snapshot-sets/{set_id}/abort", dependencies=guard, summary="undo the set")
    def abort(set_id: str) -> dict:
        return array.abort_set(set_id)

    @app.post("/v1/imports", dependencies=guard,
              summary="claim the sets of these shadow LUNs for one host's import (once per set)")
    def claim_import(body: ImportIn) -> dict:
        return array.claim_import(body.serials, body.host)

    @app.post("/v1/luns/{name}/copy", dependencies=guard, status_code=202,
              summary="full copy (plex) into a new volume, as a job")
    def copy(name: str, body: CopyIn) -> dict:
        return job_dict(array.start_copy(name, body.target))

    @app.post("/v1/luns/{name}/resync", dependencies=guard, status_code=202,
              summary="revert this LUN to a snapshot's bytes, as a job")
    def resync(name: str, body: ResyncIn) -> dict:
        return job_dict(array.start_resync(body.snapshot, name))

    @app.get("/v1/jobs/{job_id}", dependencies=guard, summary="progress of a copy or resync")
    def job(job_id: str) -> dict:
        return job_dict(array.job(job_id))

    # admin-only
    @app.get("/v1/health", dependencies=guard,
             summary="what is not as wanted: an unconfirmed store, LVs set aside, LUNs that did not come up")
    def health() -> dict:
        return keeper.health()

    # admin-only
    @app.post("/v1/store/confirm", dependencies=guard,
              summary="confirm that this store is the array's: cleanup is allowed again (reconciles)")
    def confirm_store() -> dict:
        return keeper.confirm_store()

    # admin-only
    @app.delete("/v1/set-aside/{lv}", dependencies=guard, status_code=204, response_class=Response,
                summary="remove an LV set aside at start (tagged as ours, unknown to the store)")
    def remove_set_aside(lv: str) -> Response:
        keeper.remove_set_aside(lv)
        return Response(status_code=204)

    return app


def build_array(config: ArrayConfig) -> Array:
    portals = san_portals(config.san_cidr)
    if not portals:
        raise SystemExit(f"no address of this machine in the SAN network {config.san_cidr}")
    array = Array(config, Store(Path(config.state_dir) / "array.db"), Lvm(config.vg, config.pool),
                  Lio(config.target_iqn, portals))
    try:
        array.register_configured_hosts()
    except VssError as e:
        raise SystemExit(f"array config: hosts: {e.message}") from None
    return array


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shadowlun array agent")
    parser.add_argument("--config", type=Path, default=Path("/etc/shadowlun/array.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    import uvicorn

    config = ArrayConfig.load(args.config)
    array = build_array(config)
    keeper = Reconciler(array)
    keeper.reconcile()
    token = Path(config.token_file).read_text().strip()
    try:
        with keeper.expiring():
            uvicorn.run(create_app(array, token, keeper), host=config.listen, port=config.port,
                        ssl_certfile=config.cert_file, ssl_keyfile=config.key_file, log_config=None)
    finally:
        array.lio.flush()  # a burst's save may still be waiting
    return 0


if __name__ == "__main__":
    sys.exit(main())
