"""`meshctl uninject`: give back the compose file `meshctl inject` was given."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.fsutil import atomic_write, user_file_mode
from meshctl.inject.uninject import replaced_original
from meshctl.inject.uninject import uninject as run_uninject


def uninject(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="A compose file `meshctl inject` wrote, or - to read it from stdin.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the original here (default: stdout; "
                                                "the input is replaced only when this names it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="When the meshed file was edited since inject: remove what "
                                        "meshctl added and keep the edits and comments as they are.")] = False,
) -> None:
    """Give back the compose file inject was given: byte for byte when the meshed file is as inject wrote it."""
    c: Context = ctx.obj
    result = run_uninject(file, force)
    named = replaced_original(result, output, file) if output is not None else None
    if named is not None:  # the message below says those files were never changed: keep it true
        raise UsageError(f"{output} is {named}, a file inject read: uninject gives back compose's resolved model "
                         "of the project (merged, interpolated), which would replace it",
                         "write the model elsewhere with -o, or keep using your own files as they are")
    if output is None:
        stream = c.out.file
        stream.flush()
        binary = getattr(stream, "buffer", None)  # bytes as they are: a text stream could re-encode them
        if binary is not None:
            binary.write(result.data)
            binary.flush()
        else:
            stream.write(result.data.decode())
    else:
        atomic_write(output, result.data, user_file_mode(output, [Path(file)] if file != "-" else []))
    where = str(output or "stdout")
    if result.model:
        what = "merged model" if len(result.files) > 1 else "resolved model"
        c.err.print(f"wrote to {where} compose's {what} of {', '.join(result.files)} without the mesh; the original "
                    "files were never changed: use them as they are", highlight=False)
    elif result.exact:
        c.err.print(f"wrote the original of {file} to {where}, byte for byte", highlight=False)
    else:
        c.err.print(f"removed what meshctl added to {file} (sidecars, injected keys, the mesh network) and wrote the "
                    f"rest to {where}; your edits and comments were kept as they are", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(uninject)
