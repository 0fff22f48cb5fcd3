"""Hot reload of the journeys file: poll its content, validate a new version, hand it over.

Shell code (file I/O, logs). The content is compared by hash, not by modification time, so an
edit that keeps the mtime (or a ConfigMap's symlink swap) is seen and a touch is not. A version
that does not validate is logged once and ignored: the running configuration stays.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

from linkwatch.errors import ConfigError
from linkwatch.journeys import JourneySet, parse_journeys
from linkwatch.reload import diff, shapes_of

log = logging.getLogger("linkwatch.reload")

PollOutcome = Literal["unchanged", "applied", "rejected"]


class JourneysWatcher:
    """Checks `path` on each `poll`; a new valid version goes to `apply`."""

    def __init__(
        self,
        path: Path,
        current: JourneySet,
        apply: Callable[[JourneySet], None],
        registry: CollectorRegistry,
    ) -> None:
        self.path = path
        self.current = current  # the configuration in effect
        self._apply = apply
        # The content last acted on (applied or rejected): the same content is not retried.
        self._seen = self._read()[0]
        self.reloads = Counter(
            "linkwatch_journeys_reloads_total",
            "Changed journeys files, by outcome (applied, or rejected as invalid)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "rejected"):
            self.reloads.labels(outcome)  # exported at 0 from the start, for alerts

    def poll(self) -> PollOutcome:
        seen, text, problem = self._read()
        if seen == self._seen:
            return "unchanged"
        self._seen = seen
        try:
            if text is None:
                raise ConfigError(problem)
            journeys = parse_journeys(text, source=str(self.path))
        except ConfigError as exc:
            log.warning("journeys reload rejected: %s: %s", self.path, self._one_line(exc))
            self.reloads.labels("rejected").inc()
            return "rejected"
        changes = diff(shapes_of(self.current), shapes_of(journeys))
        self._apply(journeys)
        self.current = journeys
        log.info(
            "journeys reloaded from %s: %d journeys (added %s, removed %s, changed %s)",
            self.path,
            len(journeys.journeys),
            list(changes.added),
            list(changes.removed),
            list(changes.changed),
        )
        self.reloads.labels("applied").inc()
        return "applied"

    def _read(self) -> tuple[str, str | None, str]:
        """(what identifies this content, its text or None, why there is no text)."""
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            problem = f"cannot read journeys file: {exc.strerror}"
            return f"unreadable: {problem}", None, problem
        seen = hashlib.sha256(content).hexdigest()
        try:
            return seen, content.decode("utf-8"), ""
        except UnicodeDecodeError:
            return seen, None, "journeys file is not valid UTF-8"

    def _one_line(self, error: ConfigError) -> str:
        """The problem without the path (the log line names it) and on one line."""
        message = str(error).removeprefix(f"{self.path}: ")
        first, *problems = message.splitlines()
        listed = "; ".join(line.strip().removeprefix("- ") for line in problems)
        return f"{first} {listed}" if listed else first
