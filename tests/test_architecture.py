"""The functional core stays free of Faust, Kafka clients, clocks and I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "linkwatch"
CORE = [
    "events",
    "codec",
    "errors",
    "journeys",
    "state",
    "engine",
    "partition",
    "triggers",
    "commerce",
    "suppression",
    "signals",
    "entities",
    "links",
    "communities",
    "fission",
    "tiers",
    "profile",
    "durations",
    "reload",
    "ticks",
    "wakeups",
]
FORBIDDEN_IMPORTS = {"faust", "aiokafka", "kafka", "time", "socket", "asyncio", "random"}
FORBIDDEN_CALLS = {"now", "utcnow", "time", "monotonic", "perf_counter", "open", "print"}


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_has_no_io_clock_or_kafka(module: str) -> None:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    assert not imported_modules(tree) & FORBIDDEN_IMPORTS
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not calls & FORBIDDEN_CALLS, calls & FORBIDDEN_CALLS


# The thin shell: the only modules that talk to Kafka or Faust.
SHELL = {
    "cli",
    "service",
    "event_context",
    "stream_resume",
    "worker",
    "broker",
    "topics",
    "produce",
    "tail",
    "dev",
    "faust_sensor",
    "producer_buffer",
    "commit_table",
}


def test_only_the_shell_imports_faust_or_aiokafka() -> None:
    for path in SRC.glob("*.py"):
        kafka = imported_modules(ast.parse(path.read_text())) & {"faust", "aiokafka", "mode"}
        if path.stem not in SHELL:
            assert not kafka, f"{path.name} imports {kafka}: keep Kafka in the shell"


def test_replay_does_not_load_faust_or_aiokafka() -> None:
    """`linkwatch replay` stays a fast, offline command."""
    import subprocess
    import sys

    code = (
        "import sys, linkwatch.cli, linkwatch.replay;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'faust','aiokafka','mode'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
