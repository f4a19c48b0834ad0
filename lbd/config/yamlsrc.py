"""YAML loading that remembers the line of every node, so each config error can cite it.

Documents come back as plain Python values, except that mappings are `YMap` and sequences
are `YSeq`: a dict/list that also knows its own line and the lines of its keys and items.
Scalars are built with PyYAML's safe constructors (so `true`, `80`, `null` mean what YAML
says). Syntax errors, unreadable files and duplicate keys become `ConfigError`s.

Every input is bounded: a config file must be a regular file (never a FIFO or a device, which
could block or never end) of at most MAX_CONFIG_BYTES, and nesting deeper than MAX_NESTING is
an error at its field (libyaml itself stops at 1000 levels; Python would overflow its stack
converting that many).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lbd.config.errors import ConfigError

# The C parser is several times faster and gives the same marks; fall back if it is missing.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A config of 10,000 services is ~1.5 MB; 64 MiB leaves room for any real one, and stops
# `--config /dev/zero`-like inputs long before memory runs out.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# The deepest lbd reads is a Deployment's probe headers (~10 levels); far deeper is a mistake.
MAX_NESTING = 64

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
        data = read_bounded(path)
    except ConfigFileRefused as exc:
        return [], [ConfigError(path, str(exc))]
    except OSError as exc:
        return [], [ConfigError(path, f"cannot read file: {exc.strerror or exc}")]
    return parse(data, path)


class ConfigFileRefused(Exception):
    """The path is not something lbd reads as config (its message says why and what to do)."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def read_bounded(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened non-blocking, so a FIFO cannot hang the open, and checked on the open descriptor, so
    a swap between check and read changes nothing. Raises ConfigFileRefused or OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise ConfigFileRefused(f"is {kind}, not a regular file; give a YAML file or a directory of them")
        if info.st_size > limit:
            raise ConfigFileRefused(_too_big(info.st_size, limit))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while we read
                raise ConfigFileRefused(_too_big(size, limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_big(size: int, limit: int) -> str:
    return (f"is {size / 2**20:.1f} MiB, over the {limit // 2**20} MiB a config file may be; "
            "split it into several files in a directory")


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
    except RecursionError:  # the pure-Python parser (no libyaml) composes recursively
        errors.append(ConfigError(file, f"YAML nested too deeply (lbd reads at most {MAX_NESTING} levels)",
                                  doc=len(documents)))
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
        self._path: list[Any] = []  # keys and indexes down to the node being converted

    def _error(self, node: Node, message: str, field: str | None = None) -> None:
        self._errors.append(
            ConfigError(self._file, message, doc=self._doc, line=node.start_mark.line + 1, field=field)
        )

    def _field(self) -> str:
        text = ""
        for step in self._path:
            text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
        return text

    def convert(self, node: Node) -> Any:
        if id(node) in self._done:
            return self._done[id(node)]
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if len(self._path) >= MAX_NESTING:
            self._error(node, f"nested deeper than {MAX_NESTING} levels; no lbd config field is this deep "
                              "(is a bracket or an indent wrong?)", self._field())
            return None
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:  # e.g. !!python/object/apply: refuse it, and read it as absent
                self._error(node, f"unsupported YAML tag {node.tag!r}")
                return None
            seq = YSeq(line)
            self._done[id(node)] = seq
            for position, item in enumerate(node.value):
                self._path.append(position)
                seq.append(self.convert(item))
                self._path.pop()
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
                self._path.append(key)
                mapping[key] = self.convert(value_node)
                self._path.pop()
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
