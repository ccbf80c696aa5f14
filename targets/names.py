"""What the array accepts as a name, checked in full before anything is made.

Every check matches the whole string (`fullmatch`, ASCII only), so a trailing newline, a NUL or
a non-ASCII digit never passes, and returns the value as the array stores it. Initiator names
follow RFC 3720 section 3.2.6 and are stored lower-case, as LIO stores them: a name LIO would
refuse or change can never reach the store, where it would stop the reconcile at every start.
"""
from __future__ import annotations

import re
import uuid

from provider.contract.hresult import HResult, VssUserError, vss_error

INITIATOR_MAX_BYTES = 223  # RFC 3720 3.2.6.1
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
INITIATOR_RE = re.compile(
    rf"iqn\.[0-9]{{4}}-(?:0[1-9]|1[0-2])\.{_LABEL}(?:\.{_LABEL})*(?::[a-z0-9.:-]+)?"  # iqn.YYYY-MM.domain[:x]
    r"|eui\.[0-9a-f]{16}"                                                           # EUI-64
    r"|naa\.(?:[0-9a-f]{16}|[0-9a-f]{32})",                                          # NAA 64/128 bits
    re.ASCII)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}", re.ASCII)
SERIAL_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
SNAPSHOT_PREFIX = "snap-"  # the API names a snapshot LUN snap-<snapshot id>: no volume may look like one
VOLUME_PREFIX = "lun-"  # a volume's LV is lun-<its API name>


def _invalid(message: str) -> VssUserError:
    return vss_error(HResult.E_INVALIDARG, message)  # type: ignore[return-value]


def initiator(value: object, what: str = "initiator") -> str:
    """An iSCSI name (iqn., eui. or naa. form), lower-cased as LIO keeps it."""
    if not isinstance(value, str) or not value.isascii():
        raise _invalid(f"{what} {value!r} is not an iSCSI name (ASCII iqn., eui. or naa. form)")
    name = value.lower()
    if len(name.encode()) > INITIATOR_MAX_BYTES or not INITIATOR_RE.fullmatch(name):
        raise _invalid(f"{what} {value!r} is not an iSCSI name: iqn.YYYY-MM.reversed.domain[:name] "
                       f"(a-z, 0-9, '.', '-', ':'), eui.<16 hex> or naa.<16 or 32 hex>, "
                       f"at most {INITIATOR_MAX_BYTES} bytes")
    return name


def lun_name(value: object, what: str = "LUN name") -> str:
    """A name the admin or a host gives a volume, a copy or a host."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value.startswith(SNAPSHOT_PREFIX):
        raise _invalid(f"{what} {value!r}: use 1-48 of a-z, 0-9 and '-', starting with a letter or digit "
                       f"(and not with {SNAPSHOT_PREFIX!r}, which names shadow copies)")
    return value


def serial(value: object) -> str:
    """A unit serial this array chose: 32 lower-case hex digits."""
    if not isinstance(value, str) or not SERIAL_RE.fullmatch(value):
        raise _invalid(f"serial {value!r} is not one of this array's (32 hex digits)")
    return value


def guid(value: object, what: str) -> str:
    """A GUID in its canonical lower-case form."""
    if not isinstance(value, str) or not value.isascii() or len(value) > 38:
        raise _invalid(f"{what} {value!r} is not a GUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _invalid(f"{what} {value!r} is not a GUID") from None


def api_name(lv: str) -> str:
    """A LUN's name in the API: a volume without its LV prefix, a snapshot as its LV."""
    return lv.removeprefix(VOLUME_PREFIX)

