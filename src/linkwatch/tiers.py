"""[tiers]: lifecycle tiers and rolling LTV (being built)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class TierRules:
    enabled: bool = False


class TierSpec(BaseModel):
    """`[tiers]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> TierRules:
        return TierRules(enabled=self.enabled)
