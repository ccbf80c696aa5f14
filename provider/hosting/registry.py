"""Provider registrations: IVssAdmin::RegisterProvider / UnregisterProvider as files (spec §2.1, §17.1).

One JSON file per provider, `<provider_id>.json`, in a directory (default /etc/shadowlun/providers.d/):

    {"provider_id": "…", "version_id": "…", "name": "…", "version": "0.1.0", "type": 3,
     "exec": ["/usr/bin/python3", "-m", "provider.hosting.server", "--socket", "/run/…", "--provider", "…"],
     "socket": "/run/…"}

`exec` and `socket` stand for the COM ClassId (§17.1 "CLSID"): how the coordinator starts the
out-of-process server and where it answers. Files are written whole (temporary file, fsync, then
link(2), which fails if the name exists), so a reader never sees half a registration and two
concurrent registrations of one id cannot both succeed. Upgrading is unregister then register
(§2.1). VSS_E_PROVIDER_IN_USE is the coordinator's to give: only it knows what is loaded.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.vss_types import GUID_NULL, ProviderType

log = logging.getLogger("shadowlun.provider.registry")

DEFAULT_DIR = Path("/etc/shadowlun/providers.d")
SOCKET_PATH_MAX = 107  # bytes of AF_UNIX sun_path, the terminating NUL excluded
_TEXT_LIMIT = 256
_FIELDS = ("provider_id", "version_id", "name", "version", "type", "exec", "socket")


def _invalid(message: str) -> VssError:
    return vss_error(HResult.E_INVALIDARG, message)


def parse_guid(value: Any, what: str = "provider id") -> uuid.UUID:
    """A GUID from a UUID or its text ("{…}" and upper case accepted); E_INVALIDARG otherwise."""
    if isinstance(value, uuid.UUID):
        guid = value
    elif isinstance(value, str):
        try:
            guid = uuid.UUID(value)
        except ValueError:
            raise _invalid(f"{what} is not a GUID: {value!r}") from None
    else:
        raise _invalid(f"{what} is not a GUID: {value!r}")
    if guid == GUID_NULL:
        raise _invalid(f"{what} must not be GUID_NULL")
    return guid


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _TEXT_LIMIT:
        raise _invalid(f"{what} must be a non-empty string of at most {_TEXT_LIMIT} characters: {value!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _invalid(f"{what} must not contain control characters: {value!r}")
    return value


@dataclass(frozen=True)
class ProviderRegistration:
    """One registered provider (VSS_PROVIDER_PROP, with exec and socket in place of ClassId).

    Construction validates and normalises: GUIDs from text, `exec` to a tuple, `socket` to a Path.
    Anything wrong raises VssUserError E_INVALIDARG, as RegisterProvider answers.
    """

    provider_id: uuid.UUID
    version_id: uuid.UUID
    name: str
    version: str
    exec: tuple[str, ...]
    socket: Path
    type: ProviderType = ProviderType.VSS_PROV_HARDWARE

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "provider_id", parse_guid(self.provider_id, "provider_id"))
        set_(self, "version_id", parse_guid(self.version_id, "version_id"))
        _text(self.name, "name")
        _text(self.version, "version")
        # Only hardware providers run out of process here; §2.1 registers them with type 3.
        if isinstance(self.type, bool) or self.type != ProviderType.VSS_PROV_HARDWARE:
            raise _invalid(f"type must be {int(ProviderType.VSS_PROV_HARDWARE)} (VSS_PROV_HARDWARE), "
                           f"not {self.type!r}")
        set_(self, "type", ProviderType.VSS_PROV_HARDWARE)
        argv = self.exec
        if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)) or not argv:
            raise _invalid(f"exec must be a non-empty list of arguments: {argv!r}")
        if not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise _invalid(f"exec arguments must be strings without NUL: {argv!r}")
        if not os.path.isabs(argv[0]):
            raise _invalid(f"exec must start with an absolute path (no PATH lookup): {argv[0]!r}")
        set_(self, "exec", tuple(argv))
        sock = self.socket
        if not isinstance(sock, (str, os.PathLike)) or "\0" in os.fspath(sock):
            raise _invalid(f"socket must be a path: {sock!r}")
        sock = Path(sock)
        if not sock.is_absolute():
            raise _invalid(f"socket must be an absolute path: {str(sock)!r}")
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise _invalid(f"socket path longer than {SOCKET_PATH_MAX} bytes (AF_UNIX limit): {str(sock)!r}")
        set_(self, "socket", sock)

    def to_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {"provider_id": str(self.provider_id), "version_id": str(self.version_id),
                "name": self.name, "version": self.version, "type": int(self.type),
                "exec": list(self.exec), "socket": str(self.socket)}

    @classmethod
    def from_dict(cls, d: Any) -> ProviderRegistration:
        """Parse a file's content; E_INVALIDARG names a missing, unknown or bad field."""
        if not isinstance(d, dict):
            raise _invalid(f"a registration is a JSON object, not {type(d).__name__}")
        missing = [k for k in _FIELDS if k not in d]
        unknown = sorted(set(d) - set(_FIELDS))
        if missing or unknown:
            raise _invalid(f"registration fields: missing {missing}, unknown {unknown}")
        try:
            if isinstance(d["type"], bool):
                raise ValueError(d["type"])
            kind = ProviderType(d["type"])
        except ValueError:
            raise _invalid(f"type must be {int(ProviderType.VSS_PROV_HARDWARE)} (VSS_PROV_HARDWARE), "
                           f"not {d['type']!r}") from None
        if not isinstance(d["socket"], str):
            raise _invalid(f"socket must be a string: {d['socket']!r}")
        return cls(provider_id=d["provider_id"], version_id=d["version_id"], name=d["name"],
                   version=d["version"], exec=d["exec"], socket=Path(d["socket"]), type=kind)


class ProviderRegistry:
    """The registration files in `directory`."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIR) -> None:
        self.directory = Path(directory)

    def path_for(self, provider_id: uuid.UUID | str) -> Path:
        return self.directory / f"{parse_guid(provider_id)}.json"

    def register(self, registration: ProviderRegistration) -> Path:
        """Write the registration's file; VSS_E_PROVIDER_ALREADY_REGISTERED if the id has one.

        E_ACCESSDENIED when the directory is not writable for the caller (not root, §2.1).
        """
        path = self.path_for(registration.provider_id)
        data = json.dumps(registration.to_dict(), indent=2) + "\n"
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(data)
                    f.flush()
                    os.fchmod(f.fileno(), 0o644)
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise vss_error(HResult.VSS_E_PROVIDER_ALREADY_REGISTERED,
                                    f"provider {registration.provider_id} is already registered ({path})") from None
            finally:
                os.unlink(tmp)
            self._sync_directory()
        except PermissionError as e:
            raise vss_error(HResult.E_ACCESSDENIED, f"cannot register in {self.directory}: {e}") from None
        except OSError as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"cannot register in {self.directory}: {e}") from None
        log.info("registered provider %s %r version %s", registration.provider_id, registration.name,
                 registration.version)
        return path

    def unregister(self, provider_id: uuid.UUID | str) -> None:
        """Remove the provider's file; VSS_E_PROVIDER_NOT_REGISTERED if there is none."""
        path = self.path_for(provider_id)
        try:
            path.unlink()
            self._sync_directory()
        except FileNotFoundError:
            raise vss_error(HResult.VSS_E_PROVIDER_NOT_REGISTERED,
                            f"provider {parse_guid(provider_id)} is not registered") from None
        except PermissionError as e:
            raise vss_error(HResult.E_ACCESSDENIED, f"cannot unregister: {e}") from None
        except OSError as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"cannot unregister: {e}") from None
        log.info("unregistered provider %s", parse_guid(provider_id))

    def get(self, provider_id: uuid.UUID | str) -> ProviderRegistration:
        """The registration of `provider_id`.

        VSS_E_PROVIDER_NOT_REGISTERED if it has no file; VSS_E_UNEXPECTED if the file is unreadable
        or does not describe that provider.
        """
        path = self.path_for(provider_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise vss_error(HResult.VSS_E_PROVIDER_NOT_REGISTERED,
                            f"provider {parse_guid(provider_id)} is not registered") from None
        except (OSError, UnicodeDecodeError) as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"cannot read {path}: {e}") from None
        try:
            registration = ProviderRegistration.from_dict(json.loads(text))
        except (ValueError, VssError) as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"corrupt registration {path}: {e}") from None
        if registration.provider_id != parse_guid(provider_id):
            raise vss_error(HResult.VSS_E_UNEXPECTED,
                            f"corrupt registration {path}: it describes provider {registration.provider_id}")
        return registration

    def load_all(self) -> list[ProviderRegistration]:
        """Every readable registration, by name then id (QueryProviders).

        A corrupt file is logged and skipped, so one bad file does not hide the other providers.
        """
        found = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise vss_error(HResult.VSS_E_UNEXPECTED, f"cannot list {self.directory}: {e}") from None
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext != "json" or not dot:
                continue  # temporary files (".…tmp") and anything else
            try:
                provider_id = uuid.UUID(stem)
            except ValueError:
                continue
            if name != f"{provider_id}.json":
                continue
            try:
                found.append(self.get(provider_id))
            except VssError as e:
                log.warning("skipping provider registration %s: %s", name, e)
        return sorted(found, key=lambda r: (r.name, str(r.provider_id)))

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
