"""What the documents read so far contribute to the model, before the whole is checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from lbd.config.pools import PoolDraft
from lbd.config.reading import Issues
from lbd.config.services import PlacedService


@dataclass(slots=True)
class Collected:
    """What the documents read so far contribute to the model, with where each piece came from."""

    issues: Issues
    interfaces: list[str] = field(default_factory=list)
    pools: list[PoolDraft] = field(default_factory=list)
    services: list[PlacedService] = field(default_factory=list)
