"""`meshctl version`: the client's version and the sidecar image's (read from its label)."""

from __future__ import annotations

from typing import Annotated

import typer

from meshctl import __version__, const
from meshctl.context import Context
from meshctl.errors import MeshError
from meshctl.output import OutputFormat, OutputOption, emit, simple_table
from meshctl.runtime import images


def _sidecar_version(c: Context) -> str:
    ref = c.home.settings().proxy_image if c.home.is_installed() else const.PROXY_IMAGE
    try:
        image = images.find_image(c.docker(), ref)
    except MeshError as exc:
        return f"unknown ({exc.message})"
    if image is None:
        return "not built (run `meshctl install`)"
    return images.image_label(image, const.LABEL_VERSION) or "unknown"


def short() -> str:
    """`meshctl --version` and `meshctl version --short`: the client alone, no engine asked."""
    return f"meshctl {__version__}"


def version(
    ctx: typer.Context,
    output: OutputOption = OutputFormat.table,
    short_form: Annotated[bool, typer.Option("--short", help="Print only the client's version "
                                                             "(as `meshctl --version`); no engine is asked.")] = False,
) -> None:
    """Print the meshctl client version and the sidecar image version."""
    c: Context = ctx.obj
    if short_form and output is OutputFormat.table:
        c.out.print(short(), markup=False, highlight=False)
        return
    data = {"client": __version__} if short_form else {"client": __version__, "sidecar": _sidecar_version(c)}
    emit(c.out, output, data, lambda: simple_table(["component", "version"], list(data.items())))


def register(app: typer.Typer) -> None:
    app.command()(version)
