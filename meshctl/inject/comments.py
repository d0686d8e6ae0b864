"""Keep the user's comments where they belong when inject reshapes a service.

ruamel attaches the full-line comments *before* a key to the last value written above it, deep inside
the previous service ("the tail"). Inject edits the end of a service (it adds `network_mode`, moves
`ports` to the sidecar) and puts a sidecar in front of it, so before editing it takes that tail off and
afterwards hangs it, and the service's own leading comment, in front of the right key again.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString
from ruamel.yaml.tokens import CommentToken

_POST = {CommentedMap: 2, CommentedSeq: 0}  # where ruamel keeps the comment after an entry's value


def _last_slot(node: Any) -> tuple[Any, Any, int] | None:
    """The deepest entry holding a comment at the very end of `node`: (container, key, slot)."""
    found = None
    while isinstance(node, (CommentedMap, CommentedSeq)) and len(node):
        if isinstance(node, CommentedMap):  # keys a `<<:` merge brings are written elsewhere
            own = [k for k, _ in node.non_merged_items()]
            if not own:
                break
            key = own[-1]
        else:
            key = len(node) - 1
        slot = _POST[type(node)]
        entry = node.ca.items.get(key)
        if entry and len(entry) > slot and isinstance(entry[slot], CommentToken):
            found = (node, key, slot)
        node = node[key]
    return found


def pop_tail(node: Any) -> list[CommentToken]:
    """Take the full-line comments (and blank lines) that follow `node`'s last value; keep its end-of-line one."""
    found = _last_slot(node)
    if found is None:
        return []
    container, key, slot = found
    token: CommentToken = container.ca.items[key][slot]
    block = isinstance(container[key], (LiteralScalarString, FoldedScalarString))  # no end-of-line comment
    cut = 0 if block else token.value.find("\n") + 1
    head, tail = token.value[:cut], token.value[cut:]
    if not tail:
        return []
    if head.strip():
        token.value = head
    else:
        container.ca.items[key][slot] = None
        inner = container[key]  # a flow collection holds the same token as its own comment
        if isinstance(inner, (CommentedMap, CommentedSeq)) and inner.ca.comment and inner.ca.comment[0] is token:
            inner.ca.comment[0] = None
    lines = tail.splitlines()
    if block and lines:  # the token's first line starts at its own column, not at the line's start
        lines[0] = " " * token.column + lines[0].lstrip()
    return [CommentToken("\n" if not line.strip() else line.strip() + "\n",
                         CommentMark(0 if not line.strip() else len(line) - len(line.lstrip())))
            for line in lines]


def take_before(mapping: CommentedMap, key: Any) -> list[CommentToken]:
    """The comment lines ruamel keeps in front of `key`, removed from there."""
    entry = mapping.ca.items.get(key)
    if not entry or len(entry) < 2 or not entry[1]:
        return []
    tokens: list[CommentToken] = entry[1]
    entry[1] = None
    return tokens


def put_before(mapping: CommentedMap, key: Any, tokens: list[CommentToken]) -> None:
    """Write comment lines in front of `key` (before any already there)."""
    if not tokens:
        return
    entry = mapping.ca.items.setdefault(key, [None, None, None, None])
    entry[1] = [*tokens, *(entry[1] or [])]
