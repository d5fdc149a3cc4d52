"""YAML for files a user (or a stranger) hands us: PyYAML's safe loader, plus what it lacks.

- A key given twice in one mapping is an error at its `file:line` (YAML forbids it; PyYAML keeps the last
  one, which silently drops a whole section written earlier).
- Aliases are allowed (job files reuse anchors), but the document they expand to is bounded: a few hundred
  bytes of nested aliases (the "billion laughs") would otherwise expand to gigabytes in validation and echo.
- Nesting is bounded, so a deep document is an error rather than a RecursionError.
- The text must be UTF-8.

Light on purpose (PyYAML only): the operator uses it too.
"""

from __future__ import annotations

from typing import Any

import yaml

from kuberlhf.errors import UserError

MAX_NODES = 100_000  # scalars and collections after alias expansion: a large job file has a few hundred
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it with its position
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def parse_yaml(text: str | bytes, where: str) -> Any:
    """The document in `text` (None when empty); `where` names it in errors (`job.yaml:3:5: ...`)."""
    if isinstance(text, bytes):
        text = decode_utf8(text, where)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as err:  # a control character, e.g. a NUL byte
        raise UserError(f"{where}: invalid YAML: character #x{err.character:04x} at offset {err.position} is not "
                        "allowed in YAML text") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        raise UserError(f"{at}: invalid YAML: {context + ', ' if context else ''}{problem}") from None
    except RecursionError:
        raise UserError(f"{where}: invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                        "save the file as UTF-8") from None


def check_size(root: yaml.Node, where: str) -> None:
    """Refuse a document deeper than MAX_DEPTH or larger than MAX_NODES once its aliases are expanded. An
    alias is the same node object as its anchor, so each node's expanded size is counted once (memoised)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            mark = node.start_mark
            raise UserError(f"{where}:{mark.line + 1}:{mark.column + 1}: invalid YAML: nested more than "
                            f"{MAX_DEPTH} levels deep")
        if id(node) in sizes:
            return sizes[id(node)]
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1 + sum(size(child, depth + 1) for child in children)
        if total > MAX_NODES:
            mark = node.start_mark
            raise UserError(f"{where}:{mark.line + 1}:{mark.column + 1}: invalid YAML: expands to more than "
                            f"{MAX_NODES:,} values (aliases nested inside aliases?)")
        sizes[id(node)] = total
        return total

    size(root, 0)


def _short(value: Any, limit: int = 60) -> Any:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
