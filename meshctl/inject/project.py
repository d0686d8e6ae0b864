"""Read a compose *project* the way compose reads it: several `-f` files merged in order, `.env` and
`--env-file`, `${VAR}` interpolation with defaults and errors, `profiles`, `extends` and `include`.

meshctl does not re-implement those rules. A project that uses none of them (one file, no interpolation,
no `extends`/`include`, no service left out by its profiles) is read as it is, round trip, so the meshed
file keeps the user's comments and text. Any other project is read by compose itself (`config`): v2's
canonical model as JSON, or v1's YAML where only v1 is installed, refusing up front what v1 cannot read.
Compose resolves relative paths to absolute ones there, so the meshed file works wherever it is written
(it already names the proxies' absolute directories).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from meshctl.config.safeyaml import YAMLProblem
from meshctl.errors import InvalidInput, UsageError
from meshctl.fsutil import read_text
from meshctl.inject import load, rewrite, yamlrt
from meshctl.runtime.compose import ComposeTool, find_compose

INSTALL_V2 = "install compose v2 (./install.sh does)"
# `$$` is a literal dollar; `$NAME` and `${...}` are interpolated.
_DOLLAR = re.compile(r"\$\$|\$(?=[{A-Za-z_])")
_RAW_BREAKS = re.compile("[\x85\u2028\u2029]")
_REQUIRED = re.compile(r"required variable (\S+) is missing a value(?::\s*(.*))?")


@dataclass(frozen=True)
class Request:
    """What the user asked for, as `docker compose` options name it."""
    files: tuple[str, ...]
    env_files: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    project_directory: Path | None = None
    project_name: str | None = None


@dataclass(frozen=True)
class Loaded:
    compose: load.ComposeFile
    project_name: str | None  # what decides the name beyond the model: -p, COMPOSE_PROJECT_NAME (env or .env)
    note: str = ""  # one line for stderr when the output is built from compose's resolved model


def dotenv(text: str) -> dict[str, str]:
    """The variables of a compose env file: KEY=VALUE lines, `export ` allowed, quotes and ` #` comments."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out


def _environment(request: Request, directory: Path) -> dict[str, str]:
    """The variables compose interpolates with: the env files' (default `.env` in the project directory),
    overridden by the process environment, as compose does."""
    files = [Path(f) for f in request.env_files] or [p for p in [directory / ".env"] if p.is_file()]
    merged: dict[str, str] = {}
    for file in files:
        if not file.is_file():
            raise UsageError(f"{file}: no such env file", "give the path of an existing file to --env-file")
        merged.update(dotenv(read_text(file)))
    return merged | dict(os.environ)


def interpolates(node: Any) -> bool:
    """Whether compose would interpolate a value of the tree (comments are not read: `# $HOME` is no reason)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(m.group() != "$$" for m in _DOLLAR.finditer(item)):
                return True
        elif isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return False


def _profiles(request: Request, env: dict[str, str]) -> set[str]:
    chosen = request.profiles or tuple(env.get("COMPOSE_PROFILES", "").split(","))
    return {p.strip() for p in chosen if p.strip()}


def _needs_compose(parsed: load.ComposeFile, active: set[str]) -> str:
    """Why this single file cannot be meshed as written ("" when it can)."""
    if interpolates(parsed.data):
        return "interpolated"
    if "include" in parsed.data:
        return "with its includes"
    services = parsed.data["services"]
    if any(isinstance(s, dict) and "extends" in s for s in services.values()):
        return "with `extends` resolved"
    for svc in services.values():
        profiles = svc.get("profiles") if isinstance(svc, dict) else None
        if isinstance(profiles, list) and not active & {str(p) for p in profiles}:
            return "with the services of inactive profiles left out"
    return ""


def load_project(request: Request, tool: ComposeTool | None = None) -> Loaded:
    """`tool` is for tests; by default the compose found on this machine, v2 first."""
    if not request.files:
        raise UsageError("no compose file given", "name one (meshctl inject compose.yaml) or several with -f")
    if "-" in request.files and len(request.files) > 1:
        raise UsageError("- (stdin) cannot be combined with other -f files", "save stdin to a file first")
    texts = [load.read_source(f) for f in request.files]
    parsed = [load.parse(*t) for t in texts]  # YAML errors name their file before compose is asked
    if len(parsed) > 1 and any(rewrite.MARKER in p.data for p in parsed):
        raise InvalidInput(f"{next(p.source for p in parsed if rewrite.MARKER in p.data)} is already meshed",
                           "mesh the original files, not the meshed one")
    directory = (request.project_directory or parsed[0].directory).resolve()
    env = _environment(request, directory)
    explicit = request.project_name or env.get("COMPOSE_PROJECT_NAME") or None
    names = " + ".join(p.source for p in parsed)
    if len(parsed) == 1:
        why = _needs_compose(parsed[0], _profiles(request, env))
        if not why:  # as it is, but its relative paths and default name are the project directory's, as compose's
            return Loaded(dataclasses.replace(parsed[0], directory=directory), explicit)
        note = f"meshed compose's model of {names}, {why} (comments are not carried over)"
    else:
        note = f"meshed the merged model of {names} (comments are not carried over)"
    tool = tool or find_compose()
    if tool is None or tool.generation == 1:
        _refuse_for_v1(parsed, tool)
    assert tool is not None
    stdin = texts[0][0] if request.files == ("-",) else None
    data = run_config(tool, request, stdin, names)
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict) or not data["services"]:
        raise InvalidInput(f"{names}: the project has no services (with the profiles given)",
                           "enable a profile with --profile, or give a compose file with services")
    text = yamlrt.dump(escape_dollars(copy.deepcopy(data)), like="")
    return Loaded(load.ComposeFile(names, directory, text, data, files=tuple(p.source for p in parsed)), explicit,
                  note)


def _refuse_for_v1(parsed: list[load.ComposeFile], tool: ComposeTool | None) -> None:
    """What docker-compose 1.29 cannot read, named before it is asked (its own errors say less)."""
    if tool is None:
        raise InvalidInput(f"{parsed[0].source}: reading this project needs compose (interpolation, several files,"
                           " profiles or extends)", INSTALL_V2)
    for file in parsed:
        if "include" in file.data:
            raise InvalidInput(f"{file.source}: `include` needs compose v2 (docker-compose {tool.version} "
                               "cannot read it)", INSTALL_V2)
        if "name" in file.data:
            raise InvalidInput(f"{file.source}: the top-level `name` needs compose v2 (docker-compose "
                               f"{tool.version} cannot read it)", f"{INSTALL_V2}, or pass -p NAME instead")


def config_argv(tool: ComposeTool, request: Request) -> list[str]:
    argv = [*tool.argv]
    if request.project_directory is not None:
        argv += ["--project-directory", str(request.project_directory)]
    if request.project_name:
        argv += ["-p", request.project_name]
    if tool.generation == 1 and len(request.env_files) > 1:
        raise UsageError(f"{', '.join(request.env_files)}: docker-compose {tool.version} reads one --env-file",
                         INSTALL_V2)
    for env_file in request.env_files:
        argv += ["--env-file", env_file]
    for profile in request.profiles:
        argv += ["--profile", profile]
    for file in request.files:
        argv += ["-f", file]
    return argv + (["config", "--format", "json"] if tool.generation == 2 else ["config"])


def _run(argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)


def run_config(tool: ComposeTool, request: Request, stdin: str | None, names: str) -> Any:
    """Compose's resolved model of the project; its refusal becomes one line naming the files."""
    argv = config_argv(tool, request)
    try:
        done = _run(argv, stdin)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidInput(f"{names}: `{' '.join(argv)}` could not run: {exc}", "check the compose install") from exc
    if done.returncode != 0:
        raise refusal(names, done.stderr or done.stdout)
    try:  # both compose generations write each `$` of a value as `$$`, so that compose reads it back
        return unescape_dollars(json.loads(done.stdout) if tool.generation == 2 else yamlrt.load(done.stdout))
    except (ValueError, YAMLProblem) as exc:
        raise InvalidInput(f"{names}: compose's config output could not be read: {exc}",
                           "report this with the output of `docker compose config`") from exc


def refusal(names: str, stderr: str) -> InvalidInput:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    message = lines[-1] if lines else "compose refused the project"
    message = re.sub(r"^(time=\S+ level=\w+ msg=)?\"?(ERROR:\s*)?", "", message).rstrip('"')
    required = _REQUIRED.search(message)
    if required:
        why = f": {required.group(2)}" if required.group(2) else ""
        return InvalidInput(f"{names}: variable {required.group(1)} is not set{why}",
                            f"set {required.group(1)} in the environment, in .env or in a file given with --env-file")
    return InvalidInput(f"{names}: compose refuses the project: {message}",
                        "fix the file (`docker compose config` shows the same error)")


def _strings(node: Any, change: Callable[[str], str]) -> Any:
    """`node` with `change` applied to every string value (in place: the caller's own copy)."""
    if isinstance(node, str):
        return change(node)
    if isinstance(node, dict):
        for key in list(node):
            node[key] = _strings(node[key], change)
    elif isinstance(node, list):
        node[:] = [_strings(v, change) for v in node]
    return node


def unescape_dollars(node: Any) -> Any:
    """The values as compose resolved them, for the planner (escape_dollars writes them back)."""
    return _strings(node, lambda text: text.replace("$$", "$"))


def _escaped(text: str) -> str:
    text = text.replace("$", "$$")
    return DoubleQuotedScalarString(text) if _RAW_BREAKS.search(text) else text


def escape_dollars(node: Any) -> Any:
    """Compose interpolates the meshed file again when it runs it: a resolved `$` must stay a literal `$`.
    A YAML line break other than \\n (NEL, LS, PS) is written escaped: ruamel writes it raw in single quotes,
    where it reads back as a space."""
    return _strings(node, _escaped)
