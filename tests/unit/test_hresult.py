"""Unit tests of provider.contract.hresult: the codes of provider/CONTRACT.md §4.9, the error classes, the wire
form and HTTP statuses."""
from __future__ import annotations

import pickle
import re

import contract_doc as contract
import pytest

from provider.contract.hresult import (
    USER_ERROR_CODES,
    HResult,
    VssError,
    VssRuntimeError,
    VssUserError,
    http_status,
    vss_error,
)

FAILURES = [h for h in HResult if h.is_failure]
RUNTIME_CODES = [h for h in FAILURES if h not in USER_ERROR_CODES]


# --- the codes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("code, value", [
    (HResult.S_OK, 0x00000000),
    (HResult.S_FALSE, 0x00000001),
    (HResult.E_NOTIMPL, 0x80004001),
    (HResult.E_UNEXPECTED, 0x8000FFFF),
    (HResult.E_ACCESSDENIED, 0x80070005),
    (HResult.E_OUTOFMEMORY, 0x8007000E),
    (HResult.E_INVALIDARG, 0x80070057),
    (HResult.VSS_E_BAD_STATE, 0x80042301),
    (HResult.VSS_E_PROVIDER_VETO, 0x80042306),
    (HResult.VSS_E_OBJECT_NOT_FOUND, 0x80042308),
    (HResult.VSS_S_ASYNC_PENDING, 0x00042309),
    (HResult.VSS_S_ASYNC_FINISHED, 0x0004230A),
    (HResult.VSS_S_ASYNC_CANCELLED, 0x0004230B),
    (HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR, 0x8004230F),
    (HResult.VSS_E_HOLD_WRITES_TIMEOUT, 0x80042314),
    (HResult.VSS_E_INSUFFICIENT_STORAGE, 0x8004231F),
    (HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED, 0x00042321),
    (HResult.VSS_E_SOME_SNAPSHOTS_NOT_IMPORTED, 0x80042321),
    (HResult.VSS_E_REMOTE_SERVER_UNSUPPORTED, 0x80042324),
    (HResult.VSS_E_TRANSACTION_THAW_TIMEOUT, 0x80042329),
    (HResult.VSS_E_MISSING_HIDDEN_VOLUME, 0x800423F9),
    (HResult.VSS_E_CANNOT_REVERT_DISKID, 0x800423FE),
    (HResult.VSS_E_RESYNC_IN_PROGRESS, 0x800423FF),
    (HResult.VSS_E_CLUSTER_ERROR, 0x80042400),
])
def test_spot_values(code, value):
    assert code == value
    assert HResult(value) is code


def test_writer_errors_follow_the_sdk_order():
    # The order of the SDK's vss.h (CONTRACT.md §4.9).
    names = ["INCONSISTENTSNAPSHOT", "OUTOFRESOURCES", "TIMEOUT", "RETRYABLE", "NONRETRYABLE", "RECOVERY_FAILED"]
    assert [HResult(0x800423F0 + i).name for i in range(6)] == [f"VSS_E_WRITERERROR_{n}" for n in names]


def test_success_and_error_forms_of_some_snapshots_not_imported_are_distinct():
    s, e = HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED, HResult.VSS_E_SOME_SNAPSHOTS_NOT_IMPORTED
    assert s is not e and s.value | 0x80000000 == e.value
    assert s.is_success and e.is_failure


def test_names_and_values_are_unique():
    # enum.unique forbids aliases; check what it guarantees so that dropping it shows here.
    members = list(HResult.__members__.values())
    assert len(members) == len(HResult) == len({m.value for m in members})
    assert all(name == m.name for name, m in HResult.__members__.items())


def test_every_value_is_an_unsigned_32_bit_code():
    assert all(0 <= h.value <= 0xFFFFFFFF for h in HResult)


def test_hex_is_eight_upper_case_digits():
    assert HResult.VSS_E_OBJECT_NOT_FOUND.hex == "0x80042308"
    assert HResult.VSS_S_ASYNC_FINISHED.hex == "0x0004230A"
    assert HResult.S_OK.hex == "0x00000000"
    assert all(re.fullmatch(r"0x[0-9A-F]{8}", h.hex) for h in HResult)


def test_success_is_the_clear_high_bit():
    successes = {h for h in HResult if h.is_success}
    assert successes == {
        HResult.S_OK, HResult.S_FALSE, HResult.VSS_S_ASYNC_PENDING, HResult.VSS_S_ASYNC_FINISHED,
        HResult.VSS_S_ASYNC_CANCELLED, HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED,
    }
    assert all(h.is_failure != h.is_success for h in HResult)
    assert HResult.E_FAIL.is_failure and not HResult.E_FAIL.is_success


def test_every_code_is_a_row_of_the_contract_table():
    """provider/CONTRACT.md §4.9 lists one row per code, name and value; the enum is exactly that."""
    rows = contract.table(contract.section(r"4\.9 HRESULTs"))
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "a code twice in the table"
    for name, value_cell, *_ in rows:
        assert re.fullmatch(r"0x[0-9A-F]{8}", value_cell), (name, value_cell)
    assert {r[0]: int(r[1], 16) for r in rows} == {h.name: h.value for h in HResult}


# --- the errors --------------------------------------------------------------------------------

def test_user_codes_are_failure_codes():
    assert USER_ERROR_CODES and all(h.is_failure for h in USER_ERROR_CODES)


@pytest.mark.parametrize("code", sorted(USER_ERROR_CODES))
def test_vss_error_gives_a_user_error_for_user_codes(code):
    err = vss_error(code, "m")
    assert type(err) is VssUserError and err.hresult is code and err.message == "m"


@pytest.mark.parametrize("code", [
    HResult.VSS_E_PROVIDER_VETO, HResult.VSS_E_UNEXPECTED, HResult.VSS_E_UNEXPECTED_PROVIDER_ERROR,
    HResult.VSS_E_HOLD_WRITES_TIMEOUT, HResult.E_OUTOFMEMORY, HResult.E_FAIL,
    HResult.VSS_E_MAXIMUM_NUMBER_OF_REMOTE_MACHINES_REACHED,
])
def test_vss_error_gives_a_runtime_error_for_system_failures(code):
    assert type(vss_error(code, "m")) is VssRuntimeError


def test_every_failure_code_has_exactly_one_class():
    for code in FAILURES:
        err = vss_error(code)
        assert isinstance(err, VssError) and isinstance(err, VssUserError) != isinstance(err, VssRuntimeError)


def test_the_base_constructor_picks_the_subclass_too():
    err = VssError(HResult.VSS_E_OBJECT_NOT_FOUND, "x")
    assert type(err) is VssUserError
    with pytest.raises(VssUserError):
        raise err


def test_a_subclass_refuses_a_code_of_the_other_kind():
    with pytest.raises(ValueError):
        VssUserError(HResult.VSS_E_PROVIDER_VETO, "x")
    with pytest.raises(ValueError):
        VssRuntimeError(HResult.E_INVALIDARG, "x")
    assert type(VssUserError(HResult.E_INVALIDARG, "x")) is VssUserError


class NoSuchThing(VssUserError):
    """A typed error as the tests make one: a fixed code, fields of its own."""

    HRESULT = HResult.VSS_E_OBJECT_NOT_FOUND

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(self.HRESULT, f"no {kind} named {name!r}")
        self.kind, self.name = kind, name


def test_a_typed_error_takes_its_fields_and_carries_its_fixed_code():
    err = NoSuchThing("LUN", "db")
    assert (err.kind, err.name, err.hresult) == ("LUN", "db", HResult.VSS_E_OBJECT_NOT_FOUND)
    assert str(err) == "VSS_E_OBJECT_NOT_FOUND (0x80042308): no LUN named 'db'"
    assert err.to_dict()["vss"] == "VSS_E_OBJECT_NOT_FOUND" and isinstance(err, VssUserError)


def test_a_typed_error_with_a_code_of_the_other_kind_is_refused_when_defined():
    with pytest.raises(TypeError, match="VSS_E_PROVIDER_VETO is not a VssUserError code"):
        class Wrong(VssUserError):
            HRESULT = HResult.VSS_E_PROVIDER_VETO


@pytest.mark.parametrize("code", [HResult.S_OK, HResult.S_FALSE, HResult.VSS_S_SOME_SNAPSHOTS_NOT_IMPORTED])
def test_success_codes_are_not_errors(code):
    with pytest.raises(ValueError):
        vss_error(code, "x")


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        vss_error(0x80049999, "x")


def test_an_int_code_becomes_the_member():
    assert vss_error(0x80042308, "x").hresult is HResult.VSS_E_OBJECT_NOT_FOUND


def test_str_names_the_code_and_its_hex():
    err = vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, "no LUN named 'x'")
    assert str(err) == "VSS_E_OBJECT_NOT_FOUND (0x80042308): no LUN named 'x'"
    assert str(vss_error(HResult.VSS_E_PROVIDER_VETO)) == "VSS_E_PROVIDER_VETO (0x80042306)"


def test_error_survives_pickling():
    err = pickle.loads(pickle.dumps(vss_error(HResult.VSS_E_BAD_STATE, "late")))
    assert type(err) is VssUserError and err.hresult is HResult.VSS_E_BAD_STATE and err.message == "late"


# --- the wire form -----------------------------------------------------------------------------

def test_to_dict():
    assert vss_error(HResult.VSS_E_OBJECT_NOT_FOUND, "no LUN named 'x'").to_dict() == {
        "hresult": "0x80042308", "vss": "VSS_E_OBJECT_NOT_FOUND", "message": "no LUN named 'x'",
    }


@pytest.mark.parametrize("code", FAILURES, ids=lambda h: h.name)
def test_to_dict_from_dict_round_trip(code):
    err = vss_error(code, f"because {code.name}")
    back = VssError.from_dict(err.to_dict())
    assert type(back) is type(err) and back.hresult is code and back.message == err.message


def test_from_dict_accepts_lower_case_hex():
    back = VssError.from_dict({"hresult": "0x8004230d", "vss": "VSS_E_OBJECT_ALREADY_EXISTS", "message": ""})
    assert back.hresult is HResult.VSS_E_OBJECT_ALREADY_EXISTS


@pytest.mark.parametrize("garbage", [
    None,
    "VSS_E_OBJECT_NOT_FOUND",
    [],
    {},
    {"hresult": "0x80042308"},
    {"hresult": "0x80049999", "vss": "VSS_E_SOMETHING_NEW", "message": "from a newer peer"},
    {"hresult": "not hex", "vss": "VSS_E_OBJECT_NOT_FOUND", "message": "m"},
    {"hresult": "0x80042308", "vss": "VSS_E_BAD_STATE", "message": "name and code disagree"},
    {"hresult": "0x80042308", "vss": "VSS_E_OBJECT_NOT_FOUND", "message": 42},
    {"hresult": "0x00000000", "vss": "S_OK", "message": "an error that is a success"},
    {"hresult": None, "vss": "VSS_E_OBJECT_NOT_FOUND", "message": "m"},
    {"hresult": True, "vss": "S_FALSE", "message": "m"},
])
def test_from_dict_on_garbage_gives_an_unexpected_runtime_error(garbage):
    err = VssError.from_dict(garbage)
    assert type(err) is VssRuntimeError and err.hresult is HResult.VSS_E_UNEXPECTED
    assert repr(garbage) in err.message


def test_from_dict_keeps_a_bounded_part_of_a_huge_body():
    err = VssError.from_dict({"hresult": "x" * 100_000})
    assert err.hresult is HResult.VSS_E_UNEXPECTED and "xxxx" in err.message and len(err.message) < 2000


# --- HTTP statuses -----------------------------------------------------------------------------

@pytest.mark.parametrize("code, status", [
    (HResult.VSS_E_OBJECT_NOT_FOUND, 404),
    (HResult.E_INVALIDARG, 400),
    (HResult.VSS_E_OBJECT_ALREADY_EXISTS, 409),
    (HResult.VSS_E_BAD_STATE, 409),
    (HResult.VSS_E_SNAPSHOT_SET_IN_PROGRESS, 409),
    (HResult.VSS_E_RESYNC_IN_PROGRESS, 409),
    (HResult.VSS_E_INSUFFICIENT_STORAGE, 507),
    (HResult.E_ACCESSDENIED, 403),
    (HResult.VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED, 422),
    (HResult.VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED, 422),
    (HResult.VSS_E_UNSUPPORTED_CONTEXT, 422),
    (HResult.VSS_E_VOLUME_NOT_SUPPORTED, 422),
    (HResult.VSS_E_INVALID_XML_DOCUMENT, 422),
    (HResult.VSS_E_PROVIDER_VETO, 500),
    (HResult.VSS_E_UNEXPECTED, 500),
    (HResult.E_OUTOFMEMORY, 500),
    (HResult.S_OK, 200),
])
def test_http_status(code, status):
    assert http_status(code) == status


def test_http_status_is_4xx_or_507_for_user_errors_and_500_for_runtime_errors():
    assert all(400 <= http_status(h) < 500 or http_status(h) == 507 for h in USER_ERROR_CODES)
    assert all(http_status(h) == 500 for h in RUNTIME_CODES)
