"""Sound, traffic and sales (声量 / 流量 / 销量) as one: shares, clicks and purchases counted per
channel and campaign, from the same events, so revenue = traffic x conversion x order value
can be read factor by factor.

Pure: the live worker feeds it to Prometheus, `replay` to its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

from linkwatch.events import Event, PurchaseEvent

# The brand's own pool (私域): group chats, mini-programs, Moments shares. The field's healthy
# band for its share of revenue is 15-25%.
PRIVATE_CHANNELS: Final = frozenset({"group_chat", "mini_program", "moments"})
OFFLINE_CHANNELS: Final = frozenset({"offline_store"})
Space = Literal["private", "public", "offline"]
Measure = Literal["sound", "traffic", "sales"]
# Label values a metric may take for campaigns: the first this many distinct ones, then "other".
MAX_CAMPAIGNS: Final = 100
NO_CAMPAIGN: Final = "none"


def space_of(channel: str) -> Space:
    if channel in PRIVATE_CHANNELS:
        return "private"
    if channel in OFFLINE_CHANNELS:
        return "offline"
    return "public"


def measure_of(event: Event) -> Measure | None:
    """Shares are sound, clicks traffic, purchases sales; group-chat activity is none of them."""
    if event.kind == "share":
        return "sound"
    if event.kind == "click":
        return "traffic"
    if event.kind == "purchase":
        return "sales"
    return None


@dataclass
class CampaignLabels:
    """Bounded campaign labels: the first `limit` distinct campaign ids, then "other"."""

    limit: int = MAX_CAMPAIGNS
    known: set[str] = field(default_factory=set)

    def label(self, campaign_id: str | None) -> str:
        if campaign_id is None:
            return NO_CAMPAIGN
        if campaign_id in self.known:
            return campaign_id
        if len(self.known) < self.limit:
            self.known.add(campaign_id)
            return campaign_id
        return "other"


@dataclass
class ChannelTotals:
    shares: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: dict[str, Decimal] = field(default_factory=dict)  # currency → amount

    @property
    def conversion(self) -> float | None:
        return self.purchases / self.clicks if self.clicks else None


@dataclass
class Commerce:
    """Totals per channel (the replay report's table), and per space for the private share."""

    channels: dict[str, ChannelTotals] = field(default_factory=dict)

    def count(self, event: Event) -> None:
        totals = self.channels.get(event.channel)
        if totals is None:  # not setdefault: that builds a ChannelTotals per event
            totals = self.channels[event.channel] = ChannelTotals()
        measure = measure_of(event)
        if measure == "sound":
            totals.shares += 1
        elif measure == "traffic":
            totals.clicks += 1
        elif measure == "sales" and isinstance(event, PurchaseEvent):
            totals.purchases += 1
            totals.revenue[event.currency] = (
                totals.revenue.get(event.currency, Decimal(0)) + event.amount
            )

    def revenue_by_space(self, currency: str) -> dict[Space, Decimal]:
        spaces: dict[Space, Decimal] = {
            "private": Decimal(0),
            "public": Decimal(0),
            "offline": Decimal(0),
        }
        for channel, totals in self.channels.items():
            spaces[space_of(channel)] += totals.revenue.get(currency, Decimal(0))
        return spaces

    def private_share(self, currency: str) -> float | None:
        spaces = self.revenue_by_space(currency)
        total = sum(spaces.values(), Decimal(0))
        return float(spaces["private"] / total) if total else None

    def currencies(self) -> list[str]:
        return sorted({c for totals in self.channels.values() for c in totals.revenue})
