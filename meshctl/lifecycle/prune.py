"""`meshctl prune`: the mesh home's leftovers of compose projects that no longer exist.

A project meshctl meshed leaves proxy directories (snapshot, certificate, key) under proxies/<project>/
and may have config in the store under its namespace. Once no container of it is left, running or stopped
(compose's own label, com.docker.compose.project), nothing reads them. Only projects with proxy
directories count: config applied ahead of a project's first `up` is not a leftover. Fail closed: an
engine that does not answer stops prune, and the engine is asked again just before anything is removed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.config.resources import Resource, namespace_of, qualified_name
from meshctl.context import Context
from meshctl.fsutil import locked, os_error
from meshctl.pilot import changes
from meshctl.runtime.engine import engine_errors

PROJECT_LABEL = "com.docker.compose.project"


@dataclass
class Leftovers:
    project: str
    proxy_dirs: list[Path] = field(default_factory=list)  # each holds a certificate and its key
    resources: list[Resource] = field(default_factory=list)

    def describe(self) -> list[tuple[str, str, str]]:
        rows = [(self.project, "proxy files (certificate, key, snapshot)", str(d)) for d in self.proxy_dirs]
        return rows + [(self.project, "config", f"{r['kind']} {qualified_name(r)}") for r in self.resources]


def live_projects(ctx: Context) -> set[str]:
    """Every compose project with a container, running or stopped."""
    with engine_errors("list the compose projects' containers"):
        containers = ctx.docker().containers.list(all=True, filters={"label": PROJECT_LABEL})
    return {c.labels[PROJECT_LABEL] for c in containers if c.labels.get(PROJECT_LABEL)}


def find(ctx: Context) -> list[Leftovers]:
    ctx.home.settings()  # NotInstalled, with the fix, when there is no mesh here
    root = ctx.home.proxies_dir
    meshed = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    live = live_projects(ctx)
    resources = changes.current(ctx)
    return [Leftovers(project, sorted(p for p in (root / project).iterdir() if p.is_dir()),
                      [r for r in resources if namespace_of(r) == project])
            for project in meshed if project not in live]


def remove(ctx: Context, found: list[Leftovers]) -> list[Leftovers]:
    """Remove these leftovers, except those of projects that got a container since they were found; returns
    what was removed."""
    live = live_projects(ctx)
    gone = [f for f in found if f.project not in live]
    # Config first: a project is found by its proxy directories, so removing them first and failing before the
    # config edit would leave config that no later prune finds. This way a failure leaves directories to retry.
    names = {f.project for f in gone if f.resources}
    if names:  # one revision for all; the push recompiles the remaining proxies without them
        changes.edit(ctx, lambda current: [r for r in current if namespace_of(r) not in names],
                     f"prune the config of gone projects {', '.join(sorted(names))}")
    with locked(ctx.home.ca_dir / ".lock"):  # the certificate agent renews under this lock: never mid-removal
        for leftovers in gone:
            target = ctx.home.proxies_dir / leftovers.project
            try:
                shutil.rmtree(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise os_error(exc, target, "remove") from exc
    return gone
