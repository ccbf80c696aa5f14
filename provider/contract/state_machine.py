"""Sequencing rules of the provider's creation calls (CONTRACT.md §7.2, §7.3).

VSS serializes creation, but it also restarts a sequence without notice, aborts from another thread and
sends stray calls, and the provider must answer each case with the code of the contract. These rules are
kept here, as pure tables apart from any array I/O, for three reasons: the provider consults them before
it does any work, the tests list them cell by cell, and the docs can print them.

References ("CONTRACT.md §7.2", "R5") are to sections and rules of provider/CONTRACT.md. Where the
Windows sources leave room or contradict each other, the choice is marked "DECISION" here and there.
"""
from __future__ import annotations

import enum
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from provider.contract.hresult import HResult, VssError, VssRuntimeError, vss_error
from provider.contract.methods import ProviderMethod

SetId = uuid.UUID


# --- provider side: states, methods ------------------------------------------------------------

@enum.unique
class ProviderState(enum.Enum):
    """The states of CONTRACT.md §7.1 (names borrowed from VSS_SNAPSHOT_STATE, as the samples do)."""

    IDLE = "idle"                  # = VSS_SS_UNKNOWN: no set held
    PREPARING = "preparing"
    PREPARED = "prepared"
    PRECOMMITTED = "precommitted"
    COMMITTED = "committed"
    CREATED = "created"            # post-commit done
    ABORTED = "aborted"

    @property
    def in_progress(self) -> bool:
        """A set is being created: the states where ↺ (R3) and OnUnload (R12) delete it."""
        return self in _IN_PROGRESS


_IN_PROGRESS = frozenset({ProviderState.PREPARING, ProviderState.PREPARED,
                          ProviderState.PRECOMMITTED, ProviderState.COMMITTED})


# The methods with a row in CONTRACT.md §7.2. OnLoad, OnReuseLuns (reserved, refused with
# E_NOTIMPL), the IVssAsync calls and shadowlun's ReleaseLuns (an import's cleanup, no set's
# business) have none: they never touch the machine.
MACHINE_METHODS: tuple[ProviderMethod, ...] = tuple(m for m in ProviderMethod if m not in {
    ProviderMethod.ON_LOAD, ProviderMethod.ON_REUSE_LUNS, ProviderMethod.QUERY_STATUS, ProviderMethod.CANCEL,
    ProviderMethod.RELEASE_LUNS})
# CONTRACT.md R13: the machine's methods outside the creation sequence.
NON_CREATION_METHODS = frozenset({
    ProviderMethod.ARE_LUNS_SUPPORTED, ProviderMethod.FILL_IN_LUN_INFO, ProviderMethod.LOCATE_LUNS,
    ProviderMethod.ON_LUN_EMPTY, ProviderMethod.ON_LUN_STATE_CHANGE, ProviderMethod.RESYNC_LUNS,
    ProviderMethod.GET_PROVIDER_CAPABILITIES,
})


@enum.unique
class SetMatch(enum.Enum):
    """How a call's set id relates to the set the machine holds; a key of TRANSITIONS."""

    CURRENT = "current"   # the id of the set held (in progress, created, or aborted)
    OTHER = "other"       # any other id; in IDLE every id, since IDLE holds no set
    NONE = "none"         # the method takes no set id


@enum.unique
class Verdict(enum.Enum):
    """The answer to a call; the value is as the CONTRACT.md §7.2 matrix writes it."""

    LEGAL = "✓"
    RESTART = "↺"               # legal: the set held died silently; discard it, then start the new one
    NO_OP = "✓ (no-op)"         # legal, nothing to do: answer S_OK
    OUT_OF_SEQUENCE = "✗"       # VSS_E_PROVIDER_VETO, and the set is aborted
    UNKNOWN_SET = "✗ (unknown set)"  # VSS_E_OBJECT_NOT_FOUND, nothing changes

    @property
    def allowed(self) -> bool:
        return self in (Verdict.LEGAL, Verdict.RESTART, Verdict.NO_OP)

    @property
    def error(self) -> HResult | None:
        # CONTRACT.md R6, R7: VETO for a call out of sequence, OBJECT_NOT_FOUND for an unknown set id.
        # VSS_E_BAD_STATE is the requester side's answer (R14, §7.4), never the provider's.
        if self is Verdict.OUT_OF_SEQUENCE:
            return HResult.VSS_E_PROVIDER_VETO
        if self is Verdict.UNKNOWN_SET:
            return HResult.VSS_E_OBJECT_NOT_FOUND
        return None


@dataclass(frozen=True)
class Rule:
    """One cell: what a call does in one state.

    `at_begin` is the state that begin() enters at once (None: unchanged until the outcome). `next` is
    the state after succeeded(), or after begin() when the call is refused or takes effect at once.
    `on_failure` is the state after failed(). `discard` means the provider must delete every copy of the
    set held before the call. `handed_out` replaces this rule once GetTargetLuns has described the held
    set's LUNs (CONTRACT.md R9).
    """

    verdict: Verdict
    next: ProviderState
    on_failure: ProviderState
    at_begin: ProviderState | None = None
    discard: bool = False
    handed_out: Rule | None = None


def _unchanged(state: ProviderState, verdict: Verdict = Verdict.LEGAL) -> Rule:
    return Rule(verdict, state, state)


def _abort_effect(state: ProviderState, verdict: Verdict) -> Rule:
    """The effect of AbortSnapshots(held set) in `state`, under the verdict given.

    In CONTRACT.md §7.2 ✗ is a VETO and an abort, so an out-of-sequence call has exactly this effect too.
    """
    A = ProviderState.ABORTED
    if state is ProviderState.IDLE or state is A:
        # CONTRACT.md R10: a no-op in IDLE and ABORTED. DECISION: IDLE stays IDLE although Windows' table
        # leads an abort from IDLE…COMMITTED to ABORTED: IDLE holds no set, so there is nothing to
        # abort, and entering ABORTED would invent a set the provider never had.
        return _unchanged(state, Verdict.NO_OP if verdict is Verdict.LEGAL else verdict)
    if state is ProviderState.CREATED:
        # CONTRACT.md R9: in CREATED the set is deleted unless GetTargetLuns has handed it out (the
        # samples ignore such an abort). DECISION: a deleted set goes to ABORTED, not back to CREATED,
        # so that no later GetTargetLuns/Pre-/PostFinalCommit can succeed for LUNs that are gone.
        kept = _unchanged(state, Verdict.NO_OP if verdict is Verdict.LEGAL else verdict)
        return Rule(verdict, A, A, at_begin=A, discard=True, handed_out=kept)
    # PREPARING…COMMITTED, CONTRACT.md R9: every copy of the set is deleted, committed ones too, and the
    # state is ABORTED. Applied at begin(): the abort must also stop a concurrent long
    # EndPrepareSnapshots (§2.2), and it always answers S_OK.
    return Rule(verdict, A, A, at_begin=A, discard=True)


# CONTRACT.md R5: the one state in which each step is legal, and where it leads.
_STEPS: dict[ProviderMethod, tuple[ProviderState, ProviderState]] = {
    ProviderMethod.END_PREPARE_SNAPSHOTS: (ProviderState.PREPARING, ProviderState.PREPARED),
    ProviderMethod.PRE_COMMIT_SNAPSHOTS: (ProviderState.PREPARED, ProviderState.PRECOMMITTED),
    ProviderMethod.COMMIT_SNAPSHOTS: (ProviderState.PRECOMMITTED, ProviderState.COMMITTED),
    ProviderMethod.POST_COMMIT_SNAPSHOTS: (ProviderState.COMMITTED, ProviderState.CREATED),
}
_FINAL_COMMITS = (ProviderMethod.PRE_FINAL_COMMIT_SNAPSHOTS, ProviderMethod.POST_FINAL_COMMIT_SNAPSHOTS)


def _rule(state: ProviderState, method: ProviderMethod, match: SetMatch) -> Rule:
    S = ProviderState
    oos = Verdict.OUT_OF_SEQUENCE
    if method in NON_CREATION_METHODS:
        # CONTRACT.md R13: legal in every state, and they never disturb a set in progress.
        return _unchanged(state)
    if method is ProviderMethod.ON_UNLOAD:
        # CONTRACT.md R12: an unload mid-creation aborts the set in progress and returns to IDLE, as the
        # samples do. DECISION: in the terminal states (IDLE, CREATED, ABORTED) it also ends in IDLE but
        # deletes nothing: a created set is complete on the array (§11), an aborted one is gone already.
        # Its failure changes nothing: VSS releases the provider whatever it answers (not translated, §8).
        return Rule(Verdict.LEGAL, S.IDLE, S.IDLE, at_begin=S.IDLE, discard=state.in_progress)
    if method is ProviderMethod.ABORT_SNAPSHOTS:
        if match is SetMatch.OTHER:
            # CONTRACT.md R10: AbortSnapshots always answers S_OK and is idempotent. DECISION: an abort for
            # a set not held is an S_OK no-op, not VSS_E_OBJECT_NOT_FOUND, and above all it must not
            # touch the held set: a late abort of a dead set cannot kill the one that replaced it.
            return _unchanged(state, Verdict.NO_OP)
        return _abort_effect(state, Verdict.LEGAL)
    if method is ProviderMethod.BEGIN_PREPARE_SNAPSHOT:
        # CONTRACT.md R4: a failure, whatever its code (unsupported context or volume, E_OUTOFMEMORY,
        # MAXIMUM_NUMBER_OF_VOLUMES_REACHED, …), aborts the set. The new set is taken at begin(),
        # so that from then on a late call for the old set is a call for an unknown set (R7).
        if state is S.PREPARING and match is SetMatch.CURRENT:
            # CONTRACT.md R2: ✓, the volume's LUNs are added; a LUN already planned is skipped.
            return Rule(Verdict.LEGAL, S.PREPARING, S.ABORTED)
        if state.in_progress:
            # CONTRACT.md R3, ↺: the sequence in progress died without notice; all its copies, committed
            # ones too, are deleted and the new set starts. The same id in PREPARED…COMMITTED is also ↺
            # (as the samples do): the set restarts from scratch under its own id.
            return Rule(Verdict.RESTART, S.PREPARING, S.ABORTED, at_begin=S.PREPARING, discard=True)
        # IDLE / CREATED / ABORTED, CONTRACT.md R1: ✓, a new set (in CREATED even under the same id).
        # Nothing is deleted: a created set is finished.
        return Rule(Verdict.LEGAL, S.PREPARING, S.ABORTED, at_begin=S.PREPARING)
    if method is ProviderMethod.GET_TARGET_LUNS:
        # No set id: it names LUNs, not a set (CONTRACT.md §2.3), so only the matrix applies.
        if state in (S.COMMITTED, S.CREATED):
            # CONTRACT.md R8: ✓, state unchanged. DECISION (Windows documents both positions): legal
            # before and after Pre/PostFinalCommit. Its failure leaves the state unchanged; the coordinator
            # then sends AbortSnapshots (§6), which cleans up.
            return _unchanged(state)
        return _abort_effect(state, oos)
    # The remaining methods take a set id and are legal in one state each (Pre/PostFinal: CREATED).
    if state is S.IDLE and method in _FINAL_COMMITS:
        # CONTRACT.md R11: the samples answer S_OK in any state; we are lenient where that is harmless.
        # IDLE holds no set, so: S_OK, for any id.
        return _unchanged(state, Verdict.NO_OP)
    if match is SetMatch.OTHER:
        # CONTRACT.md R7: an unknown set id is VSS_E_OBJECT_NOT_FOUND. The id check comes before the
        # sequence check, so in IDLE (which knows no set: a fresh or restarted provider) EndPrepare…
        # PostCommit answer OBJECT_NOT_FOUND, not the ✗ VETO of R6. DECISION "unchanged", not ABORTED:
        # a call about another set says nothing certain about ours, and a stray call must not destroy
        # it; a dead set is discarded by the next BeginPrepareSnapshot (↺) or AbortSnapshots anyway.
        return _unchanged(state, Verdict.UNKNOWN_SET)
    if method in _FINAL_COMMITS:
        if state is S.CREATED:
            # CONTRACT.md R11 ✓. DECISION: PostFinalCommit stays CREATED rather than going to IDLE:
            # GetTargetLuns may still follow (R8) and needs the set. A failure leaves the committed set
            # alone; the AbortSnapshots that follows decides its fate (R9).
            return _unchanged(state)
        # CONTRACT.md R11: ✗ in PREPARING…COMMITTED and ABORTED. DECISION: the lenience covers only
        # CREATED and IDLE, where the samples' unconditional S_OK is harmless;
        # mid-creation these calls mean VSS skipped steps, and in ABORTED the copies no longer exist.
        return _abort_effect(state, oos)
    legal_in, leads_to = _STEPS[method]
    if state is legal_in:
        # CONTRACT.md R5 ✓. Any failure → ABORTED: INSUFFICIENT_STORAGE from EndPrepare, a VETO from
        # Commit (its partial copies deleted), the same for PreCommit/PostCommit (no partial commit, §8).
        return Rule(Verdict.LEGAL, leads_to, S.ABORTED)
    # CONTRACT.md R6: out of sequence, VSS_E_PROVIDER_VETO, and the set is aborted.
    return _abort_effect(state, oos)


def _matches(state: ProviderState, method: ProviderMethod) -> tuple[SetMatch, ...]:
    if not method.takes_set_id:
        return (SetMatch.NONE,)
    if state is ProviderState.IDLE:
        return (SetMatch.OTHER,)
    return (SetMatch.CURRENT, SetMatch.OTHER)


TRANSITIONS: Mapping[tuple[ProviderState, ProviderMethod, SetMatch], Rule] = MappingProxyType({
    (state, method, match): _rule(state, method, match)
    for state in ProviderState for method in MACHINE_METHODS for match in _matches(state, method)
})
"""Every (state, method, set match) the provider can meet, with its rule; read-only."""


def format_matrix() -> str:
    """TRANSITIONS as a Markdown table (rows: method and set match), cell by cell; CONTRACT.md §7.2
    gives the same rules in short."""
    states = list(ProviderState)
    lines = ["| Call \\ State | " + " | ".join(s.name for s in states) + " |",
             "|---" * (len(states) + 1) + "|"]
    for method in MACHINE_METHODS:
        for match in (SetMatch.CURRENT, SetMatch.OTHER, SetMatch.NONE):
            cells = []
            for state in states:
                rule = TRANSITIONS.get((state, method, match))
                if rule is None:
                    cells.append("")
                    continue
                text = f"{rule.verdict.value} → {rule.next.name}"
                if rule.handed_out is not None:
                    text += f" (handed out: {rule.handed_out.verdict.value} → {rule.handed_out.next.name})"
                cells.append(text)
            if any(cells):
                label = method.spec_name
                if match is not SetMatch.NONE:
                    label += f" ({match.value} set)"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- provider side: the machine ----------------------------------------------------------------

class OutOfSequenceError(VssRuntimeError):
    """VSS_E_PROVIDER_VETO for a call out of sequence.

    `discard` names the set whose copies the provider must now delete (None: nothing to delete).
    CONTRACT.md R14 makes the provider log every VETO; the machine does not log, because only the
    provider knows whether volumes are frozen right now (no logging then).
    """

    discard: SetId | None = None


@dataclass(eq=False)
class Call:
    """A call that begin() allowed.

    The provider first deletes every copy of `discard` (if not None), then does the method's work unless
    the verdict is NO_OP, then reports succeeded() or failed(). `cancelled` is set when an abort, unload
    or restart supersedes the call (CONTRACT.md §2.2): when the work returns, the provider then
    deletes what it made after the abort's cleanup and answers VSS_E_PROVIDER_VETO.
    """

    method: ProviderMethod
    set_id: SetId | None
    verdict: Verdict
    discard: SetId | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)


def as_set_id(value: SetId | str) -> SetId:
    """A set id from a UUID or its text ("{…}" and upper case accepted); E_INVALIDARG otherwise."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise vss_error(HResult.E_INVALIDARG, f"not a snapshot set id: {value!r}") from None


class ProviderStateMachine:
    """The creation state of one provider instance (CONTRACT.md §7); thread-safe.

    Creation calls arrive one at a time (VSS serializes them), but AbortSnapshots may arrive
    during a long EndPrepareSnapshots (§2.2) and the non-creation methods at any time; hence the
    lock, and a pending call that an abort can supersede.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = ProviderState.IDLE
        self._set_id: SetId | None = None
        self._handed_out = False
        self._pending: tuple[Call, Rule] | None = None

    @property
    def state(self) -> ProviderState:
        return self._state

    @property
    def set_id(self) -> SetId | None:
        """The set held: in progress, created or aborted; None in IDLE."""
        return self._set_id

    @property
    def handed_out(self) -> bool:
        """GetTargetLuns succeeded for the set held; an abort in CREATED then keeps it (CONTRACT.md R9)."""
        return self._handed_out

    def begin(self, method: ProviderMethod, set_id: SetId | str | None = None) -> Call:
        """Check a call before the provider does any work, and return what it must do.

        Raises OutOfSequenceError (VSS_E_PROVIDER_VETO) for an out-of-sequence call and a VssUserError
        VSS_E_OBJECT_NOT_FOUND for a set id that is not the one held; after the former the set is aborted
        (the state is already ABORTED, or as the matrix says).
        """
        if method.takes_set_id:
            if set_id is None:
                raise vss_error(HResult.E_INVALIDARG, f"{method.spec_name} needs a snapshot set id")
            sid: SetId | None = as_set_id(set_id)
        elif set_id is not None:
            raise ValueError(f"{method.spec_name} takes no snapshot set id")
        else:
            sid = None
        with self._lock:
            state = self._state
            if not method.takes_set_id:
                match = SetMatch.NONE
            elif self._set_id is not None and sid == self._set_id:
                match = SetMatch.CURRENT
            else:
                match = SetMatch.OTHER
            rule = TRANSITIONS[(state, method, match)]
            if rule.handed_out is not None and self._handed_out:
                rule = rule.handed_out
            call = Call(method, sid, rule.verdict, self._set_id if rule.discard else None)
            if rule.discard or (rule.at_begin is not None and rule.at_begin is not state):
                self._supersede()
            if rule.at_begin is not None:
                new_set = method is ProviderMethod.BEGIN_PREPARE_SNAPSHOT
                self._enter(rule.at_begin, sid if new_set else self._set_id)
            if not rule.verdict.allowed:
                raise self._refusal(call, state)
            if rule.verdict is not Verdict.NO_OP and method not in (
                    *NON_CREATION_METHODS, ProviderMethod.ABORT_SNAPSHOTS, ProviderMethod.ON_UNLOAD):
                self._supersede()
                self._pending = (call, rule)
            return call

    def succeeded(self, method: ProviderMethod) -> ProviderState:
        """The pending `method` returned S_OK: apply its transition. Returns the state after it."""
        return self._finish(method, ok=True)

    def failed(self, method: ProviderMethod) -> ProviderState:
        """The pending `method` failed: apply its failure transition. Returns the state after it."""
        return self._finish(method, ok=False)

    def _finish(self, method: ProviderMethod, ok: bool) -> ProviderState:
        with self._lock:
            pending = self._pending
            # Nothing pending for this method: it was superseded (by an abort, unload or restart), or it
            # took effect in begin() (AbortSnapshots, OnUnload, BeginPrepare's set switch), or it is a
            # non-creation method or a no-op. Either way there is nothing left to apply.
            if pending is None or pending[0].method is not method:
                return self._state
            call, rule = pending
            self._pending = None
            self._enter(rule.next if ok else rule.on_failure, self._set_id)
            if ok and method is ProviderMethod.GET_TARGET_LUNS:
                self._handed_out = True
            return self._state

    def _enter(self, state: ProviderState, set_id: SetId | None) -> None:
        if state is ProviderState.IDLE:
            set_id = None
        restarted = state is ProviderState.PREPARING and self._state is not ProviderState.PREPARING
        if set_id != self._set_id or restarted:
            self._handed_out = False      # another, fresh or restarted set: nothing handed out yet
        self._state, self._set_id = state, set_id

    def _supersede(self) -> None:
        if self._pending is not None:
            self._pending[0].cancelled.set()
            self._pending = None

    def _refusal(self, call: Call, state: ProviderState) -> VssError:
        what = f"{call.method.spec_name}({call.set_id})" if call.set_id else call.method.spec_name
        if call.verdict is Verdict.UNKNOWN_SET:
            return vss_error(HResult.VSS_E_OBJECT_NOT_FOUND,
                             f"{what}: unknown snapshot set (held: {self._set_id}, state {state.name})")
        err = OutOfSequenceError(HResult.VSS_E_PROVIDER_VETO,
                                 f"{what} out of sequence in state {state.name}; set aborted")
        err.discard = call.discard
        return err
