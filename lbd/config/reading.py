"""Reading YAML mappings field by field, and reporting problems at their file, line, object and field.

Every validator takes the value and a `Loc`, reports through `Loc.error` and returns a usable value
or None, so one pass over a file collects every error instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lbd.config.errors import ConfigError
from lbd.config.yamlsrc import YMap, YSeq

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Where we are, and where problems go


@dataclass(slots=True)
class Issues:
    """Every error and warning found while loading, in the order found."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in the input (file, document, line, object, field path) that can report problems."""

    issues: Issues
    file: str
    doc: int | None = None
    line: int | None = None
    obj: str | None = None
    path: str = ""

    def _issue(self, message: str) -> ConfigError:
        return ConfigError(self.file, message, self.doc, self.line, self.obj, self.path or None)

    def error(self, message: str) -> None:
        self.issues.errors.append(self._issue(message))

    def warn(self, message: str) -> None:
        self.issues.warnings.append(self._issue(message))

    def key(self, name: object, line: int | None = None) -> Loc:
        """The location of field `name` below this one (on `line`, or this line if unknown)."""
        text = str(name)
        if _PLAIN_KEY.fullmatch(text):
            path = f"{self.path}.{text}" if self.path else text
        else:  # annotation and label keys contain '/' and '.': keep them readable
            path = f"{self.path}[{text}]"
        return Loc(self.issues, self.file, self.doc, line if line is not None else self.line, self.obj, path)

    def index(self, position: int, line: int | None = None) -> Loc:
        line = line if line is not None else self.line
        return Loc(self.issues, self.file, self.doc, line, self.obj, f"{self.path}[{position}]")

    def of(self, obj: str) -> Loc:
        """The same place, now naming the object it belongs to."""
        return Loc(self.issues, self.file, self.doc, self.line, obj, self.path)

    def where(self) -> str:
        """A short "file line N" for messages that point at another place."""
        return f"{self.file} line {self.line}" if self.line is not None else self.file


# --------------------------------------------------------------------------------------------
# Messages


def describe(value: Any) -> str:
    """What a wrong value is, for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value}"


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, numbers and booleans bare."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def closest(word: str, candidates: Collection[str]) -> str | None:
    """The candidate `word` was probably meant to be, if any."""
    folded = {c.lower(): c for c in candidates}
    if word.lower() in folded:  # targetport -> targetPort: a case slip beats any fuzzy match
        return folded[word.lower()]
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """' (did you mean 'X'?)' when a candidate is close to `word`, else ''."""
    meant = closest(word, candidates)
    return f" (did you mean {meant!r}?)" if meant is not None else ""


# --------------------------------------------------------------------------------------------
# Reading a mapping field by field


class Fields:
    """One YAML mapping read against declared field names; unknown keys are reported up front.

    `ignored` names are valid (Kubernetes knows them) but unused by lbd. With `closed=False` only
    unknown keys close to a `known` one are errors: for big Kubernetes types we read a corner of.
    A missing or null mapping reads as empty; something else (a list, a string) is an error.
    """

    __slots__ = ("data", "loc", "valid", "_misspelled")

    def __init__(
        self,
        value: Any,
        loc: Loc,
        known: Collection[str],
        *,
        ignored: Collection[str] = (),
        closed: bool = True,
    ) -> None:
        self.loc = loc
        # Not a mapping at all: say so once, not once per field it then lacks.
        self.valid = isinstance(value, YMap) or value is None
        if isinstance(value, YMap):
            self.data = value
        else:
            if value is not None:
                loc.error(f"expected a mapping, got {describe(value)}")
            self.data = YMap(loc.line or 0)
        self._misspelled: set[str] = set()  # known names that an unknown key was a near-miss of
        for key in self.data:
            if key in known or key in ignored:
                continue
            meant = closest(str(key), [*known, *ignored] if closed else known)
            if closed or meant is not None:
                hint = f" (did you mean {meant!r}?)" if meant is not None else ""
                loc.key(key, self.data.key_line(key)).error(f"unknown field {str(key)!r}{hint}")
            if meant is not None:
                self._misspelled.add(meant)

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def at(self, key: str) -> Loc:
        """Where `key`'s value is, or the object itself when the field is missing."""
        return self.loc.key(key, self.data.value_line(key))

    def key_at(self, key: str) -> Loc:
        return self.loc.key(key, self.data.key_line(key))

    def require(self, key: str) -> bool:
        if key in self:
            return True
        if self.valid and key not in self._misspelled:  # "did you mean 'address'?" already said it
            self.at(key).error("required field is missing")
        return False

    def sub(self, key: str, known: Collection[str], **kwargs: Any) -> Fields:
        return Fields(self.get(key), self.at(key), known, **kwargs)

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self:
            if required:
                self.require(key)
            return default
        value = self.get(key)
        if not isinstance(value, str):
            self.at(key).error(f"expected a string, got {describe(value)}")
            return default
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None, required: bool = False) -> int | None:
        if key not in self:
            if required:
                self.require(key)
            return default
        return integer(self.get(key), self.at(key), minimum=minimum, maximum=maximum, default=default)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.at(key).error(f"expected true or false, got {describe(value)}")
            return default
        return value

    def choice(self, key: str, options: Mapping[str, T], default: T) -> T:
        if key not in self:
            return default
        return choice(self.get(key), self.at(key), options, default)

    def items(self, key: str, *, required: bool = False) -> Iterator[tuple[int, Any, Loc]]:
        """(index, item, location) for each item of a list field."""
        if key not in self:
            if required:
                self.require(key)
            return
        value = self.get(key)
        if not isinstance(value, YSeq):
            self.at(key).error(f"expected a list, got {describe(value)}")
            return
        here = self.at(key)
        for position, item in enumerate(value):
            yield position, item, here.index(position, value.item_line(position))

    def string_map(self, key: str) -> dict[str, str]:
        """A map of strings, like labels or a selector."""
        if key not in self:
            return {}
        value = self.get(key)
        if not isinstance(value, YMap):
            self.at(key).error(f"expected a mapping, got {describe(value)}")
            return {}
        here = self.at(key)
        result: dict[str, str] = {}
        for name, item in value.items():
            where = here.key(name, value.value_line(name))
            if not isinstance(name, str):
                where.error(f"a key must be a string, got {describe(name)}")
            elif not isinstance(item, str):
                where.error(f"expected a string, got {describe(item)} (quote it)")
            else:
                result[name] = item
        return result


def integer(value: Any, loc: Loc, *, minimum: int | None = None, maximum: int | None = None,
            default: int | None = None) -> int | None:
    # bool is an int in Python, but `true` is never a number in a config.
    if not isinstance(value, int) or isinstance(value, bool):
        loc.error(f"expected an integer, got {describe(value)}")
        return default
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        loc.error(f"{value} is out of range ({minimum}-{maximum})")
        return default
    if minimum is not None and value < minimum:
        loc.error(f"{value} is too small (at least {minimum})")
        return default
    if maximum is not None and value > maximum:
        loc.error(f"{value} is too large (at most {maximum})")
        return default
    return value


def choice(value: Any, loc: Loc, options: Mapping[str, T], default: T) -> T:
    """One of the fixed spellings in `options` (Kubernetes enums are case-sensitive)."""
    if isinstance(value, str) and value in options:
        return options[value]
    allowed = " | ".join(options)
    hint = did_you_mean(value, options) if isinstance(value, str) else ""
    loc.error(f"{show(value)} is not one of {allowed}{hint}")
    return default
