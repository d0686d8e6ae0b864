"""`meshctl rollout` in process, with the route edits and the canary's metrics faked: the driver's steps and gates
through the state machine, commands from other terminals, and what the CLI prints."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from meshctl.cli import run
from meshctl.context import Context
from meshctl.home import MeshHome
from meshctl.mesh import MeshedPods
from meshctl.rollout import control, driver
from meshctl.rollout.machine import Event, Status
from meshctl.rollout.state import Rollout, RolloutStore
from meshctl.status import ExitCode
from tests.unit.test_rollout_machine import OLD_STATE

Counters = dict[str, dict[str, float]]


@dataclass
class Fakes:
    """The world a driver sees: a clock its sleeps advance, the weights it sets, the canary's counters."""
    home: Path
    now: float = 1000.0
    weights: list[int] = field(default_factory=list)
    requests: float = 0.0
    error_share: float = 0.0  # of each new request

    def counters(self, ctx: Context, r: Rollout) -> Counters:
        self.requests += 50
        return {"reviews-v2-proxy": {"requests": self.requests, "errors": self.requests * self.error_share,
                                     "le:100.0": self.requests, "le:+Inf": self.requests}}

    def cli(self, *argv: str) -> tuple[int, str, str]:
        def console() -> Console:
            return Console(file=io.StringIO(), width=200, soft_wrap=True, no_color=True, highlight=False)

        ctx = Context(home=MeshHome(self.home), out=console(), err=console(), clock=lambda: self.now)
        code = run(["rollout", *argv], obj=ctx)
        return code, ctx.out.file.getvalue(), ctx.err.file.getvalue()  # type: ignore[attr-defined]

    def store(self) -> RolloutStore:
        return RolloutStore(MeshHome(self.home))


@pytest.fixture
def fakes(installed_home: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    f = Fakes(installed_home)
    monkeypatch.setattr(driver, "set_weight", lambda ctx, r, weight: f.weights.append(weight))
    monkeypatch.setattr(driver, "canary_counters", f.counters)
    monkeypatch.setattr(MeshedPods, "versions", lambda self: {"reviews": {"v1", "v2"}})

    def sleep(seconds: float) -> None:
        f.now += seconds

    monkeypatch.setattr(driver.time, "sleep", sleep)
    return f


def test_a_healthy_canary_goes_through_every_step(fakes: Fakes) -> None:
    code, out, err = fakes.cli("reviews", "--to", "v2", "--steps", "20,60", "--interval", "2s")
    assert code == ExitCode.OK, err
    assert out == "rollout of reviews to v2 succeeded: v2 takes all traffic: success rate 100.0%, p99 <= 99 ms\n"
    assert err.splitlines() == ["reviews: step 1/3: v2 at 20%", "reviews: step 2/3: v2 at 60%",
                                "reviews: step 3/3: v2 at 100%",
                                "reviews: v2 takes all traffic: success rate 100.0%, p99 <= 99 ms"]
    assert fakes.weights == [20, 60, 100, 100]
    saved = json.loads(fakes.store().path("reviews").read_text())
    assert saved["status"] == "Succeeded" and saved["requested"] is None and saved["weight"] == 100
    code, out, _ = fakes.cli("status", "reviews", "-o", "json")
    assert json.loads(out)["status"] == "Succeeded"
    code, out, _ = fakes.cli("status", "reviews", "-o", "yaml")
    assert code == ExitCode.OK and "status: Succeeded\n" in out


def test_a_failing_canary_is_rolled_back(fakes: Fakes) -> None:
    fakes.error_share = 0.5
    code, _, err = fakes.cli("reviews", "--to", "v2", "--steps", "20,60", "--interval", "2s")
    assert code == ExitCode.FAILED
    assert err.splitlines()[-1] == "error: rollout of reviews to v2 RolledBack: rolled back at 20%: success rate " \
                                   "50.0% < 99%"
    assert fakes.weights == [20, 0]


def test_a_canary_without_traffic_waits_then_is_rolled_back(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "canary_counters", lambda ctx, r: {"p": {"requests": 1.0, "errors": 0.0}})
    code, _, err = fakes.cli("reviews", "--to", "v2", "--steps", "50", "--interval", "1s")
    assert code == ExitCode.FAILED
    assert err.splitlines()[:3] == ["reviews: step 1/2: v2 at 50%",
                                    "reviews: waiting for traffic: 0 requests reached the canary (want 20)",
                                    "reviews: rolled back at 50%: 0 requests reached the canary (want 20)"]
    r = fakes.store().load("reviews")
    assert (r.status, r.waited, r.weight) == (Status.ROLLED_BACK, 3, 0)


def write_old_state(fakes: Fakes, **changes: object) -> None:
    fakes.store().root.mkdir(parents=True, exist_ok=True)
    fakes.store().path("reviews").write_text(json.dumps({**OLD_STATE, **changes}, indent=1))


def test_commands_from_another_terminal_on_an_old_state_file(fakes: Fakes) -> None:
    write_old_state(fakes, status="Progressing", requested=None)
    assert fakes.cli("pause", "reviews") == (ExitCode.OK, "reviews: paused at 25%\n", "")
    assert fakes.cli("pause", "reviews")[0] == ExitCode.OK  # twice is harmless
    code, out, _ = fakes.cli("status", "reviews")
    assert out.splitlines()[1].split()[:6] == ["reviews", "v1", "v2", "Paused", "2/4", "25%"]
    code, out, _ = fakes.cli("abort", "reviews")  # nobody drives it: done here and now
    assert (code, out) == (ExitCode.OK, "reviews: aborted by the user; all traffic back to v1\n")
    assert fakes.weights == [0]
    code, _, err = fakes.cli("resume", "reviews")
    assert code == ExitCode.CONFLICT
    assert err == "error: the rollout of reviews has ended (Aborted); start a new one\n"


def test_a_pending_abort_in_an_old_state_file_is_carried_out_by_the_driver(fakes: Fakes) -> None:
    write_old_state(fakes)  # paused, with an abort asked for
    code, _, err = fakes.cli("resume", "reviews")
    assert code == ExitCode.FAILED
    assert "rollout of reviews to v2 Aborted: aborted by the user; all traffic back to v1" in err
    assert fakes.weights == [0]


def test_promote_while_another_meshctl_drives_is_left_to_it(fakes: Fakes) -> None:
    write_old_state(fakes, status="Progressing", requested=None)
    store = fakes.store()
    with store.driving("reviews") as mine:
        assert mine
        r = control.request(Context(home=MeshHome(fakes.home), clock=lambda: fakes.now), "reviews", Event.PROMOTE)
    assert (r.status, r.requested, fakes.weights) == (Status.PROGRESSING, Event.PROMOTE, [])
    drives = driver.Driver(Context(home=MeshHome(fakes.home)), store, "reviews")

    def tick(r: Rollout) -> None:  # one tick of the other meshctl's driver
        drives._advance(r, fakes.now)

    assert store.update("reviews", tick).status is Status.SUCCEEDED and fakes.weights == [100]
