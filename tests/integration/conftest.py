"""One real broker for the whole session; every test gets its own topics and app id on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkwatch.broker import EmbeddedBroker
from linkwatch.settings import Settings

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs the broker: `-m "not integration"` skips it."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings on the session broker whose topics, app id and state no other test shares."""
    tag = f"t{uuid.uuid4().hex[:8]}"
    return Settings(brokers=broker.url).namespaced(tag, data_dir=tmp_path / "state")
