"""Load lbd's configuration (native YAML and/or Kubernetes/MetalLB manifests) into a Model.

`load` reads every file, validates everything, and either returns the model or raises
`ConfigInvalid` with all the errors at once, each naming file, document, line, object and field.
`attempt` does the same without raising: the one outcome `lbd check`, a reload (SIGHUP or the
admin API) and start-up all report from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from lbd.config import manifests, native, yamlsrc
from lbd.config.errors import ConfigError, ConfigInvalid
from lbd.config.collected import Collected
from lbd.config.pools import check_pools
from lbd.config.reading import Issues, Loc
from lbd.config.services import check_services
from lbd.config.yamlsrc import YMap
from lbd.model import Model

__all__ = ["Attempt", "ConfigError", "ConfigInvalid", "Loaded", "attempt", "load"]

CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A valid configuration: the model, what deserves a warning, and the files read."""

    model: Model
    warnings: tuple[ConfigError, ...]  # e.g. legacy metallb.universe.tf/* annotation keys
    sources: tuple[str, ...]  # the files actually read, in order


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of reading a configuration: a Loaded, or every error; warnings either way."""

    loaded: Loaded | None
    errors: tuple[ConfigError, ...] = ()

    @property
    def warnings(self) -> tuple[ConfigError, ...]:
        return self.loaded.warnings if self.loaded is not None else ()


def attempt(paths: Sequence[str | os.PathLike[str]]) -> Attempt:
    """`load`, with the errors as data instead of an exception; never raises for any input."""
    try:
        return Attempt(load(paths))
    except ConfigInvalid as exc:
        return Attempt(None, tuple(exc.errors))
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        # A bug reading some input must not become a traceback (or a dead reload): say where.
        named = ", ".join(os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths))
        return Attempt(None, (ConfigError(named, f"cannot read this config ({type(exc).__name__}: {exc}); "
                                                 "please report it with the file"),))


def load(paths: Sequence[str | os.PathLike[str]]) -> Loaded:
    """Read `paths` (files, or directories of *.yaml/*.yml read in name order) into one Model.

    Raises ConfigInvalid with every error found.
    """
    if isinstance(paths, (str, os.PathLike)):  # a lone path is a Sequence of characters: don't
        paths = [paths]
    issues = Issues()
    collected = Collected(issues)
    objects = manifests.ManifestSet()
    files = _files(paths, issues)
    for file in files:
        documents, errors = yamlsrc.read_file(file)
        issues.errors.extend(errors)
        for document in documents:
            _read_document(document, collected, objects, issues)
    objects.resolve(collected)
    check_pools(collected.pools)
    check_services(collected.services)

    order = {file: position for position, file in enumerate(files)}
    named = ", ".join(files) or ", ".join(os.fspath(p) for p in paths)
    if not issues.errors and not collected.pools and not collected.services:
        # A file emptied by config management, `> lbd.yaml` or a full disk: serving nothing is
        # never what it meant, and a reload of it would drop every service.
        issues.errors.append(ConfigError(
            named, "config is empty: no pools and no services (was the file truncated?); "
                   "to serve nothing, stop lbd instead"))
    if issues.errors:
        raise ConfigInvalid(_in_file_order(issues.errors, order))
    model = Model(
        interfaces=tuple(dict.fromkeys(collected.interfaces)),
        pools=tuple(draft.pool for draft in collected.pools),
        services=tuple(sorted((p.service for p in collected.services), key=lambda s: (s.namespace, s.name))),
    )
    return Loaded(model, tuple(_in_file_order(issues.warnings, order)), tuple(files))


def _files(paths: Sequence[str | os.PathLike[str]], issues: Issues) -> list[str]:
    files: list[str] = []
    seen: set[str] = set()
    for path in paths:
        text = os.fspath(path)
        if os.path.isdir(text):
            # Dot files are editor and VCS droppings (.#web.yaml), never config.
            names = sorted(
                n for n in os.listdir(text)
                if n.endswith(CONFIG_SUFFIXES) and not n.startswith(".") and os.path.isfile(os.path.join(text, n))
            )
            if not names:
                Loc(issues, text).warn("no *.yaml or *.yml files in this directory")
            candidates = [os.path.join(text, n) for n in names]
        else:
            candidates = [text]  # a missing file is reported when it is read
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if real not in seen:  # a file named directly and through its directory is read once
                seen.add(real)
                files.append(candidate)
    return files


def _read_document(
    document: yamlsrc.Document, collected: Collected, objects: manifests.ManifestSet, issues: Issues
) -> None:
    content = document.content
    loc = Loc(issues, document.file, document.index, document.line)
    if content is None:  # an empty document, e.g. a trailing '---'
        return
    if not isinstance(content, YMap):
        loc.error("expected a mapping: the native format (interfaces, pools, services) or a Kubernetes object")
    elif "kind" in content or "apiVersion" in content:
        objects.add(content, loc, collected)
    else:
        native.read(content, loc, collected)


def _in_file_order(found: list[ConfigError], order: dict[str, int]) -> list[ConfigError]:
    # Errors surface in two passes (reading, then joining): show them as the files read.
    return sorted(found, key=lambda e: (order.get(e.file, -1), e.doc if e.doc is not None else -1, e.line or 0))
