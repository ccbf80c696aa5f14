"""VDS_LUN_INFORMATION of a Linux SCSI disk (FillInLunInfo) and of a LIO LUN not yet seen (GetTargetLuns).

Import works only if both sides produce the same record (spec §0.8, §4.6): `read_lun_info` reads
what a host sees in sysfs, `predict_lio_lun_info` computes what LIO will answer for a storage
object with a given unit serial, byte for byte as the kernel target builds its VPD pages
(drivers/target/target_core_spc.c, checked against the lab capture in tests/unit/data/lio-lun/).
Both return `LunInformation.canonical()` records.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from provider.contract.hresult import HResult, VssError, vss_error
from provider.contract.lio_target import SCSI_TYPE_DISK
from provider.contract.vss_types import (
    GUID_NULL,
    DeviceIdDescriptor,
    LunInformation,
    StorageBusType,
    StorageIdentifier,
)

_T = TypeVar("_T")


# page 0x83 designator header: byte0 = protocol id (7-4) | code set (3-0); byte1 = PIV (7) |
# association (5-4) | designator type (3-0); byte2 reserved; byte3 = designator length.
_ASSOC_LOGICAL_UNIT = 0


def _veto(message: str) -> VssError:
    return vss_error(HResult.VSS_E_PROVIDER_VETO, message)


# --- pure parsers ------------------------------------------------------------------------------

def _page(data: bytes, code: int) -> bytes:
    """The payload of a VPD page after checking its 4-byte header; trailing bytes are ignored."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _veto(f"VPD page 0x{code:02x}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4:
        raise _veto(f"VPD page 0x{code:02x}: truncated header ({len(data)} of 4 bytes)")
    if data[1] != code:
        raise _veto(f"VPD page 0x{code:02x}: the data is page 0x{data[1]:02x}")
    length = int.from_bytes(data[2:4], "big")
    if len(data) < 4 + length:
        raise _veto(f"VPD page 0x{code:02x}: truncated, header announces {length} bytes after it, "
                    f"{len(data) - 4} present")
    return data[4:4 + length]


def parse_vpd80(data: bytes) -> str:
    """The unit serial number of a page-0x80 response: the bytes after the header, without the NUL
    padding (LIO sends the serial plus one NUL). Anything else, spaces included, is kept: the serial
    is compared as stored. SPC wants printable ASCII; anything else vetoes."""
    payload = _page(data, 0x80).rstrip(b"\0")
    text = payload.decode("ascii", errors="replace")
    if not (text.isascii() and text.isprintable()):
        raise _veto(f"VPD page 0x80: serial number is not printable ASCII: {payload[:64]!r}")
    return text


def parse_vpd83(data: bytes) -> list[StorageIdentifier]:
    """The association-0 (logical unit) designators of a page-0x83 response, in device order.

    Port and target designators (associations 1, 2) describe the path, not the LUN, and differ
    between hosts and portals, so VSS never puts them in a LUN record. Each designator is kept
    byte for byte, padding and NUL terminators included. Any descriptor that overruns the page
    is an error, not a shorter list: a partial identity would fail to match later.
    """
    payload = _page(data, 0x83)
    identifiers: list[StorageIdentifier] = []
    off = 0
    while off < len(payload):
        if len(payload) - off < 4:
            raise _veto(f"VPD page 0x83: truncated designation descriptor header at offset {4 + off}")
        head = payload[off:off + 4]
        length = head[3]
        end = off + 4 + length
        if end > len(payload):
            raise _veto(f"VPD page 0x83: designator at offset {4 + off} needs {length} bytes, "
                        f"{len(payload) - off - 4} left in the page")
        if (head[1] >> 4) & 0x3 == _ASSOC_LOGICAL_UNIT:
            identifiers.append(StorageIdentifier(
                code_set=head[0] & 0x0F, type=head[1] & 0x0F, identifier=payload[off + 4:end]))
        off = end
    return identifiers


# --- the host side: FillInLunInfo --------------------------------------------------------------

def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _veto(f"{path}: missing") from None
    except OSError as e:
        raise _veto(f"{path}: cannot read: {e.strerror or e}") from None


def _read_text(path: Path) -> str:
    """A sysfs attribute without its newline; trailing spaces are data (INQUIRY padding)."""
    raw = _read(path)
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    text = raw.decode("ascii", errors="replace")
    if not (text.isascii() and text.isprintable()):
        raise _veto(f"{path}: not printable ASCII: {raw[:64]!r}")
    return text


def _device_type(block_dir: Path) -> int:
    path = block_dir / "device" / "type"
    text = _read_text(path).strip()
    try:
        return int(text)
    except ValueError:
        raise _veto(f"{path}: not a number: {text[:40]!r}") from None


def is_supported(block_dir: Path) -> bool:
    """Can FillInLunInfo describe this block device: a SCSI device of type 0 (disk)?

    False for anything else (no SCSI device behind it, e.g. dm-*, loop*, nvme*; or a SCSI device
    that is no disk), which FillInLunInfo answers with *pbIsSupported = FALSE, not with an error.
    Whether the disk is one of *our* LUNs is for the provider to decide from the record.
    """
    try:
        return _device_type(Path(block_dir)) == SCSI_TYPE_DISK
    except VssError:
        return False


def _bus_type(block_dir: Path) -> StorageBusType:
    """iSCSI if the SCSI device hangs under an open-iscsi session (…/hostN/sessionM/targetN:0:0/…)."""
    real = Path(os.path.realpath(block_dir / "device"))
    if any(part.startswith("session") for part in real.parts):
        return StorageBusType.VDSBusTypeiScsi
    return StorageBusType.VDSBusTypeScsi


def _command_queueing(block_dir: Path) -> bool:
    """Tagged queuing from `device/queue_type` ("none" / "simple" / "ordered"); the attribute is
    missing on some drivers, and True is then the right default for a LIO LUN (LIO sets CmdQue)."""
    path = block_dir / "device" / "queue_type"
    if not path.exists():
        return True
    value = _read_text(path).strip()
    if value in ("simple", "ordered"):
        return True
    if value == "none":
        return False
    raise _veto(f"{path}: unknown queue type {value[:40]!r}")


def _parse_file(path: Path, parse: Callable[[bytes], _T]) -> _T:
    data = _read(path)
    try:
        return parse(data)
    except VssError as e:
        raise vss_error(e.hresult, f"{path}: {e.message}") from e


def scsi_path(block_dir: Path) -> Path:
    """A dm-multipath map (dm uuid "mpath-…") stands for its paths, which are the same LUN: the
    first of them, so a map's record is its LUN's. Any other block device is itself."""
    try:
        is_map = (block_dir / "dm" / "uuid").read_text().startswith("mpath-")
    except OSError:
        return block_dir
    paths = sorted((p.name for p in (block_dir / "slaves").glob("*")), key=lambda n: (len(n), n))
    return block_dir.parent / paths[0] if is_map and paths else block_dir


def read_lun_info(block_dir: Path) -> LunInformation:
    """FillInLunInfo: the canonical record of the SCSI disk at `block_dir` (/sys/block/sdX, or a
    multipath map /sys/block/dm-N, read through its first path).

    Disk signature is GUID_NULL (providers output GUID_NULL, §4.1). Interconnects are left empty:
    on Windows VSS fills them from the host's port and the provider passes them through; we have no
    equivalent, and they are not compared at import. Missing or malformed attributes raise
    VssRuntimeError VSS_E_PROVIDER_VETO naming the file; a device that is no disk raises
    VssUserError VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER (check `is_supported` first).
    """
    block_dir = scsi_path(Path(block_dir))
    device = block_dir / "device"
    device_type = _device_type(block_dir)
    if device_type != SCSI_TYPE_DISK:
        raise vss_error(HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER,
                        f"{block_dir}: SCSI device type {device_type} is not a disk")
    serial = _parse_file(device / "vpd_pg80", parse_vpd80)
    identifiers = _parse_file(device / "vpd_pg83", parse_vpd83)
    queueing, bus_type = _command_queueing(block_dir), _bus_type(block_dir)
    vendor, model, rev = (_read_text(device / name) for name in ("vendor", "model", "rev"))
    try:
        record = LunInformation(
            device_type=device_type,
            device_type_modifier=0,  # SCSI-2's modifier is obsolete; Linux does not expose it
            command_queueing=queueing,
            bus_type=bus_type,
            vendor_id=vendor,
            product_id=model,
            product_revision=rev,
            serial_number=serial,
            disk_signature=GUID_NULL,
            device_id_descriptor=DeviceIdDescriptor(identifiers=tuple(identifiers)),
            interconnects=(),
        )
    except VssError as e:  # the device reports more than a record may hold: its fault, not the caller's
        raise _veto(f"{block_dir}: {e.message}") from e
    return record.canonical()
