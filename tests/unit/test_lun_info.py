"""Unit tests of provider.hardware.lun_info on the lab capture of a LIO LUN (tests/unit/data/lio-lun/):
the VPD parsers, FillInLunInfo from a fake sysfs tree, and the GetTargetLuns prediction, which must
equal what the host reads."""
from __future__ import annotations

import json
import random
from pathlib import Path

import contract_doc as contract
import pytest

from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError
from provider.contract.lio_target import LIO_COMPANY_ID, LIO_PRODUCT, LIO_REVISION, LIO_VENDOR, lio_naa_identifier, lio_t10_vendor_identifier, predict_lio_lun_info
from provider.hardware.lun_info import is_supported, parse_vpd80, parse_vpd83, read_lun_info
from provider.contract.vss_types import (
    GUID_NULL,
    LunInformation,
    StorageBusType,
    StorageIdentifier,
    StorageIdentifierCodeSet,
    StorageIdentifierType,
)
from targets.lio import naa_wwid

DATA = Path(__file__).parent / "data" / "lio-lun"
PG80 = (DATA / "vpd_pg80.bin").read_bytes()
PG83 = (DATA / "vpd_pg83.bin").read_bytes()
SYSFS = json.loads((DATA / "sysfs.json").read_text())
SERIAL = SYSFS["serial_chosen_by_array"]
WWID = SYSFS["device/wwid"]

NAA_ID = StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary,
                           StorageIdentifierType.VDSStorageIdTypeFCPHName, bytes.fromhex(WWID.removeprefix("naa.")))
T10_ID = StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetAscii,
                           StorageIdentifierType.VDSStorageIdTypeVendorId,
                           f"LIO-ORG IBLOCK:{SERIAL}".encode() + b"\0")
LU_GROUP_ID = StorageIdentifier(StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary,
                                StorageIdentifierType.VDSStorageIdTypeLogicalUnitGroup, bytes(4))


def veto(call, *args) -> VssRuntimeError:
    with pytest.raises(VssRuntimeError) as e:
        call(*args)
    assert e.value.hresult == HResult.VSS_E_PROVIDER_VETO
    return e.value


# --- page 0x80 -------------------------------------------------------------------------------

def test_parse_vpd80_of_the_capture():
    assert parse_vpd80(PG80) == SERIAL


def test_parse_vpd80_keeps_spaces_drops_nul_padding_ignores_trailing_bytes():
    assert parse_vpd80(b"\x00\x80\x00\x08 ab c\0\0\0") == " ab c"
    assert parse_vpd80(b"\x00\x80\x00\x00") == ""
    assert parse_vpd80(b"\x00\x80\x00\x02ab" + b"garbage") == "ab"


@pytest.mark.parametrize("data, words", [
    (b"", "truncated header"),
    (b"\x00\x80\x00", "truncated header"),
    (PG80[:-1], "truncated"),
    (b"\x00\x83\x00\x02ab", "page 0x83"),
    (b"\x00\x80\x00\x02\xff\xfe", "not printable ASCII"),
    (b"\x00\x80\x00\x03a\0b", "not printable ASCII"),
    (b"\x00\x80\x00\x02a\n", "not printable ASCII"),
    ("not bytes", "expected bytes"),
])
def test_parse_vpd80_refuses(data, words):
    assert words in veto(parse_vpd80, data).message


# --- page 0x83 -------------------------------------------------------------------------------

def test_parse_vpd83_of_the_capture_keeps_the_logical_unit_designators_in_order():
    # The capture holds 7 designators: NAA, T10 vendor id, LU group (association 0); relative
    # target port, target port group, SCSI name of the port (association 1); SCSI name of the
    # target (association 2). Only the first three describe the LUN.
    assert parse_vpd83(PG83) == [NAA_ID, T10_ID, LU_GROUP_ID]


def test_parse_vpd83_reads_the_header_fields_as_spc_defines_them():
    page = bytes([
        0x51, 0x83, 0x00, 0x02, 0xAA, 0xBB,  # protocol 5, PIV set, association 0, NAA: kept
        0x02, 0x18, 0x00, 0x01, 0x01,        # association 1: dropped
        0x03, 0x28, 0x00, 0x01, 0x02,        # association 2: dropped
        0x03, 0x38, 0x00, 0x01, 0x03,        # association 3 (reserved): dropped
        0x0F, 0x0F, 0x00, 0x00,              # association 0, unknown code set/type, empty: kept
    ])
    ids = parse_vpd83(b"\x00\x83" + len(page).to_bytes(2, "big") + page)
    assert ids == [StorageIdentifier(1, 3, b"\xaa\xbb"), StorageIdentifier(15, 15, b"")]
    assert ids[1].type == 15 and not isinstance(ids[1].type, StorageIdentifierType)


def test_parse_vpd83_empty_page_and_trailing_bytes():
    assert parse_vpd83(b"\x00\x83\x00\x00") == []
    assert parse_vpd83(PG83 + b"\xff" * 9) == [NAA_ID, T10_ID, LU_GROUP_ID]


@pytest.mark.parametrize("cut", range(0, len(PG83)))
def test_parse_vpd83_refuses_every_truncation_of_the_capture(cut):
    veto(parse_vpd83, PG83[:cut])


@pytest.mark.parametrize("data, words", [
    (b"\x00\x83\x00\x06\x01\x03\x00\x10\x60\x01", "needs 16 bytes"),  # descriptor overruns the page
    (b"\x00\x83\x00\x02\x01\x03", "truncated designation descriptor header"),
    (b"\x00\x83\x00\x08\x01\x03\x00\x02\xaa\xbb\x01\x03", "truncated designation descriptor header"),
    (b"\x00\x83\x00\x0a\x01\x03\x00\x02\xaa\xbb\x01\x03\x00\x05", "needs 5 bytes, 0 left"),
    (b"\x00\x80\x00\x00", "page 0x80"),
    (PG80, "page 0x80"),
    (b"\x00\x83\xff\xff" + PG83[4:], "truncated"),
])
def test_parse_vpd83_refuses_malformed_pages(data, words):
    assert words in veto(parse_vpd83, data).message


def _random_page(rng: random.Random) -> bytes:
    """A page 0x83 of random descriptors, sometimes with one length or the page length wrong."""
    body = b""
    for _ in range(rng.randrange(0, 6)):
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
        body += bytes([rng.randrange(256), rng.randrange(256), 0, len(value)]) + value
    if body and rng.random() < 0.3:
        at = rng.randrange(len(body))
        body = body[:at] + bytes([rng.randrange(256)]) + body[at + 1:]
    length = len(body) if rng.random() < 0.8 else rng.randrange(0, 0x10000)
    page = b"\x00\x83" + length.to_bytes(2, "big") + body
    return page[:rng.randrange(len(page) + 1)] if rng.random() < 0.1 else page


def test_parse_vpd83_on_random_pages_returns_a_list_or_vetoes():
    rng = random.Random(83)
    outcomes = {"ids": 0, "veto": 0}
    for _ in range(3000):
        data = _random_page(rng) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        try:
            ids = parse_vpd83(data)
        except VssError as e:
            assert e.hresult == HResult.VSS_E_PROVIDER_VETO
            outcomes["veto"] += 1
        else:
            assert all(isinstance(i, StorageIdentifier) for i in ids)
            outcomes["ids"] += bool(ids)
    assert min(outcomes.values()) > 100, outcomes  # both paths were exercised


# --- a fake sysfs ----------------------------------------------------------------------------

def make_sysfs(root: Path, *, iscsi: bool = True, skip: tuple[str, ...] = (), **override: bytes | str) -> Path:
    """/sys/block/sdb of the captured LUN: device/ is a symlink into the SCSI device directory,
    which is under hostN/sessionM/ for an open-iscsi disk."""
    parent = "host3/session1/target3:0:0" if iscsi else "pci0000:00/0000:00:10.0/host2/target2:0:0"
    device = root / "sys/devices/platform" / parent / "3:0:0:0"
    device.mkdir(parents=True)
    files: dict[str, bytes | str] = {
        "type": SYSFS["device/type"] + "\n",
        "vendor": SYSFS["device/vendor"] + "\n",
        "model": SYSFS["device/model"] + "\n",
        "rev": SYSFS["device/rev"] + "\n",
        "wwid": SYSFS["device/wwid"] + "\n",
        "scsi_level": SYSFS["device/scsi_level"] + "\n",
        "queue_type": "simple\n",
        "vpd_pg80": PG80,
        "vpd_pg83": PG83,
    }
    files.update(override)
    for name, content in files.items():
        if name in skip:
            continue
        (device / name).write_bytes(content.encode() if isinstance(content, str) else content)
    block = root / "sys/block/sdb"
    block.mkdir(parents=True)
    (block / "device").symlink_to(device)
    (block / "size").write_text(SYSFS["size"] + "\n")
    return block


def test_read_lun_info_equals_the_prediction(tmp_path):
    block = make_sysfs(tmp_path)
    seen = read_lun_info(block)
    predicted = predict_lio_lun_info(SERIAL)
    assert seen.canonical() == predicted.canonical()
    assert seen == predicted  # both are already canonical
    assert seen.to_dict() == predicted.to_dict()
    assert seen.matches(predicted) and predicted.matches(seen)
    assert seen.bus_type is StorageBusType.VDSBusTypeiScsi
    assert seen.disk_signature == GUID_NULL
    assert seen.interconnects == ()
    assert (seen.vendor_id, seen.product_id, seen.product_revision) == (LIO_VENDOR, LIO_PRODUCT, LIO_REVISION)
    assert seen.serial_number == SERIAL
    assert seen.command_queueing is True and seen.device_type == 0 and seen.device_type_modifier == 0


def test_the_naa_designator_is_the_wwid_the_host_and_the_agent_report(tmp_path):
    naa = read_lun_info(make_sysfs(tmp_path)).identifiers[0]
    assert naa.type == StorageIdentifierType.VDSStorageIdTypeFCPHName
    assert naa.code_set == StorageIdentifierCodeSet.VDSStorageIdCodeSetBinary
    assert naa.identifier.hex() == WWID.removeprefix("naa.")
    assert naa.identifier.hex() == SYSFS["agent_wwid"].removeprefix("naa.")
    assert f"disk/by-id/wwn-0x{naa.identifier.hex()}" in SYSFS["by_id_links"]
    assert f"disk/by-id/scsi-3{naa.identifier.hex()}" in SYSFS["by_id_links"]


def test_lio_revision_default_is_the_captured_one():
    assert SYSFS["device/rev"].rstrip() == LIO_REVISION
    assert SYSFS["device/vendor"].rstrip() == LIO_VENDOR
    assert SYSFS["device/model"].rstrip() == LIO_PRODUCT


def test_a_disk_outside_an_iscsi_session_is_scsi_and_still_matches(tmp_path):
    seen = read_lun_info(make_sysfs(tmp_path, iscsi=False))
    assert seen.bus_type is StorageBusType.VDSBusTypeScsi
    predicted = predict_lio_lun_info(SERIAL)
    assert seen != predicted  # bus type differs...
    assert seen.matches(predicted)  # ...and is ignored at import


@pytest.mark.parametrize("queue_type, expected", [("simple\n", True), ("ordered\n", True), ("none\n", False)])
def test_command_queueing_from_queue_type(tmp_path, queue_type, expected):
    assert read_lun_info(make_sysfs(tmp_path, queue_type=queue_type)).command_queueing is expected


def test_command_queueing_defaults_to_true_without_queue_type(tmp_path):
    assert read_lun_info(make_sysfs(tmp_path, skip=("queue_type",))).command_queueing is True


def test_unknown_queue_type_vetoes(tmp_path):
    assert "queue_type" in veto(read_lun_info, make_sysfs(tmp_path, queue_type="weird\n")).message


@pytest.mark.parametrize("name", ["type", "vendor", "model", "rev", "vpd_pg80", "vpd_pg83"])
def test_missing_attribute_vetoes_naming_the_file(tmp_path, name):
    block = make_sysfs(tmp_path, skip=(name,))
    message = veto(read_lun_info, block).message
    assert f"sdb/device/{name}" in message and "missing" in message


@pytest.mark.parametrize("name, content, words", [
    ("vpd_pg80", PG80[:10], "truncated"),
    ("vpd_pg83", PG83[:50], "truncated"),
    ("vpd_pg83", PG80, "page 0x80"),
    ("vendor", b"LIO\xffORG\n", "not printable ASCII"),
    ("model", b"IBLOCK\0\n", "not printable ASCII"),
    ("type", b"disk\n", "not a number"),
])
def test_malformed_attribute_vetoes_naming_the_file(tmp_path, name, content, words):
    message = veto(read_lun_info, make_sysfs(tmp_path, **{name: content})).message
    assert f"sdb/device/{name}" in message and words in message


def test_a_device_reporting_more_than_a_record_holds_vetoes(tmp_path):
    serial = "s" * 300
    pg80 = b"\x00\x80" + len(serial).to_bytes(2, "big") + serial.encode()
    message = veto(read_lun_info, make_sysfs(tmp_path, vpd_pg80=pg80)).message
    assert "sdb" in message and "serial_number" in message


def test_no_device_dir_vetoes(tmp_path):
    (tmp_path / "sdz").mkdir()
    assert "missing" in veto(read_lun_info, tmp_path / "sdz").message


def test_is_supported(tmp_path):
    assert is_supported(make_sysfs(tmp_path / "disk"))
    assert not is_supported(make_sysfs(tmp_path / "cdrom", type="5\n"))
    assert not is_supported(make_sysfs(tmp_path / "garbage", type="x\n"))
    assert not is_supported(make_sysfs(tmp_path / "nvme", skip=("type",)))
    (tmp_path / "dm-0").mkdir()
    assert not is_supported(tmp_path / "dm-0")


def test_read_lun_info_of_a_non_disk_is_unsupported_not_a_veto(tmp_path):
    with pytest.raises(VssUserError) as e:
        read_lun_info(make_sysfs(tmp_path, type="5\n"))
    assert e.value.hresult == HResult.VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER


# --- the prediction (GetTargetLuns) ------------------------------------------------------------

def test_prediction_holds_the_three_designators_lio_emits():
    predicted = predict_lio_lun_info(SERIAL)
    assert list(predicted.identifiers) == [NAA_ID, T10_ID, LU_GROUP_ID]
    assert predicted.has_unique_identifier()
    assert predicted.bus_type is StorageBusType.VDSBusTypeiScsi
    assert LunInformation.from_dict(json.loads(json.dumps(predicted.to_dict()))) == predicted


@pytest.mark.parametrize("serial", [
    SERIAL,
    "FA5BADB6F150497381897819548168A9",          # hex_to_bin accepts upper case
    "0b1e2f3a-4c5d-6e7f-8091-a2b3c4d5e6f7",      # rtslib's default UUID serial: dashes skipped
    "abc",                                       # short: missing digits are zero
    "xyz-no-hex",                                # no hex digit at all
])
def test_naa_is_company_id_and_the_first_25_hex_digits_of_the_serial(serial):
    digits = "".join(c for c in serial.lower() if c in "0123456789abcdef")[:25]
    assert naa_wwid(serial) == "naa.6001405" + digits.ljust(25, "0") == "naa." + lio_naa_identifier(serial).hex()
    assert len(lio_naa_identifier(serial)) == 16


def test_naa_layout():
    assert lio_naa_identifier("abc").hex() == "6001405abc" + "0" * 22
    assert lio_naa_identifier("1" * 40, company_id=0xABCDEF).hex() == "6abcdef" + "1" * 25


def test_t10_vendor_identifier_pads_the_vendor_to_eight():
    assert lio_t10_vendor_identifier("s1", "V", "P") == b"V       P:s1\0"
    assert lio_t10_vendor_identifier(SERIAL) == T10_ID.identifier


def test_prediction_options():
    p = predict_lio_lun_info("abc", "ACME", "THIN", "1.2", company_id=0x123456, lu_group_id=None)
    assert (p.vendor_id, p.product_id, p.product_revision, p.serial_number) == ("ACME", "THIN", "1.2", "abc")
    assert [i.identifier for i in p.identifiers] == [
        bytes.fromhex("6123456abc" + "0" * 22), b"ACME    THIN:abc\0"]
    assert predict_lio_lun_info("abc", lu_group_id=0x1234).identifiers[2].identifier == b"\x00\x00\x12\x34"


def test_predictions_of_different_serials_do_not_match():
    a = predict_lio_lun_info(SERIAL)
    assert not a.matches(predict_lio_lun_info("0" + SERIAL[1:]))


@pytest.mark.parametrize("kwargs", [
    dict(serial=""),
    dict(serial=" x"),
    dict(serial="x "),
    dict(serial="sé"),
    dict(serial="a\0b"),
    dict(serial="a" * 230),
    dict(serial=123),
    dict(serial="s", vendor="TOO-LONG-"),
    dict(serial="s", product="P" * 17),
    dict(serial="s", revision="12345"),
    dict(serial="s", company_id=1 << 24),
    dict(serial="s", lu_group_id=-1),
])
def test_prediction_refuses_what_lio_cannot_export(kwargs):
    with pytest.raises(VssUserError) as e:
        predict_lio_lun_info(**kwargs)
    assert e.value.hresult == HResult.E_INVALIDARG


# --- provider/CONTRACT.md §5.6: what a shadowlun LUN reports ------------------------------------

def test_the_contract_example_is_the_prediction():
    rows = dict(contract.table(contract.section(r"5\.6 ").split("A worked example", 1)[1]))
    serial = rows["serial"].strip("`")
    record = predict_lio_lun_info(serial)
    assert [(i.code_set, i.type, i.identifier.hex()) for i in record.identifiers] == [
        (1, 3, rows["NAA designator (hex)"].strip("`")),
        (2, 1, rows["T10 vendor ID designator (hex)"].strip("`")),
        (1, 6, rows["logical unit group designator (hex)"].strip("`")),
    ]
    assert naa_wwid(serial) == rows["WWID"].strip("`")


def test_the_contract_names_lios_inquiry_strings_and_company_id():
    body = contract.section(r"5\.6 ")
    assert f"`{LIO_VENDOR}` / `{LIO_PRODUCT}` / `{LIO_REVISION}`" in body
    assert f"company id 0x{LIO_COMPANY_ID:06X}" in body
    assert f"`naa.6{LIO_COMPANY_ID:06x}`" in body
