"""The Backup Components Document (BCD): the XML that carries a snapshot set from host A to host B.

Host A's coordinator writes it once the set is created (spec §14.2); the requester moves it; host B's
coordinator reads it to import (§9.3, §14.3). It holds what §9.2 and §13 say only the BCD holds: set
and snapshot ids, provider id, context and attributes, originating host, and per snapshot the
original<->shadow LUN record pairs plus the volume's extents on the shadow LUNs. The full Windows
schema is not public, so this is our own, with the element names observed in vshadow output (§9.2)
so that it reads familiarly::

    <BACKUP_COMPONENTS xmlns="urn:shadowlun:backup-components" version="1">
      <SNAPSHOT_SET_DESCRIPTION snapshotSetId=GUID context=N attributes=N providerId=GUID
                                originatingHost=S created=ISO-8601-UTC>        exactly 1
        <SNAPSHOT_DESCRIPTION snapshotId=GUID volumeName=S attributes=N>        1..64
          <LUN_MAPPING>                                                          1..32
            <SOURCE_LUN>      <LUN_INFORMATION .../> </SOURCE_LUN>           original LUN
            <DESTINATION_LUN> <LUN_INFORMATION .../> </DESTINATION_LUN>      shadow LUN
          </LUN_MAPPING>
          <DISK_EXTENT lunIndex=N offsetBytes=N lengthBytes=N/>                 1..128
        </SNAPSHOT_DESCRIPTION>
      </SNAPSHOT_SET_DESCRIPTION>
    </BACKUP_COMPONENTS>

    <LUN_INFORMATION version deviceType deviceTypeModifier commandQueueing busType vendorId
                     productId productRevision serialNumber diskSignature>
      <DEVICE_ID_DESCRIPTOR version>                                             exactly 1
        <STORAGE_IDENTIFIER codeSet type identifier/>                            0..256
      </DEVICE_ID_DESCRIPTOR>
      <INTERCONNECT addressType port address/>                                   0..256
    </LUN_INFORMATION>

The namespace names the schema and `version` its revision: a reader refuses any other version
rather than guess at fields it does not know. A LUN record is the JSON-able dict of
LunInformation.to_dict(), one XML attribute per key, list items as child elements in order.
Here it is checked for shape, types and ranges only; its meaning (version 1, hex identifiers)
is LunInformation.from_dict's to check. `DiskExtent.lun_index` indexes the snapshot's `luns`;
the extent lies on that mapping's destination (shadow) LUN.

Reading is strict, because the document comes from another host and decides which LUNs host B
unmasks and mounts. Failures are VssUserErrors:
- VSS_E_CORRUPT_XML_DOCUMENT: we could not or would not parse it: larger than 4 MiB (checked
  before parsing), not well-formed, truncated, wrong encoding, or dangerous (any DTD, entity or
  external reference is refused by defusedxml; more than 16 levels or 100,000 elements aborts
  the parse).
- VSS_E_INVALID_XML_DOCUMENT: well-formed XML that is not a valid BCD: wrong root, namespace or
  version, an unknown or missing element or attribute, text where none belongs, a bad GUID,
  integer, boolean or timestamp, or more snapshots (64, §16.1), LUNs, identifiers,
  interconnects or extents than the limits below.
The spec gives no meaning to either code (§3.9); Microsoft's requester docs use INVALID for
"incorrectly formed or not matching the schema". We keep INVALID for content and CORRUPT for
input the parser could not or would not finish, so a caller can tell a damaged or hostile file
from one written by a different tool. Unknown elements and attributes are refused, not ignored:
the document must not be edited between hosts (§9.3), and a field we silently dropped might be
one that LUN matching needs. Comments and processing instructions are ignored.

The dataclasses validate on construction (E_INVALIDARG), so `to_xml` writes only documents that
`from_xml` reads back equal.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from provider.contract.hresult import HResult, VssUserError

NAMESPACE = "urn:shadowlun:backup-components"
SCHEMA_VERSION = 1

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_SNAPSHOTS = 64               # volumes per snapshot set (spec §16.1)
MAX_LUNS_PER_SNAPSHOT = 32       # LUNs one volume may span
MAX_EXTENTS_PER_SNAPSHOT = 128
MAX_IDENTIFIERS = 256            # per LUN, as provider.contract.vss_types allows: every record it
MAX_INTERCONNECTS = 256          # writes must fit in a BCD
MAX_STRING = 4096                # characters in any string (PATH_MAX for volume names)
_MAX_DEPTH = 16                  # the schema needs 8
_MAX_ELEMENTS = 100_000          # real elements average far over 40 bytes: 4 MiB holds fewer

_ULONG_MAX = 0xFFFF_FFFF
_LONGLONG_MAX = 2**63 - 1

# All three are used with fullmatch (a "$" would let a trailing newline through).
GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,19}")   # no sign, spaces, "_" or leading zeros
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|\+00:00)")
# Characters XML 1.0 can carry; anything else (NUL, most C0 controls, lone surrogates) cannot.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Bad(Exception):
    """Content that breaks the schema; becomes E_INVALIDARG or VSS_E_INVALID_XML_DOCUMENT."""


class _TooBig(Exception):
    """The parse was aborted by a structural limit; becomes VSS_E_CORRUPT_XML_DOCUMENT."""


# --- value kinds: Python check, XML text -> value, value -> XML text ----------------------------

@dataclass(frozen=True)
class _Kind:
    check: Callable[[Any, str], Any]   # validate a Python value, return it normalised
    parse: Callable[[str, str], Any]   # XML attribute text -> Python value (syntax; check follows)
    format: Callable[[Any], str]


def _check_uint(limit: int, minimum: int = 0) -> Callable[[Any, str], int]:
    def check(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad(f"{where}: {value!r} is not an integer")
        if not minimum <= value <= limit:
            raise _Bad(f"{where}: {value} is outside {minimum}..{limit}")
        return int(value)
    return check


def _parse_uint(text: str, where: str) -> int:
    if not _UINT_RE.fullmatch(text):
        raise _Bad(f"{where}: {text!r} is not an unsigned decimal integer")
    return int(text)


def _uint(limit: int, minimum: int = 0) -> _Kind:
    return _Kind(_check_uint(limit, minimum), _parse_uint, str)


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{where}: {value!r} is not a boolean")
    return value


def _parse_bool(text: str, where: str) -> bool:
    if text not in ("true", "false"):
        raise _Bad(f"{where}: {text!r} is not 'true' or 'false'")
    return text == "true"


def _check_str(value: Any, where: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{where}: {value!r} is not a string")
    if len(value) > MAX_STRING:
        raise _Bad(f"{where}: longer than {MAX_STRING} characters")
    if nonempty and not value:
        raise _Bad(f"{where}: empty")
    bad = _NOT_XML_CHAR.search(value)
    if bad:
        raise _Bad(f"{where}: character {bad.group()!r} cannot be carried in XML")
    return value


def _check_guid(value: Any, where: str) -> str:
    """Canonical form: lower case 8-4-4-4-12, no braces (what str(uuid.UUID) gives)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not GUID_RE.fullmatch(value):
        raise _Bad(f"{where}: {value!r} is not a GUID (8-4-4-4-12 hex digits)")
    return value.lower()


def _parse_guid(text: str, where: str) -> str:
    return _check_guid(text, where)


def _check_time(value: Any, where: str) -> str:
    """ISO 8601 in UTC, kept verbatim so it round-trips; the calendar must be real."""
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise _Bad(f"{where}: {value!r} is not an ISO 8601 UTC time (YYYY-MM-DDTHH:MM:SS[.ffffff]Z)")
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(f"{where}: {value!r} is not a valid date and time") from None
    return value


def _ident(text: str, where: str) -> str:
    return text


_GUID = _Kind(_check_guid, _parse_guid, str)
_BOOL = _Kind(_check_bool, _parse_bool, lambda v: "true" if v else "false")
_BYTE = _uint(0xFF)
_ULONG = _uint(_ULONG_MAX)
_OFFSET = _uint(_LONGLONG_MAX)
_LENGTH = _uint(_LONGLONG_MAX, minimum=1)
_STR = _Kind(_check_str, _ident, str)
_NAME = _Kind(lambda v, w: _check_str(v, w, nonempty=True), _ident, str)
_TIME = _Kind(_check_time, _ident, str)

# (Python name, XML attribute, kind) for each record; the order is the order written.
_Fields = tuple[tuple[str, str, _Kind], ...]
_SET_FIELDS: _Fields = (
    ("set_id", "snapshotSetId", _GUID),
    ("context", "context", _ULONG),
    ("attributes", "attributes", _ULONG),
    ("provider_id", "providerId", _GUID),
    ("originating_host", "originatingHost", _NAME),
    ("created", "created", _TIME),
)
_SNAPSHOT_FIELDS: _Fields = (
    ("snapshot_id", "snapshotId", _GUID),
    ("volume_name", "volumeName", _NAME),
    ("attributes", "attributes", _ULONG),
)
_EXTENT_FIELDS: _Fields = (
    ("lun_index", "lunIndex", _uint(MAX_LUNS_PER_SNAPSHOT - 1)),
    ("offset_bytes", "offsetBytes", _OFFSET),
    ("length_bytes", "lengthBytes", _LENGTH),
)
_LUN_FIELDS: _Fields = (   # VDS_LUN_INFORMATION (spec §4.1)
    ("version", "version", _ULONG),
    ("device_type", "deviceType", _BYTE),
    ("device_type_modifier", "deviceTypeModifier", _BYTE),
    ("command_queueing", "commandQueueing", _BOOL),
    ("bus_type", "busType", _ULONG),
    ("vendor_id", "vendorId", _STR),   # "" for a NULL string, as LunInformation has it
    ("product_id", "productId", _STR),
    ("product_revision", "productRevision", _STR),
    ("serial_number", "serialNumber", _STR),
    ("disk_signature", "diskSignature", _GUID),
)
_DESCRIPTOR_FIELDS: _Fields = (("version", "version", _ULONG),)   # VDS_STORAGE_DEVICE_ID_DESCRIPTOR
_IDENTIFIER_FIELDS: _Fields = (   # VDS_STORAGE_IDENTIFIER; unknown code sets / types are tolerated (§4.3)
    ("code_set", "codeSet", _ULONG),
    ("type", "type", _ULONG),
    ("identifier", "identifier", _STR),
)
_INTERCONNECT_FIELDS: _Fields = (   # VDS_INTERCONNECT
    ("address_type", "addressType", _ULONG),
    ("port", "port", _STR),
    ("address", "address", _STR),
)


def _check_record(value: Any, fields: _Fields, where: str, extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check a dict with exactly these keys (plus `extra`, checked by the caller)."""
    if not isinstance(value, dict):
        raise _Bad(f"{where}: {type(value).__name__} is not a dict")
    wanted = {name for name, _, _ in fields} | extra
    if set(value) != wanted:
        missing, unknown = sorted(wanted - set(value)), sorted(set(value) - wanted, key=str)
        raise _Bad(f"{where}: missing keys {missing}, unknown keys {unknown}")
    return {name: kind.check(value[name], f"{where}.{name}") for name, _, kind in fields}


def _check_list(value: Any, limit: int, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"{where}: {type(value).__name__} is not a list")
    if len(value) > limit:
        raise _Bad(f"{where}: {len(value)} entries, at most {limit}")
    return list(value)


def _check_lun(value: Any, where: str) -> dict[str, Any]:
    """A LunInformation.to_dict() record, normalised into a fresh copy of plain dicts and lists."""
    lun = _check_record(value, _LUN_FIELDS, where, extra=frozenset({"device_id_descriptor", "interconnects"}))
    d_where = f"{where}.device_id_descriptor"
    raw = value["device_id_descriptor"]
    descriptor = _check_record(raw, _DESCRIPTOR_FIELDS, d_where, extra=frozenset({"identifiers"}))
    descriptor["identifiers"] = [
        _check_record(i, _IDENTIFIER_FIELDS, f"{d_where}.identifiers[{n}]")
        for n, i in enumerate(_check_list(raw["identifiers"], MAX_IDENTIFIERS, f"{d_where}.identifiers"))
    ]
    lun["device_id_descriptor"] = descriptor
    lun["interconnects"] = [
        _check_record(i, _INTERCONNECT_FIELDS, f"{where}.interconnects[{n}]")
        for n, i in enumerate(_check_list(value["interconnects"], MAX_INTERCONNECTS, f"{where}.interconnects"))
    ]
    return lun


def _validate(obj: Any, fields: _Fields, where: str) -> None:
    """Check and normalise a frozen dataclass's fields in place; raise E_INVALIDARG."""
    try:
        for name, _, kind in fields:
            object.__setattr__(obj, name, kind.check(getattr(obj, name), f"{where}{name}"))
    except _Bad as e:
        raise VssUserError(HResult.E_INVALIDARG, str(e)) from None


def _tuple_of(obj: Any, name: str, cls: type, lo: int, hi: int, where: str) -> tuple[Any, ...]:
    value = getattr(obj, name)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, cls) for v in value):
        raise VssUserError(HResult.E_INVALIDARG, f"{where}{name}: not a tuple of {cls.__name__}")
    if not lo <= len(value) <= hi:
        raise VssUserError(HResult.E_INVALIDARG, f"{where}{name}: {len(value)} entries, expected {lo}..{hi}")
    object.__setattr__(obj, name, tuple(value))
    return tuple(value)


# --- the records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LunMapping:
    """One original LUN and the shadow LUN made from it, as LunInformation.to_dict() records.

    The dicts are copied and checked on construction; treat them as read-only.
    """

    source: dict[str, Any]
    destination: dict[str, Any]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "source", _check_lun(self.source, "source"))
            object.__setattr__(self, "destination", _check_lun(self.destination, "destination"))
        except _Bad as e:
            raise VssUserError(HResult.E_INVALIDARG, str(e)) from None


@dataclass(frozen=True)
class DiskExtent:
    """Where (part of) the volume lies on the shadow LUN of `luns[lun_index]`, in bytes."""

    lun_index: int
    offset_bytes: int
    length_bytes: int

    def __post_init__(self) -> None:
        _validate(self, _EXTENT_FIELDS, "extent ")


@dataclass(frozen=True)
class SnapshotRecord:
    """One shadow copy: the original volume, the LUNs it lies on, and where it lies on the shadows."""

    snapshot_id: str
    volume_name: str          # the original volume: a mount point or a /dev path
    attributes: int           # _VSS_VOLUME_SNAPSHOT_ATTRIBUTES bit pattern (spec §3.2)
    luns: tuple[LunMapping, ...]
    extents: tuple[DiskExtent, ...]

    def __post_init__(self) -> None:
        _validate(self, _SNAPSHOT_FIELDS, "snapshot ")
        luns = _tuple_of(self, "luns", LunMapping, 1, MAX_LUNS_PER_SNAPSHOT, "snapshot ")
        extents = _tuple_of(self, "extents", DiskExtent, 1, MAX_EXTENTS_PER_SNAPSHOT, "snapshot ")
        for n, extent in enumerate(extents):
            if extent.lun_index >= len(luns):
                raise VssUserError(HResult.E_INVALIDARG,
                                   f"snapshot {self.snapshot_id}: extent {n} names LUN {extent.lun_index}, "
                                   f"the snapshot has {len(luns)}")


@dataclass(frozen=True)
class BackupComponentsDocument:
    """A snapshot set as carried from the creating host to the importing host (spec §9.2)."""

    set_id: str
    context: int              # the context the set was created in (spec §3.3), as a 32-bit pattern
    attributes: int           # _VSS_VOLUME_SNAPSHOT_ATTRIBUTES common to the set
    provider_id: str
    originating_host: str
    created: str              # ISO 8601 UTC, e.g. utc_timestamp()
    snapshots: tuple[SnapshotRecord, ...]

    def __post_init__(self) -> None:
        _validate(self, _SET_FIELDS, "set ")
        snapshots = _tuple_of(self, "snapshots", SnapshotRecord, 1, MAX_SNAPSHOTS, "set ")
        seen: set[str] = set()
        for snapshot in snapshots:
            if snapshot.snapshot_id in seen:
                raise VssUserError(HResult.E_INVALIDARG, f"snapshot id {snapshot.snapshot_id} appears twice")
            seen.add(snapshot.snapshot_id)


def utc_timestamp(when: datetime.datetime | None = None) -> str:
    """`created` for a document made now (or at `when`): '2026-11-03T14:05:09Z'."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    if when.utcoffset() is None:
        raise ValueError("a naive datetime has no time zone")
    text = when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


# --- writing -------------------------------------------------------------------------------------

def _put(parent: ET.Element, tag: str, fields: _Fields, values: Any) -> ET.Element:
    get = values.get if isinstance(values, dict) else lambda n: getattr(values, n)
    attrib = {attr: kind.format(get(name)) for name, attr, kind in fields}
    return ET.SubElement(parent, tag, attrib)


def _put_lun(parent: ET.Element, lun: dict[str, Any]) -> None:
    info = _put(parent, "LUN_INFORMATION", _LUN_FIELDS, lun)
    descriptor = _put(info, "DEVICE_ID_DESCRIPTOR", _DESCRIPTOR_FIELDS, lun["device_id_descriptor"])
    for identifier in lun["device_id_descriptor"]["identifiers"]:
        _put(descriptor, "STORAGE_IDENTIFIER", _IDENTIFIER_FIELDS, identifier)
    for interconnect in lun["interconnects"]:
        _put(info, "INTERCONNECT", _INTERCONNECT_FIELDS, interconnect)


def to_xml(doc: BackupComponentsDocument) -> bytes:
    """The document as UTF-8 XML, indented for people who open it.

    The LUN dicts are checked again (they are mutable); a changed one raises E_INVALIDARG.
    """
    if not isinstance(doc, BackupComponentsDocument):
        raise VssUserError(HResult.E_INVALIDARG, f"{type(doc).__name__} is not a BackupComponentsDocument")
    # Built with plain tags and a literal xmlns: ElementTree's default_namespace option refuses
    # unqualified attributes, and an "ns0:" prefix on every tag would be noise.
    root = ET.Element("BACKUP_COMPONENTS", {"xmlns": NAMESPACE, "version": str(SCHEMA_VERSION)})
    description = _put(root, "SNAPSHOT_SET_DESCRIPTION", _SET_FIELDS, doc)
    for snapshot in doc.snapshots:
        element = _put(description, "SNAPSHOT_DESCRIPTION", _SNAPSHOT_FIELDS, snapshot)
        for mapping in snapshot.luns:
            lun_mapping = ET.SubElement(element, "LUN_MAPPING")
            for tag, record in (("SOURCE_LUN", mapping.source), ("DESTINATION_LUN", mapping.destination)):
                try:
                    checked = _check_lun(record, tag.lower())
                except _Bad as e:
                    raise VssUserError(HResult.E_INVALIDARG,
                                       f"LUN record changed after construction: {e}") from None
                _put_lun(ET.SubElement(lun_mapping, tag), checked)
        for extent in snapshot.extents:
            _put(element, "DISK_EXTENT", _EXTENT_FIELDS, extent)
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# --- reading -------------------------------------------------------------------------------------

class _LimitedTreeBuilder:
    """An ElementTree target that aborts the parse past the depth and element limits."""

    def __init__(self) -> None:
        self._builder = ET.TreeBuilder()
        self._depth = 0
        self._count = 0

    def start(self, tag: str, attrib: dict[str, str]) -> ET.Element:
        self._depth += 1
        self._count += 1
        if self._depth > _MAX_DEPTH:
            raise _TooBig(f"elements nested deeper than {_MAX_DEPTH} levels")
        if self._count > _MAX_ELEMENTS:
            raise _TooBig(f"more than {_MAX_ELEMENTS} elements")
        return self._builder.start(tag, attrib)

    def end(self, tag: str) -> ET.Element:
        self._depth -= 1
        return self._builder.end(tag)

    def data(self, data: str) -> None:
        self._builder.data(data)

    def close(self) -> ET.Element:
        return self._builder.close()


def _parse(data: bytes) -> ET.Element:
    """Parse with every DTD, entity and external reference refused; CORRUPT on any failure."""
    parser = DefusedXMLParser(target=_LimitedTreeBuilder(), forbid_dtd=True, forbid_entities=True,
                              forbid_external=True)
    try:
        parser.feed(data)
        return parser.close()
    except DefusedXmlException as e:
        raise VssUserError(HResult.VSS_E_CORRUPT_XML_DOCUMENT, f"refused: {type(e).__name__} "
                           "(DTDs, entities and external references are not allowed)") from None
    except _TooBig as e:
        raise VssUserError(HResult.VSS_E_CORRUPT_XML_DOCUMENT, f"refused: {e}") from None
    except (ET.ParseError, ValueError, LookupError) as e:   # LookupError: unknown declared encoding
        raise VssUserError(HResult.VSS_E_CORRUPT_XML_DOCUMENT, f"not well-formed XML: {e}") from None


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _local(tag: str) -> str:
    return tag[len(NAMESPACE) + 2:] if tag.startswith(f"{{{NAMESPACE}}}") else tag


def _element(element: ET.Element, where: str, fields: _Fields,
             children: dict[str, tuple[int, int]]) -> tuple[dict[str, Any], dict[str, list[ET.Element]]]:
    """An element's attributes as Python values and its children by name.

    Refuses unknown, missing or malformed attributes, unknown children, children out of their
    count range, and text anywhere (indentation whitespace is fine).
    """
    unknown = sorted(set(element.attrib) - {attr for _, attr, _ in fields})
    if unknown:
        raise _Bad(f"{where}: unknown attribute {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, attr, kind in fields:
        text = element.get(attr)
        if text is None:
            raise _Bad(f"{where}: missing attribute {attr!r}")
        at = f"{where} {attr}"
        values[name] = kind.check(kind.parse(text, at), at)
    if element.text and element.text.strip():
        raise _Bad(f"{where}: unexpected text {element.text.strip()[:40]!r}")
    found: dict[str, list[ET.Element]] = {name: [] for name in children}
    for child in element:
        name = _local(child.tag)
        if child.tag != _q(name) or name not in children:
            raise _Bad(f"{where}: unknown element {child.tag!r}")
        if child.tail and child.tail.strip():
            raise _Bad(f"{where}: unexpected text {child.tail.strip()[:40]!r}")
        found[name].append(child)
    for name, (lo, hi) in children.items():
        if not lo <= len(found[name]) <= hi:
            wanted = f"exactly {lo}" if lo == hi else f"{lo}..{hi}"
            raise _Bad(f"{where}: {len(found[name])} {name} elements, expected {wanted}")
    return values, found


def _build(cls: type, where: str, **values: Any) -> Any:
    """Construct a record; its own cross-field checks fail as content errors located at `where`."""
    try:
        return cls(**values)
    except VssUserError as e:
        if e.hresult != HResult.E_INVALIDARG:
            raise
        raise _Bad(f"{where}: {e.message}") from None


def _read_lun(holder: ET.Element, where: str) -> dict[str, Any]:
    _, found = _element(holder, where, (), {"LUN_INFORMATION": (1, 1)})
    where = f"{where}/LUN_INFORMATION"
    lun, parts = _element(found["LUN_INFORMATION"][0], where, _LUN_FIELDS,
                          {"DEVICE_ID_DESCRIPTOR": (1, 1), "INTERCONNECT": (0, MAX_INTERCONNECTS)})
    d_where = f"{where}/DEVICE_ID_DESCRIPTOR"
    descriptor, ids = _element(parts["DEVICE_ID_DESCRIPTOR"][0], d_where, _DESCRIPTOR_FIELDS,
                               {"STORAGE_IDENTIFIER": (0, MAX_IDENTIFIERS)})
    descriptor["identifiers"] = [_element(e, f"{d_where}/STORAGE_IDENTIFIER[{n}]", _IDENTIFIER_FIELDS, {})[0]
                                 for n, e in enumerate(ids["STORAGE_IDENTIFIER"])]
    lun["device_id_descriptor"] = descriptor
    lun["interconnects"] = [_element(e, f"{where}/INTERCONNECT[{n}]", _INTERCONNECT_FIELDS, {})[0]
                            for n, e in enumerate(parts["INTERCONNECT"])]
    return lun


def _read_snapshot(element: ET.Element, where: str) -> SnapshotRecord:
    values, parts = _element(element, where, _SNAPSHOT_FIELDS,
                             {"LUN_MAPPING": (1, MAX_LUNS_PER_SNAPSHOT),
                              "DISK_EXTENT": (1, MAX_EXTENTS_PER_SNAPSHOT)})
    luns = []
    for n, mapping in enumerate(parts["LUN_MAPPING"]):
        m_where = f"{where}/LUN_MAPPING[{n}]"
        _, sides = _element(mapping, m_where, (), {"SOURCE_LUN": (1, 1), "DESTINATION_LUN": (1, 1)})
        source = _read_lun(sides["SOURCE_LUN"][0], f"{m_where}/SOURCE_LUN")
        destination = _read_lun(sides["DESTINATION_LUN"][0], f"{m_where}/DESTINATION_LUN")
        luns.append(_build(LunMapping, m_where, source=source, destination=destination))
    extents = tuple(_build(DiskExtent, f"{where}/DISK_EXTENT[{n}]",
                           **_element(e, f"{where}/DISK_EXTENT[{n}]", _EXTENT_FIELDS, {})[0])
                    for n, e in enumerate(parts["DISK_EXTENT"]))
    return _build(SnapshotRecord, where, **values, luns=tuple(luns), extents=extents)


def _read(root: ET.Element) -> BackupComponentsDocument:
    if root.tag != _q("BACKUP_COMPONENTS"):
        raise _Bad(f"root element is {root.tag!r}, not BACKUP_COMPONENTS in namespace {NAMESPACE}")
    version = root.get("version")   # first, so a newer document is named as such, not as unknown elements
    if version != str(SCHEMA_VERSION):
        raise _Bad(f"BACKUP_COMPONENTS version {version!r}: only version {SCHEMA_VERSION} is understood")
    _, found = _element(root, "BACKUP_COMPONENTS", (("version", "version", _ULONG),),
                        {"SNAPSHOT_SET_DESCRIPTION": (1, 1)})
    where = "SNAPSHOT_SET_DESCRIPTION"
    values, parts = _element(found[where][0], where, _SET_FIELDS, {"SNAPSHOT_DESCRIPTION": (1, MAX_SNAPSHOTS)})
    snapshots = tuple(_read_snapshot(e, f"{where}/SNAPSHOT_DESCRIPTION[{n}]")
                      for n, e in enumerate(parts["SNAPSHOT_DESCRIPTION"]))
    return _build(BackupComponentsDocument, where, **values, snapshots=snapshots)


def from_xml(data: bytes) -> BackupComponentsDocument:
    """Read a document written by `to_xml` on any host; refuse anything else (see the module doc)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VssUserError(HResult.E_INVALIDARG, f"the document must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise VssUserError(HResult.VSS_E_CORRUPT_XML_DOCUMENT,
                           f"refused: {len(data)} bytes, more than the {MAX_DOCUMENT_BYTES} a BCD may have")
    if not data.strip():
        raise VssUserError(HResult.VSS_E_CORRUPT_XML_DOCUMENT, "not well-formed XML: empty document")
    root = _parse(data)
    try:
        return _read(root)
    except _Bad as e:
        raise VssUserError(HResult.VSS_E_INVALID_XML_DOCUMENT, str(e)) from None


# --- identity ------------------------------------------------------------------------------------

def fingerprint(doc: BackupComponentsDocument) -> str:
    """SHA-256 (hex) of the document's content in canonical JSON.

    Independent of XML layout, so a re-serialised or re-indented copy has the same fingerprint;
    any changed field gives another. The coordinator records it to refuse a second import of the
    same document (spec §9.1: a set imports once); it should refuse a known set_id as well, which
    also catches an edited copy.
    """
    content = {"schema": NAMESPACE, "version": SCHEMA_VERSION, "document": dataclasses.asdict(doc)}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
