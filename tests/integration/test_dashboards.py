"""Every metric the Grafana dashboards query is exported by a real worker under traffic."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

import linkwatch
from linkwatch.produce import produce
from linkwatch.settings import Settings
from linkwatch.simulate import generate
from linkwatch.topics import ensure_topics
from tests.integration.workers import FAST, START, WorkerProcess, run, sum_metric, wait_for
from tests.test_dashboards import exported_names, used_metrics


@pytest.mark.timeout(180)
def test_dashboards_query_only_metrics_a_worker_exports(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    # Run from a journeys file, as deployments do: the worker then also exports its reload
    # counter, which the service board shows.
    journeys = tmp_path / "journeys.toml"
    shutil.copy(Path(linkwatch.__file__).parent / "journeys.toml", journeys)
    settings = kafka_settings.model_copy(update=FAST | {"journeys_file": journeys})
    lines = list(generate(users=300, seed=5, start_ms=START, bad_ratio=0.01))
    run(ensure_topics(settings, list(settings.input_topics.values()), settings.partitions))

    with WorkerProcess(settings, tmp_path) as worker:
        assert run(produce(settings, lines)) == len(lines)

        # Scrape once the traffic has gone all the way through: journeys, dead letters,
        # drop-offs and their triggers, commerce, and the entity stage behind them.
        flowing = (
            "linkwatch_journey_step_reached_total",
            "linkwatch_records_rejected_total",
            "linkwatch_journey_dropped_off_total",
            "linkwatch_triggers_total",
            "linkwatch_sales_purchases_total",
            "linkwatch_fission_shares_total",
        )

        def through() -> bool:
            samples = worker.metrics()
            return all(sum_metric(samples, name) > 0 for name in flowing)

        assert wait_for(through, timeout=60), worker.tail_log()
        with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:  # noqa: S310
            exposition = response.read().decode()

    scrape = tmp_path / "metrics.txt"  # kept for a look when this fails
    scrape.write_text(exposition)
    exported = exported_names(exposition)
    assert len(exported) > 50, f"a suspiciously small scrape: {scrape}"
    missing = {name: where for name, where in used_metrics().items() if name not in exported}
    assert not missing, "\n".join(
        [f"the dashboards query metrics the worker does not export (scrape: {scrape}):"]
        + [f"  {name}: {', '.join(where[:3])}" for name, where in sorted(missing.items())]
    )
