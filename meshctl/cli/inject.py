"""`meshctl inject`: the counterpart of `istioctl kube-inject` for compose files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from meshctl.context import Context
from meshctl.fsutil import atomic_write, user_file_mode
from meshctl.inject.injector import inject as run_inject
from meshctl.inject.project import Request, load_project


class Mode(StrEnum):
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


def inject(
    ctx: typer.Context,
    file: Annotated[str | None, typer.Argument(help="The compose file to mesh, or - to read it from stdin.")] = None,
    files: Annotated[list[str] | None, typer.Option("--file", "-f", help="A compose file of the project; repeat "
                                                    "to merge several in order, as compose does.")] = None,
    env_files: Annotated[list[str] | None, typer.Option("--env-file", help="Variables to interpolate with (repeatable;"
                                                        " default: .env in the project directory).")] = None,
    profiles: Annotated[list[str] | None, typer.Option("--profile", help="Enable a compose profile (repeatable; "
                                                       "default: COMPOSE_PROFILES).")] = None,
    project_directory: Annotated[Path | None, typer.Option("--project-directory", help="Where relative paths and "
                                                           ".env are read from (default: the first file's "
                                                           "directory).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the meshed compose file here "
                                                                       "(default: stdout).")] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", "--project",
                                                     envvar="COMPOSE_PROJECT_NAME",
                                                     help="Compose project name, the identity's namespace "
                                                          "(default: as compose derives it).")] = None,
    mtls_mode: Annotated[Mode, typer.Option("--mtls-mode", case_sensitive=False,
                                            help="Mesh-wide peer authentication mode; a service's "
                                                 "`mesh.mtls-mode` label overrides it.")] = Mode.PERMISSIVE,
    place: Annotated[list[str] | None, typer.Option("--place", help="SERVICE=CONTEXT: run a service's pods on that "
                                                    "node of the cluster (repeatable; CONTEXT,CONTEXT spreads "
                                                    "replicas). Overrides its `mesh.host` label.")] = None,
) -> None:
    """Add a sidecar to every service: transparent capture, mutual TLS, telemetry. Idempotent."""
    c: Context = ctx.obj
    loaded = load_project(Request(tuple(([file] if file else []) + (files or [])), tuple(env_files or ()),
                                  tuple(profiles or ()), project_directory, project_name))
    if loaded.note:
        c.err.print(loaded.note, highlight=False, markup=False)
    result = run_inject(c, loaded.compose, loaded.project_name, mtls_mode.value, output.parent if output else None,
                        tuple(place or ()))
    if output is None:
        c.out.file.write(result.text)
        c.out.file.flush()
    else:
        sources = [Path(f) for f in loaded.compose.files or (loaded.compose.source,) if f != "<stdin>"]
        atomic_write(output, result.text, user_file_mode(output, sources))
    if result.unchanged:
        c.err.print("already meshed: returned unchanged")
        return
    skipped = f"; {len(result.skipped)} opted out ({', '.join(result.skipped)})" if result.skipped else ""
    run = f"meshctl up {output or 'meshed.yaml'}" if c.home.settings().cluster else \
        f"docker compose -p {result.project} -f {output or 'meshed.yaml'} up -d"
    c.err.print(f"meshed {len(result.pods)} services in project {result.project!r}{skipped}. Run it with: {run}",
                highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(inject)
