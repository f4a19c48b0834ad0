"""Shared pytest fixtures."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a (dedented) YAML file under tmp_path and return its path: config_file(text, name=...)."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write
