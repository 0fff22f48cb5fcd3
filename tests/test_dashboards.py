"""The Grafana dashboards (deploy/grafana/): checked in exactly as the generator writes them,
valid dashboard JSON, PromQL that parses, and only metrics and labels the worker declares.
tests/integration/test_dashboards.py checks the metric names against a real worker's /metrics."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import generate_latest

import linkwatch
from linkwatch.journeys import load_journeys
from linkwatch.service import create_app
from linkwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
BOARDS = ("funnel", "marketing", "service")
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/ declares this uid
PROMETHEUS_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes

Json = dict[str, Any]


@cache
def builder() -> ModuleType:
    """deploy/grafana/build_dashboards.py, a script rather than a package module."""
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, Json]:
    """The checked-in boards, by name."""
    return {
        name: json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text("utf-8"))
        for name in BOARDS
    }


def queries(board: Json) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel query and every variable's metric query."""
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"{board['uid']} / {panel['title']}", target["expr"], target["legendFormat"]
    for var in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
        if match:  # label_values(METRIC, label): the PromQL part is METRIC
            yield f"{board['uid']} / ${var['name']}", match[1], ""


# ---------------------------------------------------------------------------------------------
# PromQL: which metrics and labels an expression names (enough of the grammar for dashboards)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TOKEN = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|\d*\.?\d+(?:[eE][+-]?\d+)?"  # numbers, durations
    r"|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?"
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    labels (in matchers and by/without/on/ignoring/group_*), durations or Grafana variables."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", " ", text)  # label matchers, ranges, subqueries
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", _GROUPING.sub(" ", text))
    for token in _TOKEN.finditer(text):
        name = token["name"]
        if name and not token["call"] and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def selectors(expr: str) -> Iterator[tuple[str | None, set[str]]]:
    """(metric or None, label names its matchers use) for every `metric{...}`."""
    for metric, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
        yield metric or None, set(_MATCHER.findall(matchers))


def grouping_labels(expr: str) -> set[str]:
    found = _GROUPING.findall(_STRING.sub('""', expr))
    return {label.strip() for labels in found for label in labels.split(",") if label.strip()}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (le) (rate(x_bucket{job=~"a|b"}[$__rate_interval]))', {"x_bucket"}),
        ("sum(rate(a_total[5m])) by (kind) / ignoring(kind) group_left b", {"a_total", "b"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        (
            "histogram_quantile(0.99, sum(rate(h_bucket[1h30m] offset 1d)) without (pod))",
            {"h_bucket"},
        ),
        ("a unless b or c and on (x) d > bool 1e3", {"a", "b", "c", "d"}),
        ('count({__name__="lonely"}) + Inf + NaN - 0x1F', {"lonely"}),
        ("max_over_time(ns:rule:rate5m[1h:5m]) @ start()", {"ns:rule:rate5m"}),
        ('sum(increase(x{l="{{not}} a [selector]"}[$__range])) * $factor', {"x"}),
    ],
)
def test_metric_names_finds_metrics_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selectors_and_grouping_labels() -> None:
    expr = 'sum by (a, b) (rate(m{c="x", d!~"y"}[5m])) / on(e) group_left n{f="}"}'
    assert list(selectors(expr)) == [("m", {"c", "d"}), ("n", {"f"})]
    assert grouping_labels(expr) == {"a", "b", "e"}


# ---------------------------------------------------------------------------------------------
# The files


def test_checked_in_dashboards_are_the_generator_output() -> None:
    rendered = builder().render(load_journeys())
    assert sorted(rendered) == [f"{name}.json" for name in sorted(BOARDS)]
    for name, text in rendered.items():
        checked_in = (GRAFANA / "dashboards" / name).read_text("utf-8")
        if checked_in != text:  # not assert ==: the diff of two big JSON files says little
            pytest.fail(f"{name} is stale: run deploy/grafana/build_dashboards.py")


def test_generator_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = builder().main
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "funnel.json is out of date" in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("name", BOARDS)
def test_valid_dashboard_json(name: str) -> None:
    board = dashboards()[name]
    assert board["uid"] == f"linkwatch-{name}"
    assert board["title"].startswith("LinkWatch / ")
    assert board["schemaVersion"] == 39
    assert board["time"]["from"].startswith("now-")
    panels = board["panels"]
    assert panels, "a board without panels"
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels:
        where = f"{name} / {panel['title']}"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), where
        assert min(grid["h"], grid["w"]) > 0, where
        assert min(grid["x"], grid["y"]) >= 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the grid"
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"stat", "bargauge", "timeseries"}, where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["description"], f"{where}: say what it shows"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, f"{where}: no query"
        assert len(set(refs)) == len(refs), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert isinstance(target["expr"], str), where
            assert target["expr"].strip(), f"{where}: empty query"
    for var in board["templating"]["list"]:
        assert var["datasource"] == DATASOURCE, var["name"]
    used = set(re.findall(r"\$(\w+)", json.dumps(board))) - {"__range", "__rate_interval"}
    assert used <= {var["name"] for var in board["templating"]["list"]}, "undefined variable"


@pytest.mark.parametrize("name", BOARDS)
def test_panels_do_not_overlap(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboards()[name]["panels"]:
        g = panel["gridPos"]
        for cell in itertools.product(
            range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        ):
            assert cell not in cells, f"{panel['title']} overlaps {cells[cell]}"
            cells[cell] = panel["title"]


def test_datasource_is_the_provisioned_one() -> None:
    """provisioning/datasources declares the uid every panel names (read as text: no YAML
    parser among the dependencies)."""
    declared = "".join(p.read_text() for p in (GRAFANA / "provisioning").glob("datasources/*.y*ml"))
    assert re.search(r"^\s*uid:\s*[\"']?prometheus[\"']?\s*(#.*)?$", declared, re.MULTILINE)
    assert re.search(r"^\s*type:\s*prometheus\s*(#.*)?$", declared, re.MULTILINE)


def test_dashboard_uids_are_unique() -> None:
    uids = [board["uid"] for board in dashboards().values()]
    assert len(set(uids)) == len(uids)


# ---------------------------------------------------------------------------------------------
# The queries


def need_tool(name: str) -> str:
    """A third-party checker: missing, a CI run fails; a local run skips, saying why."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(f"{name} is not installed (CI=true): run `make tools`")
        pytest.skip(f"{name} is not installed: `make tools` installs it")
    return path


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule; Grafana's variables are given
    values first ($__range and $__rate_interval durations, the others appear in strings)."""
    promtool = need_tool("promtool")
    rules = []
    for board in dashboards().values():
        for i, (_, expr, _) in enumerate(queries(board)):
            expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1d")
            rules.append({"record": f"{board['uid'].replace('-', '_')}:query{i}", "expr": expr})
    path = tmp_path / "rules.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def exported_names(exposition: str) -> set[str]:
    """Series names a scrape of this exposition gives Prometheus, from the `# TYPE` lines (there
    even for labelled metrics with no sample yet): a counter's TYPE already ends in _total, a
    histogram's series are _bucket, _sum and _count."""
    names = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif kind == "summary":
            names |= {family, f"{family}_sum", f"{family}_count"}
        else:
            names.add(family)
    return names


def used_metrics() -> dict[str, list[str]]:
    """Metric name → where the dashboards use it."""
    used: dict[str, list[str]] = {}
    for board in dashboards().values():
        for where, expr, _ in queries(board):
            for metric in metric_names(expr):
                used.setdefault(metric, []).append(where)
    return used


def test_exported_names_reads_type_lines() -> None:
    text = (
        "# HELP a_total h\n# TYPE a_total counter\n# TYPE g gauge\ng 1.0\n"
        '# TYPE h_seconds histogram\nh_seconds_bucket{le="+Inf"} 0.0\n# TYPE s summary\n'
    )
    assert exported_names(text) == {
        "a_total", "g", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "s", "s_sum",
        "s_count",
    }  # fmt: skip


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The registry a worker serves on /metrics, built as the worker builds it; with a journeys
    file, as deployments run it, so the reload counter is there too."""
    journeys = Path(linkwatch.__file__).parent / "journeys.toml"
    state = tmp_path_factory.mktemp("state")
    return create_app(Settings(journeys_file=journeys, data_dir=state)).registry


def declared_labels(registry: Any) -> dict[str, set[str]]:
    """Series name → label names, from the metric objects (prometheus_client keeps them in
    `_labelnames`; pinned in constraints.txt, and this test fails if that ever changes)."""
    labels: dict[str, set[str]] = {}
    for collector, names in registry._collector_to_names.items():
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            labels[name] = set(collector._labelnames) | extra | PROMETHEUS_LABELS
    return labels


def test_queries_name_only_declared_metrics_and_labels(registry: Any) -> None:
    missing = set(used_metrics()) - exported_names(generate_latest(registry).decode())
    assert not missing, f"not exported by the worker: {sorted(missing)}"
    labels = declared_labels(registry)
    for board in dashboards().values():
        for where, expr, legend in queries(board):
            known = set().union(*(labels[m] for m in metric_names(expr)))
            for metric, matched in selectors(expr):
                assert metric is not None, f"{where}: a selector without a metric name"
                assert matched <= labels[metric], (
                    f"{where}: {metric} has no {matched - labels[metric]}"
                )
            assert grouping_labels(expr) <= known, f"{where}: grouping by an unknown label"
            shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            assert shown <= known, f"{where}: legend shows an unknown label {shown - known}"
    for board in dashboards().values():
        for var in board["templating"]["list"]:
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]).groups()
            assert label in labels[metric], f"${var['name']}: {metric} has no label {label}"
