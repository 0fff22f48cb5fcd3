"""deploy/prometheus/: promtool accepts the scrape config and the rules, the rules pass their
unit tests (alerts.test.yml), every alert is tested firing and silent and tells the on-call
what and where, and the rules and their tests name only metrics and labels the worker
exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

import linkwatch
from linkwatch.service import create_app
from linkwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
WORKERS = ["linkwatch-1:6066", "linkwatch-2:6066"]  # the docker-compose services
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


def promtool(*args: str) -> str:
    """Run promtool in deploy/prometheus/ and return its output; fail on a non-zero exit.
    Without promtool: skip locally, fail under CI (CI=true)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail("promtool is not installed (CI=true): run `make tools`")
        pytest.skip("promtool is not installed (Debian package prometheus): run `make tools`")
    done = subprocess.run(
        [path, *args], cwd=PROM, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load(name: str) -> Any:
    return yaml.safe_load((PROM / name).read_text("utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load("alerts.yml")["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


# --- promtool ---------------------------------------------------------------------------------


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    assert f"SUCCESS: {len(rules())} rules found" in out  # the rules file loaded with it


def test_rules_are_valid() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", "alerts.yml")


def test_rules_pass_their_unit_tests() -> None:
    promtool("test", "rules", "alerts.test.yml")


# --- what the files promise -------------------------------------------------------------------


def test_scrape_config_scrapes_both_workers_as_the_rules_expect() -> None:
    config = load("prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    linkwatch_job = jobs["linkwatch"]
    assert linkwatch_job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in linkwatch_job["static_configs"] for t in static["targets"]]
    assert sorted(targets) == WORKERS
    selected = {job for rule in rules() for job in re.findall(r'job="([^"]*)"', rule["expr"])}
    assert selected <= set(jobs), "a rule selects a job this config does not scrape"


def test_every_alert_is_tested_firing_and_silent() -> None:
    """promtool passes a test of an alert that never fires if it expects nothing, and has no
    test at all for an alert nobody wrote one for: this checks both directions exist."""
    tests = load("alerts.test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert len(names) == len(alerts()), "two alerts with one name"
    assert (firing | silent) <= names, "a test of an alert that does not exist"
    assert names <= firing, f"never tested firing: {sorted(names - firing)}"
    assert names <= silent, f"never tested silent: {sorted(names - silent)}"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces
    to hyphens, CJK kept), outside code blocks."""
    found, in_code = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.+)", line)):
            text = heading[1].strip().lower().replace("`", "")
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def test_anchors() -> None:
    markdown = (
        "# LinkWatch\n## Broken links (链路不连)\n```sh\n# not a heading\n```\n"
        "### Sound, traffic and sales (声量 / 流量 / 销量)\n#### `linkwatch replay`\n"
    )
    assert anchors(markdown) == {
        "linkwatch", "broken-links-链路不连", "sound-traffic-and-sales-声量--流量--销量",
        "linkwatch-replay",
    }  # fmt: skip


def test_every_alert_tells_the_on_call_what_and_where() -> None:
    sections = anchors((ROOT / "README.md").read_text("utf-8"))
    for alert in alerts():
        name, notes = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert set(notes) == {"summary", "description", "runbook"}, name
        assert "$labels." in notes["summary"] + notes["description"], f"{name}: say which"
        runbook = re.fullmatch(r"README\.md#(.+)", notes["runbook"])
        assert runbook, f"{name}: the runbook is a README.md section"
        assert runbook[1] in sections, f"{name}: README.md has no section #{runbook[1]}"


# --- metrics ----------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that is not part of a number or duration (1e3, 55m) and not a function call.
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    labels (in matchers and in by/on/... clauses), numbers, durations or comments."""
    text = re.sub(r"#[^\n]*", " ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", " ", text))
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="linkwatch"} == 0', {"up"}),
        ("sum by (job, le) (rate(a_total[5m] offset 55m)) > 1e3", {"a_total"}),
        ("a / on (job) group_left () b  # c d\n+ (x:y:z or vector(0))", {"a", "b", "x:y:z"}),
        ('absent(up{job="a b"}) unless deriv(m[10m]) >= bool 0.15', {"up", "m"}),
    ],
)
def test_metric_names_finds_metrics_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> CollectorRegistry:
    """What a worker serves on /metrics (linkwatch_* and Faust's faust_*), built as the worker
    builds it, with a journeys file as deployments run it."""
    journeys = Path(linkwatch.__file__).parent / "journeys.toml"
    state = tmp_path_factory.mktemp("state")
    return create_app(Settings(journeys_file=journeys, data_dir=state)).registry


def exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series name → label names, for every series the worker exports, plus `up`. Names from
    the exposition's TYPE lines (there even before a labelled metric has a sample); labels from
    the metric objects (`_labelnames`: prometheus_client has no public accessor)."""
    text = generate_latest(registry).decode()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    series = {"up": set(SCRAPE_LABELS)}
    for collector, names in registry._collector_to_names.items():
        labels = set(getattr(collector, "_labelnames", ())) | SCRAPE_LABELS
        for name in names:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if families.get(name) in {"counter", "gauge"}:
                series[name] = labels
            elif families.get(family) == "histogram" and name != family:
                series[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return series


def test_exported_covers_linkwatch_and_faust(registry: CollectorRegistry) -> None:
    series = exported(registry)
    assert series["linkwatch_journey_dropped_off_total"] >= {"journey", "step", "cause"}
    assert series["linkwatch_links_broken"] >= {"kind"}  # an entity metric
    assert series["faust_topic_partition_offset_commited"] >= {"topic", "partition"}
    assert "linkwatch_events" not in series  # a counter's series ends in _total
    assert "le" in series["linkwatch_deadline_fire_delay_seconds_bucket"]


def test_rules_read_only_exported_or_recorded_metrics(registry: CollectorRegistry) -> None:
    series = exported(registry)
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used: set[str] = set()
    for rule in rules():
        names = metric_names(rule["expr"])
        unknown = names - set(series) - recorded
        assert not unknown, f"{rule.get('alert') or rule['record']} reads {sorted(unknown)}"
        used |= names
        # Annotations may query recorded series ({{ ... | query }}): those must exist too.
        for note in rule.get("annotations", {}).values():
            queried = set(re.findall(r"\b[a-z_]+:[a-z0-9_:]+", note))
            assert queried <= recorded, f"{rule['alert']} queries {sorted(queried - recorded)}"
    assert {"up", "linkwatch_links_broken", "faust_topic_partition_end_offset"} <= used


def test_unit_test_series_are_what_the_workers_export(registry: CollectorRegistry) -> None:
    """The unit tests feed the rules series a worker could really send: a known name, its own
    labels, as scraped from one of the two workers (or another job's `up`)."""
    series = exported(registry)
    fed = [s["series"] for case in load("alerts.test.yml")["tests"] for s in case["input_series"]]
    assert fed
    for text in fed:
        parsed = re.fullmatch(r"(\w+)\{(.*)\}", text)
        assert parsed, text
        name, labels = parsed[1], dict(re.findall(r'(\w+)="([^"]*)"', parsed[2]))
        assert name in series, f"{name} is not exported by the worker"
        assert set(labels) <= series[name], f"{text}: no {set(labels) - series[name]}"
        if labels.get("job") == "linkwatch":
            assert labels.get("instance") in WORKERS, text
        else:
            assert name == "up", f"{text}: only `up` comes from other jobs"
