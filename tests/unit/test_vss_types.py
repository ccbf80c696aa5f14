"""Unit tests of provider.contract.vss_types: the values against the tables of provider/CONTRACT.md (sections
4 and 5), the LUN records' JSON form, validation of untrusted input, canonical form and the import
matching rule."""
from __future__ import annotations

import enum
import json
import random
import re
import uuid

import contract_doc as contract
import pytest

from provider.contract.hresult import HResult, VssError, VssUserError
from provider.contract.vss_types import (
    CONTEXT_BITS,
    GUID_NULL,
    MAX_LUNS_PER_SET,
    REQUESTER_MODIFIERS,
    DeviceIdDescriptor,
    GptAttributes,
    HardwareOptions,
    Interconnect,
    InterconnectAddressType,
    LunInformation,
    ObjectType,
    ProviderCapabilities,
    ProviderType,
    RecoveryOptions,
    SnapshotContext,
    SnapshotState,
    StorageBusType,
    StorageIdentifier,
    StorageIdentifierCodeSet,
    StorageIdentifierType,
    VolumeSnapshotAttributes,
    split_context,
)


A = VolumeSnapshotAttributes
C = SnapshotContext


# --- enumerations: spot values of the SDK -------------------------------------------------------

@pytest.mark.parametrize("member, value", [
    (ProviderType.VSS_PROV_UNKNOWN, 0),
    (ProviderType.VSS_PROV_SOFTWARE, 2),
    (ProviderType.VSS_PROV_HARDWARE, 3),
    (ProviderType.VSS_PROV_FILESHARE, 4),
    (A.VSS_VOLSNAP_ATTR_PERSISTENT, 0x1),
    (A.VSS_VOLSNAP_ATTR_TRANSPORTABLE, 0x20),
    (A.VSS_VOLSNAP_ATTR_NOT_TRANSACTED, 0x80),
    (A.VSS_VOLSNAP_ATTR_HARDWARE_ASSISTED, 0x10000),
    (A.VSS_VOLSNAP_ATTR_DIFFERENTIAL, 0x20000),
    (A.VSS_VOLSNAP_ATTR_PLEX, 0x40000),
    (A.VSS_VOLSNAP_ATTR_FILE_SHARE, 0x4000000),
    (C.VSS_CTX_BACKUP, 0x00),
    (C.VSS_CTX_FILE_SHARE_BACKUP, 0x10),
    (C.VSS_CTX_NAS_ROLLBACK, 0x19),
    (C.VSS_CTX_APP_ROLLBACK, 0x09),
    (C.VSS_CTX_CLIENT_ACCESSIBLE, 0x1D),
    (C.VSS_CTX_CLIENT_ACCESSIBLE_WRITERS, 0x0D),
    (C.VSS_CTX_ALL, 0xFFFFFFFF),
    (SnapshotState.VSS_SS_UNKNOWN, 0),
    (SnapshotState.VSS_SS_PREPARED, 3),
    (SnapshotState.VSS_SS_CREATED, 12),
    (SnapshotState.VSS_SS_POSTCOMMITTED, 15),
    (SnapshotState.VSS_SS_COUNT, 16),
    (ProviderCapabilities.VSS_PRV_CAPABILITY_LEGACY, 0x001),
    (ProviderCapabilities.VSS_PRV_CAPABILITY_LUN_RESYNC, 0x008),
    (ProviderCapabilities.VSS_PRV_CAPABILITY_DIFFERENTIAL, 0x100),
    (ProviderCapabilities.VSS_PRV_CAPABILITY_CLUSTERED, 0x200),
    (HardwareOptions.VSS_BREAKEX_FLAG_MASK_LUNS, 0x001),
    (HardwareOptions.VSS_BREAKEX_FLAG_REVERT_IDENTITY_NONE, 0x008),
    (HardwareOptions.VSS_ONLUNSTATECHANGE_NOTIFY_READ_WRITE, 0x100),
    (HardwareOptions.VSS_ONLUNSTATECHANGE_DO_MASK_LUNS, 0x800),
    (RecoveryOptions.VSS_RECOVERY_REVERT_IDENTITY_ALL, 0x100),
    (RecoveryOptions.VSS_RECOVERY_NO_VOLUME_CHECK, 0x200),
    (ObjectType.VSS_OBJECT_UNKNOWN, 0),
    (ObjectType.VSS_OBJECT_SNAPSHOT_SET, 2),
    (ObjectType.VSS_OBJECT_PROVIDER, 4),
    (ObjectType.VSS_OBJECT_TYPE_COUNT, 5),
    (StorageBusType.VDSBusTypeUnknown, 0),
    (StorageBusType.VDSBusTypeScsi, 1),
    (StorageBusType.VDSBusType1394, 4),
    (StorageBusType.VDSBusTypeiScsi, 9),
    (StorageBusType.VDSBusTypeSas, 0xA),
    (StorageBusType.VDSBusTypeVirtual, 0xE),
    (StorageBusType.VDSBusTypeNVMe, 0x11),
    (StorageBusType.VDSBusTypeMaxReserved, 0x7F),
    (StorageIdentifierCodeSet.VDSStorageIdCodeSetReserved, 0),
    (StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary, 1),
    (StorageIdentifierCodeSet.VDSStorageIdCodeSetAscii, 2),
    (StorageIdentifierCodeSet.VDSStorageIdCodeSetUtf8, 3),
    (StorageIdentifierType.VDSStorageIdTypeVendorSpecific, 0),
    (StorageIdentifierType.VDSStorageIdTypeVendorId, 1),
    (StorageIdentifierType.VDSStorageIdTypeFCPHName, 3),
    (StorageIdentifierType.VDSStorageIdTypeLogicalUnitGroup, 6),
    (StorageIdentifierType.VDSStorageIdTypeScsiNameString, 8),
    (InterconnectAddressType.VDS_IA_UNKNOWN, 0),
    (InterconnectAddressType.VDS_IA_FCPH3, 3),
    (InterconnectAddressType.VDS_IA_SCSI, 5),
    (GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_READ_ONLY, 1 << 60),
    (GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_SHADOW_COPY, 1 << 61),
    (GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_HIDDEN, 1 << 62),
    (GptAttributes.GPT_BASIC_DATA_ATTRIBUTE_NO_DRIVE_LETTER, 1 << 63),
])
def test_spot_values(member, value):
    assert member == value
    assert type(member)(value) == member


def test_bus_type_max_and_virtual_share_a_value():
    assert StorageBusType.VDSBusTypeMax is StorageBusType.VDSBusTypeVirtual


def test_flag_enums_are_flags_and_value_enums_are_not():
    for cls in (VolumeSnapshotAttributes, ProviderCapabilities, HardwareOptions, RecoveryOptions, GptAttributes):
        assert issubclass(cls, enum.IntFlag)
        for m in cls:
            assert m.value & (m.value - 1) == 0, f"{m.name} is not a single bit"


# --- enumerations: every row of provider/CONTRACT.md's tables --------------------------------

@pytest.mark.parametrize("title, cls", [
    (r"4\.1 ", ProviderType),
    (r"4\.2 ", VolumeSnapshotAttributes),
    (r"4\.3 ", SnapshotContext),
    (r"4\.4 ", SnapshotState),
    (r"4\.5 ", ProviderCapabilities),
    (r"4\.6 ", HardwareOptions),
    (r"4\.7 ", RecoveryOptions),
    (r"4\.8 ", ObjectType),
    (r"4\.10 ", GptAttributes),
    (r"5\.2 ", StorageIdentifierCodeSet),
    (r"5\.3 ", StorageIdentifierType),
    (r"5\.4 ", InterconnectAddressType),
    (r"5\.5 ", StorageBusType),
])
def test_enum_is_exactly_the_contract_table(title, cls):
    rows = contract.table(contract.section(title))
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), f"a name twice in {title}"
    # __members__ includes aliases (VDSBusTypeVirtual = VDSBusTypeMax): the table must list them too.
    assert {name: m.value for name, m in cls.__members__.items()} == {r[0]: contract.value(r[1]) for r in rows}


def test_each_context_is_the_bit_pattern_the_contract_names():
    for r in contract.table(contract.section(r"4\.3 ")):
        name, bits = r[0], r[2]
        if name == "VSS_CTX_ALL":
            continue
        pattern = 0
        for bit in re.findall(r"[A-Z_]+", bits):
            pattern |= A[f"VSS_VOLSNAP_ATTR_{bit}"]
        assert C[name] == pattern, name
        assert C[name].attributes == pattern


def test_the_contract_names_the_supported_contexts():
    from provider.hardware.hardware_provider import SUPPORTED_CONTEXTS
    said = {r[0] for r in contract.table(contract.section(r"4\.3 ")) if r[-1].startswith("supported")}
    assert said == {c.name for c in SUPPORTED_CONTEXTS}


def test_the_requester_bits_of_the_contract_are_the_code_s():
    said = 0
    for r in contract.table(contract.section(r"4\.2 ")):
        if r[2] == "requester":
            said |= A[r[0]]
    assert said == REQUESTER_MODIFIERS


def test_the_capabilities_the_contract_names_are_those_answered():
    from provider.hardware.hardware_provider import ShadowLunProvider
    said = 0
    for r in contract.table(contract.section(r"4\.5 ")):
        if r[2] == "yes":
            said |= ProviderCapabilities[r[0]]
    assert said == ShadowLunProvider.get_provider_capabilities(None)


def test_the_record_fields_of_the_contract_are_the_json_keys():
    rows = contract.table(contract.section(r"5\.1 "))
    assert [r[1] for r in rows] == list(lun().to_dict())
    ignored = {r[1] for r in rows if r[3] == "no"}
    assert ignored == {"bus_type", "disk_signature", "interconnects"}


def test_the_set_limits_of_the_contract_are_the_code_s():
    from provider.requester.bcd import MAX_SNAPSHOTS
    limits = dict(contract.table(contract.section(r"12\. ")))
    assert contract.value(limits["LUNs per set"]) == MAX_LUNS_PER_SET
    assert contract.value(limits["volumes per set"]) == MAX_SNAPSHOTS


def test_context_bits_cover_every_context_pattern():
    for ctx in C:
        if ctx is not C.VSS_CTX_ALL:
            assert ctx.value & ~CONTEXT_BITS == 0


@pytest.mark.parametrize("lcontext, context, modifiers", [
    (0x00, C.VSS_CTX_BACKUP, 0),
    (0x20, C.VSS_CTX_BACKUP, A.VSS_VOLSNAP_ATTR_TRANSPORTABLE),
    (0x29, C.VSS_CTX_APP_ROLLBACK, A.VSS_VOLSNAP_ATTR_TRANSPORTABLE),
    (0x39, C.VSS_CTX_NAS_ROLLBACK, A.VSS_VOLSNAP_ATTR_TRANSPORTABLE),
    (0x20039, C.VSS_CTX_NAS_ROLLBACK, A.VSS_VOLSNAP_ATTR_TRANSPORTABLE | A.VSS_VOLSNAP_ATTR_DIFFERENTIAL),
    (0x1D, C.VSS_CTX_CLIENT_ACCESSIBLE, 0),
    (-1, C.VSS_CTX_ALL, 0),
    (0xFFFFFFFF, C.VSS_CTX_ALL, 0),
])
def test_split_context(lcontext, context, modifiers):
    assert split_context(lcontext) == (context, modifiers)


@pytest.mark.parametrize("lcontext, code", [
    (0x01, HResult.VSS_E_UNSUPPORTED_CONTEXT),       # PERSISTENT alone is no named context
    (0x08 | 0x20, HResult.VSS_E_UNSUPPORTED_CONTEXT),
    (0x08000000, HResult.VSS_E_UNSUPPORTED_CONTEXT),  # unknown bit
    (1 << 32, HResult.E_INVALIDARG),
    ("0x20", HResult.E_INVALIDARG),
    (True, HResult.E_INVALIDARG),
])
def test_split_context_refuses(lcontext, code):
    with pytest.raises(VssUserError) as e:
        split_context(lcontext)
    assert e.value.hresult == code


# --- records -------------------------------------------------------------------------------------

NAA = bytes.fromhex("6001405fa5badb6f1504973818978195")
T10 = b"LIO-ORG IBLOCK:fa5badb6f150497381897819548168a9\0"
SERIAL = "fa5badb6f150497381897819548168a9"

EXAMPLE = {
    "version": 1, "device_type": 0, "device_type_modifier": 0, "command_queueing": True,
    "bus_type": 9, "vendor_id": "LIO-ORG", "product_id": "IBLOCK", "product_revision": "4.0",
    "serial_number": SERIAL, "disk_signature": "00000000-0000-0000-0000-000000000000",
    "device_id_descriptor": {"version": 1, "identifiers": [
        {"code_set": 1, "type": 3, "identifier": NAA.hex()},
        {"code_set": 2, "type": 1, "identifier": T10.hex()},
    ]},
    "interconnects": [{"address_type": 5, "port": "", "address": ""}],
}


def lun(**changes) -> LunInformation:
    base = dict(
        vendor_id="LIO-ORG", product_id="IBLOCK", product_revision="4.0", serial_number=SERIAL,
        device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, 3, NAA), StorageIdentifier(2, 1, T10))),
    )
    base.update(changes)
    return LunInformation(**base)


def test_example_shape_round_trips_exactly():
    record = LunInformation.from_dict(EXAMPLE)
    assert record.to_dict() == EXAMPLE
    assert list(record.to_dict()) == list(EXAMPLE)  # key order too
    assert json.loads(json.dumps(record.to_dict())) == EXAMPLE
    assert record.bus_type is StorageBusType.VDSBusTypeiScsi
    assert record.identifiers[0] == StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary,
                                                      StorageIdentifierType.VDSStorageIdTypeFCPHName, NAA)
    assert record.interconnects == (Interconnect(InterconnectAddressType.VDS_IA_SCSI),)
    assert record.disk_signature == GUID_NULL


def test_defaults_and_round_trip():
    record = lun()
    assert record.version == 1 and record.device_type == 0 and record.command_queueing is True
    assert record.bus_type == StorageBusType.VDSBusTypeiScsi and record.disk_signature == GUID_NULL
    assert LunInformation.from_dict(record.to_dict()) == record
    assert hash(record) == hash(LunInformation.from_dict(record.to_dict()))
    odd = lun(bus_type=0x42, disk_signature=uuid.UUID("12345678-9abc-def0-1234-56789abcdef0"),
              interconnects=[Interconnect(7, b"\x01\x02", b"\xff")],
              device_id_descriptor=DeviceIdDescriptor(1, [StorageIdentifier(0, 0xC, b"")]))
    assert odd.bus_type == 0x42 and not isinstance(odd.bus_type, StorageBusType)  # unknown values kept
    assert isinstance(odd.interconnects, tuple) and isinstance(odd.identifiers, tuple)
    assert LunInformation.from_dict(json.loads(json.dumps(odd.to_dict()))) == odd
    assert odd.to_dict()["interconnects"] == [{"address_type": 7, "port": "0102", "address": "ff"}]
    assert odd.to_dict()["disk_signature"] == "12345678-9abc-def0-1234-56789abcdef0"


def test_from_dict_accepts_uppercase_hex_braced_guid_and_null_strings():
    d = json.loads(json.dumps(EXAMPLE))
    d["device_id_descriptor"]["identifiers"][0]["identifier"] = NAA.hex().upper()
    d["disk_signature"] = "{12345678-9ABC-DEF0-1234-56789ABCDEF0}"
    d["serial_number"] = None
    record = LunInformation.from_dict(d)
    assert record.identifiers[0].identifier == NAA
    assert record.serial_number == ""
    assert record.to_dict()["disk_signature"] == "12345678-9abc-def0-1234-56789abcdef0"


def _mutated(path: tuple, value, delete=False):
    d = json.loads(json.dumps(EXAMPLE))
    target = d
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


DELETE = object()
ID0 = ("device_id_descriptor", "identifiers", 0)


@pytest.mark.parametrize("path, value, words", [
    (("version",), 2, "version"),
    (("version",), True, "version"),
    (("version",), "1", "version"),
    (("version",), DELETE, "lacks version"),
    (("extra",), 1, "unknown keys extra"),
    (("device_type",), -1, "device_type"),
    (("device_type",), 256, "device_type"),
    (("device_type",), 0.0, "device_type"),
    (("device_type_modifier",), None, "device_type_modifier"),
    (("command_queueing",), 1, "command_queueing"),
    (("command_queueing",), "true", "command_queueing"),
    (("bus_type",), 0x80, "bus_type"),
    (("bus_type",), "iScsi", "bus_type"),
    (("vendor_id",), 7, "vendor_id"),
    (("product_id",), "x" * 257, "product_id"),
    (("serial_number",), ["a"], "serial_number"),
    (("serial_number",), "ab\0", "serial_number"),
    (("vendor_id",), "LIO\x01", "vendor_id"),
    (("product_id",), "\ud800", "product_id"),
    (("disk_signature",), "not-a-guid", "disk_signature"),
    (("disk_signature",), "{00000000-0000-0000-0000-000000000000", "disk_signature"),
    (("disk_signature",), 0, "disk_signature"),
    (("device_id_descriptor",), [], "device_id_descriptor"),
    (("device_id_descriptor", "version"), -1, "device_id_descriptor.version"),
    (("device_id_descriptor", "identifiers"), {}, "identifiers"),
    (("device_id_descriptor", "identifiers"), [None], "identifiers[0]"),
    (("device_id_descriptor", "identifiers"), [{}] * 300, "identifiers"),
    (ID0 + ("identifier",), "abc", "identifiers[0].identifier"),
    (ID0 + ("identifier",), "zz", "identifiers[0].identifier"),
    (ID0 + ("identifier",), "00" * 256, "identifiers[0].identifier"),
    (ID0 + ("identifier",), b"\x01", "identifiers[0].identifier"),
    (ID0 + ("code_set",), 16, "identifiers[0].code_set"),
    (ID0 + ("type",), "3", "identifiers[0].type"),
    (ID0 + ("type",), DELETE, "lacks type"),
    (("interconnects",), None, "interconnects"),
    (("interconnects",), [[]], "interconnects[0]"),
    (("interconnects", 0, "port"), "0x12", "interconnects[0].port"),
    (("interconnects", 0, "address"), "00" * 257, "interconnects[0].address"),
    (("interconnects", 0, "address_type"), -5, "interconnects[0].address_type"),
])
def test_from_dict_refuses_bad_fields(path, value, words):
    d = _mutated(path, value, delete=value is DELETE)
    with pytest.raises(VssUserError) as e:
        LunInformation.from_dict(d)
    assert e.value.hresult == HResult.E_INVALIDARG
    assert words in e.value.message


@pytest.mark.parametrize("garbage", [None, [], "", "{}", 1, {}, {"version": 1}, [EXAMPLE], {1: 2}])
def test_from_dict_refuses_garbage(garbage):
    with pytest.raises(VssUserError) as e:
        LunInformation.from_dict(garbage)
    assert e.value.hresult == HResult.E_INVALIDARG


def _garble(value, rng: random.Random):
    choices = [None, True, -1, 2**40, 1.5, "", "zz", "x" * 300, [], {}, [1], {"a": 1}, "00" * 300]
    if isinstance(value, dict):
        if value and rng.random() < 0.7:
            key = rng.choice(list(value))
            return {**value, key: _garble(value[key], rng)}
        return rng.choice(choices)
    if isinstance(value, list):
        if value and rng.random() < 0.7:
            n = rng.randrange(len(value))
            return value[:n] + [_garble(value[n], rng)] + value[n + 1:]
        return rng.choice(choices)
    return rng.choice(choices)


def test_from_dict_never_raises_anything_but_einvalidarg():
    rng = random.Random(1234)
    for _ in range(3000):
        d = _garble(EXAMPLE, rng)
        try:
            record = LunInformation.from_dict(d)
        except VssError as e:
            assert e.hresult == HResult.E_INVALIDARG and isinstance(e, VssUserError)
        else:
            assert LunInformation.from_dict(record.to_dict()) == record


def test_constructor_validates_too():
    with pytest.raises(VssUserError):
        lun(version=2)
    with pytest.raises(VssUserError):
        lun(command_queueing=1)
    with pytest.raises(VssUserError):
        lun(vendor_id=None)
    with pytest.raises(VssUserError):
        lun(serial_number="a\0")
    with pytest.raises(VssUserError):
        lun(device_id_descriptor=[])
    with pytest.raises(VssUserError):
        DeviceIdDescriptor(1, ("not an identifier",))
    with pytest.raises(VssUserError):
        StorageIdentifier(1, 3, "6001405")
    with pytest.raises(VssUserError):
        StorageIdentifier(1, 3, bytes(256))
    with pytest.raises(VssUserError):
        Interconnect(5, port=bytes(257))


def test_records_are_frozen():
    record = lun()
    with pytest.raises(AttributeError):
        record.serial_number = "x"  # type: ignore[misc]


# --- canonical form ------------------------------------------------------------------------------

def test_canonical_strips_inquiry_padding_and_keeps_the_serial():
    raw = lun(vendor_id="LIO-ORG ", product_id="IBLOCK          ", product_revision="4.0 ",
              serial_number=" ab cd ", disk_signature=uuid.uuid4(), bus_type=StorageBusType.VDSBusTypeScsi,
              interconnects=(Interconnect(5, b"\x01", b"\x02"),))
    c = raw.canonical()
    assert (c.vendor_id, c.product_id, c.product_revision) == ("LIO-ORG", "IBLOCK", "4.0")
    assert c.serial_number == " ab cd "  # serial as stored
    assert c.disk_signature == GUID_NULL
    assert c.bus_type == StorageBusType.VDSBusTypeScsi  # free field, left alone
    assert c.interconnects == raw.interconnects  # a provider must not modify them
    assert c.device_id_descriptor == raw.device_id_descriptor  # byte-exact, device order
    assert c.canonical() == c


# --- matching ------------------------------------------------------------------------------------

def test_matches_ignores_bus_type_signature_interconnects_and_padding():
    a = lun()
    b = lun(bus_type=StorageBusType.VDSBusTypeScsi, disk_signature=uuid.uuid4(),
            interconnects=(Interconnect(5, b"\x01", b"\x02"),), vendor_id="LIO-ORG ",
            product_id="IBLOCK          ", product_revision="4.0 ")
    assert a != b
    assert a.matches(b) and b.matches(a)
    assert a.matches(a)


def test_matches_compares_serial_only_when_both_have_one():
    assert lun().matches(lun(serial_number=""))
    assert lun(serial_number="").matches(lun())
    assert lun(serial_number="").matches(lun(serial_number=""))
    assert not lun().matches(lun(serial_number="0" * 32))
    assert not lun().matches(lun(serial_number=SERIAL.upper()))  # as stored: case counts


@pytest.mark.parametrize("changes", [
    dict(vendor_id="LIO-ORH"),
    dict(product_id="FILEIO"),
    dict(product_revision="4.1"),
    dict(device_type=5),
    dict(device_type_modifier=1),
    dict(command_queueing=False),
    dict(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, 3, NAA),))),
    dict(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(2, 1, T10), StorageIdentifier(1, 3, NAA)))),
    dict(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, 3, NAA[:-1] + b"\x96"),
                                                     StorageIdentifier(2, 1, T10)))),
    dict(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(2, 3, NAA), StorageIdentifier(2, 1, T10)))),
    dict(device_id_descriptor=DeviceIdDescriptor(2, (StorageIdentifier(1, 3, NAA), StorageIdentifier(2, 1, T10)))),
    dict(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, 3, NAA), StorageIdentifier(2, 1, T10),
                                                     StorageIdentifier(1, 6, bytes(4))))),
])
def test_matches_fails_on_any_compared_field(changes):
    assert not lun().matches(lun(**changes))
    assert not lun(**changes).matches(lun())


def test_matches_needs_a_unique_designator_on_both_sides():
    no_ids = lun(device_id_descriptor=DeviceIdDescriptor())
    assert not no_ids.matches(no_ids)
    group_only = lun(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, 6, bytes(4)),)))
    assert not group_only.matches(group_only)  # an LU group id is shared, not an identity
    blank = lun(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(2, 1, b"   \0"),)))
    assert not blank.matches(blank)
    for t in (1, 2, 3, 8):
        one = lun(device_id_descriptor=DeviceIdDescriptor(1, (StorageIdentifier(1, t, b"\x01\x02"),)))
        assert one.matches(one)


def test_matches_other_types_is_false():
    assert not lun().matches(lun().to_dict())  # type: ignore[arg-type]
