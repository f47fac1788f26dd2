"""Reading user YAML (persona files, run configs, key=value overrides) within bounds.

PyYAML's SafeLoader runs no code, but on its own it accepts three kinds of file that hang or crash
the reader: a "billion laughs" file whose aliases point at aliases (587 bytes that expand to
gigabytes once walked), a recursive alias (`&a [*a]`, an endless structure) and nesting thousands
of levels deep (PyYAML composes recursively and dies with RecursionError). `BoundedLoader` composes
the document the same way SafeLoader does, but counts every node as it is built, every alias as a
full copy of what it points to, and stops at the first limit passed (personatune.limits), before
anything is expanded. Aliases within the limits work as in plain YAML.

>>> load_bounded("a: &x [1, 2]\\nb: *x\\n")[0]
{'a': [1, 2], 'b': [1, 2]}
>>> try:
...     load_bounded("a: &x [*x]\\n")
... except YamlLimitError as e:
...     print(e)
line 1: recursive alias *x (the list or mapping refers to itself)
"""

from __future__ import annotations

from typing import Any

import yaml

from personatune import limits


class YamlLimitError(Exception):
    """A YAML document passes a limit of personatune.limits.

    Attributes:
        line: 1-based line where the limit was passed.
        message: what was found.
        fix: what to change.
    """

    def __init__(self, line: int, message: str, fix: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message, self.fix = line, message, fix


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with limits on nesting depth, expanded node count and expanded text.

    Args:
        stream: the YAML text.
        max_depth: deepest nesting of lists and mappings.
        max_nodes: most nodes, each alias counted as a full copy of its target.
        max_chars: most characters of scalar text, aliases counted the same way.
    """

    def __init__(
        self,
        stream: str,
        max_depth: int = limits.YAML_MAX_DEPTH,
        max_nodes: int = limits.YAML_MAX_NODES,
        max_chars: int = limits.YAML_MAX_EXPANDED_CHARS,
    ) -> None:
        super().__init__(stream)
        self.max_depth, self.max_nodes, self.max_chars = max_depth, max_nodes, max_chars
        self._depth = 0
        self._size: dict[
            int, tuple[int, int]
        ] = {}  # id(node) -> (expanded nodes, expanded chars), once the node is complete

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._size:
                raise YamlLimitError(
                    line,
                    f"recursive alias *{event.anchor} (the list or mapping refers to itself)",
                    "replace the alias by the values it should hold",
                )
            return super().compose_node(parent, index)  # counted by the parent, from _size
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YamlLimitError(
                    line,
                    f"nesting deeper than {self.max_depth} levels (personatune.limits.YAML_MAX_DEPTH)",
                    "flatten the structure; persona and config files need about 5 levels",
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.ScalarNode):
            size = (1, len(node.value))
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            size = (1 + sum(self._size[id(c)][0] for c in children), sum(self._size[id(c)][1] for c in children))
        if size[0] > self.max_nodes or size[1] > self.max_chars:
            what = f"{size[0]:,} nodes" if size[0] > self.max_nodes else f"{size[1]:,} characters of text"
            limit = (
                f"{self.max_nodes:,} nodes (personatune.limits.YAML_MAX_NODES)"
                if size[0] > self.max_nodes
                else f"{self.max_chars:,} characters (personatune.limits.YAML_MAX_EXPANDED_CHARS)"
            )
            raise YamlLimitError(
                line,
                f"the document expands to more than {what} once its aliases are expanded; the limit is {limit}",
                "write the values out instead of nesting aliases (a 'billion laughs' file is refused)",
            )
        self._size[id(node)] = size
        return node


def load_bounded(text: str, **bounds: int) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely and within bounds.

    Args:
        text: the YAML text.
        **bounds: max_depth, max_nodes, max_chars of BoundedLoader (defaults: personatune.limits).

    Returns:
        (data, node): the plain data (dicts, lists, scalars; no tag runs code) and the composed node
        tree, whose marks give line numbers (None for an empty document).

    Raises:
        YamlLimitError: a limit is passed (the line and the fix are in the error).
        yaml.YAMLError: not valid YAML, a tag SafeLoader refuses, or a character YAML forbids (e.g. NUL).
    """
    loader = BoundedLoader(text, **bounds)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def duplicate_keys(node: yaml.Node | None) -> list[tuple[str, str, int, int]]:
    """Keys given twice in one mapping, which SafeLoader silently resolves to the last value.

    Args:
        node: a node tree from `load_bounded` (so its expanded size is bounded).

    Returns:
        (dotted path of the mapping, key, first line, second line) for each repeated key.
    """
    out: list[tuple[str, str, int, int]] = []
    stack: list[tuple[yaml.Node, str]] = [(node, "")] if node is not None else []
    seen_nodes: set[int] = set()  # an aliased mapping is checked once
    while stack:
        n, path = stack.pop()
        if id(n) in seen_nodes:
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in n.value:
                key = str(k.value) if isinstance(k, yaml.ScalarNode) else f"<{k.tag}>"
                line = k.start_mark.line + 1
                if key in first:
                    out.append((path, key, first[key], line))
                else:
                    first[key] = line
                stack.append((v, f"{path}.{key}" if path else key))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(n.value))
    return sorted(out, key=lambda d: d[3])
