"""Declarative journeys: TOML in, validated and compiled step matchers out.

Journeys are configuration, not code. A file is validated as a whole at start-up; any problem
raises `ConfigError` whose message names the journey, the step and the field, and says what
would be accepted instead.
"""

from __future__ import annotations

import operator
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from linkwatch.communities import CommunityRules, CommunitySpec
from linkwatch.durations import parse_duration as parse_duration  # re-exported
from linkwatch.errors import ConfigError
from linkwatch.events import EVENT_MODELS, KINDS, MATCHABLE_FIELDS, Event, check_timezone
from linkwatch.fission import FissionRules, FissionSpec
from linkwatch.links import LinkHealthRules, LinkHealthSpec
from linkwatch.profile import FakeTrafficRules, FakeTrafficSpec, RetentionRules, RetentionSpec
from linkwatch.suppression import SuppressionRules
from linkwatch.tiers import TierRules, TierSpec
from linkwatch.triggers import DROPOFF_CAUSES, REMEDIES, Cause

_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
DEFAULT_JOURNEYS_FILE: Final = "journeys.toml"


Duration = Annotated[str, Field(description="e.g. 30s, 5m, 1h30m, 2d")]
MatchScalar = str | int | float | bool


class ExistsTest(BaseModel):
    """`{ exists = true }`: the field is present (not null); `false`: absent or null."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    exists: bool


MatchValue = MatchScalar | list[MatchScalar] | ExistsTest


class SettingsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_lateness: Duration = "10s"
    recovery_window: Duration = "7d"
    dedup_window: int = Field(default=32, ge=1, le=1024)
    max_pending: int = Field(default=512, ge=1, le=100_000)

    @field_validator("allowed_lateness", "recovery_window")
    @classmethod
    def _lateness(cls, value: str) -> str:
        parse_duration(value)
        return value


class SuppressionSpec(BaseModel):
    """`[suppression]`: applied to triggers before they are published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frequency_cap: int = Field(default=0, ge=0, le=1000)
    frequency_window: Duration = "24h"
    cooldown: Duration | None = None
    quiet_hours: Annotated[str, Field(pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")] | None = None
    default_timezone: str = "UTC"
    holdout_percent: float = Field(default=0.0, ge=0, le=100)

    @field_validator("frequency_window", "cooldown")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str | None) -> str | None:
        if value is not None:
            start, end = (_minutes(part) for part in value.split("-"))
            if start == end:
                raise ValueError("quiet_hours start and end must differ")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        check_timezone(value)
        return value

    def rules(self) -> SuppressionRules:
        start = end = None
        if self.quiet_hours is not None:
            start, end = (_minutes(part) for part in self.quiet_hours.split("-"))
        return SuppressionRules(
            frequency_cap=self.frequency_cap,
            frequency_window_ms=parse_duration(self.frequency_window),
            cooldown_ms=parse_duration(self.cooldown) if self.cooldown else 0,
            quiet_start_min=start,
            quiet_end_min=end,
            default_timezone=self.default_timezone,
            holdout_percent=self.holdout_percent,
        )


def _minutes(clock: str) -> int:
    hours, minutes = (int(x) for x in clock.split(":"))
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"invalid time of day {clock!r} (use HH:MM, 00:00-23:59)")
    return hours * 60 + minutes


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    match: dict[str, MatchValue] = Field(min_length=1)
    within: Duration | None = None
    cause: Cause | None = None
    remedy: str | None = Field(default=None, max_length=500)

    @field_validator("within")
    @classmethod
    def _within(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class JourneySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    description: str = ""
    exit: list[dict[str, MatchValue]] = Field(default_factory=list)
    step: list[StepSpec] = Field(min_length=2)


class JourneysFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: SettingsSpec = Field(default_factory=SettingsSpec)
    suppression: SuppressionSpec = Field(default_factory=SuppressionSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    fake_traffic: FakeTrafficSpec = Field(default_factory=FakeTrafficSpec)
    links: LinkHealthSpec = Field(default_factory=LinkHealthSpec)
    communities: CommunitySpec = Field(default_factory=CommunitySpec)
    fission: FissionSpec = Field(default_factory=FissionSpec)
    tiers: TierSpec = Field(default_factory=TierSpec)
    journey: list[JourneySpec] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Compiled form: what the engine uses on the hot path.

_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # top-level field name, or the key inside props
    in_props: bool
    allowed: frozenset[tuple[bool, Any]] | None  # (is_bool, value) pairs; None: exists test
    exists: bool = True

    def compile(self) -> Callable[[Event], bool]:
        """A specialised predicate: the hot path calls these once per event and step."""
        name = self.field
        value_of: Callable[[Event], Any]
        if self.in_props:
            value_of = lambda event: event.props.get(name, _MISSING)  # noqa: E731
        else:
            value_of = operator.attrgetter(name)
        if self.allowed is None:
            wanted = self.exists
            return lambda event: (value_of(event) not in (_MISSING, None)) is wanted
        if all(type(value) is str for _, value in self.allowed):
            strings = frozenset(value for _, value in self.allowed)
            return lambda event: value_of(event) in strings
        # Tagged with "is it a bool" so True never matches 1 (bool is an int in Python).
        tagged = self.allowed
        return lambda event: (type(v := value_of(event)) is bool, v) in tagged


@dataclass(frozen=True, slots=True)
class Matcher:
    kinds: frozenset[str]
    conditions: tuple[Condition, ...]
    matches: Callable[[Event], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matches", _compile_matcher(self.kinds, self.conditions))


def _compile_matcher(
    kinds: frozenset[str], conditions: tuple[Condition, ...]
) -> Callable[[Event], bool]:
    tests = [c.compile() for c in conditions]
    if len(kinds) == 1:
        (kind,) = kinds
        if not tests:
            return lambda event: event.kind == kind
        if len(tests) == 1:
            (test,) = tests
            return lambda event: event.kind == kind and test(event)
    return lambda event: event.kind in kinds and all(test(event) for test in tests)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    matcher: Matcher
    within_ms: int  # 0 for the first step (it has no budget)
    cause: Cause | None
    remedy: str | None


@dataclass(frozen=True, slots=True)
class Journey:
    name: str
    description: str
    steps: tuple[Step, ...]
    exits: tuple[Matcher, ...]
    kinds: frozenset[str]  # every kind any step or exit can match: a cheap pre-filter


@dataclass(frozen=True, slots=True)
class JourneySet:
    journeys: tuple[Journey, ...]
    allowed_lateness_ms: int
    dedup_window: int
    max_pending: int
    recovery_window_ms: int = 7 * 86_400_000
    suppression: SuppressionRules = field(default_factory=SuppressionRules)
    retention: RetentionRules = field(default_factory=RetentionRules)
    fake_traffic: FakeTrafficRules = field(default_factory=FakeTrafficRules)
    links: LinkHealthRules = field(default_factory=LinkHealthRules)
    communities: CommunityRules = field(default_factory=CommunityRules)
    fission: FissionRules = field(default_factory=FissionRules)
    tiers: TierRules = field(default_factory=TierRules)

    def by_name(self, name: str) -> Journey:
        for journey in self.journeys:
            if journey.name == name:
                return journey
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Loading


def load_journeys(path: Path | str | None = None) -> JourneySet:
    """Load and validate a journeys file; `None` loads the default shipped with LinkWatch."""
    if path is None:
        text = resources.files("linkwatch").joinpath(DEFAULT_JOURNEYS_FILE).read_text("utf-8")
        return parse_journeys(text, source=f"(built-in {DEFAULT_JOURNEYS_FILE})")
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read journeys file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: journeys file is not valid UTF-8") from None
    return parse_journeys(text, source=str(path))


def parse_journeys(text: str, source: str = "<journeys>") -> JourneySet:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        spec = JourneysFileSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, raw, exc)) from None
    return compile_journeys(spec, source)


def compile_journeys(spec: JourneysFileSpec, source: str = "<journeys>") -> JourneySet:
    problems: list[str] = []
    seen: set[str] = set()
    journeys: list[Journey] = []
    for j_index, jspec in enumerate(spec.journey):
        where = f"journey[{j_index}] {jspec.name!r}"
        if jspec.name in seen:
            problems.append(f"{where}: duplicate journey name")
        seen.add(jspec.name)
        steps: list[Step] = []
        step_names: set[str] = set()
        for s_index, sspec in enumerate(jspec.step):
            s_where = f"{where} → step[{s_index}] {sspec.name!r}"
            if sspec.name in step_names:
                problems.append(f"{s_where}: duplicate step name in this journey")
            step_names.add(sspec.name)
            if s_index == 0:
                if sspec.within is not None or sspec.cause is not None:
                    problems.append(
                        f"{s_where}: the first step starts the journey; it takes no "
                        "'within' or 'cause'"
                    )
            else:
                if sspec.within is None:
                    problems.append(f"{s_where}: 'within' is required (e.g. within = \"30m\")")
                if sspec.cause is None:
                    causes = ", ".join(c.value for c in DROPOFF_CAUSES)
                    problems.append(f"{s_where}: 'cause' is required (one of {causes})")
                elif sspec.cause is Cause.DEAD_END:
                    problems.append(
                        f"{s_where}: 'dead_end' is reserved for failed landings; "
                        "use a drop-off cause"
                    )
            matcher = _compile_match(sspec.match, f"{s_where} → match", problems)
            steps.append(
                Step(
                    name=sspec.name,
                    matcher=matcher,
                    within_ms=parse_duration(sspec.within) if sspec.within else 0,
                    cause=sspec.cause,
                    remedy=sspec.remedy
                    or (REMEDIES[sspec.cause] if sspec.cause is not None else None),
                )
            )
        exits = tuple(
            _compile_match(m, f"{where} → exit[{i}]", problems) for i, m in enumerate(jspec.exit)
        )
        kinds = frozenset().union(*(s.matcher.kinds for s in steps), *(e.kinds for e in exits))
        journeys.append(Journey(jspec.name, jspec.description, tuple(steps), exits, kinds))
    if problems:
        raise ConfigError(f"{source}: invalid journeys:\n  - " + "\n  - ".join(problems))
    return JourneySet(
        journeys=tuple(journeys),
        allowed_lateness_ms=parse_duration(spec.settings.allowed_lateness),
        recovery_window_ms=parse_duration(spec.settings.recovery_window),
        suppression=spec.suppression.rules(),
        retention=spec.retention.rules(),
        fake_traffic=spec.fake_traffic.rules(),
        links=spec.links.rules(),
        communities=spec.communities.rules(),
        fission=spec.fission.rules(),
        tiers=spec.tiers.rules(),
        dedup_window=spec.settings.dedup_window,
        max_pending=spec.settings.max_pending,
    )


def _literal_values(kind: str, field: str) -> frozenset[Any] | None:
    """The allowed values of a field whose type is a closed set (page, target, action...)."""
    annotation = EVENT_MODELS[kind].model_fields[field].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is Literal:
            return frozenset(typing.get_args(candidate))
    return None


def _compile_match(spec: dict[str, Any], where: str, problems: list[str]) -> Matcher:
    kinds: frozenset[str] = frozenset(KINDS)
    kind_value = spec.get("kind")
    if kind_value is not None:
        wanted = kind_value if isinstance(kind_value, list) else [kind_value]
        unknown = [k for k in wanted if k not in KINDS]
        if unknown or isinstance(kind_value, ExistsTest) or not wanted:
            problems.append(f"{where}: kind {kind_value!r} is not one of {', '.join(KINDS)}")
        else:
            kinds = frozenset(wanted)
    conditions: list[Condition] = []
    for name, value in spec.items():
        if name == "kind":
            continue
        if name.startswith("props."):
            key = name.removeprefix("props.")
            if not key:
                problems.append(f"{where}: 'props.' needs a key name (e.g. props.sku)")
                continue
            conditions.append(_condition(key, True, value))
            continue
        lacking = sorted(k for k in kinds if name not in MATCHABLE_FIELDS[k])
        if lacking == sorted(kinds):
            problems.append(
                f"{where}: no event kind {'/'.join(sorted(kinds))} has a field {name!r} "
                "(use props.NAME for custom properties)"
            )
            continue
        if kind_value is not None and lacking:
            problems.append(f"{where}: field {name!r} does not exist on kind {', '.join(lacking)}")
            continue
        bad_values = _bad_literal_values(kinds - set(lacking), name, value)
        if bad_values:
            problems.append(f"{where}: {name} {bad_values}")
            continue
        conditions.append(_condition(name, False, value))
        if kind_value is None:
            # A name only some kinds have narrows the step to those kinds.
            kinds = kinds - frozenset(lacking)
    return Matcher(kinds=kinds, conditions=tuple(conditions))


def _bad_literal_values(kinds: frozenset[str], field: str, value: Any) -> str | None:
    if isinstance(value, ExistsTest):
        return None
    values = value if isinstance(value, list) else [value]
    for kind in sorted(kinds):
        allowed = _literal_values(kind, field)
        if allowed is None:
            continue
        wrong = [v for v in values if v not in allowed]
        if wrong:
            return f"value {wrong[0]!r} is not one of {', '.join(sorted(allowed))}"
    return None


def _condition(field: str, in_props: bool, value: Any) -> Condition:
    if isinstance(value, ExistsTest):
        return Condition(field, in_props, None, value.exists)
    values = value if isinstance(value, list) else [value]
    return Condition(field, in_props, frozenset((type(v) is bool, v) for v in values))


def _format_validation(source: str, raw: dict[str, Any], exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        lines.append(f"{_describe_loc(raw, err['loc'])}: {err['msg']}")
    return f"{source}: invalid journeys:\n  - " + "\n  - ".join(lines)


def _describe_loc(raw: Any, loc: tuple[int | str, ...]) -> str:
    """('journey', 0, 'step', 1, 'within') → "journey[0] 'x' → step[1] 'y' → within"."""
    parts: list[str] = []
    node = raw
    i = 0
    while i < len(loc):
        key = loc[i]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(nxt, int) and isinstance(node, dict) and isinstance(node.get(key), list):
            items = node[key]
            item = items[nxt] if nxt < len(items) else None
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(f"{key}[{nxt}]" + (f" {name!r}" if isinstance(name, str) else ""))
            node = item
            i += 2
            continue
        parts.append(str(key))
        node = node.get(key) if isinstance(node, dict) else None
        i += 1
    return " → ".join(parts) or "(file)"
