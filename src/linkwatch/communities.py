"""[communities]: community health per group (being built)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class CommunityRules:
    enabled: bool = False


class CommunitySpec(BaseModel):
    """`[communities]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> CommunityRules:
        return CommunityRules(enabled=self.enabled)
