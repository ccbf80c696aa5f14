"""A client of the array agent, for hosts (the provider) and tests.

HTTPS with the array's certificate pinned (the only trusted one), the bearer token in every
request, every call bounded by a timeout, and agent errors raised again as the VssError they
carry. A host's access comes from /etc/shadowlun/array-access.json: the agent's url and
certificate, and this host's own token, initiator name and CHAP credentials, which the array
made when it registered the host (the agent writes it as access/<host>.json on the array, and
provisioning copies it to that host alone). The admin's file (admin-access.json, on the array)
has url, token and certificate only.
"""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from provider.contract.hresult import HResult, VssError, vss_error
from provider.polling import poll

ACCESS_FILE = Path("/etc/shadowlun/array-access.json")
ADMIN_ACCESS_FILE = Path("/etc/shadowlun/admin-access.json")
TIMEOUT_S = 60.0
# The calls whose work grows with the set (one snapshot, removal or activation per LUN: a
# 64-LUN prepare takes more than a minute on a TCG array with a hundred LVs). They are
# bounded anyway by the provider method that makes them (EndPrepareSnapshots 900 s,
# AbortSnapshots 300 s, PostCommitSnapshots 2 s a LUN, LocateLuns 300 s); the agent's answer
# to a retry of any of them is the same, so waiting longer costs nothing but time.
SET_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ArrayAccess:
    url: str
    token: str
    certificate: str  # PEM
    initiator: str | None = None  # a host's own access: who it is to the array, and its CHAP
    chap_user: str | None = None
    chap_secret: str | None = None

    @classmethod
    def load(cls, path: Path = ACCESS_FILE) -> "ArrayAccess":
        d = json.loads(path.read_text())
        return cls(d["url"], d["token"], d["certificate"], d.get("initiator"), d.get("chap_user"),
                   d.get("chap_secret"))


class ArrayClient:
    def __init__(self, access: ArrayAccess, timeout: float = TIMEOUT_S) -> None:
        self.access, self.timeout = access, timeout
        self._ssl = ssl.create_default_context(cadata=access.certificate)

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None) -> dict | list | None:
        """One API call, bounded by `timeout` s (the client's `timeout` by default)."""
        req = urllib.request.Request(
            self.access.url.rstrip("/") + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.access.token}", "Content-Type": "application/json"},
        )
        limit = self.timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=limit, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise vss_error(HResult.VSS_E_UNEXPECTED, f"array answered {e.code}: {raw[:200]!r}") from None
            raise VssError.from_dict(body) from None
        except (urllib.error.URLError, OSError) as e:
            raise vss_error(HResult.VSS_E_PROVIDER_VETO,
                            f"array agent at {self.access.url} unreachable: {e}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"array answered with no JSON: {raw[:200]!r}") from None

    def _set_call(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call whose work grows with the set's LUNs: bounded by SET_TIMEOUT_S, not the client's."""
        return self.call(method, path, body, timeout=max(self.timeout, SET_TIMEOUT_S))

    # -- operations (one per API route) --------------------------------------------------

    def pool(self) -> dict:
        return self.call("GET", "/v1/pool")

    def target(self) -> dict:
        return self.call("GET", "/v1/target")

    def luns(self) -> list[dict]:
        return self.call("GET", "/v1/luns")

    def lun(self, name: str) -> dict:
        return self.call("GET", f"/v1/luns/{quote(name)}")

    def create_volume(self, name: str, size_bytes: int) -> dict:
        return self.call("POST", "/v1/luns", {"name": name, "size_bytes": size_bytes})

    def delete(self, name: str) -> None:
        self.call("DELETE", f"/v1/luns/{quote(name)}")

    def mask(self, name: str, initiator: str, read_only: bool = False) -> dict:
        return self.call("PUT", f"/v1/luns/{quote(name)}/masks", {"initiator": initiator, "read_only": read_only})

    def unmask(self, name: str, initiator: str) -> dict:
        return self.call("DELETE", f"/v1/luns/{quote(name)}/masks/{quote(initiator, safe='')}")

    def detach(self, name: str) -> dict:
        return self.call("POST", f"/v1/luns/{quote(name)}/detach")

    def take_identity(self, names: list[str]) -> list[dict]:
        return self.call("POST", "/v1/identity-reverts", {"luns": names})

    def hosts(self) -> list[dict]:
        return self.call("GET", "/v1/hosts")

    def register_host(self, initiator: str, name: str) -> dict:
        return self.call("PUT", f"/v1/hosts/{quote(initiator, safe='')}", {"name": name})

    def issue_token(self, initiator: str) -> dict:
        return self.call("POST", f"/v1/hosts/{quote(initiator, safe='')}/token")

    def unregister_host(self, initiator: str) -> None:
        self.call("DELETE", f"/v1/hosts/{quote(initiator, safe='')}")

    def prepare_set(self, set_id: str, snapshots: list[dict], transportable: bool = False) -> dict:
        return self._set_call("POST", "/v1/snapshot-sets",
                         {"set_id": set_id, "snapshots": snapshots, "transportable": transportable})

    def snapshot_set(self, set_id: str) -> dict:
        return self.call("GET", f"/v1/snapshot-sets/{quote(set_id)}")

    def commit_set(self, set_id: str) -> dict:
        return self.call("POST", f"/v1/snapshot-sets/{quote(set_id)}/commit")

    def publish_set(self, set_id: str) -> dict:
        return self._set_call("POST", f"/v1/snapshot-sets/{quote(set_id)}/publish")

    def plex_set(self, set_id: str) -> dict:
        return self._set_call("POST", f"/v1/snapshot-sets/{quote(set_id)}/plex")

    def hand_out_set(self, set_id: str) -> dict:
        return self.call("POST", f"/v1/snapshot-sets/{quote(set_id)}/hand-out")

    def claim_import(self, serials: list[str], host: str) -> dict:
        return self.call("POST", "/v1/imports", {"serials": serials, "host": host})

    def attach_import(self, serials: list[str], host: str) -> dict:
        return self._set_call("POST", "/v1/imports/attach", {"serials": serials, "host": host})

    def release_import(self, serials: list[str], host: str) -> dict:
        return self._set_call("POST", "/v1/imports/release", {"serials": serials, "host": host})

    def abort_set(self, set_id: str) -> dict:
        return self._set_call("POST", f"/v1/snapshot-sets/{quote(set_id)}/abort")

    def start_copy(self, name: str, target: str) -> dict:
        return self.call("POST", f"/v1/luns/{quote(name)}/copy", {"target": target})

    def start_resync(self, name: str, snapshot: str) -> dict:
        return self.call("POST", f"/v1/luns/{quote(name)}/resync", {"snapshot": snapshot})

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/v1/jobs/{quote(job_id)}")

    def cancel_job(self, job_id: str) -> dict:
        return self.call("POST", f"/v1/jobs/{quote(job_id)}/cancel")

    def wait_job(self, job_id: str, timeout: float, on_progress=None) -> dict:
        """Until the job is done or failed, bounded; on_progress(job) at each poll."""
        return poll(lambda: self.job(job_id), lambda job: job["state"] == "running", timeout, f"job {job_id}",
                    on_each=on_progress or (lambda job: None))


def main() -> None:
    """`python3 -m provider.hardware.array_client [--access FILE] METHOD PATH [JSON]`: one API call, for tests
    and operators (the admin: `--access /etc/shadowlun/admin-access.json` on the array)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--access", type=Path, default=ACCESS_FILE)
    parser.add_argument("method")
    parser.add_argument("path")
    parser.add_argument("body", nargs="?", type=json.loads)
    args = parser.parse_args()
    try:
        print(json.dumps(ArrayClient(ArrayAccess.load(args.access)).call(args.method, args.path, args.body)))
    except VssError as e:
        print(json.dumps(e.to_dict()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
