"""The hosts the array serves: registration of their initiators, their bearer tokens and
CHAP credentials. A LUN is masked to, and a set imported by, a registered host only."""
from __future__ import annotations

import logging

from provider.contract.hresult import HResult, vss_error

from . import names
from .authority import ADMIN, Caller, new_chap_secret, new_token, require_admin, token_digest
from .context import ArrayPart
from .names import api_name
from .store import Host

log = logging.getLogger("shadowlun.array")


class HostRegistry(ArrayPart):
    """The initiators this array serves, and their credentials."""

    def _host_view(self, host: Host) -> dict:
        return {"initiator": host.initiator, "name": host.name, "added": host.added,
                "chap_user": host.chap_user,
                "luns": [api_name(m.lun) for m in self.store.masks(initiator=host.initiator)]}

    @staticmethod
    def _credentials(host: Host, token: str) -> dict:
        """What the host alone is given: its bearer token and its CHAP credentials."""
        return {"initiator": host.initiator, "name": host.name, "token": token,
                "chap_user": host.chap_user, "chap_secret": host.chap_secret}

    def hosts(self, caller: Caller = ADMIN) -> list[dict]:
        """The registered hosts, each with the LUNs masked to it (a host sees only itself)."""
        with self.ctx.lock:
            return [self._host_view(h) for h in self.store.hosts()
                    if caller.is_admin or h.initiator == caller.initiator]

    def caller_for(self, token: str) -> Caller | None:
        """The registered host whose token this is, or None."""
        host = self.store.host_by_token(token_digest(token))
        return Caller(host.name, host.initiator) if host else None

    def register_host(self, initiator: str, name: str, caller: Caller = ADMIN) -> dict:
        """Allow `initiator` (as host `name`) to be masked to and to import sets, and make its
        credentials (a bearer token and CHAP secret, in `credentials`, shown this once).
        Create-or-lookup: the same initiator and name again is a retry and shows no secret (a
        new token is `issue_token`'s); another name for a registered initiator, or a name
        another initiator has, is VSS_E_OBJECT_ALREADY_EXISTS."""
        require_admin(caller, "register hosts")
        initiator, name = names.initiator(initiator), names.lun_name(name, "host name")
        with self.ctx.lock:
            have = self.store.host(initiator)
            if have is not None:
                if have.name != name:
                    raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS,
                                    f"initiator {initiator} is registered as host {have.name!r}")
                return self._host_view(have)
            if self.store.host_named(name) is not None:
                raise vss_error(HResult.VSS_E_OBJECT_ALREADY_EXISTS, f"a host named {name!r} exists")
            token = new_token()
            host = self.store.add_host(initiator, name, name, new_chap_secret(), token_digest(token))
            return {**self._host_view(host), "credentials": self._credentials(host, token)}

    def issue_token(self, initiator: str, caller: Caller = ADMIN) -> dict:
        """A new bearer token for a registered host (the old one stops working); its CHAP
        credentials are unchanged, so its sessions go on."""
        require_admin(caller, "issue host tokens")
        initiator = names.initiator(initiator)
        with self.ctx.lock:
            host = self._registered(initiator)
            token = new_token()
            self.store.set_host_token(initiator, token_digest(token))
            return self._credentials(host, token)

    def _registered(self, initiator: str) -> Host:
        host = self.store.host(initiator)
        if host is None:
            raise vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, f"no host with initiator {initiator} on this array")
        return host

    def unregister_host(self, initiator: str, caller: Caller = ADMIN) -> None:
        """Forget a host; refused while LUNs are still masked to it (unmask them first)."""
        require_admin(caller, "unregister hosts")
        initiator = names.initiator(initiator)
        with self.ctx.lock:
            host = self._registered(initiator)
            luns = [api_name(m.lun) for m in self.store.masks(initiator=initiator)]
            if luns:
                raise vss_error(HResult.VSS_E_BAD_STATE,
                                f"host {host.name!r} ({initiator}) still sees LUNs {', '.join(luns)}; "
                                f"unmask them first")
            self.store.remove_host(initiator)

    def register_configured_hosts(self) -> dict[str, dict]:
        """At agent start: register the config's hosts (initiator -> name). Returns the
        credentials of those newly registered, by initiator, for their access files. Every entry
        is checked before any is registered. An initiator already registered under another
        name keeps it (a warning): start-up does not rename."""
        wanted = sorted((names.initiator(i, "configured host initiator"), names.lun_name(n, "configured host name"))
                        for i, n in self.config.hosts.items())
        made = {}
        with self.ctx.lock:
            for initiator, name in wanted:
                have = self.store.host(initiator)
                if have is None:
                    made[initiator] = self.register_host(initiator, name)["credentials"]
                elif have.name != name:
                    log.warning("configured host %s (%s) is registered as %r; left as it is",
                                name, initiator, have.name)
        if made:
            log.info("hosts registered from the config: %s", ", ".join(made))
        return made

    def require_host(self, initiator: str) -> Host:
        host = self.store.host(initiator)
        if host is None:
            raise vss_error(HResult.E_ACCESSDENIED,
                            f"initiator {initiator} is not a host of this array; "
                            f"register it with PUT /v1/hosts/{initiator}")
        return host
