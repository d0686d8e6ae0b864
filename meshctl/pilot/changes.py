"""A config change as the CLI makes it: committed to the store through Galley, then pushed to every proxy.

Galley (`meshctl.config.changes`) only stores; compiling and delivering the new revision is Pilot's, so
commit-then-push lives here, above both. The readers (`current`, `listing`) are Galley's own, passed on so
a command needs one module for the store it reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable

from meshctl.config import changes as galley
from meshctl.config.changes import ANY_NAMESPACE, current, listing
from meshctl.config.kinds import Kind
from meshctl.config.resources import Resource
from meshctl.config.store import Revision
from meshctl.context import Context
from meshctl.pilot.push import Pushed
from meshctl.pilot.push import push as push_home

__all__ = ["ANY_NAMESPACE", "apply", "current", "delete", "edit", "listing", "rollback"]


def push(ctx: Context) -> Pushed:
    """Push, saying which hosts the new snapshots could not reach yet."""
    pushed = push_home(ctx.home)
    for warning in pushed.warnings:
        ctx.err.print(f"warning: {warning}", highlight=False, markup=False)
    return pushed


def apply(ctx: Context, resources: list[Resource]) -> tuple[Revision, list[tuple[Resource, str]], Pushed]:
    """Create or replace `resources` in one revision (refused whole when one is invalid), then push it."""
    revision, outcome = galley.apply(ctx, resources)
    return revision, outcome, push(ctx)


def edit(ctx: Context, change: Callable[[list[Resource]], list[Resource]], message: str) -> tuple[Revision, Pushed]:
    """Any other change (route set, rollout steps): `change` validates and raises, or returns the new list."""
    revision = galley.edit(ctx, change, message)
    return revision, push(ctx)


def delete(ctx: Context, kind: Kind, name: str,
           namespace: str | None = ANY_NAMESPACE) -> tuple[Revision, Pushed, Resource]:
    """Delete one resource (returned too), then push."""
    revision, gone = galley.delete(ctx, kind, name, namespace)
    return revision, push(ctx), gone


def rollback(ctx: Context, to: int) -> tuple[Revision, Pushed]:
    revision = galley.rollback(ctx, to)
    return revision, push(ctx)
