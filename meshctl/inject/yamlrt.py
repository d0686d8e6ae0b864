"""Compose files read and written as compose reads them: YAML 1.2, round trip (ruamel.yaml "rt").

PyYAML speaks YAML 1.1, where `NO`, `on` and `1:20` are false, true and 80; compose (YAML 1.2) reads them
as strings. The round trip keeps each scalar's text, quoting, comments, anchors and key order, so only
what inject changes differs in the meshed file. The protections of `safeyaml` hold here too: nesting is
refused while composing, and aliases that multiply or contain the document are refused before any walk.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import YAMLError
from ruamel.yaml.resolver import VersionedResolver

from meshctl.config import safeyaml
from meshctl.config.safeyaml import MAX_DEPTH, YAMLProblem

WIDTH = 1 << 16  # never fold a long plain scalar onto two lines: its text must stay as the user wrote it


class _Resolver(VersionedResolver):
    """YAML 1.2 as compose (go-yaml v3) resolves it: `=` is a string, not YAML 1.1's "value" key, and a
    timestamp-like scalar stays the text it is (compose decodes it into a string too)."""

    def add_version_implicit_resolver(self, version: Any, tag: Any, regexp: Any, first: Any) -> None:
        if tag not in ("tag:yaml.org,2002:value", "tag:yaml.org,2002:timestamp"):
            super().add_version_implicit_resolver(version, tag, regexp, first)


class _Composer(Composer):
    """Refuses deep nesting as it composes, before Python's stack runs out (the composer recurses)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.parser.peek_event().start_mark
                raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep", mark.line + 1,
                                  mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml(mapping: int = 2, offset: int = 2) -> YAML:
    yaml = YAML(typ="rt", pure=True)  # YAML 1.2 unless the file says otherwise; no directive is written
    yaml.Composer = _Composer
    yaml.Resolver = _Resolver
    yaml.preserve_quotes = True
    yaml.width = WIDTH
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return yaml


def load(text: str) -> Any:
    """The one document in `text` as ruamel's round-trip tree (None when empty); raises YAMLProblem."""
    try:
        with warnings.catch_warnings():  # a redefined anchor is legal YAML: ruamel would warn on stderr
            warnings.simplefilter("ignore")
            doc = _yaml().load(text)
    except YAMLProblem:
        raise
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise YAMLProblem(str(problem), mark.line + 1 if mark else None, mark.column + 1 if mark else None) from exc
    except RecursionError:
        raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, TypeError) as exc:  # e.g. an integer longer than Python converts, a date out of range
        raise YAMLProblem(str(exc).split(";")[0] or type(exc).__name__) from None
    safeyaml.check_tree(doc)
    _keep_anchors(doc)
    return doc


def _keep_anchors(doc: Any) -> None:
    """Write the user's anchors back even where inject leaves a single use (e.g. an `x-` block)."""
    stack, seen = [doc], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        anchor = getattr(node, "anchor", None)
        if anchor is not None and getattr(anchor, "value", None):
            anchor.always_dump = True
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node


_KEY_LINE = re.compile(r"^( *)[^\s#-][^#]*:\s*(#.*)?$")  # `key:` alone on its line: a block collection follows


def guess_indent(text: str) -> tuple[int, int]:
    """(mapping indent, offset of a sequence's dash) as the file writes them, so rewritten parts match."""
    mapping = offset = None
    parent: int | None = None
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if parent is not None and indent >= parent:
            if stripped.startswith("- ") or stripped == "-":
                offset = indent - parent if offset is None else offset
            elif indent > parent and mapping is None:
                mapping = indent - parent
        if mapping is not None and offset is not None:
            break
        key = _KEY_LINE.match(line)
        parent = len(key.group(1)) if key else None
    mapping = mapping if mapping and mapping <= 8 else 2
    return mapping, offset if offset is not None and offset <= 8 else mapping


def dump(doc: Any, like: str) -> str:
    """`doc` as YAML, indented the way the text `like` is."""
    out = io.StringIO()
    _yaml(*guess_indent(like)).dump(doc, out)
    text = out.getvalue()
    return text if text.endswith("\n") else text + "\n"  # ruamel ends on a trailing comment's text
