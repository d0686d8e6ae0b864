"""Safe YAML for files users give us: every way a document can be broken becomes one `YAMLProblem`.

PyYAML's safe loader already refuses code; what it lets through and the rest of meshctl cannot take is
caught here, before anything walks the data: nesting deep enough to exhaust the stack, integers too long
to convert, aliases that make a document contain itself, and aliases that multiply a small file into
millions of nodes ("billion laughs") that a later JSON or YAML dump would spell out in full.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 64  # compose files and Istio resources are a dozen levels deep at most
MAX_NODES = 1_000_000  # counted with every alias expanded, as a dump would write them


class YAMLProblem(ValueError):
    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(problem)
        self.problem, self.line, self.column = problem, line, column


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing deep nesting as it composes (before Python's stack runs out)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep", mark.line + 1,
                                  mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_tree(doc: Any) -> None:
    """Depth, cycles and expanded size in one pass that shares work between aliases (no recursion).

    Public for the injector's YAML 1.2 round-trip loader (meshctl.inject.yamlrt), whose trees are dicts
    and lists too."""
    size: dict[int, int] = {}  # id -> nodes under it, aliases expanded
    depth: dict[int, int] = {}
    open_: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        containers = [c for c in children if isinstance(c, (dict, list))]
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + len(children) + sum(size[id(c)] for c in containers)
            depth[id(node)] = 1 + max((depth[id(c)] for c in containers), default=0)
            if size[id(node)] > MAX_NODES:
                raise YAMLProblem(f"the document expands to more than {MAX_NODES:,} values (through aliases?)")
            if depth[id(node)] > MAX_DEPTH:
                raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep")
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise YAMLProblem("the document contains itself through an alias")
        open_.add(id(node))
        stack.append((node, True))
        if len(open_) > MAX_DEPTH:
            raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep")
        stack += [(c, False) for c in containers]


def _parse(text: str, all_documents: bool) -> list[Any]:
    try:
        docs = list(yaml.load_all(text, Loader=_Loader)) if all_documents else [yaml.load(text, Loader=_Loader)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YAMLProblem(str(problem), mark.line + 1 if mark else None, mark.column + 1 if mark else None) from exc
    except YAMLProblem:
        raise
    except RecursionError:
        raise YAMLProblem(f"the document is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer longer than Python converts (sys.int_info.default_max_str_digits)
        raise YAMLProblem(str(exc).split(";")[0]) from None
    for doc in docs:
        check_tree(doc)
    return docs


def load(text: str) -> Any:
    """The one document in `text` (None when empty); raises YAMLProblem."""
    return _parse(text, all_documents=False)[0]


def load_all(text: str) -> list[Any]:
    """Every document in `text`, empty ones included as None; raises YAMLProblem."""
    return _parse(text, all_documents=True)
