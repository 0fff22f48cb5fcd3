"""Counting what the engine did, and printing it: the replay report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from linkwatch.commerce import Commerce, space_of
from linkwatch.engine import Output, Transition, Verdict
from linkwatch.errors import RejectReason
from linkwatch.events import Event, EventBase
from linkwatch.journeys import JourneySet
from linkwatch.profile import BotFlagged, FlaggedEvent
from linkwatch.signals import EntityOutput, Measure, Published, Signal
from linkwatch.suppression import Withheld, uplift_group
from linkwatch.triggers import Resolution, Trigger

# A tuple, not a union: `X | Y` would build a union object at every test.
_PROFILE_OUTPUTS: Final = (FlaggedEvent, BotFlagged, Signal)
# Per record class: whether it has a `type`, a `status` and a `tier`. Asking a pydantic model
# for an attribute it lacks runs its Python __getattr__ and raises, once per record otherwise.
_LABEL_ATTRIBUTES: dict[type, tuple[bool, bool, bool]] = {}


def _record_labels(record: Any) -> tuple[str, str]:
    """(kind, status) of a published record: its `type` (else its class name) and its
    `status` (else its `tier`, else "")."""
    cls = type(record)
    has = _LABEL_ATTRIBUTES.get(cls)
    if has is None:
        has = (hasattr(record, "type"), hasattr(record, "status"), hasattr(record, "tier"))
        config = getattr(cls, "model_config", None)
        if not (isinstance(config, dict) and config.get("extra") == "allow"):
            _LABEL_ATTRIBUTES[cls] = has  # the same for every instance: no extra attributes
    has_type, has_status, has_tier = has
    kind = str(record.type) if has_type else cls.__name__
    status = str(record.status) if has_status else str(record.tier) if has_tier else ""
    return kind, status


@dataclass
class Report:
    journeys: JourneySet
    read: int = 0
    valid: int = 0
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    duplicate: int = 0
    late: int = 0
    started: Counter[str] = field(default_factory=Counter)  # journey
    reached: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, step)
    dropped: Counter[tuple[str, str, str]] = field(
        default_factory=Counter
    )  # (journey, missed, cause)
    converted: Counter[str] = field(default_factory=Counter)
    exited: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, last step)
    open: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, last step)
    triggers: Counter[str] = field(default_factory=Counter)  # type
    resolved: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, missed)
    commerce: Commerce = field(default_factory=Commerce)
    withheld: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, reason)
    retired: Counter[str] = field(default_factory=Counter)  # journey removed by a reload
    recovery: Counter[tuple[str, str]] = field(default_factory=Counter)  # (group, outcome)
    # The entity stage: records published (topic, type, status) and measure totals.
    records: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    measures: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    signals_refused: int = 0  # redelivered or late signals (none expected offline)
    # Fake traffic: applied events of flagged users, by kind, and users flagged.
    flagged: Counter[str] = field(default_factory=Counter)

    def count_event(self, event: Event, verdict: Verdict) -> None:
        self.valid += 1
        if verdict is Verdict.DUPLICATE:
            self.duplicate += 1
            return  # the same event again: not more traffic or sales
        if verdict is Verdict.LATE:
            self.late += 1  # too late for journeys, but real traffic all the same
            self.commerce.count(event)

    def count_outputs(self, outputs: Iterable[Output]) -> None:
        count = self.commerce.count
        for out in outputs:
            if isinstance(out, EventBase):  # real traffic, in event-time order (see engine.Output)
                count(out)
            elif isinstance(out, Trigger):
                self.triggers[out.type] += 1
            elif isinstance(out, Resolution):
                self.resolved[out.journey, out.missed_step] += 1
                self.recovery["treated", "resolved"] += 1
            elif isinstance(out, Withheld):
                self.withheld[out.record.type, out.reason] += 1
                if isinstance(out.record, Resolution):
                    group = "holdout" if out.reason == "holdout" else "treated"
                    self.recovery[group, "resolved"] += 1
                elif out.reason == "resolved_while_held":  # back before the quiet hours ended
                    self.recovery["treated", "resolved"] += 1
            elif isinstance(out, _PROFILE_OUTPUTS):  # signals: the entity stage
                if not isinstance(out, Signal):
                    self.flagged["users" if isinstance(out, BotFlagged) else out.event.kind] += 1
            else:
                self._count_transition(out)

    def count_entity_outputs(self, outputs: Iterable[EntityOutput]) -> None:
        records = self.records
        measures = self.measures
        for out in outputs:
            if isinstance(out, Published):
                record = out.record
                records[(out.topic, *_record_labels(record))] += 1
            elif isinstance(out, Measure):
                totals = measures.get(out.name)
                if totals is None:
                    totals = measures[out.name] = {}
                labels = out.labels
                totals[labels] = totals.get(labels, 0.0) + out.amount

    def _count_transition(self, t: Transition) -> None:
        if t.outcome == "started":
            self.started[t.journey] += 1
            self.reached[t.journey, t.step] += 1
        elif t.outcome == "reached":
            self.reached[t.journey, t.step] += 1
        elif t.outcome == "converted":
            self.converted[t.journey] += 1
        elif t.outcome == "exited":
            self.exited[t.journey, t.step] += 1
        elif t.outcome == "retired":
            self.retired[t.journey] += 1
        else:
            self.dropped[t.journey, t.step, t.cause or ""] += 1
            if t.trigger is not None:
                percent = self.journeys.suppression.holdout_percent
                self.recovery[uplift_group(t.trigger.user_id, percent), "dropped_off"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": {
                "read": self.read,
                "valid": self.valid,
                "rejected": sum(self.rejected.values()),
                "rejected_by_reason": {r.value: n for r, n in sorted(self.rejected.items())},
                "duplicate": self.duplicate,
                "late": self.late,
            },
            "commerce": {
                "channels": {
                    channel: {
                        "space": space_of(channel),
                        "shares": t.shares,
                        "clicks": t.clicks,
                        "purchases": t.purchases,
                        "revenue": {c: str(a) for c, a in sorted(t.revenue.items())},
                        "conversion": t.conversion,
                    }
                    for channel, t in sorted(self.commerce.channels.items())
                },
                "private_domain_revenue_share": {
                    c: self.commerce.private_share(c) for c in self.commerce.currencies()
                },
            },
            "triggers": dict(sorted(self.triggers.items())),
            "fake_traffic": {
                "users_flagged": self.flagged["users"],
                "events_from_flagged_users": {
                    kind: n for kind, n in sorted(self.flagged.items()) if kind != "users"
                },
            },
            "resolutions": sum(self.resolved.values()),
            "recovery": {
                group: {
                    "dropped_off": self.recovery[group, "dropped_off"],
                    "resolved": self.recovery[group, "resolved"],
                }
                for group in ("treated", "holdout")
            },
            "withheld": {
                f"{kind}/{reason}": n for (kind, reason), n in sorted(self.withheld.items())
            },
            "records": {
                "/".join(part for part in key if part): n for key, n in sorted(self.records.items())
            },
            "measures": {
                name: {
                    "/".join(labels) or "-": round(total, 6) for labels, total in sorted(t.items())
                }
                for name, t in sorted(self.measures.items())
            },
            "journeys": {
                j.name: {
                    "started": self.started[j.name],
                    "converted": self.converted[j.name],
                    "steps": [
                        {
                            "step": s.name,
                            "reached": self.reached[j.name, s.name],
                            "dropped_off": self.dropped[j.name, s.name, s.cause.value]
                            if s.cause
                            else 0,
                            "cause": s.cause.value if s.cause else None,
                            "resolved": self.resolved[j.name, s.name],
                            "exited_after": self.exited[j.name, s.name],
                            "open_after": self.open[j.name, s.name],
                        }
                        for s in j.steps
                    ],
                }
                for j in self.journeys.journeys
            },
        }

    def render(self) -> str:
        data = self.to_dict()
        ev = data["events"]
        lines = [
            "events   read {read:>9,}   valid {valid:>9,}   rejected {rejected:>7,}   "
            "duplicate {duplicate:>7,}   late {late:>7,}".format(**ev),
        ]
        if ev["rejected_by_reason"]:
            reasons = ", ".join(f"{r} {n:,}" for r, n in ev["rejected_by_reason"].items())
            lines.append(f"rejected by reason: {reasons}")
        trig = ", ".join(f"{t} {n:,}" for t, n in data["triggers"].items()) or "none"
        lines.append(f"triggers: {trig}; resolutions (users who came back) {data['resolutions']:,}")
        rates = [
            f"{group} {r['resolved']:,}/{r['dropped_off']:,} "
            f"({r['resolved'] / r['dropped_off']:.1%})"
            for group, r in data["recovery"].items()
            if r["dropped_off"]
        ]
        if rates:
            lines.append("recovery (resolved / dropped off): " + ", ".join(rates))
        if data["withheld"]:
            held_back = ", ".join(f"{k} {n:,}" for k, n in data["withheld"].items())
            lines.append(f"withheld by suppression (not published): {held_back}")
        fake = data["fake_traffic"]
        if fake["users_flagged"]:
            flagged_events = sum(fake["events_from_flagged_users"].values())
            lines.append(
                f"fake traffic: users flagged {fake['users_flagged']:,}; events from flagged "
                f"users {flagged_events:,} (counted, kept out of journeys and commerce)"
            )
        lines.extend(self._render_commerce(data["commerce"]))
        if data["records"]:
            lines.append("")
            lines.append("health and profile records published:")
            lines.extend(f"  {key:<40}{n:>9,}" for key, n in data["records"].items())
        for name, jdata in data["journeys"].items():
            started = jdata["started"]
            rate = f"{jdata['converted'] / started:.1%}" if started else "-"
            lines.append("")
            lines.append(
                f"journey {name}: started {started:,}, converted {jdata['converted']:,} ({rate})"
            )
            lines.append(
                f"  {'step':<18}{'reached':>9}{'dropped off':>13}  {'cause':<15}"
                f"{'resolved':>9}{'exited':>8}{'open':>8}"
            )
            for s in jdata["steps"]:
                lines.append(
                    f"  {s['step']:<18}{s['reached']:>9,}{s['dropped_off']:>13,}  "
                    f"{s['cause'] or '-':<15}{s['resolved']:>9,}{s['exited_after']:>8,}"
                    f"{s['open_after']:>8,}"
                )
        return "\n".join(lines)

    @staticmethod
    def _render_commerce(commerce: dict[str, Any]) -> list[str]:
        """Sound / traffic / sales per channel: shares, clicks, purchases, conversion, AOV."""
        lines = [
            "",
            "sound / traffic / sales by channel",
            f"  {'channel':<16}{'space':<9}{'shares':>8}{'clicks':>9}{'purchases':>11}"
            f"{'conv':>8}  revenue (avg order)",
        ]
        for channel, t in commerce["channels"].items():
            conversion = f"{t['conversion']:.1%}" if t["conversion"] is not None else "-"
            revenue = ", ".join(
                f"{currency} {Decimal(amount):,.2f} ({Decimal(amount) / t['purchases']:,.2f})"
                for currency, amount in t["revenue"].items()
            )
            lines.append(
                f"  {channel:<16}{t['space']:<9}{t['shares']:>8,}{t['clicks']:>9,}"
                f"{t['purchases']:>11,}{conversion:>8}  {revenue or '-'}"
            )
        for currency, share in commerce["private_domain_revenue_share"].items():
            if share is not None:
                lines.append(
                    f"  private-domain share of {currency} revenue: {share:.1%} "
                    "(healthy band 15-25%)"
                )
        return lines
