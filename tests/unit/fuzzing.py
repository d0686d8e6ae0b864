"""What the fuzz tests share: an in-process CLI on a mesh home, the store's bytes, and hypothesis strategies.

The CLI runs in this process (tests/unit/cli.py: the entry point the real command uses) so hundreds of
examples stay fast; a few cases per area also run the real `meshctl` in a subprocess.
"""

from __future__ import annotations

import copy
import io
import json
import os
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rich.console import Console

from meshctl.context import Context
from meshctl.home import MeshHome
from tests.unit.cli import Done, meshctl, no_engine

SCALE = float(os.environ.get("MESHCTL_FUZZ_SCALE", "1"))  # e.g. 20 for a long hunt; the unit suite runs with 1


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


FUZZ = examples(150)
FEW = examples(60)
CLI = examples(40)  # a whole command per example
SLOW_S = 10.0  # one example taking longer than this is a hang for our purposes


def context(home: Path) -> Context:
    def console() -> Console:
        return Console(file=io.StringIO(), width=400, soft_wrap=True, no_color=True, highlight=False)

    return Context(home=MeshHome(home), out=console(), err=console(), docker_factory=no_engine)


Ran = Done  # the name tests written before tests/unit/cli.py use for its result


def run_cli(home: Path, *argv: str) -> Done:
    """`meshctl ARGV` in this process, through the real entry point (never raises), no engine."""
    return meshctl(*argv, home=home, engine=no_engine)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err and not lines[0].startswith("error: unexpected "), err  # the CLI's "a bug" line
    return lines[0]


def make_home(root: Path) -> Path:
    """A mesh home with settings, CA and an empty store, made by install's local steps (no engine)."""
    from meshctl.lifecycle import install

    ctx = context(root)
    chosen = install.resolve_settings(ctx, None, None, None)
    for step in (install.HomeStep(ctx, chosen), install.CAStep(ctx, chosen), install.StoreStep(ctx)):
        step.apply(lambda _: None)
    return root


def tree_state(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes (lock files aside): equal before and after = nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# --- strategies --------------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "", " ", "\n", "reviews\n", "Reviews", "a b", "-x", "x-", "²", "١٢", "0", "-1", "65536", "1e400", "9" * 5000,
    "nan", "inf", "1.5", "250ms", "1.5s", "2m", "1h", "10d", "s", "ms1", "1 s", ".5s", "1.s", "((", "a{99999999999}",
    "(" * 2000 + ")" * 2000, "[", "*", "\x00", "\ud800", "🙂", "true", "null", "~", "{}", "[]", "a:b", "a=b",
    "header:x=y", "path~=(", "http://", "https://x", "STRICT", "strict", "v1", "v1=90", "=", "5xx", "503",
])
TEXT = st.one_of(ODD_TEXT, st.text(max_size=30), st.text(string.ascii_lowercase + string.digits + "-.", max_size=12))
KEYS = st.one_of(TEXT, st.integers(-5, 70000), st.booleans(), st.none(), st.dates())  # YAML keys need not be strings
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    TEXT, st.dates(), st.datetimes(), st.binary(max_size=8),
)


def values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Anything safe YAML can hold: scalars (dates and bytes too), lists and mappings, nested."""
    return st.recursive(SCALAR, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(KEYS, inner, max_size=4),
    ), max_leaves=max_leaves)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Anything JSON can hold."""
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), TEXT)
    return st.recursive(scalar, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=max_leaves)


def _slots(node: Any, depth: int = 1) -> list[tuple[int, Any, Any]]:
    """(depth, container, key) of every value in the tree, the root's fields (depth 1) included."""
    found: list[tuple[int, Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        found.append((depth, node, k))
        found += _slots(v, depth + 1)
    return found


@st.composite
def mutants(draw: st.DrawFn, base: st.SearchStrategy[Any], leaf: st.SearchStrategy[Any],
            key: st.SearchStrategy[Any] = KEYS) -> Any:
    """A copy of a valid document with one to three changes: a value replaced, dropped, added, or wrapped."""
    doc = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        deepest = draw(st.sampled_from([1, 2, 3, 1000]))  # shallow fields (kind, metadata) as often as deep ones
        slots = [(c, k) for depth, c, k in _slots(doc) if depth <= deepest]
        if not slots:
            break
        container, k = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "wrap"]))
        if action == "replace":  # copies: a later change must not edit a strategy's own constants
            container[k] = copy.deepcopy(draw(leaf))
        elif action == "delete":
            del container[k]
        elif action == "add" and isinstance(container, dict):
            container[draw(key)] = copy.deepcopy(draw(leaf))
        elif action == "add":
            container.append(copy.deepcopy(draw(leaf)))
        else:
            container[k] = draw(st.sampled_from([[container[k]], {"x": container[k]}]))
    return doc


def to_yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


BIG_YAML = {
    "deep": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_block": "".join("  " * i + f"k{i}:\n" for i in range(2000)),
    "billion_laughs": "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)) + "services: {web: {image: *a8}}\n"
    + "apiVersion: *a8\nkind: VirtualService\nspec: {hosts: *a8}\n",
    "self_reference": "services: &s {web: {image: x, labels: *s}}\nspec: &t {hosts: [*t]}\n",
    "huge_int": "services: {web: {image: x, scale: " + "1" * 5000 + "}}\n",
    "long_doc": "services:\n" + "".join(f"  s{i}: {{image: x, depends_on: [nope{i}]}}\n" for i in range(3000)),
    "tab_indent": "services:\n\tweb: {image: x}\n",
    "nul": "services: {web: {image: \x00}}\n",
    "dates": "services: {web: {image: 2001-12-14, extra_hosts: [2001-12-14]}}\n",
    "binary": "services: {web: {image: !!binary aGVsbG8=}}\n",
    "python_tag": "services: !!python/object/apply:os.system [echo hi]\n",
    "many_docs": "a: 1\n---\nb: 2\n",
}
JUNK_BYTES = [b"\xff\xfe\x00\x01", b"\x89PNG\r\n\x1a\n\x00\x00", bytes(range(256)),
              b"services:\n  web: {image: \xc3\x28}\n"]


def json_roundtrips(value: Any) -> bool:
    return bool(json.loads(json.dumps(value, allow_nan=False)) == value)
