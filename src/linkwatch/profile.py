"""Per-user profile kept in stage-1 state: retention loop and fake-traffic flags (being built)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class RetentionRules:
    enabled: bool = False


class RetentionSpec(BaseModel):
    """`[retention]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> RetentionRules:
        return RetentionRules(enabled=self.enabled)


@dataclass(frozen=True, slots=True)
class FakeTrafficRules:
    enabled: bool = False


class FakeTrafficSpec(BaseModel):
    """`[fake_traffic]` in the journeys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

    def rules(self) -> FakeTrafficRules:
        return FakeTrafficRules(enabled=self.enabled)
