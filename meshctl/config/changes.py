"""Changes to the store (apply, delete, rollback), each one revision, each followed by a push to proxies."""

from __future__ import annotations

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
        return current

    names = ", ".join(f"{r['kind']}/{r['metadata']['name']}" for r in resources)
    revision = _store(ctx).commit(change, f"apply {names}", ctx.clock())
    return revision, outcome, push(ctx.home)


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
