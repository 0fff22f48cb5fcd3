"""[links]: broken-link alerts per link and campaign (being built)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class LinkHealthRules:
    enabled: bool = False


class LinkHealthSpec(BaseModel):
    """`[links]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> LinkHealthRules:
        return LinkHealthRules(enabled=self.enabled)
