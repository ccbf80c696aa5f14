"""What a LIO target answers for a LUN, as both sides must agree on it: the array exports
LUNs with these rules, and a host's provider predicts (GetTargetLuns) and recognises them by
the same ones (the kernel's drivers/target/target_core_spc.c, checked against the lab
capture in tests/unit/data/lio-lun/)."""
from __future__ import annotations

from provider.contract.hresult import HResult, vss_error
from provider.contract.vss_types import (
    GUID_NULL,
    DeviceIdDescriptor,
    LunInformation,
    StorageBusType,
    StorageIdentifier,
    StorageIdentifierCodeSet,
    StorageIdentifierType,
)

ISCSI_PORT = 3260  # where the target listens, on every portal
SCSI_TYPE_DISK = 0  # peripheral device type of a direct-access block device

# LIO's defaults for a block (IBLOCK) backstore: wwn/vendor_id, wwn/product_id, wwn/revision
# (IBLOCK_VERSION "4.0", seen in the capture as "4.0 "), and wwn/company_id (IEEE OUI 00-14-05).
LIO_VENDOR = "LIO-ORG"
LIO_PRODUCT = "IBLOCK"
LIO_REVISION = "4.0"
LIO_COMPANY_ID = 0x001405
LIO_DEFAULT_LU_GROUP_ID = 0  # every LIO device joins default_lu_gp (id 0) when configured

_INQUIRY_LENGTHS = {"vendor": 8, "product": 16, "revision": 4}  # INQUIRY field widths
_NAA_VENDOR_NIBBLES = 25  # NAA 6 designator: 4 bits NAA + 24 bits company id + 100 bits vendor part


def _check_ascii(name: str, value: str, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isascii() \
            or not value.isprintable() or value != value.strip():
        raise vss_error(HResult.E_INVALIDARG,
                        f"LIO {name} {str(value)[:80]!r} must be 1..{limit} printable ASCII characters "
                        f"without leading or trailing spaces (LIO strips them)")


def lio_naa_identifier(serial: str, company_id: int = LIO_COMPANY_ID) -> bytes:
    """LIO's NAA IEEE Registered Extended designator (type 3, binary, 16 bytes): NAA 6, the 24-bit
    company id, then the first 25 hex digits of the unit serial (other characters skipped, missing
    digits zero), as spc_gen_naa_6h_vendor_specific builds it."""
    digits = [int(c, 16) for c in serial if c in "0123456789abcdefABCDEF"][:_NAA_VENDOR_NIBBLES]
    nibbles = [0x6] + [(company_id >> s) & 0xF for s in (20, 16, 12, 8, 4, 0)] + digits
    nibbles += [0] * (32 - len(nibbles))
    return bytes(nibbles[i] << 4 | nibbles[i + 1] for i in range(0, 32, 2))


def lio_t10_vendor_identifier(serial: str, vendor: str = LIO_VENDOR, product: str = LIO_PRODUCT) -> bytes:
    """LIO's T10 vendor ID designator (type 1, ASCII): the vendor space-padded to 8 bytes, then
    "<product>:<serial>" and a NUL, e.g. b"LIO-ORG IBLOCK:fa5b...\\0"."""
    return vendor.ljust(8).encode("ascii") + f"{product}:{serial}".encode("ascii") + b"\0"


def predict_lio_lun_info(serial: str, vendor: str = LIO_VENDOR, product: str = LIO_PRODUCT,
                         revision: str = LIO_REVISION, *, company_id: int = LIO_COMPANY_ID,
                         lu_group_id: int | None = LIO_DEFAULT_LU_GROUP_ID) -> LunInformation:
    """GetTargetLuns: the canonical record any host will read for a LIO block LUN with this unit
    serial and these INQUIRY strings, before any host can see it.

    Page 0x83 association-0 designators, in LIO's order (lab capture, Debian 12 kernel):
    NAA (binary, type 3), T10 vendor ID (ASCII, type 1), logical unit group (binary, type 6,
    00 00 + 16-bit group id; None if the device was taken out of every LU group). Bus type iSCSI,
    as on every host that logs in; command queueing on (LIO sets CmdQue in INQUIRY).
    """
    _check_ascii("serial", serial, 229)  # T10 designator length is one byte: 8 + 16 + 1 + 229 + 1
    _check_ascii("vendor", vendor, _INQUIRY_LENGTHS["vendor"])
    _check_ascii("product", product, _INQUIRY_LENGTHS["product"])
    _check_ascii("revision", revision, _INQUIRY_LENGTHS["revision"])
    t10 = lio_t10_vendor_identifier(serial, vendor, product)
    if len(t10) > 255:
        raise vss_error(HResult.E_INVALIDARG, f"LIO serial {serial[:80]!r} is too long for the T10 vendor ID designator")
    if isinstance(company_id, bool) or not isinstance(company_id, int) or not 0 <= company_id <= 0xFFFFFF:
        raise vss_error(HResult.E_INVALIDARG, f"LIO company id {company_id!r} is not 24 bits")
    identifiers = [
        StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary,
                          StorageIdentifierType.VDSStorageIdTypeFCPHName, lio_naa_identifier(serial, company_id)),
        StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetAscii,
                          StorageIdentifierType.VDSStorageIdTypeVendorId, t10),
    ]
    if lu_group_id is not None:
        if isinstance(lu_group_id, bool) or not isinstance(lu_group_id, int) or not 0 <= lu_group_id <= 0xFFFF:
            raise vss_error(HResult.E_INVALIDARG, f"LIO LU group id {lu_group_id!r} is not 16 bits")
        identifiers.append(StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary,
                                             StorageIdentifierType.VDSStorageIdTypeLogicalUnitGroup,
                                             bytes(2) + lu_group_id.to_bytes(2, "big")))
    return LunInformation(
        device_type=SCSI_TYPE_DISK,
        device_type_modifier=0,
        command_queueing=True,
        bus_type=StorageBusType.VDSBusTypeiScsi,
        vendor_id=vendor,
        product_id=product,
        product_revision=revision,
        serial_number=serial,
        disk_signature=GUID_NULL,
        device_id_descriptor=DeviceIdDescriptor(identifiers=tuple(identifiers)),
        interconnects=(),
    ).canonical()
