"""`meshctl completion bash|zsh|fish`: print the shell's completion script, as `kubectl completion` does.

The scripts and the answering side are typer's own (its bash, zsh and fish classes): the script calls
`meshctl` back with `_MESHCTL_COMPLETE=complete_<shell>` set, and typer's entry point answers with the
commands, options and values that fit. typer's hidden `--install-completion` stays off: editing a user's
shell rc files is not a mesh CLI's business; `source <(meshctl completion bash)` is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from typer._completion_classes import completion_init

try:
    from typer._click.shell_completion import get_completion_class
except ImportError:  # typer < 0.20 uses click itself
    from click.shell_completion import get_completion_class  # type: ignore[no-redef,assignment,unused-ignore]

from meshctl.context import Context
from meshctl.errors import UsageError

PROG = "meshctl"
COMPLETE_VAR = "_MESHCTL_COMPLETE"


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


SHELLS = ", ".join(s.value for s in Shell)


def script(command: Any, shell: Shell) -> str:
    """The completion script for `shell`, for the click command typer built from meshctl's app."""
    cls = get_completion_class(shell.value)
    assert cls is not None, "completion_init() registers typer's bash, zsh and fish classes at import"
    return str(cls(command, {}, PROG, COMPLETE_VAR).source()).strip()


def _shells(incomplete: str) -> list[str]:
    return [s.value for s in Shell if s.value.startswith(incomplete)]


def completion(
    ctx: typer.Context,
    shell: Annotated[str, typer.Argument(metavar="SHELL", help=f"One of {SHELLS}.", autocompletion=_shells,
                                         show_default=False)],
) -> None:
    """Print a shell completion script for meshctl.

    bash: `source <(meshctl completion bash)` (or save it under /etc/bash_completion.d/);
    zsh: `source <(meshctl completion zsh)` after `compinit`;
    fish: `meshctl completion fish > ~/.config/fish/completions/meshctl.fish`.
    """
    c: Context = ctx.obj
    if shell not in Shell.__members__:
        raise UsageError(f"unknown shell {shell!r}", f"use one of {SHELLS}")
    text = script(ctx.find_root().command, Shell(shell))
    c.out.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    # typer registers its completion classes only for apps with add_completion on; meshctl's answers
    # `_MESHCTL_COMPLETE` requests (typer's entry point does) with these classes too.
    completion_init()
    app.command()(completion)
