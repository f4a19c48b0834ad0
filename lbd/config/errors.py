"""Config errors that point at the file, document, object and field, and say what is wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in the input. `str()` is the line the user sees."""

    file: str
    message: str
    doc: int | None = None  # 0-based index of the YAML document in the file
    line: int | None = None  # 1-based line of the offending node
    obj: str | None = None  # e.g. "Service default/web", "IPAddressPool default"
    field: str | None = None  # e.g. "spec.ports[0].port"

    def __str__(self) -> str:
        where = self.file
        if self.doc is not None:
            where += f": document {self.doc}"
        if self.line is not None:
            where += f" (line {self.line})"
        parts = [where]
        if self.obj:
            parts.append(self.obj)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigInvalid(Exception):
    """Raised by `lbd.config.load` with every error found, not just the first."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
