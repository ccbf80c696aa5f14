"""The array agent: the array's management API over HTTPS, each caller known by its token.

The "provider-specific mechanism" of the VSS seeds: hosts reach the array only here and over
iSCSI. FastAPI serves it (on uvicorn, both Debian packages on the array) and describes it at
/openapi.json. Errors are JSON {hresult, vss, message} with an HTTP status per VSS code.

Who calls is decided by the bearer token alone (targets.authority): the admin's, or one
registered host's. The token is checked, and the body's size bounded, before any of the body
is read (`Gate`); request bodies are strict (exact types, no unknown field).

    python3 -m targets.agent [--config /etc/shadowlun/array.json]
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, Extra, Field, StrictBool, StrictInt, StrictStr

from provider.contract.hresult import HResult, VssError, http_status, vss_error
from provider.contract.lio_target import ISCSI_PORT

from .array import Array
from .authority import ADMIN, Caller, require_admin
from .config import CONFIG_FILE, ArrayConfig, san_portals
from .lio import Lio, LioStateError
from .luns import LunView
from .lvm import Lvm
from .lvm_thin import LvmThin
from .reconcile import Reconciler
from .store import Job, Store, StoreError

log = logging.getLogger("shadowlun.agent")
API_VERSION = "1"
MAX_BODY_BYTES = 1 << 20


class Strict(BaseModel):
    """A request body: exact JSON types, and an unknown field is an error (a client sending
    `readOnly` must not get a read-write mask)."""

    class Config:
        extra = Extra.forbid


class VolumeIn(Strict):
    name: StrictStr = Field(..., description="1-48 of a-z, 0-9, '-'")
    size_bytes: StrictInt = Field(..., description="virtual size; at least 1 MiB, a multiple of 512")


class MaskIn(Strict):
    initiator: StrictStr = Field(..., description="a registered host's iSCSI initiator name (a host: its own)")
    read_only: StrictBool = False


class HostIn(Strict):
    name: StrictStr = Field(..., description="the host's name: 1-48 of a-z, 0-9, '-'")


class SnapshotIn(Strict):
    snapshot_id: StrictStr
    lun: StrictStr


class SetIn(Strict):
    set_id: StrictStr
    snapshots: list[SnapshotIn]
    transportable: StrictBool = Field(False, description="importable by any host of this array")


class ImportIn(Strict):
    serials: list[StrictStr] = Field(..., description="serials of the shadow LUNs about to be located")
    host: StrictStr | None = Field(None, description="the importing host's initiator (a host: itself)")


class IdentityIn(Strict):
    luns: list[StrictStr] = Field(..., description="broken (or shadow) copies to take their originals' identity")


class CopyIn(Strict):
    target: StrictStr = Field(..., description="name of the new volume holding the full copy")


class ResyncIn(Strict):
    snapshot: StrictStr = Field(..., description="the snapshot LUN whose bytes the target gets back")


def _answer(status: int, error: VssError, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    body = json.dumps(error.to_dict()).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *headers]}
    return start, {"type": "http.response.body", "body": body}


class Gate:
    """ASGI middleware in front of every route: the caller from the bearer token (401 without
    a valid one), then the body read whole up to MAX_BODY_BYTES (413 past it), all before the
    application parses anything. The caller is left in the request's state."""

    PUBLIC = {("GET", "/openapi.json"), ("GET", "/docs")}  # the API's description, no body, no state

    def __init__(self, app, authenticate) -> None:
        self.app, self.authenticate = app, authenticate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.PUBLIC:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        caller = self._caller(headers.get(b"authorization", b""))
        if caller is None:
            return await self._refuse(send, 401, HResult.E_ACCESSDENIED, "missing or wrong bearer token",
                                      [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return await self._refuse(send, 413, HResult.E_INVALIDARG,
                                      f"request body over {MAX_BODY_BYTES} bytes (or a bad Content-Length)")
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return await self._refuse(send, 413, HResult.E_INVALIDARG,
                                          f"request body over {MAX_BODY_BYTES} bytes")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, replay, send)

    def _caller(self, authorization: bytes) -> Caller | None:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.authenticate(token.strip())

    @staticmethod
    async def _refuse(send, status: int, code: HResult, message: str, headers=()) -> None:
        start, body = _answer(status, vss_error(code, message), list(headers))
        await send(start)
        await send(body)


def job_dict(job: Job) -> dict:
    return {**asdict(job), "percent": round(job.percent, 1)}


def lun_dict(view: LunView) -> dict:
    return asdict(view)


def create_app(array: Array, admin_token: str, keeper: Reconciler | None = None) -> FastAPI:
    """The API over `array`; `keeper` is the reconciler that brought it up (its health)."""
    keeper = keeper or Reconciler(array)
    bearer = HTTPBearer(auto_error=False)  # for the OpenAPI description; Gate has checked it
    app = FastAPI(title="shadowlun array agent", version=API_VERSION, dependencies=[Depends(bearer)],
                  description="LVM thin volumes and snapshots served as iSCSI LUNs by LIO. "
                              "Bearer token: the admin's, or a registered host's own.")

    def authenticate(token: str) -> Caller | None:
        if hmac.compare_digest(token.encode(), admin_token.encode()):
            return ADMIN
        return array.caller_for(token)

    def caller(request: Request) -> Caller:
        return request.state.caller

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        """No such route or method, or a body that is no JSON: still the VSS error form."""
        code = HResult.VSS_E_OBJECT_NOT_FOUND if e.status_code == 404 else HResult.E_INVALIDARG
        return JSONResponse(vss_error(code, str(e.detail)).to_dict(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        err = vss_error(HResult.E_INVALIDARG, f"malformed request: {e.errors()}")
        return JSONResponse(err.to_dict(), status_code=400)

    who = Depends(caller)

    @app.get("/v1/pool", summary="thin pool data and metadata use")
    def pool() -> dict:
        return array.pool()

    @app.get("/v1/target", summary="the iSCSI target hosts log in to, and its portals")
    def target() -> dict:
        return {"iqn": array.lio.target_iqn, "portals": [f"{ip}:{ISCSI_PORT}" for ip in array.lio.portals]}

    @app.get("/v1/luns", summary="the LUNs the caller may see, with the identity hosts will read")
    def luns(c: Caller = who) -> list[dict]:
        return [lun_dict(v) for v in array.inventory(c)]

    @app.post("/v1/luns", status_code=201, summary="create a thin volume LUN (admin)")
    def create_lun(body: VolumeIn, c: Caller = who) -> dict:
        return lun_dict(array.create_volume(body.name, body.size_bytes, c))

    @app.get("/v1/luns/{name}")
    def get_lun(name: str, c: Caller = who) -> dict:
        return lun_dict(array.lun(name, c))

    @app.delete("/v1/luns/{name}", status_code=204, response_class=Response,
                summary="unmask everywhere, unexport, remove the LV (admin, or the host holding it)")
    def delete_lun(name: str, c: Caller = who) -> Response:
        array.delete(name, c)
        return Response(status_code=204)

    @app.post("/v1/luns/{name}/detach",
              summary="break: the shadow copy becomes an ordinary LUN (serial, masks, export kept)")
    def detach(name: str, c: Caller = who) -> dict:
        return lun_dict(array.detach(name, c))

    @app.post("/v1/identity-reverts",
              summary="break with REVERT_IDENTITY_ALL: each copy presents its original's serial and "
                      "page 0x83 identity (all or none; refused if a host would see both)")
    def take_identity(body: IdentityIn, c: Caller = who) -> list[dict]:
        return [lun_dict(v) for v in array.take_identity(body.luns, c)]

    @app.put("/v1/luns/{name}/masks",
             summary="mask (show) the LUN to a registered host, with that host's CHAP credentials")
    def mask(name: str, body: MaskIn, c: Caller = who) -> dict:
        return lun_dict(array.mask(name, body.initiator, body.read_only, c))

    @app.delete("/v1/luns/{name}/masks/{initiator}", summary="hide the LUN from an initiator")
    def unmask(name: str, initiator: str, c: Caller = who) -> dict:
        return lun_dict(array.unmask(name, initiator, c))

    @app.get("/v1/hosts", summary="the hosts (initiators) this array serves (a host: itself)")
    def hosts(c: Caller = who) -> list[dict]:
        return array.hosts(c)

    @app.put("/v1/hosts/{initiator}",
             summary="register a host (admin); its token and CHAP credentials are answered once")
    def register_host(initiator: str, body: HostIn, c: Caller = who) -> dict:
        return array.register_host(initiator, body.name, c)

    @app.post("/v1/hosts/{initiator}/token", summary="a new token for a host (admin); the old one stops working")
    def issue_token(initiator: str, c: Caller = who) -> dict:
        return array.issue_token(initiator, c)

    @app.delete("/v1/hosts/{initiator}", status_code=204, response_class=Response,
                summary="forget a host (admin; refused while LUNs are masked to it)")
    def unregister_host(initiator: str, c: Caller = who) -> Response:
        array.unregister_host(initiator, c)
        return Response(status_code=204)

    @app.post("/v1/snapshot-sets", status_code=201,
              summary="prepare a set of the caller's LUNs: checks, names and serials, snapshots made ahead")
    def prepare(body: SetIn, c: Caller = who) -> dict:
        return array.prepare_set(body.set_id, [s.dict() for s in body.snapshots], c, body.transportable)

    @app.get("/v1/snapshot-sets/{set_id}")
    def get_set(set_id: str, c: Caller = who) -> dict:
        return array.set_view(set_id, c)

    @app.post("/v1/snapshot-sets/{set_id}/commit",
              summary="create every snapshot of the set in one short window (nothing else)")
    def commit(set_id: str, c: Caller = who) -> dict:
        return array.commit_set(set_id, c)

    @app.post("/v1/snapshot-sets/{set_id}/publish",
              summary="activate and export the committed snapshots (masked to nobody)")
    def publish(set_id: str, c: Caller = who) -> dict:
        return array.publish_set(set_id, c)

    @app.post("/v1/snapshot-sets/{set_id}/plex", status_code=202,
              summary="make each shadow LUN of the set a full copy (PLEX), as jobs (its owner, before hand-out)")
    def plex(set_id: str, c: Caller = who) -> dict:
        return {"jobs": [job_dict(j) for j in array.plex_set(set_id, c)]}

    @app.post("/v1/snapshot-sets/{set_id}/hand-out",
              summary="the requester has the set whole: from now on deleted, never aborted (its owner)")
    def hand_out(set_id: str, c: Caller = who) -> dict:
        return array.hand_out_set(set_id, c)

    @app.post("/v1/snapshot-sets/{set_id}/abort",
              summary="undo the set (its owner, before it is handed out or imported)")
    def abort(set_id: str, c: Caller = who) -> dict:
        return array.abort_set(set_id, c)

    @app.post("/v1/imports",
              summary="claim the sets of these shadow LUNs for one host's import (once per set)")
    def claim_import(body: ImportIn, c: Caller = who) -> dict:
        return array.claim_import(body.serials, body.host, c)

    @app.post("/v1/imports/attach",
              summary="claim these shadow LUNs' sets for one host and mask them all to it read-write, "
                      "in one call; with the target to log in to")
    def attach_import(body: ImportIn, c: Caller = who) -> dict:
        attached = array.attach_import(body.serials, body.host, c)
        return {**attached, "luns": [lun_dict(v) for v in attached["luns"]], "target": target()}

    @app.post("/v1/imports/release",
              summary="undo a failed import: unmask these shadow LUNs from the host and drop its claim "
                      "of each set left with none (the importing host)")
    def release_import(body: ImportIn, c: Caller = who) -> dict:
        return array.release_import(body.serials, body.host, c)

    @app.post("/v1/luns/{name}/copy", status_code=202,
              summary="full copy (plex) into a new volume held by the caller, as a job")
    def copy(name: str, body: CopyIn, c: Caller = who) -> dict:
        return job_dict(array.start_copy(name, body.target, c))

    @app.post("/v1/luns/{name}/resync", status_code=202,
              summary="revert this LUN to a shadow copy's bytes, as a job")
    def resync(name: str, body: ResyncIn, c: Caller = who) -> dict:
        return job_dict(array.start_resync(body.snapshot, name, c))

    @app.get("/v1/jobs/{job_id}", summary="progress of a copy or resync")
    def job(job_id: str, c: Caller = who) -> dict:
        return job_dict(array.job(job_id, c))

    @app.post("/v1/jobs/{job_id}/cancel", summary="stop a running copy or resync (its requester)")
    def cancel_job(job_id: str, c: Caller = who) -> dict:
        return job_dict(array.cancel_job(job_id, c))

    @app.get("/v1/health",
             summary="what is not as wanted: an unconfirmed store, LVs set aside, LUNs that did not come up (admin)")
    def health(c: Caller = who) -> dict:
        require_admin(c, "see the array's health")
        return keeper.health()

    @app.post("/v1/store/confirm",
              summary="confirm that this store is the array's: cleanup is allowed again, reconciles (admin)")
    def confirm_store(c: Caller = who) -> dict:
        require_admin(c, "confirm the store")
        return keeper.confirm_store()

    @app.delete("/v1/set-aside/{lv}", status_code=204, response_class=Response,
                summary="remove an LV set aside at start: tagged as ours, unknown to the store (admin)")
    def remove_set_aside(lv: str, c: Caller = who) -> Response:
        require_admin(c, "remove LVs set aside")
        keeper.remove_set_aside(lv)
        return Response(status_code=204)

    app.add_middleware(Gate, authenticate=authenticate)
    return app


def write_private(path: Path, text: str) -> None:
    """Root's only, whole or not at all: a temporary file fsynced, renamed, directory fsynced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def hand_out_access(array: Array, config: ArrayConfig) -> list[Path]:
    """Each configured host's access file, `<access_dir>/<name>.json`: the agent's URL and
    certificate with the host's own token and CHAP credentials, for an admin (or the lab, or
    Vagrant) to copy to that host and no other. Made when the host is registered, and again
    with a new token when the file is missing (the token is kept nowhere else). Nothing while
    the store is not known to be this array's: new tokens there would only replace good files."""
    if not array.store_trusted:
        log.warning("hosts not registered and no access file written: the store is not confirmed")
        return []
    made = array.register_configured_hosts()
    certificate = Path(config.cert_file).read_text()
    written = []
    for initiator, name in config.hosts.items():
        path = Path(config.access_dir) / f"{name}.json"
        creds = made.get(initiator.lower())
        if creds is None and path.exists():
            continue
        creds = creds or array.issue_token(initiator)
        write_private(path, json.dumps({"url": f"https://{config.listen}:{config.port}",
                                        "certificate": certificate, **creds}, indent=2) + "\n")
        written.append(path)
    return written


def build_array(config: ArrayConfig) -> Array:
    portals = san_portals(config.san_cidrs)
    if not portals:
        raise SystemExit(f"no address of this machine in the SAN networks {', '.join(config.san_cidrs)}")
    lio = Lio(config.target_iqn, portals)
    try:
        lio.check_state_dirs()
        store = Store(Path(config.state_dir) / "array.db")
    except (LioStateError, StoreError) as e:
        raise SystemExit(str(e)) from None
    return Array(config, store, LvmThin(Lvm(config.vg, config.pool)), lio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shadowlun array agent")
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    import uvicorn

    os.umask(0o077)  # whatever the agent writes (store, access files) is root's only
    config = ArrayConfig.load(args.config)
    array = build_array(config)
    keeper = Reconciler(array)
    keeper.reconcile()
    try:
        for path in hand_out_access(array, config):
            log.info("access file for a host: %s", path)
    except VssError as e:
        raise SystemExit(f"array config: hosts: {e.message}") from None
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
