"""YAML loading that remembers the line of every node, so each config error can cite it.

Documents come back as plain Python values, except that mappings are `YMap` and sequences
are `YSeq`: a dict/list that also knows its own line and the lines of its keys and items.
Scalars are built with PyYAML's safe constructors (so `true`, `80`, `null` mean what YAML
says). Syntax errors, unreadable files and duplicate keys become `ConfigError`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lbd.config.errors import ConfigError

# The C parser is several times faster and gives the same marks; fall back if it is missing.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YMap(dict[Any, Any]):
    """A YAML mapping: a dict that knows its line and where each key and value sits."""

    __slots__ = ("line", "key_lines", "value_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}

    def key_line(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)

    def value_line(self, key: Any) -> int:
        return self.value_lines.get(key, self.line)


class YSeq(list[Any]):
    """A YAML sequence: a list that knows its line and the line of each item."""

    __slots__ = ("line", "item_lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def item_line(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file: its 0-based index, first line and converted content."""

    file: str
    index: int
    line: int
    content: Any


def read_file(path: str) -> tuple[list[Document], list[ConfigError]]:
    """Read every document of `path`. Documents before a syntax error are still returned."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        return [], [ConfigError(path, f"cannot read file: {exc.strerror or exc}")]
    return parse(data, path)


def parse(data: bytes | str, file: str) -> tuple[list[Document], list[ConfigError]]:
    """Parse YAML text (all documents) that came from `file`."""
    documents: list[Document] = []
    errors: list[ConfigError] = []
    try:
        loader = _Loader(data)
    except yaml.YAMLError as exc:  # e.g. undecodable bytes, raised while sniffing the encoding
        return [], [_syntax_error(file, None, exc)]
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            converter = _Converter(loader, file, len(documents), errors)
            documents.append(
                Document(file, len(documents), node.start_mark.line + 1, converter.convert(node))
            )
    except yaml.YAMLError as exc:
        errors.append(_syntax_error(file, len(documents), exc))
    finally:
        loader.dispose()
    return documents, errors


def _syntax_error(file: str, doc: int | None, exc: yaml.YAMLError) -> ConfigError:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or "invalid YAML"
        if exc.context:
            started = exc.context_mark
            at = f" at line {started.line + 1}" if started is not None and started is not mark else ""
            what += f" ({exc.context}{' started' if at else ''}{at})"
    else:
        what = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
    return ConfigError(file, f"YAML syntax error: {what}", doc=doc, line=line)


class _Converter:
    """Turns one composed node tree into YMap/YSeq/scalars, reporting what YAML allows but lbd can't use."""

    def __init__(self, loader: yaml.SafeLoader, file: str, doc: int, errors: list[ConfigError]) -> None:
        self._loader = loader
        self._file = file
        self._doc = doc
        self._errors = errors
        # Aliases point at the same node; convert it once (this also stops recursive aliases).
        self._done: dict[int, Any] = {}

    def _error(self, node: Node, message: str) -> None:
        self._errors.append(ConfigError(self._file, message, doc=self._doc, line=node.start_mark.line + 1))

    def convert(self, node: Node) -> Any:
        if id(node) in self._done:
            return self._done[id(node)]
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:  # e.g. !!python/object/apply: refuse it, and read it as absent
                self._error(node, f"unsupported YAML tag {node.tag!r}")
                return None
            seq = YSeq(line)
            self._done[id(node)] = seq
            for item in node.value:
                seq.append(self.convert(item))
                seq.item_lines.append(item.start_mark.line + 1)
            return seq
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self._error(node, f"unsupported YAML tag {node.tag!r}")
                return None
            mapping = YMap(line)
            self._done[id(node)] = mapping
            explicit = sum(1 for k, _ in node.value if k.tag != _MERGE_TAG)
            try:
                self._loader.flatten_mapping(node)  # resolve `<<:` merge keys like yaml.safe_load does
                merged = len(node.value) - explicit  # merged pairs come first; explicit keys override them
            except yaml.YAMLError as exc:
                self._error(node, f"YAML error: {getattr(exc, 'problem', None) or exc}")
                merged = 0
            explicit_lines: dict[Any, int] = {}
            for position, (key_node, value_node) in enumerate(node.value):
                if not isinstance(key_node, ScalarNode):
                    self._error(key_node, "a mapping key must be a plain value, not a list or mapping")
                    continue
                key = self._scalar(key_node)
                key_line = key_node.start_mark.line + 1
                if position >= merged:
                    if key in explicit_lines:
                        self._error(key_node, f"duplicate key {key!r} (first at line {explicit_lines[key]})")
                        continue
                    explicit_lines[key] = key_line
                mapping[key] = self.convert(value_node)
                mapping.key_lines[key] = key_line
                mapping.value_lines[key] = value_node.start_mark.line + 1
            return mapping
        return None  # pragma: no cover - composer yields only the three node kinds

    def _scalar(self, node: ScalarNode) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._error(node, f"YAML error: {getattr(exc, 'problem', None) or exc}")
            return None
        except (ValueError, TypeError) as exc:  # e.g. a timestamp like 2024-13-45
            self._error(node, f"invalid value {node.value!r}: {exc}")
            return None
