"""Unit tests of provider.contract.state_machine against spec §6 and §7.

The expectations are transcribed here from the spec (§7.2 matrix, §7.1 next states) together with the
decisions documented in the module, and are not read from the module's table, so that a typo there
fails a test.
"""
from __future__ import annotations

import pickle
import threading
import uuid
from dataclasses import dataclass

import contract_doc as contract
import pytest

from provider.contract.hresult import HResult, VssError, VssRuntimeError, VssUserError
from provider.contract.methods import ProviderMethod
from provider.contract.state_machine import (
    MACHINE_METHODS,
    TRANSITIONS,
    OutOfSequenceError,
    ProviderState,
    ProviderStateMachine,
    SetMatch,
    as_set_id,
    format_matrix,
)

M = ProviderMethod
St = ProviderState
VETO = HResult.VSS_E_PROVIDER_VETO
NOT_FOUND = HResult.VSS_E_OBJECT_NOT_FOUND

# --- §7.2 l.703-714, cell for cell (annotations such as "(samples)" dropped) ---------------------

COLUMNS = ["IDLE", "PREPARING", "PREPARED", "PRECOMMITTED", "COMMITTED", "CREATED", "ABORTED"]
MATRIX_ROWS = {
    "begin_prepare_snapshot/same": "✓ ✓ ↺ ↺ ↺ ✓ ✓",
    "begin_prepare_snapshot/new":  "✓ ↺ ↺ ↺ ↺ ✓ ✓",
    "end_prepare_snapshots":       "✗ ✓ ✗ ✗ ✗ ✗ ✗",
    "pre_commit_snapshots":        "✗ ✗ ✓ ✗ ✗ ✗ ✗",
    "commit_snapshots":            "✗ ✗ ✗ ✓ ✗ ✗ ✗",
    "post_commit_snapshots":       "✗ ✗ ✗ ✗ ✓ ✗ ✗",
    "get_target_luns":             "✗ ✗ ✗ ✗ ✓ ✓ ✗",
    "pre_final_commit_snapshots":  "✗ ✗ ✗ ✗ ✗ ✓ ✗",
    "post_final_commit_snapshots": "✗ ✗ ✗ ✗ ✗ ✓ ✗",
    "abort_snapshots":             "✓ ✓ ✓ ✓ ✓ ✓ ✓",
    "non_creation":                "✓ ✓ ✓ ✓ ✓ ✓ ✓",
}
MATRIX = {(row, col): glyph for row, cells in MATRIX_ROWS.items()
          for col, glyph in zip(COLUMNS, cells.split(), strict=True)}

# §7.1 l.683-693: the state after a legal call succeeds.
NEXT = {
    "begin_prepare_snapshot": "PREPARING",
    "end_prepare_snapshots": "PREPARED",
    "pre_commit_snapshots": "PRECOMMITTED",
    "commit_snapshots": "COMMITTED",
    "post_commit_snapshots": "CREATED",
    "pre_final_commit_snapshots": "CREATED",
    "post_final_commit_snapshots": "CREATED",   # decision: not "(or IDLE)"
}
STEP_METHODS = ["end_prepare_snapshots", "pre_commit_snapshots", "commit_snapshots", "post_commit_snapshots"]
FINAL_METHODS = ["pre_final_commit_snapshots", "post_final_commit_snapshots"]
SET_METHODS = ["begin_prepare_snapshot", *STEP_METHODS, *FINAL_METHODS, "abort_snapshots"]
NON_CREATION = ["are_luns_supported", "fill_in_lun_info", "locate_luns", "on_lun_empty",
                "on_lun_state_change", "resync_luns", "get_provider_capabilities"]   # §7.1 l.699
IN_PROGRESS = {"PREPARING", "PREPARED", "PRECOMMITTED", "COMMITTED"}


# --- driving a machine into a state through real calls --------------------------------------------

@dataclass(frozen=True)
class Start:
    """A situation to start from: a state, and how it was reached."""

    state: str
    handed_out: bool = False    # CREATED after GetTargetLuns
    fresh: bool = False         # IDLE of a new instance (else IDLE after OnUnload of a set)

    @property
    def id(self) -> str:
        return self.state + ("+handed-out" if self.handed_out else "") + ("+fresh" if self.fresh else "")


STARTS = [Start("IDLE", fresh=True), Start("IDLE"), Start("PREPARING"), Start("PREPARED"),
          Start("PRECOMMITTED"), Start("COMMITTED"), Start("CREATED"), Start("CREATED", handed_out=True),
          Start("ABORTED")]

CHAIN = [("begin_prepare_snapshot", "PREPARING"), ("end_prepare_snapshots", "PREPARED"),
         ("pre_commit_snapshots", "PRECOMMITTED"), ("commit_snapshots", "COMMITTED"),
         ("post_commit_snapshots", "CREATED")]


def ok(machine: ProviderStateMachine, method: str, set_id: uuid.UUID | None = None) -> St:
    machine.begin(M(method), set_id)
    return machine.succeeded(M(method))


def drive(start: Start) -> tuple[ProviderStateMachine, uuid.UUID]:
    """A machine in `start`, and the id of the set it holds (or, in IDLE, held before the unload)."""
    machine, held = ProviderStateMachine(), uuid.uuid4()
    if start.fresh:
        return machine, held
    if start.state in ("IDLE", "ABORTED"):
        ok(machine, "begin_prepare_snapshot", held)
        ok(machine, "on_unload" if start.state == "IDLE" else "abort_snapshots",
           None if start.state == "IDLE" else held)
    else:
        for method, state in CHAIN:
            assert ok(machine, method, held) is St[state]
            if state == start.state:
                break
    if start.handed_out:
        assert ok(machine, "get_target_luns") is St.CREATED
        assert machine.handed_out
    assert machine.state is St[start.state]
    return machine, held


@pytest.mark.parametrize("start", STARTS, ids=lambda s: s.id)
def test_drive_reaches_each_start(start: Start) -> None:
    machine, held = drive(start)
    assert machine.set_id == (None if start.state == "IDLE" else held)


# --- the expected answer of every call in every state, from the spec ----------------------------

@dataclass(frozen=True)
class Expect:
    error: HResult | None       # raised by begin()
    glyph: str | None           # allowed: the verdict's glyph
    after_begin: str            # state right after begin()
    discard: bool               # the held set must be deleted
    on_success: str             # state after succeeded()
    on_failure: str             # state after failed()
    set_after: str              # "held", "call" or "none": the set id held afterwards


def expect(start: Start, method: str, rel: str) -> Expect:
    s = start.state
    held_after = "none" if s == "IDLE" else "held"

    def abort_effect(error: HResult | None, glyph: str | None) -> Expect:
        # §7.2 l.701 "✗ ⇒ VETO + abort"; the abort's effect per state: l.713 and §7.1 l.694-695.
        if s in ("IDLE", "ABORTED") or (s == "CREATED" and start.handed_out):
            return Expect(error, glyph and "✓ (no-op)", s, False, s, s, held_after)
        return Expect(error, glyph, "ABORTED", True, "ABORTED", "ABORTED", "held")

    if method in NON_CREATION:
        return Expect(None, "✓", s, False, s, s, held_after)
    if method == "on_unload":        # §7.1 l.698, §2.2 l.132
        return Expect(None, "✓", "IDLE", s in IN_PROGRESS, "IDLE", "IDLE", "none")
    if method == "abort_snapshots":
        if rel == "new" or s == "IDLE":  # not the held set: idempotent S_OK (§7.1 l.694 "always")
            return Expect(None, "✓ (no-op)", s, False, s, s, held_after)
        return abort_effect(None, MATRIX[("abort_snapshots", s)])
    if method == "begin_prepare_snapshot":
        glyph = MATRIX[(f"begin_prepare_snapshot/{rel}", s)]
        return Expect(None, glyph, "PREPARING", glyph == "↺", "PREPARING", "ABORTED", "call")
    glyph = MATRIX[(method, s)]
    if method == "get_target_luns":
        if glyph == "✓":
            return Expect(None, "✓", s, False, s, s, "held")
        return abort_effect(VETO, None)
    if method in FINAL_METHODS and s == "IDLE":   # §7.2 l.716-717: lenient while no set is active
        return Expect(None, "✓ (no-op)", s, False, s, s, "none")
    if rel == "new" or s == "IDLE":               # §16.3 #3, §5.2.3 l.522, §7.1 l.697
        return Expect(NOT_FOUND, None, s, False, s, s, held_after)
    if glyph == "✓":
        return Expect(None, "✓", s, False, NEXT[method], "CREATED" if method in FINAL_METHODS else "ABORTED",
                      "held")
    return abort_effect(VETO, None)


CASES = [(start, method, rel)
         for start in STARTS
         for method in [*SET_METHODS, "get_target_luns", *NON_CREATION, "on_unload"]
         for rel in (("same", "new") if method in SET_METHODS else ("none",))]


def _run(start: Start, method: str, rel: str) -> tuple[ProviderStateMachine, uuid.UUID, uuid.UUID | None,
                                                       object]:
    machine, held = drive(start)
    call_id = {"same": held, "new": uuid.uuid4(), "none": None}[rel]
    try:
        result: object = machine.begin(M(method), call_id)
    except VssError as err:
        result = err
    return machine, held, call_id, result


def _set_id(which: str, held: uuid.UUID, call_id: uuid.UUID | None) -> uuid.UUID | None:
    return {"held": held, "call": call_id, "none": None}[which]


@pytest.mark.parametrize("start, method, rel", CASES, ids=[f"{s.id}-{m}-{r}" for s, m, r in CASES])
def test_every_call_in_every_state(start: Start, method: str, rel: str) -> None:
    want = expect(start, method, rel)
    machine, held, call_id, result = _run(start, method, rel)
    if want.error is not None:
        assert isinstance(result, VssError), result
        assert result.hresult is want.error
        if want.error is VETO:
            assert isinstance(result, OutOfSequenceError) and isinstance(result, VssRuntimeError)
            assert result.discard == (held if want.discard else None)
        else:
            assert isinstance(result, VssUserError)
        assert machine.state is St[want.after_begin]
        assert machine.set_id == _set_id(want.set_after, held, call_id)
        return
    assert not isinstance(result, VssError), result
    assert result.verdict.value == want.glyph
    assert result.discard == (held if want.discard else None)
    assert machine.state is St[want.after_begin]
    assert machine.succeeded(M(method)) is St[want.on_success]
    assert machine.set_id == _set_id(want.set_after, held, call_id)
    if method == "get_target_luns":
        assert machine.handed_out


@pytest.mark.parametrize("start, method, rel", [c for c in CASES if expect(*c).error is None],
                         ids=lambda v: getattr(v, "id", str(v)))
def test_failure_of_every_allowed_call(start: Start, method: str, rel: str) -> None:
    want = expect(start, method, rel)
    machine, held, call_id, result = _run(start, method, rel)
    assert not isinstance(result, VssError)
    assert machine.failed(M(method)) is St[want.on_failure]
    expected_set = _set_id(want.set_after, held, call_id) if want.on_failure != "IDLE" else None
    assert machine.set_id == expected_set
    # The machine stays usable: a new set can always start after a failure (§7.1 l.683, l.685).
    assert ok(machine, "begin_prepare_snapshot", uuid.uuid4()) is St.PREPARING


# --- the module's table against the transcription ---------------------------------------------------

def test_table_covers_every_reachable_key_once() -> None:
    keys = set(TRANSITIONS)
    assert len(keys) == len(TRANSITIONS) == 167
    for state in St:
        for method in MACHINE_METHODS:
            matches = {m for (s, mm, m) in keys if s is state and mm is method}
            if not method.takes_set_id:
                assert matches == {SetMatch.NONE}
            elif state is St.IDLE:
                assert matches == {SetMatch.OTHER}     # IDLE holds no set
            else:
                assert matches == {SetMatch.CURRENT, SetMatch.OTHER}


@pytest.mark.parametrize("row", list(MATRIX_ROWS))
def test_table_glyphs_equal_the_matrix(row: str) -> None:
    """The current-set cells of TRANSITIONS carry the §7.2 glyph, except the documented deviations."""
    name, _, which = row.partition("/")
    methods = [M(m) for m in NON_CREATION] if name == "non_creation" else [M(name)]
    for method in methods:
        for col in COLUMNS:
            state = St[col]
            if not method.takes_set_id:
                match = SetMatch.NONE
            elif which == "new" or state is St.IDLE:
                match = SetMatch.OTHER
            else:
                match = SetMatch.CURRENT
            rule = TRANSITIONS[(state, method, match)]
            glyph = MATRIX[(row, col)]
            if state is St.IDLE and name in STEP_METHODS:
                assert rule.verdict.value == "✗ (unknown set)"   # IDLE knows no set: OBJECT_NOT_FOUND
            elif state is St.IDLE and name in FINAL_METHODS:
                assert rule.verdict.value == "✓ (no-op)"         # l.716-717 lenience
            else:
                assert rule.verdict.value[0] == glyph, (row, col, rule)


def test_table_errors_are_the_spec_codes() -> None:
    errors = {rule.verdict.error for rule in TRANSITIONS.values()}
    assert errors == {None, VETO, NOT_FOUND}   # never VSS_E_BAD_STATE on the provider side
    for rule in TRANSITIONS.values():
        assert (rule.verdict.error is None) == rule.verdict.allowed


def test_format_matrix_prints_every_method() -> None:
    text = format_matrix()
    assert text.splitlines()[0] == "| Call \\ State | " + " | ".join(COLUMNS) + " |"
    for method in MACHINE_METHODS:
        assert f"| {method.spec_name}" in text


# --- provider/CONTRACT.md §7.2 is the code's table ----------------------------------

def _contract_cell(state: St, rule) -> str:
    """A cell as CONTRACT.md §7.2 writes it: the verdict, "→ NEXT" when the state changes, and the
    rule once the held set is handed out."""
    cell = rule.verdict.value + (f" → {rule.next.name}" if rule.next is not state else "")
    if rule.handed_out is not None:
        h = rule.handed_out
        cell += "; handed out: " + h.verdict.value + (f" → {h.next.name}" if h.next is not state else "")
    return cell


def test_contract_matrix_is_the_code() -> None:
    rows = contract.table(contract.section(r"7\.2 "))
    matches = {" (held set)": SetMatch.CURRENT, " (other set)": SetMatch.OTHER}
    seen = set()
    for label, *cells in rows:
        assert len(cells) == len(COLUMNS), label
        match = next((m for suffix, m in matches.items() if label.endswith(suffix)), SetMatch.NONE)
        names = label.removesuffix(" (held set)").removesuffix(" (other set)").split(", ")
        for name in names:
            method = next(m for m in M if m.spec_name == name)
            for col, cell in zip(COLUMNS, cells, strict=True):
                key = (St[col], method, match)
                if key not in TRANSITIONS:
                    assert cell == "–", (label, col)
                    continue
                assert cell == _contract_cell(St[col], TRANSITIONS[key]), (label, col)
                seen.add(key)
    assert seen == set(TRANSITIONS)   # every cell of the code is in the contract


# --- §6: the creation sequence -----------------------------------------------------------------

def test_happy_path_of_section_6() -> None:
    machine, s = ProviderStateMachine(), uuid.uuid4()
    assert ok(machine, "are_luns_supported") is St.IDLE                   # 1b, per volume
    assert ok(machine, "are_luns_supported") is St.IDLE
    for _volume in range(2):                                              # 5, per volume
        call = machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s)
        assert call.discard is None
        assert machine.succeeded(M.BEGIN_PREPARE_SNAPSHOT) is St.PREPARING
    assert ok(machine, "end_prepare_snapshots", s) is St.PREPARED          # 6
    assert ok(machine, "pre_commit_snapshots", s) is St.PRECOMMITTED      # 9
    assert ok(machine, "commit_snapshots", s) is St.COMMITTED             # 11
    assert ok(machine, "post_commit_snapshots", s) is St.CREATED          # 14
    assert ok(machine, "get_target_luns") is St.CREATED                   # 16, per volume
    assert ok(machine, "get_target_luns") is St.CREATED
    assert ok(machine, "pre_final_commit_snapshots", s) is St.CREATED     # 17
    assert ok(machine, "on_lun_state_change") is St.CREATED               # 17a
    assert ok(machine, "post_final_commit_snapshots", s) is St.CREATED    # 18
    assert ok(machine, "locate_luns") is St.CREATED                       # 20, auto-import
    assert ok(machine, "fill_in_lun_info") is St.CREATED
    assert machine.set_id == s and machine.handed_out
    # The next set starts without deleting the created one (§7.1 l.683).
    s2 = uuid.uuid4()
    assert machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s2).discard is None
    assert machine.succeeded(M.BEGIN_PREPARE_SNAPSHOT) is St.PREPARING
    assert machine.set_id == s2 and not machine.handed_out


def test_get_target_luns_in_either_position() -> None:
    """§16.3 #1: before PreFinalCommit (Citrix, interface page) and after PostFinalCommit (process page)."""
    machine, s = drive(Start("CREATED"))
    assert ok(machine, "pre_final_commit_snapshots", s) is St.CREATED
    assert ok(machine, "post_final_commit_snapshots", s) is St.CREATED
    assert ok(machine, "get_target_luns") is St.CREATED
    machine, s = drive(Start("COMMITTED"))
    assert ok(machine, "get_target_luns") is St.COMMITTED                  # §7.2 l.711 ✓ in COMMITTED
    assert ok(machine, "post_commit_snapshots", s) is St.CREATED
    assert machine.handed_out


# --- abort -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("start", STARTS, ids=lambda s: s.id)
def test_abort_from_each_state(start: Start) -> None:
    machine, held = drive(start)
    call = machine.begin(M.ABORT_SNAPSHOTS, held)
    deletes = start.state in IN_PROGRESS or (start.state == "CREATED" and not start.handed_out)
    assert call.discard == (held if deletes else None)
    after = "ABORTED" if deletes else start.state
    assert machine.state is St[after]                       # takes effect at once, before the outcome
    assert machine.succeeded(M.ABORT_SNAPSHOTS) is St[after]
    # Idempotent (§5.1 l.483): a second abort is a no-op with S_OK.
    again = machine.begin(M.ABORT_SNAPSHOTS, held)
    assert again.discard is None and again.verdict.value == "✓ (no-op)"
    assert machine.failed(M.ABORT_SNAPSHOTS) is St[after]


def test_abort_interrupts_a_pending_end_prepare() -> None:
    """§5.2.3 l.518-519, §5.2.9 l.573: AbortSnapshots from another thread during EndPrepareSnapshots."""
    machine, s = drive(Start("PREPARING"))
    end = machine.begin(M.END_PREPARE_SNAPSHOTS, s)
    aborted: list[uuid.UUID | None] = []
    thread = threading.Thread(target=lambda: aborted.append(machine.begin(M.ABORT_SNAPSHOTS, s).discard))
    thread.start()
    assert end.cancelled.wait(5)                             # the long wait returns promptly
    thread.join(5)
    assert aborted == [s]
    # EndPrepare's late success must not move the aborted set on.
    assert machine.succeeded(M.END_PREPARE_SNAPSHOTS) is St.ABORTED
    with pytest.raises(OutOfSequenceError):
        machine.begin(M.PRE_COMMIT_SNAPSHOTS, s)
    assert machine.state is St.ABORTED


def test_unload_cancels_a_pending_call_and_forgets_the_set() -> None:
    machine, s = drive(Start("PRECOMMITTED"))
    commit = machine.begin(M.COMMIT_SNAPSHOTS, s)
    assert machine.begin(M.ON_UNLOAD).discard == s
    assert commit.cancelled.is_set()
    assert machine.succeeded(M.COMMIT_SNAPSHOTS) is St.IDLE
    assert machine.set_id is None
    with pytest.raises(VssUserError) as err:                 # the set is gone from memory
        machine.begin(M.POST_COMMIT_SNAPSHOTS, s)
    assert err.value.hresult is NOT_FOUND


# --- a second set while one is in progress; restarts --------------------------------------------------

@pytest.mark.parametrize("state", sorted(IN_PROGRESS))
def test_new_set_restarts_and_old_set_becomes_unknown(state: str) -> None:
    machine, s1 = drive(Start(state))
    s2 = uuid.uuid4()
    call = machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s2)
    assert call.verdict.value == "↺" and call.discard == s1    # §7.1 l.685
    assert machine.set_id == s2                                  # taken at begin()
    assert machine.succeeded(M.BEGIN_PREPARE_SNAPSHOT) is St.PREPARING
    # A late abort of the dead set is an S_OK no-op and leaves the new set alone.
    late = machine.begin(M.ABORT_SNAPSHOTS, s1)
    assert late.verdict.value == "✓ (no-op)" and late.discard is None
    assert machine.state is St.PREPARING and machine.set_id == s2
    # A late step of the dead set: unknown id, nothing changes (§16.3 #3).
    with pytest.raises(VssUserError) as err:
        machine.begin(M.END_PREPARE_SNAPSHOTS, s1)
    assert err.value.hresult is NOT_FOUND
    assert machine.state is St.PREPARING
    assert ok(machine, "end_prepare_snapshots", s2) is St.PREPARED


def test_abort_during_restart_of_a_set_is_for_an_unknown_set() -> None:
    """BeginPrepare(S2) takes the set at begin(): an Abort(S1) racing it cannot cancel it."""
    machine, s1 = drive(Start("PREPARED"))
    s2 = uuid.uuid4()
    begin = machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s2)
    assert machine.begin(M.ABORT_SNAPSHOTS, s1).verdict.value == "✓ (no-op)"
    assert not begin.cancelled.is_set()
    assert machine.succeeded(M.BEGIN_PREPARE_SNAPSHOT) is St.PREPARING and machine.set_id == s2


@pytest.mark.parametrize("state", ["PREPARED", "PRECOMMITTED", "COMMITTED"])
def test_same_set_restarts_from_scratch(state: str) -> None:
    """§7.2 l.705 "↺ (samples)": BeginPrepare with the held id after PREPARING."""
    machine, s = drive(Start(state))
    call = machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s)
    assert call.verdict.value == "↺" and call.discard == s
    assert machine.state is St.PREPARING
    assert machine.succeeded(M.BEGIN_PREPARE_SNAPSHOT) is St.PREPARING


def test_same_set_in_preparing_adds_volumes() -> None:
    machine, s = drive(Start("PREPARING"))
    call = machine.begin(M.BEGIN_PREPARE_SNAPSHOT, s)
    assert call.verdict.value == "✓" and call.discard is None
    assert machine.failed(M.BEGIN_PREPARE_SNAPSHOT) is St.ABORTED   # §7.1 l.686 "cleanup set"
    assert machine.set_id == s


# --- failed() transitions ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, state", [(m, s) for m, s in CHAIN])
def test_failure_of_each_step_aborts_the_set(method: str, state: str) -> None:
    """§7.1 l.686-689, §8 l.735 (no partial commit): a failed step leaves the set ABORTED."""
    machine, s = ProviderStateMachine(), uuid.uuid4()
    for m, st in CHAIN:
        if m == method:
            break
        ok(machine, m, s)
    machine.begin(M(method), s)
    assert machine.failed(M(method)) is St.ABORTED
    assert machine.set_id == s
    # VSS's follow-up abort is a no-op; the set's steps are now out of sequence.
    assert machine.begin(M.ABORT_SNAPSHOTS, s).verdict.value == "✓ (no-op)"
    if method == "begin_prepare_snapshot":          # §7.2 l.705: ✓ in ABORTED, a fresh start
        assert ok(machine, method, s) is St.PREPARING
        return
    with pytest.raises(OutOfSequenceError) as err:
        machine.begin(M(method), s)
    assert err.value.hresult is VETO and err.value.discard is None


def test_failure_in_created_keeps_the_set_for_abort_to_decide() -> None:
    machine, s = drive(Start("CREATED"))
    machine.begin(M.GET_TARGET_LUNS)
    assert machine.failed(M.GET_TARGET_LUNS) is St.CREATED          # §7.1 l.691 "unchanged"
    assert not machine.handed_out
    assert machine.begin(M.ABORT_SNAPSHOTS, s).discard == s          # never handed out: deleted
    assert machine.state is St.ABORTED


def test_outcome_without_pending_call_changes_nothing() -> None:
    machine, s = drive(Start("PREPARED"))
    assert machine.succeeded(M.COMMIT_SNAPSHOTS) is St.PREPARED
    assert machine.failed(M.END_PREPARE_SNAPSHOTS) is St.PREPARED
    assert machine.failed(M.ARE_LUNS_SUPPORTED) is St.PREPARED


# --- arguments ----------------------------------------------------------------------------------------

def test_set_id_forms() -> None:
    s = uuid.uuid4()
    assert as_set_id(str(s)) == s
    assert as_set_id("{" + str(s).upper() + "}") == s
    machine = ProviderStateMachine()
    ok(machine, "begin_prepare_snapshot", str(s))
    assert ok(machine, "end_prepare_snapshots", "{" + str(s).upper() + "}") is St.PREPARED
    with pytest.raises(VssUserError) as err:
        machine.begin(M.PRE_COMMIT_SNAPSHOTS, "not-a-guid")
    assert err.value.hresult is HResult.E_INVALIDARG
    with pytest.raises(VssUserError) as err:
        machine.begin(M.PRE_COMMIT_SNAPSHOTS)
    assert err.value.hresult is HResult.E_INVALIDARG
    with pytest.raises(ValueError):
        machine.begin(M.GET_TARGET_LUNS, s)
    assert machine.state is St.PREPARED


def test_out_of_sequence_error_survives_pickle() -> None:
    machine, s = drive(Start("PREPARING"))
    with pytest.raises(OutOfSequenceError) as err:
        machine.begin(M.COMMIT_SNAPSHOTS, s)
    copy = pickle.loads(pickle.dumps(err.value))
    assert copy.hresult is VETO and copy.discard == s and type(copy) is OutOfSequenceError


def test_method_names() -> None:
    assert M.BEGIN_PREPARE_SNAPSHOT.spec_name == "BeginPrepareSnapshot"
    assert M.FILL_IN_LUN_INFO.spec_name == "FillInLunInfo"
    assert {m.value for m in MACHINE_METHODS} == {*SET_METHODS, "get_target_luns", *NON_CREATION, "on_unload"}
