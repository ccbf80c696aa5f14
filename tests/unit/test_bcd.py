"""Unit tests of provider.requester.bcd: the Backup Components Document, its XML, safe parsing and fingerprint."""
from __future__ import annotations

import copy
import dataclasses
import re
import xml.etree.ElementTree as ET

import pytest

from provider.requester import bcd
from provider.requester.bcd import BackupComponentsDocument, DiskExtent, LunMapping, SnapshotRecord
from provider.contract.hresult import HResult, VssUserError

NS = "{urn:shadowlun:backup-components}"
CORRUPT = HResult.VSS_E_CORRUPT_XML_DOCUMENT
INVALID = HResult.VSS_E_INVALID_XML_DOCUMENT

SET_ID = "3f2a1c9e-5b7d-4e21-9a0c-1d2e3f4a5b6c"
PROVIDER_ID = "b5946137-7b9f-4925-af80-51abd60b20d5"
SNAP_IDS = ("11111111-2222-4333-8444-555555555551",
            "11111111-2222-4333-8444-555555555552",
            "11111111-2222-4333-8444-555555555553")


def lun(serial: str, *, vendor: str = "LIO-ORG", queueing: bool = True) -> dict:
    """A LUN record in the LunInformation.to_dict() shape (bytes as hex), with several identifiers
    and interconnects."""
    return {
        "version": 1, "device_type": 0, "device_type_modifier": 0, "command_queueing": queueing,
        "bus_type": 9, "vendor_id": vendor, "product_id": "IBLOCK", "product_revision": "4.0",
        "serial_number": serial, "disk_signature": "00000000-0000-0000-0000-000000000000",
        "device_id_descriptor": {"version": 1, "identifiers": [
            {"code_set": 1, "type": 3, "identifier": "6001405" + serial[:25]},
            {"code_set": 2, "type": 1, "identifier": f"LIO-ORG IBLOCK:{serial}\0".encode().hex()},
            {"code_set": 3, "type": 8, "identifier": f"iqn.2026-11.lab.shadowlun:{serial[:8]}".encode().hex()},
            {"code_set": 1, "type": 0, "identifier": ""},
        ]},
        "interconnects": [
            {"address_type": 5, "port": "", "address": ""},
            {"address_type": 0, "port": "0a570a0a", "address": b"iqn.2026-11.lab.shadowlun:array".hex()},
        ],
    }


def make_doc(set_id: str = SET_ID, snapshots: int = 3) -> BackupComponentsDocument:
    """Snapshot 0: one LUN; snapshot 1: a volume spanning two LUNs; snapshot 2: empty vendor id, odd name."""
    records = []
    for n in range(snapshots):
        snap_id = SNAP_IDS[n] if n < 3 else f"11111111-2222-4333-8444-{n:012x}"
        luns = [LunMapping(source=lun(f"{n:02x}aa" + "0" * 28), destination=lun(f"{n:02x}bb" + "f" * 28))]
        extents = [DiskExtent(0, 1048576, 8 * 2**30)]
        if n == 1:
            luns.append(LunMapping(source=lun("c0ffee" + "1" * 26, queueing=False),
                                   destination=lun("decade" + "2" * 26, queueing=False)))
            extents = [DiskExtent(0, 1048576, 2**30), DiskExtent(1, 0, 2**62)]
        name = "/mnt/data vol\t2 é" if n == 2 else f"/dev/mapper/vg-lv{n}"
        if n == 2:
            luns = [LunMapping(source=lun("ab" * 16, vendor=""), destination=lun("cd" * 16))]
        records.append(SnapshotRecord(snap_id, name, 0x00010039 + n, tuple(luns), tuple(extents)))
    return BackupComponentsDocument(set_id, 0x39, 0x20039, PROVIDER_ID, "host-a.lab", "2026-11-03T14:05:09Z",
                                    tuple(records))


@pytest.fixture(scope="module")
def xml() -> bytes:
    return bcd.to_xml(make_doc())


def refused(data: bytes) -> HResult:
    with pytest.raises(VssUserError) as info:
        bcd.from_xml(data)
    return info.value.hresult


def edit(xml: bytes, old: str, new: str, count: int = 1) -> bytes:
    """Replace the first `count` occurrences of `old` (which must be there)."""
    text = xml.decode()
    assert old in text, old
    return text.replace(old, new, count).encode()


# --- round trip -----------------------------------------------------------------------------------

def test_round_trip_of_three_snapshots_is_exact(xml):
    doc = make_doc()
    back = bcd.from_xml(xml)
    assert back == doc
    assert len(back.snapshots) == 3 and len(back.snapshots[1].luns) == 2
    assert [e.lun_index for e in back.snapshots[1].extents] == [0, 1]
    assert back.snapshots[1].extents[1].length_bytes == 2**62
    assert back.snapshots[2].volume_name == "/mnt/data vol\t2 é"


def test_lun_records_come_back_as_the_same_json_shape(xml):
    back = bcd.from_xml(xml)
    first = back.snapshots[0].luns[0].source
    assert first == lun("00aa" + "0" * 28)
    assert list(first) == list(lun("x"))   # key order too
    assert first["command_queueing"] is True and back.snapshots[1].luns[1].source["command_queueing"] is False
    assert type(first["bus_type"]) is int and type(first["device_id_descriptor"]["identifiers"]) is list
    assert [i["type"] for i in first["device_id_descriptor"]["identifiers"]] == [3, 1, 8, 0]
    assert first["interconnects"][1] == {"address_type": 0, "port": "0a570a0a",
                                         "address": b"iqn.2026-11.lab.shadowlun:array".hex()}
    assert back.snapshots[2].luns[0].source["vendor_id"] == ""


def test_xml_uses_the_element_names_of_the_spec(xml):
    root = ET.fromstring(xml)
    assert root.tag == f"{NS}BACKUP_COMPONENTS" and root.get("version") == "1"
    (description,) = root
    assert description.tag == f"{NS}SNAPSHOT_SET_DESCRIPTION" and description.get("snapshotSetId") == SET_ID
    snapshots = description.findall(f"{NS}SNAPSHOT_DESCRIPTION")
    assert [s.get("snapshotId") for s in snapshots] == list(SNAP_IDS)
    mappings = snapshots[1].findall(f"{NS}LUN_MAPPING")
    assert len(mappings) == 2
    for side in ("SOURCE_LUN", "DESTINATION_LUN"):
        info = mappings[0].find(f"{NS}{side}/{NS}LUN_INFORMATION")
        assert info is not None and info.get("diskSignature") == "00000000-0000-0000-0000-000000000000"
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<BACKUP_COMPONENTS xmlns=")


def test_utf16_document_is_read_too(xml):
    # Windows' SaveAsXML produces UTF-16; expat honours the BOM and the declaration.
    utf16 = edit(xml, "encoding='utf-8'", "encoding='utf-16'").decode().encode("utf-16")
    assert bcd.from_xml(utf16) == make_doc()


def test_uppercase_guids_are_read_and_normalised(xml):
    back = bcd.from_xml(edit(xml, SET_ID, SET_ID.upper()))
    assert back.set_id == SET_ID and back == make_doc()


def test_comments_are_ignored(xml):
    assert bcd.from_xml(edit(xml, "<LUN_MAPPING>", "<!-- note --><LUN_MAPPING>")) == make_doc()


def test_64_snapshots_are_the_limit_and_fit():
    assert len(bcd.from_xml(bcd.to_xml(make_doc(snapshots=64))).snapshots) == 64


# --- dangerous or unparseable input: CORRUPT ----------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<BACKUP_COMPONENTS xmlns="urn:shadowlun:backup-components" version="1">&lol9;</BACKUP_COMPONENTS>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE BACKUP_COMPONENTS [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<BACKUP_COMPONENTS xmlns="urn:shadowlun:backup-components" version="1">
  <SNAPSHOT_SET_DESCRIPTION snapshotSetId="3f2a1c9e-5b7d-4e21-9a0c-1d2e3f4a5b6c" originatingHost="&xxe;"/>
</BACKUP_COMPONENTS>"""


def test_billion_laughs_is_refused_as_corrupt():
    assert refused(BILLION_LAUGHS) == CORRUPT


def test_external_entity_is_refused_and_nothing_is_read():
    with pytest.raises(VssUserError) as info:
        bcd.from_xml(EXTERNAL_ENTITY)
    assert info.value.hresult == CORRUPT
    assert "root:" not in str(info.value)


def test_any_dtd_is_refused(xml):
    root = "\n<BACKUP_COMPONENTS"
    internal = edit(xml, root, "\n<!DOCTYPE BACKUP_COMPONENTS [<!ELEMENT BACKUP_COMPONENTS ANY>]>" + root)
    external = edit(xml, root, '\n<!DOCTYPE BACKUP_COMPONENTS SYSTEM "http://192.0.2.1/bcd.dtd">' + root)
    assert refused(internal) == CORRUPT
    assert refused(external) == CORRUPT


def test_oversized_input_is_refused_before_parsing(xml, monkeypatch):
    monkeypatch.setattr(bcd, "_parse", lambda data: pytest.fail("parsed an oversized document"))
    padded = xml + b" " * (bcd.MAX_DOCUMENT_BYTES - len(xml) + 1)
    assert refused(padded) == CORRUPT


def test_deep_nesting_aborts_the_parse():
    deep = b'<BACKUP_COMPONENTS xmlns="urn:shadowlun:backup-components" version="1">' + b"<a>" * 5000
    assert refused(deep) == CORRUPT


def test_too_many_elements_abort_the_parse(xml, monkeypatch):
    monkeypatch.setattr(bcd, "_MAX_ELEMENTS", 50)
    assert refused(xml) == CORRUPT


@pytest.mark.parametrize("data", [
    b"",
    b"   \n",
    b"\x00\xff\xfe\x13garbage\x80\x81",
    bytes(range(256)),
    b"PK\x03\x04 this is a zip, not a BCD",
    b"{\"set_id\": \"3f2a1c9e\"}",
    b"<?xml version='1.0' encoding='no-such-codec'?><a/>",
    b"<BACKUP_COMPONENTS><a></b></BACKUP_COMPONENTS>",
    b"<BACKUP_COMPONENTS/><BACKUP_COMPONENTS/>",
], ids=["empty", "blank", "binary", "all-bytes", "zip", "json", "bad-encoding", "mismatched-tag", "two-roots"])
def test_garbage_is_corrupt(data):
    assert refused(data) == CORRUPT


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_document_is_corrupt(xml, fraction):
    assert refused(xml[: int(len(xml) * fraction)]) == CORRUPT


def test_invalid_utf8_is_corrupt(xml):
    assert refused(edit(xml, "host-a.lab", "host-a.lab").replace(b"host-a.lab", b"host-\xff.lab")) == CORRUPT


# --- well-formed but not a valid BCD: INVALID ----------------------------------------------------

def test_65_snapshots_are_invalid():
    doc = make_doc(snapshots=64)
    # 65 cannot be built through the dataclass, so add one in the XML.
    root = ET.fromstring(bcd.to_xml(doc))
    extra = copy.deepcopy(root[0][0])
    extra.set("snapshotId", "11111111-2222-4333-8444-0000000000ff")
    root[0].append(extra)
    data = ET.tostring(root).decode().replace("ns0:", "").replace("xmlns:ns0=", "xmlns=").encode()
    with pytest.raises(VssUserError) as info:
        bcd.from_xml(data)
    assert info.value.hresult == INVALID and "65 SNAPSHOT_DESCRIPTION" in info.value.message


@pytest.mark.parametrize("old, new", [
    (f'snapshotSetId="{SET_ID}"', 'snapshotSetId="not-a-guid"'),
    (f'snapshotSetId="{SET_ID}"', f'snapshotSetId="{{{SET_ID}}}"'),
    (f'snapshotSetId="{SET_ID}"', f'snapshotSetId="{SET_ID}&#10;"'),
    (f'providerId="{PROVIDER_ID}"', f'providerId="{PROVIDER_ID[:-1]}g"'),
    (f'snapshotId="{SNAP_IDS[1]}"', 'snapshotId=""'),
    ('diskSignature="00000000-0000-0000-0000-000000000000"', 'diskSignature="00000000-0000-0000-0000-0000000000"'),
], ids=["word", "braces", "trailing-newline", "non-hex", "empty", "short-disk-signature"])
def test_bad_guid_is_invalid(xml, old, new):
    assert refused(edit(xml, old, new)) == INVALID


@pytest.mark.parametrize("old, new", [
    (f' snapshotSetId="{SET_ID}"', ""),
    (' context="57"', ""),
    (' originatingHost="host-a.lab"', ""),
    (f' snapshotId="{SNAP_IDS[0]}"', ""),
    (' deviceType="0"', ""),
    (' vendorId="LIO-ORG"', ""),
    (' diskSignature="00000000-0000-0000-0000-000000000000"', ""),
    (' codeSet="1"', ""),
    (' lengthBytes="8589934592"', ""),
    (' version="1"', ""),
], ids=["set-id", "context", "host", "snapshot-id", "device-type", "vendor-id", "disk-signature", "code-set",
        "length", "version"])
def test_missing_attribute_is_invalid(xml, old, new):
    assert refused(edit(xml, old, new)) == INVALID


@pytest.mark.parametrize("value", ["0x39", "-1", "1.5", " 57", "57 ", "", "057", "+57", "5_7", "fifty-seven",
                                   "٥٧", str(2**32), "9" * 5000])
def test_non_integer_context_is_invalid(xml, value):
    assert refused(edit(xml, 'context="57"', f'context="{value}"')) == INVALID


@pytest.mark.parametrize("old, new", [
    ('commandQueueing="true"', 'commandQueueing="1"'),
    ('commandQueueing="true"', 'commandQueueing="True"'),
    ('deviceType="0"', 'deviceType="256"'),
    ('lengthBytes="8589934592"', 'lengthBytes="0"'),
    ('offsetBytes="1048576"', f'offsetBytes="{2**63}"'),
    ('lunIndex="1"', 'lunIndex="2"'),
    ('created="2026-11-03T14:05:09Z"', 'created="2026-11-03 14:05:09"'),
    ('created="2026-11-03T14:05:09Z"', 'created="2026-02-30T14:05:09Z"'),
    ('created="2026-11-03T14:05:09Z"', 'created="2026-11-03T14:05:09+02:00"'),
    ('originatingHost="host-a.lab"', 'originatingHost=""'),
    (f'snapshotId="{SNAP_IDS[1]}"', f'snapshotId="{SNAP_IDS[0]}"'),
], ids=["bool-1", "bool-True", "byte-range", "zero-length", "offset-range", "extent-lun-index",
        "time-format", "time-calendar", "time-not-utc", "empty-host", "duplicate-snapshot-id"])
def test_bad_value_is_invalid(xml, old, new):
    assert refused(edit(xml, old, new)) == INVALID


@pytest.mark.parametrize("old, new", [
    ('xmlns="urn:shadowlun:backup-components"', 'xmlns="x-schema:#VssComponentMetadata"'),
    (' xmlns="urn:shadowlun:backup-components"', ""),
    ('version="1">', 'version="2">'),
    ("<LUN_MAPPING>", "<LUN_MAPPING><WRITER_COMPONENTS/>"),
    ("<LUN_MAPPING>", '<LUN_MAPPING><x:EXTRA xmlns:x="urn:other"/>'),
    ("<LUN_MAPPING>", '<LUN_MAPPING mode="x">'),
    ('<SNAPSHOT_DESCRIPTION ', '<SNAPSHOT_DESCRIPTION backupType="full" '),
    ("<LUN_MAPPING>", "<LUN_MAPPING>hello"),
    ("</SOURCE_LUN>", "</SOURCE_LUN>tail"),
    ('address="" />', 'address="">text</INTERCONNECT>'),
    ('address="" />', 'address=""><INTERCONNECT addressType="5" port="" address="" /></INTERCONNECT>'),
], ids=["foreign-namespace", "no-namespace", "version-2", "unknown-element", "foreign-element", "mapping-attribute",
        "unknown-attribute", "text", "tail-text", "leaf-text", "leaf-child"])
def test_unknown_or_misplaced_content_is_invalid(xml, old, new):
    assert refused(edit(xml, old, new)) == INVALID


def test_two_sources_and_no_destination_is_invalid(xml):
    data = edit(edit(xml, "<DESTINATION_LUN>", "<SOURCE_LUN>"), "</DESTINATION_LUN>", "</SOURCE_LUN>")
    assert refused(data) == INVALID


def test_empty_set_and_snapshot_without_luns_are_invalid(xml):
    root_only = (b'<BACKUP_COMPONENTS xmlns="urn:shadowlun:backup-components" version="1">'
                 b"</BACKUP_COMPONENTS>")
    assert refused(root_only) == INVALID
    no_extents = re.sub(rb"\s*<DISK_EXTENT [^>]*/>", b"", xml)
    assert refused(no_extents) == INVALID


def test_too_many_identifiers_are_invalid(xml):
    one = '<STORAGE_IDENTIFIER codeSet="1" type="0" identifier="" />'
    assert refused(edit(xml, one, one * (bcd.MAX_IDENTIFIERS + 1))) == INVALID


def test_errors_say_where(xml):
    with pytest.raises(VssUserError) as info:
        bcd.from_xml(edit(xml, 'busType="9"', 'busType="iscsi"'))
    assert "SNAPSHOT_DESCRIPTION[0]/LUN_MAPPING[0]/SOURCE_LUN/LUN_INFORMATION busType" in info.value.message


def test_not_bytes_is_invalid_argument(xml):
    with pytest.raises(VssUserError) as info:
        bcd.from_xml(xml.decode())
    assert info.value.hresult == HResult.E_INVALIDARG


# --- construction and writing --------------------------------------------------------------------

def test_records_validate_on_construction():
    good = make_doc()
    with pytest.raises(VssUserError) as info:
        dataclasses.replace(good, set_id="nope")
    assert info.value.hresult == HResult.E_INVALIDARG
    for bad in (dict(context=-1), dict(context=2**32), dict(attributes=True), dict(created="yesterday"),
                dict(snapshots=()), dict(snapshots=good.snapshots * 22),
                dict(snapshots=(good.snapshots[0], good.snapshots[0]))):
        with pytest.raises(VssUserError):
            dataclasses.replace(good, **bad)
    record = lun("aa" * 16)
    del record["disk_signature"]
    with pytest.raises(VssUserError):
        LunMapping(source=record, destination=lun("bb" * 16))
    with pytest.raises(VssUserError):
        LunMapping(source=dict(lun("aa" * 16), extra=1), destination=lun("bb" * 16))
    with pytest.raises(VssUserError):
        SnapshotRecord(SNAP_IDS[0], "/dev/sdb\x00", 0, good.snapshots[0].luns, good.snapshots[0].extents)
    with pytest.raises(VssUserError):
        SnapshotRecord(SNAP_IDS[0], "/dev/sdb", 0, good.snapshots[0].luns, (DiskExtent(1, 0, 1),))


def test_construction_copies_and_normalises():
    source = lun("aa" * 16)
    source["disk_signature"] = "ABCDEF00-0000-0000-0000-000000000000"
    mapping = LunMapping(source=source, destination=lun("bb" * 16))
    source["serial_number"] = "changed later"
    assert mapping.source["serial_number"] == "aa" * 16
    assert mapping.source["disk_signature"] == "abcdef00-0000-0000-0000-000000000000"


def test_lun_record_changed_after_construction_is_not_written():
    doc = make_doc()
    doc.snapshots[0].luns[0].destination["bus_type"] = "iscsi"
    with pytest.raises(VssUserError) as info:
        bcd.to_xml(doc)
    assert info.value.hresult == HResult.E_INVALIDARG


def test_utc_timestamp_is_accepted_as_created():
    stamp = bcd.utc_timestamp()
    assert stamp.endswith("Z")
    assert dataclasses.replace(make_doc(), created=stamp).created == stamp


# --- fingerprint ---------------------------------------------------------------------------------

def test_fingerprint_is_stable_across_re_serialisation(xml):
    doc = make_doc()
    once = bcd.from_xml(xml)
    again = bcd.to_xml(once)
    assert again == xml
    assert bcd.fingerprint(doc) == bcd.fingerprint(once) == bcd.fingerprint(bcd.from_xml(again))
    assert re.fullmatch(r"[0-9a-f]{64}", bcd.fingerprint(doc))
    # Layout does not matter: the same content without indentation or in UTF-16 has the same print.
    flat = re.sub(rb">\s+<", b"><", xml)
    assert flat != xml and bcd.fingerprint(bcd.from_xml(flat)) == bcd.fingerprint(doc)


def test_fingerprint_differs_for_different_sets():
    doc = make_doc()
    other_set = make_doc(set_id="3f2a1c9e-5b7d-4e21-9a0c-1d2e3f4a5b6d")
    assert bcd.fingerprint(other_set) != bcd.fingerprint(doc)
    changed = dataclasses.replace(doc, snapshots=doc.snapshots[:2])
    assert bcd.fingerprint(changed) != bcd.fingerprint(doc)
    shadow = copy.deepcopy(doc.snapshots[0].luns[0].destination)
    shadow["device_id_descriptor"]["identifiers"][0]["identifier"] += "00"
    first = dataclasses.replace(doc.snapshots[0], luns=(LunMapping(doc.snapshots[0].luns[0].source, shadow),))
    one_identifier_changed = dataclasses.replace(doc, snapshots=(first,) + doc.snapshots[1:])
    assert bcd.fingerprint(one_identifier_changed) != bcd.fingerprint(doc)
