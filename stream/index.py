"""Routing index: which connections want a topic, found by walking pattern tokens, not by scanning connections."""

from __future__ import annotations

from typing import Generic, TypeVar

from core.topics import ONE_TOKEN, REST, Pattern

S = TypeVar("S")


class _Node(Generic[S]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.subscribers: set[S] = set()


class PatternIndex(Generic[S]):
    """A token tree of patterns, like the NATS server's sublist: matching costs the topic's depth, not N."""

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()

    def add(self, pattern: Pattern, subscriber: S) -> None:
        """Route topics matching ``pattern`` to ``subscriber``."""
        node = self._root
        for token in pattern.tokens:
            node = node.children.setdefault(token, _Node())
        node.subscribers.add(subscriber)

    def remove(self, pattern: Pattern, subscriber: S) -> None:
        """Undo ``add``, pruning branches nobody uses any more."""
        path = [self._root]
        for token in pattern.tokens:
            child = path[-1].children.get(token)
            if child is None:
                return
            path.append(child)
        path[-1].subscribers.discard(subscriber)
        for depth in range(len(pattern.tokens), 0, -1):
            node = path[depth]
            if node.subscribers or node.children:
                break
            del path[depth - 1].children[pattern.tokens[depth - 1]]

    def match(self, tokens: list[str]) -> set[S]:
        """Every subscriber with at least one pattern matching the topic; each once."""
        found: set[S] = set()
        stack: list[tuple[_Node[S], int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            rest = node.children.get(REST)
            if rest is not None and depth < len(tokens):
                found |= rest.subscribers
            if depth == len(tokens):
                found |= node.subscribers
                continue
            child = node.children.get(tokens[depth])
            if child is not None:
                stack.append((child, depth + 1))
            star = node.children.get(ONE_TOKEN)
            if star is not None:
                stack.append((star, depth + 1))
        return found
