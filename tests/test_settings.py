"""Settings from the environment, and namespacing for runs that share a broker."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from pydantic import ValidationError

from linkwatch.settings import Settings, settings_table
from linkwatch.worker import tune_gc


def test_settings_come_from_linkwatch_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINKWATCH_BROKERS", "kafka://a:9092,b:9093")
    monkeypatch.setenv("LINKWATCH_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LINKWATCH_SASL_PASSWORD", "s3cret")
    settings = Settings()
    assert settings.bootstrap_servers == ["a:9092", "b:9093"]
    assert settings.aiokafka_options()["sasl_mechanism"] == "SCRAM-SHA-256"
    assert "s3cret" not in repr(settings)  # secrets stay out of logs
    assert Settings(**settings.model_dump()) == settings


def test_namespaced_settings_share_no_topic_or_group() -> None:
    base = Settings()
    a, b = base.namespaced("a"), base.namespaced("b")
    topics = [n for n in base.model_dump() if n.startswith("topic_")]
    assert len(topics) == 10  # 4 inputs, triggers, dlq, health, profiles, ticks, signals
    for name in topics:
        assert getattr(a, name) == f"a.{getattr(base, name)}"
        assert getattr(a, name) != getattr(b, name)
    assert a.app_id != b.app_id


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings().namespaced("x", partitions=3, idle_timeout="2s")
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_the_readme_settings_table_is_generated_from_the_model() -> None:
    """Every setting is documented, with its real default: the README cannot drift."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_table() in readme
    for name in Settings.model_fields:
        assert f"`LINKWATCH_{name.upper()}`" in settings_table()
    assert all(info.description for info in Settings.model_fields.values())


def test_the_worker_runs_with_the_configured_gc_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(Settings(gc_threshold="1234,5,6"))
        assert gc.get_threshold() == (1234, 5, 6)
        tune_gc(Settings())
        assert gc.get_threshold() == (50_000, 20, 20)
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("value", ["700,10", "0,10,10", "a,b,c", "700,10,10,1", "-1,10,10", ""])
def test_gc_thresholds_are_three_whole_numbers_the_first_positive(value: str) -> None:
    with pytest.raises(ValidationError, match="three whole numbers"):
        Settings(gc_threshold=value)
