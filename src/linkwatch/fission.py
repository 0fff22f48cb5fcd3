"""[fission]: share attribution and referral chains (being built)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class FissionRules:
    enabled: bool = False


class FissionSpec(BaseModel):
    """`[fission]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> FissionRules:
        return FissionRules(enabled=self.enabled)
