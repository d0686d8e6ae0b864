"""What `meshctl rollout` asks of a rollout: start one (which version is stable, is the canary deployed), and
the commands any terminal may send it (pause, resume, abort, promote). The CLI parses flags and prints."""

from __future__ import annotations

from meshctl.config import routes
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.mesh import MeshedPods
from meshctl.pilot import changes
from meshctl.rollout.driver import settle_without_driver
from meshctl.rollout.machine import REQUESTS, Event
from meshctl.rollout.state import Gates, Rollout, RolloutStore


def stable_version(c: Context, service: str, canary: str, versions: set[str], given: str | None) -> str:
    """`given` (--from) if the service has it; else where its catch-all route sends all traffic; else the one
    version other than the canary."""
    if given:
        if given not in versions:
            raise UsageError(f"--from {given}: {service} has no version {given!r} "
                             f"(its versions: {', '.join(sorted(versions))})")
        return given
    vs = routes.find_virtual_service(changes.current(c), service)
    default = next((r for r in (vs or {}).get("spec", {}).get("http", []) if not r.get("match")), None)
    dests = (default or {}).get("route", [])
    if len(dests) == 1 and dests[0]["destination"].get("subset") not in (None, canary):
        return str(dests[0]["destination"]["subset"])
    others = sorted(versions - {canary})
    if len(others) == 1:
        return others[0]
    raise UsageError(f"cannot tell which version of {service} is stable (versions: {', '.join(sorted(versions))})",
                     f"name it with --from, e.g. --from {others[0] if others else 'v1'}")


def start(c: Context, service: str, to: str, from_: str | None, steps: list[int], interval_s: float,
          gates: Gates) -> Rollout:
    """Check the service and both versions, then write the new rollout's state (refused while one is active)."""
    versions = MeshedPods.of(c.home).versions().get(service, set())
    if not versions:
        raise UsageError(f"no meshed service is called {service!r}", "see `meshctl proxy-status`")
    if to not in versions:
        raise UsageError(f"--to {to}: {service} has no version {to!r} (its versions: {', '.join(sorted(versions))})",
                         "deploy the new version with its `version` label first")
    stable = stable_version(c, service, to, versions, from_)
    if stable == to:
        raise UsageError(f"--to {to} is already the stable version of {service}")
    rollout = Rollout(service, stable, to, steps, interval_s, gates)
    rollout.note(c.clock(), f"started: {stable} -> {to} in steps {','.join(map(str, rollout.steps))}")
    RolloutStore(c.home).create(rollout)
    return rollout


def request(c: Context, service: str, event: Event) -> Rollout:
    """A user's command; abort and promote are carried out here and now when no driver holds the rollout."""
    store = RolloutStore(c.home)
    r = store.update(service, lambda r: r.request(event, c.clock()))
    if event in REQUESTS:
        with store.driving(service) as nobody_drives:
            if nobody_drives:
                r = store.update(service, lambda r: settle_without_driver(c, r, c.clock()))
    return r
