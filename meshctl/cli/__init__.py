"""The `meshctl` command: one typer app, command groups in sibling modules, one error handler.

Command bodies stay thin: they parse flags, call the library, and print. Every MeshError becomes one red
line on stderr and its exit code; a traceback appears only with --debug.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from meshctl import __version__
from meshctl.cli.version import short
from meshctl.context import Context
from meshctl.errors import MeshError
from meshctl.fsutil import FILE_SYSTEM_ERRNOS, os_error
from meshctl.home import MeshHome, default_home
from meshctl.status import ExitCode

app = typer.Typer(
    name="meshctl",
    help="A service mesh for docker compose apps on plain Docker: mTLS, traffic management, observability.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:  # completion parses the line too: it must not print
        out = ctx.obj.out if isinstance(ctx.obj, Context) else Console(soft_wrap=True)
        out.print(short(), markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option("--home", envvar="MESHCTL_HOME", show_envvar=True,
                                              help="Mesh home holding the CA, config store and proxy files "
                                                   "(default: ~/.meshctl).")] = None,
    debug: Annotated[bool, typer.Option("--debug", envvar="MESHCTL_DEBUG",
                                        help="Show tracebacks and engine details on errors.")] = False,
    _version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                           help="Print meshctl's version and exit.")] = False,
) -> None:
    if ctx.obj is None:  # tests pass their own Context
        ctx.obj = Context(home=MeshHome(home or default_home()), debug=debug)
    else:
        ctx.obj.debug = ctx.obj.debug or debug


def _register() -> None:
    from meshctl.cli import (
        analyze,
        bench,
        certs,
        check,
        cluster,
        completion,
        config,
        dashboard,
        demo,
        deploy,
        inject,
        install,
        observe,
        proxy,
        prune,
        rollout,
        route,
        schema,
        security,
        slo,
        tap,
        telemetry,
        uninject,
        version,
    )

    for module in (install, inject, uninject, deploy, demo, config, route, rollout, certs, security, proxy, observe,
                   tap, telemetry, slo, dashboard, bench, analyze, schema, check, prune, cluster, version,
                   completion):
        module.register(app)


_register()


def _click_families() -> list[ModuleType]:
    """Typer >= 0.20 vendors click as typer._click (and no longer installs click); older ones use click itself.
    Catch whichever are importable."""
    families: list[ModuleType] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            families.append(importlib.import_module(name))
    return families


def _exceptions(name: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(family, name) for family in _click_families() if hasattr(family, name))


ClickExit, ClickAbort = _exceptions("Exit"), _exceptions("Abort")
ClickUsageError, ClickException = _exceptions("UsageError"), _exceptions("ClickException")


# commands where Istio users type kubectl's `-n NAMESPACE`; in meshctl -n is always a count
NAMESPACED = frozenset({"apply", "get", "delete"})


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("MESHCTL_DEBUG", "").lower() in ("1", "true", "yes")


def _report(err: Console, exc: MeshError, debug: bool) -> int:
    if debug:
        err.print_exception()
        for detail in exc.details:
            err.print(f"  - {escape(detail)}", highlight=False)
    err.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False)
    return exc.code


def run(argv: list[str], obj: Context | None = None) -> int:
    """Run meshctl with `argv` and return its exit code; never raises (the CLI's and the tests' entry)."""
    err = obj.err if obj else Console(stderr=True, soft_wrap=True)
    debug = _debug_requested(argv) or bool(obj and obj.debug)
    try:
        result = typer.main.get_command(app).main(args=argv, prog_name="meshctl", standalone_mode=False, obj=obj)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except MeshError as exc:
        return _report(err, exc, debug)
    except ClickExit as exc:
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except ClickAbort:
        err.print("[red]aborted[/]")
        return ExitCode.INTERRUPTED
    except ClickUsageError as exc:
        command = getattr(exc, "ctx", None)
        where = f" (see `{command.command_path} -h`)" if command else ""
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        if getattr(exc, "option_name", None) == "-n" and command and command.info_name in NAMESPACED:
            where = " (kubectl's -n: meshctl names the compose project, its namespace, with -p/--project)"
        err.print(f"[bold red]error:[/] {escape(message)}{where}", highlight=False)
        return ExitCode.USAGE
    except ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if isinstance(exc, OSError) and (exc.filename or exc.errno in FILE_SYSTEM_ERRNOS):
            # a file operation the library did not translate (a full disk, a read-only or foreign home)
            return _report(err, os_error(exc, exc.filename or "a file", "access"), debug)
        if debug:
            err.print_exception()
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc}; rerun with --debug and report it",
                  highlight=False)
        return ExitCode.FAILED


def main() -> None:
    sys.exit(run(sys.argv[1:]))


__all__ = ["__version__", "app", "main", "run"]
