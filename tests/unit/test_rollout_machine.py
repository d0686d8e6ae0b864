"""The rollout's state machine: every move in its table, every other move refused, random event sequences that
never leave the defined states, and state files written before the statuses were enums."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.errors import Conflict, InvalidInput
from meshctl.home import MeshHome
from meshctl.rollout.machine import (
    ACTIVE,
    DONE,
    MAX_WAITS,
    REQUESTS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Status,
    gate_event,
    next_status,
)
from meshctl.rollout.state import Gates, Rollout, RolloutStore
from tests.unit.fuzzing import FUZZ

NOW = 1000.0
ALL_PAIRS = [(s, e) for s in Status for e in Event]
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def rollout(status: Status = Status.PROGRESSING, step: int = 0, steps: tuple[int, ...] = (20, 60, 100)) -> Rollout:
    r = Rollout("reviews", "v1", "v2", list(steps), 30.0, Gates(), status=status, step=step)
    r.weight = r.steps[step]
    return r


def step_for(event: Event) -> int:
    """A step from which `event` may fire: a passed gate needs a next step, completing needs the last."""
    return 2 if event is Event.COMPLETE else 0


# --- the table --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pair", "target"), list(TRANSITIONS.items()), ids=lambda v: str(v))
def test_every_transition_in_the_table(pair: tuple[Status, Event], target: Status) -> None:
    status, event = pair
    assert next_status(status, event) is target
    r = rollout(status, step_for(event))
    r.fire(event, NOW, "why")
    assert r.status is target
    assert r.events[-1]["time"] == NOW and r.message == r.events[-1]["event"]


@pytest.mark.parametrize("pair", ILLEGAL, ids=lambda v: str(v))
def test_a_move_the_table_lacks_is_refused_and_changes_nothing(pair: tuple[Status, Event]) -> None:
    status, event = pair
    with pytest.raises(IllegalTransition, match=f"{status}.*{event}"):
        next_status(status, event)
    r = rollout(status, step_for(event))
    before = asdict(r)
    with pytest.raises(IllegalTransition):
        r.fire(event, NOW)
    assert asdict(r) == before


def test_the_table_is_what_the_design_says() -> None:
    assert ILLEGAL, "some moves must be refused"
    assert not [pair for pair in TRANSITIONS if pair[0] in DONE], "nothing leaves a final status"
    assert {s for s, _ in TRANSITIONS} == set(ACTIVE)
    assert set(TRANSITIONS.values()) == set(Status)  # every status is reachable
    gate_events = {Event.ENTER, Event.WAIT, Event.PASS, Event.COMPLETE, Event.FAIL}
    assert not [pair for pair in TRANSITIONS if pair[0] is Status.PAUSED and pair[1] in gate_events]


def test_a_passed_gate_moves_on_only_while_steps_remain() -> None:
    last = rollout(step=2)
    with pytest.raises(IllegalTransition, match="3/3 cannot pass"):
        last.fire(Event.PASS, NOW)
    with pytest.raises(IllegalTransition, match="1/3 cannot complete"):
        rollout(step=0).fire(Event.COMPLETE, NOW)
    r = rollout(step=0)
    r.fire(Event.PASS, NOW, "success rate 100.0%")
    assert (r.step, r.weight, r.waited) == (1, 60, 0)
    assert [e["event"] for e in r.events] == ["gate passed at 20%: success rate 100.0%", "step 2/3: v2 at 60%"]
    assert [e["weight"] for e in r.events] == [20, 60]


def test_what_each_final_move_leaves_behind() -> None:
    for event, status, weight, text in [
        (Event.COMPLETE, Status.SUCCEEDED, 100, "v2 takes all traffic: fine"),
        (Event.FAIL, Status.ROLLED_BACK, 0, "rolled back at 100%: fine"),
        (Event.ABORT, Status.ABORTED, 0, "aborted by the user; all traffic back to v1"),
        (Event.PROMOTE, Status.SUCCEEDED, 100, "promoted by the user: v2 takes all traffic"),
    ]:
        r = rollout(step=2)
        r.requested = Event.ABORT
        r.fire(event, NOW, "fine")
        assert (r.status, r.weight, r.requested, r.message) == (status, weight, None, text)
        assert r.events[-1]["weight"] == weight


def test_waiting_gives_the_step_another_interval() -> None:
    r = rollout()
    r.fire(Event.WAIT, NOW + 30, "3 requests reached the canary (want 20)")
    assert (r.waited, r.step_started, r.status) == (1, NOW + 30, Status.PROGRESSING)
    assert r.message == "waiting for traffic: 3 requests reached the canary (want 20)"


@pytest.mark.parametrize(("passed", "waited", "last", "event"), [
    (None, 0, False, Event.WAIT), (None, MAX_WAITS - 1, True, Event.WAIT), (None, MAX_WAITS, False, Event.FAIL),
    (False, 0, False, Event.FAIL), (False, 0, True, Event.FAIL), (True, 0, False, Event.PASS),
    (True, MAX_WAITS, True, Event.COMPLETE),
])
def test_a_gate_verdict_is_an_event(passed: bool | None, waited: int, last: bool, event: Event) -> None:
    assert gate_event(passed, waited, last) is event


def test_user_requests() -> None:
    r = rollout()
    r.request(Event.ABORT, NOW)
    assert (r.status, r.requested) == (Status.PROGRESSING, Event.ABORT)  # the driver carries it out
    r.request(Event.PAUSE, NOW)
    assert (r.status, r.message) == (Status.PAUSED, "paused at 20%")
    r.fire(Event.ABORT, NOW)
    with pytest.raises(IllegalTransition, match=r"the rollout of reviews has ended \(Aborted\)") as err:
        r.request(Event.RESUME, NOW)
    assert err.value.hint == "start a new one" and isinstance(err.value, Conflict)


# --- random sequences -------------------------------------------------------------------------------------

ACTIONS = st.one_of(st.tuples(st.just("fire"), st.sampled_from(Event)),
                    st.tuples(st.just("request"), st.sampled_from([Event.PAUSE, Event.RESUME, *REQUESTS])),
                    st.tuples(st.just("drive"), st.just(Event.ENTER)))


@FUZZ
@given(steps=st.lists(st.integers(1, 100), min_size=1, max_size=4, unique=True).map(sorted),
       actions=st.lists(ACTIONS, max_size=40))
def test_random_events_never_reach_an_undefined_state(steps: list[int], actions: list[tuple[str, Event]]) -> None:
    steps = steps if steps[-1] == 100 else [*steps, 100]
    r = Rollout("reviews", "v1", "v2", steps, 30.0, Gates())
    for i, (kind, event) in enumerate(actions):
        before = r.status
        if kind == "drive":  # the driver's tick acts on a pending request first
            event = r.requested or event
        try:
            r.request(event, NOW + i) if kind == "request" else r.fire(event, NOW + i, "reason")
        except IllegalTransition:
            assert r.status is before
            continue
        assert isinstance(r.status, Status)
        assert r.status is TRANSITIONS[(before, event)] or (kind == "request" and event in REQUESTS)
        assert before not in DONE, "a final status never moves"
        assert 0 <= r.step < len(r.steps) and 0 <= r.weight <= 100
        assert r.requested is None or r.requested in REQUESTS
        if r.status in DONE:
            assert r.requested is None
            assert r.weight == (100 if r.status is Status.SUCCEEDED else 0)
        elif event in (Event.ENTER, Event.PASS):
            assert r.weight == r.steps[r.step]
    # whatever it went through, it saves and loads as itself
    assert Rollout.from_dict(json.loads(json.dumps(asdict(r)))) == r


# --- state files ------------------------------------------------------------------------------------------

# Written by meshctl before the statuses were enums (`json.dumps(asdict(rollout), indent=1)`, plain strings):
# paused at 25%, an abort asked from another terminal while no driver ran.
OLD_STATE: dict[str, Any] = {
    "service": "reviews", "stable": "v1", "canary": "v2", "steps": [10, 25, 50, 100], "interval_s": 30.0,
    "gates": {"success_rate": 99.0, "max_p99_ms": 500.0, "min_requests": 20},
    "status": "Paused", "step": 1, "weight": 25, "step_started": 1700000100.5, "waited": 1,
    "baseline": {"reviews-v2-proxy": {"requests": 120.0, "errors": 1.0, "le:100.0": 118.0, "le:+Inf": 120.0}},
    "requested": "abort", "message": "paused at 25%",
    "last_gate": {"passed": True, "requests": 40, "success_rate": 100.0, "p99_ms": 48.0,
                  "reason": "success rate 100.0%, p99 <= 48 ms"},
    "events": [{"time": 1700000000.0, "weight": 0, "event": "started: v1 -> v2 in steps 10,25,50,100"},
               {"time": 1700000090.0, "weight": 25, "event": "paused at 25%"}],
}


def test_a_state_file_written_before_the_state_machine_still_loads(tmp_path: Path) -> None:
    store = RolloutStore(MeshHome(tmp_path))
    store.root.mkdir(parents=True)
    store.path("reviews").write_text(json.dumps(OLD_STATE, indent=1))
    r = store.load("reviews")
    assert r.status is Status.PAUSED and r.requested is Event.ABORT
    assert (r.step, r.weight, r.gates) == (1, 25, Gates(99.0, 500.0, 20))
    store.save(r)  # and is written back byte for byte the same shape, so an older meshctl reads it too
    assert json.loads(store.path("reviews").read_text()) == OLD_STATE
    r.fire(r.requested, NOW)
    assert (r.status, r.weight) == (Status.ABORTED, 0)


@pytest.mark.parametrize("bad", [{"status": "Running"}, {"requested": "pause"}, {"requested": "explode"}])
def test_a_state_file_with_an_unknown_status_or_request_is_refused(tmp_path: Path, bad: dict[str, Any]) -> None:
    store = RolloutStore(MeshHome(tmp_path))
    store.root.mkdir(parents=True)
    store.path("reviews").write_text(json.dumps({**OLD_STATE, **bad}))
    with pytest.raises(InvalidInput, match="not a rollout state file"):
        store.load("reviews")
