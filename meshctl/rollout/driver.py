"""Drive a rollout: set the canary's weight, wait a step's interval, judge its metrics, go on or roll back.

Each transition is written to the rollout's state file before the next wait, so a driver killed at any
moment is resumed (`meshctl rollout resume`) from the step it was in, with that step's metric baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshctl.config import routes
from meshctl.context import Context
from meshctl.mesh import MeshedPods
from meshctl.pilot import changes, dataplane
from meshctl.rollout.gates import counters, delta, judge
from meshctl.rollout.machine import DONE, MOVES_TRAFFIC, STARTS_STEP, Event, Status, gate_event
from meshctl.rollout.state import Rollout, RolloutStore
from meshctl.telemetry import mesh

TICK_S = 0.5


def set_weight(ctx: Context, r: Rollout, weight: int) -> None:
    """The service's catch-all rule: stable and canary by weight; its other settings are kept."""
    to = [r.canary] if weight >= 100 else [r.stable] if weight <= 0 else [f"{r.stable}={100 - weight}",
                                                                          f"{r.canary}={weight}"]
    versions = MeshedPods.of(ctx.home).versions().get(r.service, set())
    edit = routes.RouteEdit(to=to)
    changes.edit(ctx, lambda current: routes.set_route(current, r.service, edit, versions),
                 f"rollout {r.service}: {r.canary} at {max(0, min(100, weight))}%")


def canary_counters(ctx: Context, r: Rollout) -> dict[str, dict[str, float]]:
    network = ctx.home.settings().network
    pods = [p for p in dataplane.sidecars(ctx) if p.app == r.service and p.version == r.canary
            and p.state == "running" and p.address_on(network)]
    return {name: counters(samples) for name, samples in mesh.metrics(ctx, pods).items()}


def apply(ctx: Context, r: Rollout, event: Event, now: float, reason: str = "") -> None:
    """Fire `event` on the rollout and do what it asks of the world: the route's weights, a new step's baseline."""
    r.fire(event, now, reason)
    if event in MOVES_TRAFFIC:
        set_weight(ctx, r, r.weight)
    if event in STARTS_STEP:
        r.baseline = canary_counters(ctx, r)


class Driver:
    def __init__(self, ctx: Context, store: RolloutStore, service: str,
                 report: Callable[[Rollout], None] = lambda r: None) -> None:
        self.ctx = ctx
        self.store = store
        self.service = service
        self.report = report

    def _advance(self, r: Rollout, now: float) -> None:
        """One tick: act on requests from other terminals, or judge the step once its interval is over."""
        if r.requested is not None:
            apply(self.ctx, r, r.requested, now)
            return
        if r.status is Status.PAUSED:
            r.step_started = now  # the interval restarts when resumed: a paused step proves nothing
            return
        if r.weight != r.steps[r.step] or not r.step_started:
            apply(self.ctx, r, Event.ENTER, now)
            return
        if now - r.step_started < r.interval_s:
            return
        verdict = judge(delta(canary_counters(self.ctx, r), r.baseline), r.gates.success_rate,
                        r.gates.max_p99_ms, r.gates.min_requests)
        r.last_gate = {"passed": verdict.passed, "requests": verdict.requests, "success_rate": verdict.success_rate,
                       "p99_ms": verdict.p99_ms, "reason": verdict.reason}
        apply(self.ctx, r, gate_event(verdict.passed, r.waited, r.step + 1 == len(r.steps)), now, verdict.reason)

    def run(self) -> Rollout:
        """Drive until the rollout ends; returns its final state. Interrupting leaves it resumable."""
        while True:
            r = self.store.update(self.service, lambda r: self._advance(r, self.ctx.clock()))
            self.report(r)
            if r.status in DONE:
                return r
            time.sleep(TICK_S)


def settle_without_driver(ctx: Context, r: Rollout, now: float) -> None:
    """abort/promote with nobody driving: do it here and now."""
    if r.requested is not None:
        apply(ctx, r, r.requested, now)
