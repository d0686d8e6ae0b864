"""Changes to the store (apply, delete, rollback), each one revision, each followed by a push to proxies."""

from __future__ import annotations

from collections.abc import Callable

from meshctl.config.kinds import Kind
from meshctl.config.resources import Resource, key
from meshctl.config.store import Revision, Store
from meshctl.context import Context
from meshctl.errors import InvalidInput
from meshctl.pilot.push import Pushed, push


def _store(ctx: Context) -> Store:
    ctx.home.settings()  # raises NotInstalled with the fix when there is no mesh here
    return Store(ctx.home.config_dir)


def apply(ctx: Context, resources: list[Resource]) -> tuple[Revision, list[tuple[Resource, str]], Pushed]:
    outcome: list[tuple[Resource, str]] = []

    def change(current: list[Resource]) -> list[Resource]:
        outcome.clear()
        by_key = {key(r): i for i, r in enumerate(current)}
        for r in resources:
            i = by_key.get(key(r))
            if i is None:
                current.append(r)
                outcome.append((r, "created"))
            elif current[i] == r:
                outcome.append((r, "unchanged"))
            else:
                current[i] = r
                outcome.append((r, "configured"))
        problems = undefined_subsets(current, {key(r) for r in resources})
        if problems:
            raise InvalidInput(problems[0], "define the subset in the service's DestinationRule (apply both "
                               "together); nothing was applied", details=problems)
        return current

    names = ", ".join(f"{r['kind']}/{r['metadata']['name']}" for r in resources)
    revision = _store(ctx).commit(change, f"apply {names}", ctx.clock())
    return revision, outcome, push(ctx.home)


def undefined_subsets(resources: list[Resource], changed: set[tuple[str, str]]) -> list[str]:
    """Subsets that the changed VirtualServices route or mirror to but no DestinationRule defines."""
    defined = {(r["spec"]["host"], s["name"]) for r in resources if r["kind"] == "DestinationRule"
               for s in r["spec"].get("subsets", [])}
    problems = []
    for r in resources:
        if r["kind"] != "VirtualService" or key(r) not in changed:
            continue
        for i, rule in enumerate(r["spec"].get("http", [])):
            refs = [(f"route[{j}].destination", d["destination"]) for j, d in enumerate(rule.get("route", []))]
            refs += [("mirror", rule["mirror"])] if rule.get("mirror") else []
            for where, dest in refs:
                if dest.get("subset") and (dest["host"], dest["subset"]) not in defined:
                    problems.append(f"VirtualService {r['metadata']['name']}: spec.http[{i}].{where}.subset: "
                                    f"{dest['subset']!r} is not a subset of {dest['host']!r} in any DestinationRule")
    return problems


def edit(ctx: Context, change: Callable[[list[Resource]], list[Resource]], message: str) -> tuple[Revision, Pushed]:
    """Any other change (route set, rollout steps): `change` validates and raises, or returns the new list."""
    revision = _store(ctx).commit(change, message, ctx.clock())
    return revision, push(ctx.home)


def current(ctx: Context) -> list[Resource]:
    return _store(ctx).read().resources


def delete(ctx: Context, kind: Kind, name: str) -> tuple[Revision, Pushed]:
    def change(current: list[Resource]) -> list[Resource]:
        kept = [r for r in current if key(r) != (kind.name, name)]
        if len(kept) == len(current):
            raise InvalidInput(f"{kind.name.lower()} {name!r} not found", f"see `meshctl get {kind.name.lower()}`")
        return kept

    revision = _store(ctx).commit(change, f"delete {kind.name}/{name}", ctx.clock())
    return revision, push(ctx.home)


def rollback(ctx: Context, to: int) -> tuple[Revision, Pushed]:
    store = _store(ctx)
    target = store.read(to)
    revision = store.commit(lambda _: target.resources, f"rollback to revision {to}", ctx.clock())
    return revision, push(ctx.home)


def listing(ctx: Context, kind: Kind, name: str | None) -> list[Resource]:
    found = [r for r in _store(ctx).read().resources if r["kind"] == kind.name
             and (name is None or r["metadata"]["name"] == name)]
    if name is not None and not found:
        raise InvalidInput(f"{kind.name.lower()} {name!r} not found", f"see `meshctl get {kind.name.lower()}`")
    return found
