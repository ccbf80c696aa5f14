"""Enumerations and LUN-description records of the VSS hardware-provider contract (spec §3, §4).

The numeric values are those of the Windows SDK (vss.h, vsprov.h, vdslun.h, vds.h) as the spec
lists them, so a value read from a Backup Components Document or sent over the provider RPC means
the same thing it would mean on Windows. Classes have Pythonic names; members keep the SDK names,
so `grep VSS_CTX_BACKUP` finds both the spec and the code.

`LunInformation` (VDS_LUN_INFORMATION) is the identity of a LUN: GetTargetLuns predicts it on the
array side, FillInLunInfo reads it from the device on whatever host the LUN appears, and import
pairs the two with `matches()`. Its JSON form (`to_dict`) is stored in the Backup Components
Document, so the shape is fixed and `from_dict` treats its input as untrusted.
"""
from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from provider.contract.hresult import HResult, vss_error

GUID_NULL = uuid.UUID(int=0)


# --- §3 enumerations ---------------------------------------------------------------------------

@enum.unique
class ProviderType(enum.IntEnum):
    """VSS_PROVIDER_TYPE (§3.1). We are a hardware provider."""

    VSS_PROV_UNKNOWN = 0
    VSS_PROV_SYSTEM = 1
    VSS_PROV_SOFTWARE = 2
    VSS_PROV_HARDWARE = 3
    VSS_PROV_FILESHARE = 4


class VolumeSnapshotAttributes(enum.IntFlag):
    """_VSS_VOLUME_SNAPSHOT_ATTRIBUTES (§3.2): the bits a snapshot context is made of."""

    VSS_VOLSNAP_ATTR_PERSISTENT = 0x00000001
    VSS_VOLSNAP_ATTR_NO_AUTORECOVERY = 0x00000002
    VSS_VOLSNAP_ATTR_CLIENT_ACCESSIBLE = 0x00000004
    VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE = 0x00000008
    VSS_VOLSNAP_ATTR_NO_WRITERS = 0x00000010
    VSS_VOLSNAP_ATTR_TRANSPORTABLE = 0x00000020
    VSS_VOLSNAP_ATTR_NOT_SURFACED = 0x00000040
    VSS_VOLSNAP_ATTR_NOT_TRANSACTED = 0x00000080
    VSS_VOLSNAP_ATTR_HARDWARE_ASSISTED = 0x00010000
    VSS_VOLSNAP_ATTR_DIFFERENTIAL = 0x00020000
    VSS_VOLSNAP_ATTR_PLEX = 0x00040000
    VSS_VOLSNAP_ATTR_IMPORTED = 0x00080000
    VSS_VOLSNAP_ATTR_EXPOSED_LOCALLY = 0x00100000
    VSS_VOLSNAP_ATTR_EXPOSED_REMOTELY = 0x00200000
    VSS_VOLSNAP_ATTR_AUTORECOVER = 0x00400000
    VSS_VOLSNAP_ATTR_ROLLBACK_RECOVERY = 0x00800000
    VSS_VOLSNAP_ATTR_DELAYED_POSTSNAPSHOT = 0x01000000
    VSS_VOLSNAP_ATTR_TXF_RECOVERY = 0x02000000
    VSS_VOLSNAP_ATTR_FILE_SHARE = 0x04000000


_A = VolumeSnapshotAttributes

# The attribute bits that make up a named context; every other bit of a LONG context is a modifier
# the requester ORs in (TRANSPORTABLE, DIFFERENTIAL, PLEX, ...).
CONTEXT_BITS = (_A.VSS_VOLSNAP_ATTR_PERSISTENT | _A.VSS_VOLSNAP_ATTR_CLIENT_ACCESSIBLE
                | _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE | _A.VSS_VOLSNAP_ATTR_NO_WRITERS)

# The modifier bits a requester may OR into a context (spec 3.2, "requester may OR in"); the others
# (HARDWARE_ASSISTED, IMPORTED, EXPOSED_*, ...) are set by VSS itself and never asked for.
REQUESTER_MODIFIERS = (_A.VSS_VOLSNAP_ATTR_NO_AUTORECOVERY | _A.VSS_VOLSNAP_ATTR_TRANSPORTABLE
                       | _A.VSS_VOLSNAP_ATTR_NOT_TRANSACTED | _A.VSS_VOLSNAP_ATTR_DIFFERENTIAL
                       | _A.VSS_VOLSNAP_ATTR_PLEX | _A.VSS_VOLSNAP_ATTR_ROLLBACK_RECOVERY
                       | _A.VSS_VOLSNAP_ATTR_TXF_RECOVERY)

@enum.unique
class SnapshotContext(enum.IntEnum):
    """_VSS_SNAPSHOT_CONTEXT (§3.3). Each value is a bit pattern of VolumeSnapshotAttributes, which
    is why the values are written as such; VSS_CTX_ALL is the LONG -1, kept as unsigned 32 bits."""

    VSS_CTX_BACKUP = 0
    VSS_CTX_FILE_SHARE_BACKUP = int(_A.VSS_VOLSNAP_ATTR_NO_WRITERS)
    VSS_CTX_NAS_ROLLBACK = int(_A.VSS_VOLSNAP_ATTR_PERSISTENT | _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE
                               | _A.VSS_VOLSNAP_ATTR_NO_WRITERS)
    VSS_CTX_APP_ROLLBACK = int(_A.VSS_VOLSNAP_ATTR_PERSISTENT | _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE)
    VSS_CTX_CLIENT_ACCESSIBLE = int(_A.VSS_VOLSNAP_ATTR_PERSISTENT | _A.VSS_VOLSNAP_ATTR_CLIENT_ACCESSIBLE
                                    | _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE | _A.VSS_VOLSNAP_ATTR_NO_WRITERS)
    VSS_CTX_CLIENT_ACCESSIBLE_WRITERS = int(_A.VSS_VOLSNAP_ATTR_PERSISTENT
                                            | _A.VSS_VOLSNAP_ATTR_CLIENT_ACCESSIBLE
                                            | _A.VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE)
    VSS_CTX_ALL = 0xFFFFFFFF

    @property
    def attributes(self) -> VolumeSnapshotAttributes:
        """The attribute bits this context stands for (none for VSS_CTX_ALL, which is not a pattern)."""
        if self is SnapshotContext.VSS_CTX_ALL:
            return VolumeSnapshotAttributes(0)
        return VolumeSnapshotAttributes(self.value)


def split_context(lcontext: int) -> tuple[SnapshotContext, VolumeSnapshotAttributes]:
    """Split the LONG passed to SetContext / AreLunsSupported (e.g. 0x39) into its named context
    (VSS_CTX_NAS_ROLLBACK) and the modifier bits ORed in (TRANSPORTABLE).

    Accepts the signed LONG or its unsigned form. A pattern that is no named context, or unknown
    bits, raise VSS_E_UNSUPPORTED_CONTEXT: a provider must refuse what it cannot interpret.
    """
    if isinstance(lcontext, bool) or not isinstance(lcontext, int) or not -0x80000000 <= lcontext <= 0xFFFFFFFF:
        raise vss_error(HResult.E_INVALIDARG, f"snapshot context {lcontext!r} is not a 32-bit LONG")
    value = lcontext & 0xFFFFFFFF
    if value == SnapshotContext.VSS_CTX_ALL:
        return SnapshotContext.VSS_CTX_ALL, VolumeSnapshotAttributes(0)
    known = 0
    for bit in VolumeSnapshotAttributes:
        known |= bit.value
    if value & ~known:
        raise vss_error(HResult.VSS_E_UNSUPPORTED_CONTEXT,
                        f"snapshot context 0x{value:08x} has unknown bits 0x{value & ~known:08x}")
    base = value & CONTEXT_BITS
    try:
        context = SnapshotContext(base)
    except ValueError:
        raise vss_error(HResult.VSS_E_UNSUPPORTED_CONTEXT,
                        f"snapshot context 0x{value:08x}: 0x{base:02x} is no named context") from None
    return context, VolumeSnapshotAttributes(value & ~CONTEXT_BITS)


@enum.unique
class SnapshotState(enum.IntEnum):
    """VSS_SNAPSHOT_STATE (§3.4). POSTCOMMITTED was added late, so numeric order is not phase order."""

    VSS_SS_UNKNOWN = 0
    VSS_SS_PREPARING = 1
    VSS_SS_PROCESSING_PREPARE = 2
    VSS_SS_PREPARED = 3
    VSS_SS_PROCESSING_PRECOMMIT = 4
    VSS_SS_PRECOMMITTED = 5
    VSS_SS_PROCESSING_COMMIT = 6
    VSS_SS_COMMITTED = 7
    VSS_SS_PROCESSING_POSTCOMMIT = 8
    VSS_SS_PROCESSING_PREFINALCOMMIT = 9
    VSS_SS_PREFINALCOMMITTED = 10
    VSS_SS_PROCESSING_POSTFINALCOMMIT = 11
    VSS_SS_CREATED = 12
    VSS_SS_ABORTED = 13
    VSS_SS_DELETED = 14
    VSS_SS_POSTCOMMITTED = 15
    VSS_SS_COUNT = 16


class ProviderCapabilities(enum.IntFlag):
    """_VSS_PROVIDER_CAPABILITIES (§3.5), the ULONGLONG mask of GetProviderCapabilities."""

    VSS_PRV_CAPABILITY_LEGACY = 0x001
    VSS_PRV_CAPABILITY_COMPLIANT = 0x002
    VSS_PRV_CAPABILITY_LUN_REPOINT = 0x004
    VSS_PRV_CAPABILITY_LUN_RESYNC = 0x008
    VSS_PRV_CAPABILITY_OFFLINE_CREATION = 0x010
    VSS_PRV_CAPABILITY_MULTIPLE_IMPORT = 0x020
    VSS_PRV_CAPABILITY_RECYCLING = 0x040
    VSS_PRV_CAPABILITY_PLEX = 0x080
    VSS_PRV_CAPABILITY_DIFFERENTIAL = 0x100
    VSS_PRV_CAPABILITY_CLUSTERED = 0x200


class HardwareOptions(enum.IntFlag):
    """_VSS_HARDWARE_OPTIONS (§3.6): BreakSnapshotSetEx flags (0x00F) and OnLunStateChange flags (0xF00)."""

    VSS_BREAKEX_FLAG_MASK_LUNS = 0x001
    VSS_BREAKEX_FLAG_MAKE_READ_WRITE = 0x002
    VSS_BREAKEX_FLAG_REVERT_IDENTITY_ALL = 0x004
    VSS_BREAKEX_FLAG_REVERT_IDENTITY_NONE = 0x008
    VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE = 0x100
    VSS_ONLUNSTATECHANGE_NOTIFY_LUN_PRE_RECOVERY = 0x200
    VSS_ONLUNSTATECHANGE_NOTIFY_LUN_POST_RECOVERY = 0x400
    VSS_ONLUNSTATECHANGE_DO_MASK_LUNS = 0x800


class RecoveryOptions(enum.IntFlag):
    """VSS_RECOVERY_OPTIONS (§3.7), for RecoverSet / LUN resync."""

    VSS_RECOVERY_REVERT_IDENTITY_ALL = 0x100
    VSS_RECOVERY_NO_VOLUME_CHECK = 0x200


@enum.unique
class ObjectType(enum.IntEnum):
    """VSS_OBJECT_TYPE (§3.8)."""

    VSS_OBJECT_UNKNOWN = 0
    VSS_OBJECT_NONE = 1
    VSS_OBJECT_SNAPSHOT_SET = 2
    VSS_OBJECT_SNAPSHOT = 3
    VSS_OBJECT_PROVIDER = 4
    VSS_OBJECT_TYPE_COUNT = 5


class GptAttributes(enum.IntFlag):
    """GPT basic-data partition attribute bits 60-63 (§3.10): the shadow-copy flags that travel
    with the LUN because they are written into its partition table."""

    GPT_BASIC_DATA_ATTRIBUTE_READ_ONLY = 0x1000000000000000
    GPT_BASIC_DATA_ATTRIBUTE_SHADOW_COPY = 0x2000000000000000
    GPT_BASIC_DATA_ATTRIBUTE_HIDDEN = 0x4000000000000000
    GPT_BASIC_DATA_ATTRIBUTE_NO_DRIVE_LETTER = 0x8000000000000000


# --- §4 enumerations of vdslun.h / vds.h -------------------------------------------------------

class StorageBusType(enum.IntEnum):
    """VDS_STORAGE_BUS_TYPE (§4.5). Not compared at import; our LUNs are iSCSI."""

    VDSBusTypeUnknown = 0x0
    VDSBusTypeScsi = 0x1
    VDSBusTypeAtapi = 0x2
    VDSBusTypeAta = 0x3
    VDSBusType1394 = 0x4
    VDSBusTypeSsa = 0x5
    VDSBusTypeFibre = 0x6
    VDSBusTypeUsb = 0x7
    VDSBusTypeRAID = 0x8
    VDSBusTypeiScsi = 0x9
    VDSBusTypeSas = 0xA
    VDSBusTypeSata = 0xB
    VDSBusTypeSd = 0xC
    VDSBusTypeMmc = 0xD
    VDSBusTypeMax = 0xE
    VDSBusTypeVirtual = 0xE  # alias: the SDK gives Max and Virtual the same value
    VDSBusTypeFileBackedVirtual = 0xF
    VDSBusTypeSpaces = 0x10
    VDSBusTypeNVMe = 0x11
    VDSBusTypeScm = 0x12
    VDSBusTypeUfs = 0x13
    VDSBusTypeMaxReserved = 0x7F


@enum.unique
class StorageIdentifierCodeSet(enum.IntEnum):
    """VDS_STORAGE_IDENTIFIER_CODE_SET (§4.3) = the SPC code set of a page-0x83 designator."""

    VDSStorageIdCodeSetReserved = 0
    VDSStorageIdCodeSetBinary = 1
    VDSStorageIdCodeSetAscii = 2
    VDSStorageIdCodeSetUtf8 = 3


@enum.unique
class StorageIdentifierType(enum.IntEnum):
    """VDS_STORAGE_IDENTIFIER_TYPE (§4.3) = the SPC designator type. Consumers must tolerate
    values beyond these, so records keep unknown types as plain ints."""

    VDSStorageIdTypeVendorSpecific = 0
    VDSStorageIdTypeVendorId = 1
    VDSStorageIdTypeEUI64 = 2
    VDSStorageIdTypeFCPHName = 3
    VDSStorageIdTypePortRelative = 4
    VDSStorageIdTypeTargetPortGroup = 5
    VDSStorageIdTypeLogicalUnitGroup = 6
    VDSStorageIdTypeMD5LogicalUnitIdentifier = 7
    VDSStorageIdTypeScsiNameString = 8


@enum.unique
class InterconnectAddressType(enum.IntEnum):
    """VDS_INTERCONNECT_ADDRESS_TYPE (§4.4)."""

    VDS_IA_UNKNOWN = 0
    VDS_IA_FCFS = 1
    VDS_IA_FCPH = 2
    VDS_IA_FCPH3 = 3
    VDS_IA_MAC = 4
    VDS_IA_SCSI = 5


# Designator types that can identify a LUN uniquely (§4.6: type 1, 2, 3 or 8 with association 0).
UNIQUE_IDENTIFIER_TYPES = frozenset({
    StorageIdentifierType.VDSStorageIdTypeVendorId,
    StorageIdentifierType.VDSStorageIdTypeEUI64,
    StorageIdentifierType.VDSStorageIdTypeFCPHName,
    StorageIdentifierType.VDSStorageIdTypeScsiNameString,
})

VER_VDS_LUN_INFORMATION = 1
DEVICE_ID_DESCRIPTOR_VERSION = 1  # what our producers write; vdslun.h documents no value

# shadowlun's limit on the LUNs of one snapshot set (CONTRACT.md §12): more is
# VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, from the coordinator, the provider and the array alike.
MAX_LUNS_PER_SET = 64

# Bounds on untrusted records (a Backup Components Document may come from anywhere).
MAX_STRING_CHARS = 256
MAX_IDENTIFIER_BYTES = 255  # an SPC designator's length is one byte
MAX_ADDRESS_BYTES = 256
MAX_IDENTIFIERS = 256
MAX_INTERCONNECTS = 256
_ULONG_MAX = 0xFFFFFFFF

# Characters XML 1.0 can carry (the BCD is XML); NUL, most C0 controls and lone surrogates cannot,
# and a NUL could not be in the C string of a Windows record anyway.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --- validation helpers ------------------------------------------------------------------------

def _invalid(where: str, what: str) -> Exception:
    return vss_error(HResult.E_INVALIDARG, f"LUN information: {where} {what}")


_E = TypeVar("_E", bound=enum.IntEnum)


def _check_int(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(where, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise _invalid(where, f"= {value} is out of range {low}..{high}")
    return value


def _enum_or_int(enum_cls: type[_E], where: str, value: Any, high: int) -> _E | int:
    """The enum member for `value`, or the plain int when the value is in range but unnamed."""
    value = _check_int(where, value, 0, high)
    try:
        return enum_cls(value)
    except ValueError:
        return int(value)


def _check_str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(where, f"must be a string, not {type(value).__name__}")
    if len(value) > MAX_STRING_CHARS:
        raise _invalid(where, f"is {len(value)} characters long; at most {MAX_STRING_CHARS} allowed")
    if bad := _NOT_XML_CHAR.search(value):
        raise _invalid(where, f"contains {bad.group()!r}, which a C string or the XML BCD cannot carry")
    return value


def _check_bytes(where: str, value: Any, limit: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _invalid(where, f"must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > limit:
        raise _invalid(where, f"is {len(value)} bytes long; at most {limit} allowed")
    return value


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _from_hex(where: str, value: Any, limit: int) -> bytes:
    if not isinstance(value, str):
        raise _invalid(where, f"must be a hex string, not {type(value).__name__}")
    if len(value) > 2 * limit:
        raise _invalid(where, f"is {len(value) // 2} bytes long; at most {limit} allowed")
    if not _HEX.fullmatch(value):
        raise _invalid(where, f"is not an even-length hex string: {value[:80]!r}")
    return bytes.fromhex(value)


def _fields(where: str, d: Any, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """`d` as a mapping with exactly `keys`: the JSON shape is fixed."""
    if not isinstance(d, Mapping):
        raise _invalid(where, f"must be an object, not {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    extra = sorted(str(k)[:40] for k in d if k not in keys)
    if missing:
        raise _invalid(where, f"lacks {', '.join(missing)}")
    if extra:
        raise _invalid(where, f"has unknown keys {', '.join(extra)}")
    return d


def _list(where: str, value: Any, limit: int) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _invalid(where, f"must be a list, not {type(value).__name__}")
    if len(value) > limit:
        raise _invalid(where, f"has {len(value)} entries; at most {limit} allowed")
    return list(value)


_GUID = re.compile(r"\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?")


def _guid(where: str, value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not (m := _GUID.fullmatch(value)) or (value[0] == "{") != (value[-1] == "}"):
        raise _invalid(where, f"must be a GUID string like {GUID_NULL}, not {str(value)[:80]!r}")
    return uuid.UUID(m.group(1))


# --- §4 records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StorageIdentifier:
    """VDS_STORAGE_IDENTIFIER (§4.3): one page-0x83 designator, association 0, bytes as the device
    sends them (an ASCII designator keeps its NUL terminator/padding, exactly as on the wire)."""

    code_set: StorageIdentifierCodeSet | int
    type: StorageIdentifierType | int
    identifier: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_set", _enum_or_int(StorageIdentifierCodeSet, "code_set", self.code_set, 15))
        object.__setattr__(self, "type", _enum_or_int(StorageIdentifierType, "type", self.type, 15))
        object.__setattr__(self, "identifier", _check_bytes("identifier", self.identifier, MAX_IDENTIFIER_BYTES))

    def to_dict(self) -> dict[str, Any]:
        return {"code_set": int(self.code_set), "type": int(self.type), "identifier": self.identifier.hex()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "identifier") -> StorageIdentifier:
        f = _fields(where, d, ("code_set", "type", "identifier"))
        return cls(
            code_set=_check_int(f"{where}.code_set", f["code_set"], 0, 15),
            type=_check_int(f"{where}.type", f["type"], 0, 15),
            identifier=_from_hex(f"{where}.identifier", f["identifier"], MAX_IDENTIFIER_BYTES),
        )


@dataclass(frozen=True)
class DeviceIdDescriptor:
    """VDS_STORAGE_DEVICE_ID_DESCRIPTOR (§4.2): the association-0 designators in device order."""

    version: int = DEVICE_ID_DESCRIPTOR_VERSION
    identifiers: tuple[StorageIdentifier, ...] = ()

    def __post_init__(self) -> None:
        _check_int("device_id_descriptor.version", self.version, 0, _ULONG_MAX)
        ids = self.identifiers
        if not isinstance(ids, Iterable) or isinstance(ids, (str, bytes)):
            raise _invalid("device_id_descriptor.identifiers", "must be a sequence of StorageIdentifier")
        ids = tuple(ids)
        if len(ids) > MAX_IDENTIFIERS:
            raise _invalid("device_id_descriptor.identifiers", f"has {len(ids)} entries; at most {MAX_IDENTIFIERS}")
        if not all(isinstance(i, StorageIdentifier) for i in ids):
            raise _invalid("device_id_descriptor.identifiers", "must hold StorageIdentifier objects only")
        object.__setattr__(self, "identifiers", ids)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "identifiers": [i.to_dict() for i in self.identifiers]}

    @classmethod
    def from_dict(cls, d: Any, where: str = "device_id_descriptor") -> DeviceIdDescriptor:
        f = _fields(where, d, ("version", "identifiers"))
        items = _list(f"{where}.identifiers", f["identifiers"], MAX_IDENTIFIERS)
        return cls(
            version=_check_int(f"{where}.version", f["version"], 0, _ULONG_MAX),
            identifiers=tuple(StorageIdentifier.from_dict(x, f"{where}.identifiers[{n}]")
                              for n, x in enumerate(items)),
        )


@dataclass(frozen=True)
class Interconnect:
    """VDS_INTERCONNECT (§4.4): a port/address the LUN is reachable by. Not compared at import,
    and a provider must pass VSS's list through unchanged."""

    address_type: InterconnectAddressType | int
    port: bytes = b""
    address: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "address_type", _enum_or_int(
            InterconnectAddressType, "interconnect.address_type", self.address_type, _ULONG_MAX))
        object.__setattr__(self, "port", _check_bytes("interconnect.port", self.port, MAX_ADDRESS_BYTES))
        object.__setattr__(self, "address", _check_bytes("interconnect.address", self.address, MAX_ADDRESS_BYTES))

    def to_dict(self) -> dict[str, Any]:
        return {"address_type": int(self.address_type), "port": self.port.hex(), "address": self.address.hex()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "interconnect") -> Interconnect:
        f = _fields(where, d, ("address_type", "port", "address"))
        return cls(
            address_type=_check_int(f"{where}.address_type", f["address_type"], 0, _ULONG_MAX),
            port=_from_hex(f"{where}.port", f["port"], MAX_ADDRESS_BYTES),
            address=_from_hex(f"{where}.address", f["address"], MAX_ADDRESS_BYTES),
        )


_LUN_KEYS = ("version", "device_type", "device_type_modifier", "command_queueing", "bus_type", "vendor_id",
             "product_id", "product_revision", "serial_number", "disk_signature", "device_id_descriptor",
             "interconnects")


@dataclass(frozen=True)
class LunInformation:
    """VDS_LUN_INFORMATION (§4.1): how VSS identifies a LUN across hosts.

    Strings are the INQUIRY vendor/product/revision and the page-0x80 serial; "" stands for the
    NULL a Windows record may carry; characters the XML BCD cannot carry (NUL, C0 controls other
    than tab/CR/LF) are refused, so every record fits in a Backup Components Document. Construct with any values; `canonical()` is the form both
    GetTargetLuns and FillInLunInfo output, and `matches()` is the import rule.
    """

    vendor_id: str
    product_id: str
    product_revision: str
    serial_number: str
    device_id_descriptor: DeviceIdDescriptor = DeviceIdDescriptor()
    device_type: int = 0
    device_type_modifier: int = 0
    command_queueing: bool = True
    bus_type: StorageBusType | int = StorageBusType.VDSBusTypeiScsi
    disk_signature: uuid.UUID = GUID_NULL
    interconnects: tuple[Interconnect, ...] = ()
    version: int = VER_VDS_LUN_INFORMATION

    def __post_init__(self) -> None:
        if self.version != VER_VDS_LUN_INFORMATION or isinstance(self.version, bool):
            raise _invalid("version", f"must be {VER_VDS_LUN_INFORMATION} (VER_VDS_LUN_INFORMATION), not {self.version!r}")
        _check_int("device_type", self.device_type, 0, 0xFF)
        _check_int("device_type_modifier", self.device_type_modifier, 0, 0xFF)
        if not isinstance(self.command_queueing, bool):
            raise _invalid("command_queueing", f"must be a boolean, not {type(self.command_queueing).__name__}")
        object.__setattr__(self, "bus_type", _enum_or_int(StorageBusType, "bus_type", self.bus_type, 0x7F))
        for name in ("vendor_id", "product_id", "product_revision", "serial_number"):
            _check_str(name, getattr(self, name))
        object.__setattr__(self, "disk_signature", _guid("disk_signature", self.disk_signature))
        if not isinstance(self.device_id_descriptor, DeviceIdDescriptor):
            raise _invalid("device_id_descriptor", "must be a DeviceIdDescriptor")
        ics = self.interconnects
        if not isinstance(ics, Iterable) or isinstance(ics, (str, bytes)):
            raise _invalid("interconnects", "must be a sequence of Interconnect")
        ics = tuple(ics)
        if len(ics) > MAX_INTERCONNECTS or not all(isinstance(i, Interconnect) for i in ics):
            raise _invalid("interconnects", f"must hold at most {MAX_INTERCONNECTS} Interconnect objects")
        object.__setattr__(self, "interconnects", ics)

    @property
    def identifiers(self) -> tuple[StorageIdentifier, ...]:
        return self.device_id_descriptor.identifiers

    def canonical(self) -> LunInformation:
        """The record as our provider outputs it from both GetTargetLuns and FillInLunInfo.

        INQUIRY strings lose their trailing space padding (the device pads to 8/16/4 bytes, a
        prediction does not); the serial is kept as stored on the array (the NUL padding of page
        0x80 is dropped by the parser: records hold no NULs); the disk signature becomes GUID_NULL
        (§4.1: providers output GUID_NULL).
        Designators stay in device order and byte-exact; bus type and interconnects are untouched
        (the first is free, the second a provider must not modify). Idempotent.
        """
        return dataclasses.replace(
            self,
            vendor_id=self.vendor_id.rstrip(" "),
            product_id=self.product_id.rstrip(" "),
            product_revision=self.product_revision.rstrip(" "),
            disk_signature=GUID_NULL,
        )

    def has_unique_identifier(self) -> bool:
        """True if a designator can identify the LUN (§4.6: type 1, 2, 3 or 8, non-empty)."""
        return any(i.type in UNIQUE_IDENTIFIER_TYPES and i.identifier.strip(b"\0 ")
                   for i in self.identifiers)

    def matches(self, other: LunInformation) -> bool:
        """The import rule (§4.6): is `other` (FillInLunInfo of an arrived disk) the LUN this record
        (GetTargetLuns, from the BCD) predicted, or vice versa. Symmetric.

        Both records are compared in canonical form on everything except bus type, disk signature
        and interconnects, which VSS ignores. Decisions where the spec leaves room:
        * Serial: since Windows Server 2008 page 0x80 is not required and page 0x83 is the primary
          key (§16.3.5), so serials are compared only when both records have one; a record without
          a serial still has to agree on every designator.
        * Designators: compared as the ordered list, byte for byte, with code sets and types; our
          producers emit device order, and a different set or order is a different record.
        * Identity: records without a type 1/2/3/8 designator never match, even when equal
          (a serial-less, designator-less record would match any LUN of the same model).
        """
        if not isinstance(other, LunInformation):
            return False
        a, b = self.canonical(), other.canonical()
        if not (a.has_unique_identifier() and b.has_unique_identifier()):
            return False
        if a.serial_number and b.serial_number and a.serial_number != b.serial_number:
            return False
        return (
            a.version == b.version
            and a.device_type == b.device_type
            and a.device_type_modifier == b.device_type_modifier
            and a.command_queueing == b.command_queueing
            and a.vendor_id == b.vendor_id
            and a.product_id == b.product_id
            and a.product_revision == b.product_revision
            and a.device_id_descriptor == b.device_id_descriptor
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the Backup Components Document (shape fixed; see module doc)."""
        return {
            "version": self.version,
            "device_type": self.device_type,
            "device_type_modifier": self.device_type_modifier,
            "command_queueing": self.command_queueing,
            "bus_type": int(self.bus_type),
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "product_revision": self.product_revision,
            "serial_number": self.serial_number,
            "disk_signature": str(self.disk_signature),
            "device_id_descriptor": self.device_id_descriptor.to_dict(),
            "interconnects": [i.to_dict() for i in self.interconnects],
        }

    @classmethod
    def from_dict(cls, d: Any) -> LunInformation:
        """Rebuild a record from `to_dict()` output. Anything else (wrong shape or types, version
        other than 1, bad hex, oversized values) raises VssUserError E_INVALIDARG naming the field.
        A JSON null for one of the four strings is read as "" (the C fields may be NULL)."""
        f = _fields("record", d, _LUN_KEYS)
        if isinstance(f["version"], bool) or f["version"] != VER_VDS_LUN_INFORMATION:
            raise _invalid("version", f"must be {VER_VDS_LUN_INFORMATION}, not {str(f['version'])[:40]!r}")
        strings = {name: _check_str(name, "" if f[name] is None else f[name])
                   for name in ("vendor_id", "product_id", "product_revision", "serial_number")}
        if not isinstance(f["command_queueing"], bool):
            raise _invalid("command_queueing", f"must be a boolean, not {type(f['command_queueing']).__name__}")
        interconnects = _list("interconnects", f["interconnects"], MAX_INTERCONNECTS)
        return cls(
            version=VER_VDS_LUN_INFORMATION,
            device_type=_check_int("device_type", f["device_type"], 0, 0xFF),
            device_type_modifier=_check_int("device_type_modifier", f["device_type_modifier"], 0, 0xFF),
            command_queueing=f["command_queueing"],
            bus_type=_check_int("bus_type", f["bus_type"], 0, 0x7F),
            disk_signature=_guid("disk_signature", f["disk_signature"]),
            device_id_descriptor=DeviceIdDescriptor.from_dict(f["device_id_descriptor"]),
            interconnects=tuple(Interconnect.from_dict(x, f"interconnects[{n}]")
                                for n, x in enumerate(interconnects)),
            **strings,
        )
