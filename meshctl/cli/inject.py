"""`meshctl inject`: the counterpart of `istioctl kube-inject` for compose files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from meshctl.context import Context
from meshctl.fsutil import atomic_write
from meshctl.inject.injector import inject as run_inject


class Mode(StrEnum):
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


def inject(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The compose file to mesh, or - to read it from stdin.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the meshed compose file here "
                                                                       "(default: stdout).")] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", envvar="COMPOSE_PROJECT_NAME",
                                                     help="Compose project name, the identity's namespace "
                                                          "(default: as compose derives it).")] = None,
    mtls_mode: Annotated[Mode, typer.Option("--mtls-mode", case_sensitive=False,
                                            help="Mesh-wide peer authentication mode; a service's "
                                                 "`mesh.mtls-mode` label overrides it.")] = Mode.PERMISSIVE,
) -> None:
    """Add a sidecar to every service: transparent capture, mutual TLS, telemetry. Idempotent."""
    c: Context = ctx.obj
    result = run_inject(c, file, project_name, mtls_mode.value, output.parent if output else None)
    if output is None:
        c.out.file.write(result.text)
        c.out.file.flush()
    else:
        atomic_write(output, result.text)
    if result.unchanged:
        c.err.print("already meshed: returned unchanged")
        return
    skipped = f"; {len(result.skipped)} opted out ({', '.join(result.skipped)})" if result.skipped else ""
    c.err.print(f"meshed {len(result.pods)} services in project {result.project!r}{skipped}. "
                f"Run it with: docker compose -p {result.project} -f {output or 'meshed.yaml'} up -d",
                highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(inject)
