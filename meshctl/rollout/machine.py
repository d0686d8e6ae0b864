"""A rollout's life as a state machine: its statuses, the events that move it, and the one table of allowed moves.

    Progressing --pause--> Paused --resume--> Progressing
    Progressing --enter/wait/pass--> Progressing (a step starts, waits for traffic, or its gate passed)
    Progressing --complete--> Succeeded          Progressing --fail--> RolledBack
    Progressing|Paused --promote--> Succeeded    Progressing|Paused --abort--> Aborted

Succeeded, RolledBack and Aborted are final: nothing leaves them. Pure: no engine, no files, no clock.
The table is over statuses only; pass and complete also depend on the step (a next step exists, or this is
the last), which Rollout.fire checks before it consults the table.
"""

from __future__ import annotations

from enum import StrEnum

from meshctl.errors import Conflict

MAX_WAITS = 3  # intervals a step may wait for enough canary traffic before it fails (no traffic, no proof)


class Status(StrEnum):
    """Where a rollout is; the values are what the state file and `rollout status` have always said."""
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


class Event(StrEnum):
    """What happens to a rollout: a user's command, or the driver's step and gate."""
    PAUSE = "pause"  # user: hold at the current weight
    RESUME = "resume"  # user: go on (also re-drives an interrupted rollout that was never paused)
    ABORT = "abort"  # user: all traffic back to the stable version
    PROMOTE = "promote"  # user: all traffic to the canary now
    ENTER = "enter"  # driver: the current step's weight is set and its metric baseline read
    WAIT = "wait"  # gate: too little canary traffic to judge yet; the step runs another interval
    PASS = "pass"  # gate: the step passed and a next step follows
    COMPLETE = "complete"  # gate: the last step passed
    FAIL = "fail"  # gate: the step failed (or waited MAX_WAITS intervals without enough traffic)


ACTIVE = frozenset({Status.PROGRESSING, Status.PAUSED})
DONE = frozenset(Status) - ACTIVE

# Every allowed move; a (status, event) pair not listed here is refused.
TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (Status.PROGRESSING, Event.PAUSE): Status.PAUSED,
    (Status.PAUSED, Event.PAUSE): Status.PAUSED,  # pausing twice is harmless, as it always was
    (Status.PROGRESSING, Event.RESUME): Status.PROGRESSING,
    (Status.PAUSED, Event.RESUME): Status.PROGRESSING,
    (Status.PROGRESSING, Event.ABORT): Status.ABORTED,
    (Status.PAUSED, Event.ABORT): Status.ABORTED,
    (Status.PROGRESSING, Event.PROMOTE): Status.SUCCEEDED,
    (Status.PAUSED, Event.PROMOTE): Status.SUCCEEDED,
    (Status.PROGRESSING, Event.ENTER): Status.PROGRESSING,
    (Status.PROGRESSING, Event.WAIT): Status.PROGRESSING,
    (Status.PROGRESSING, Event.PASS): Status.PROGRESSING,
    (Status.PROGRESSING, Event.COMPLETE): Status.SUCCEEDED,
    (Status.PROGRESSING, Event.FAIL): Status.ROLLED_BACK,
}

REQUESTS = frozenset({Event.ABORT, Event.PROMOTE})  # asked from any terminal, carried out by the driver
MOVES_TRAFFIC = frozenset({Event.ENTER, Event.PASS, Event.COMPLETE, Event.FAIL, Event.ABORT, Event.PROMOTE})
STARTS_STEP = frozenset({Event.ENTER, Event.PASS})  # the new step's metric baseline must be read


class IllegalTransition(Conflict):
    """An event the rollout's status does not allow (e.g. anything after it ended): the state disagrees (exit 8)."""


def next_status(status: Status, event: Event) -> Status:
    """The status after `event`, from TRANSITIONS; raises IllegalTransition for a move the table lacks."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(f"a rollout that is {status} cannot {event}",
                                "see `meshctl rollout status`") from None


def gate_event(passed: bool | None, waited: int, last_step: bool) -> Event:
    """The event a step's gate verdict means: `passed` None is too little traffic to tell, waited out MAX_WAITS
    times before it counts as a failure."""
    if passed is None and waited < MAX_WAITS:
        return Event.WAIT
    if not passed:
        return Event.FAIL
    return Event.COMPLETE if last_step else Event.PASS
