"""The published contract: schemas in sync with the models; examples and real outputs valid."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from linkwatch.cli import main
from linkwatch.codec import decode_event
from linkwatch.deadletters import DeadLetter, FileSource, KafkaSource
from linkwatch.errors import RecordRejected
from linkwatch.journeys import JourneySet
from linkwatch.replay import replay_lines
from linkwatch.schemas import SCHEMA_MODELS, check_schemas, generate_schemas, load_schema
from linkwatch.triggers import Resolution, TopicRecord
from tests.builders import at, raw

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))


def validator(stem: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(SCHEMAS, stem)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_checked_in_schemas_are_in_sync() -> None:
    assert check_schemas(SCHEMAS) == []
    assert main(["schemas", "--check", "--dir", str(SCHEMAS)]) == 0


def test_check_fails_when_out_of_sync(tmp_path: Path) -> None:
    assert main(["schemas", "--dir", str(tmp_path)]) == 0
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "trigger.schema.json").write_text("{}")
    (tmp_path / "click.schema.json").unlink()
    problems = check_schemas(tmp_path)
    assert len(problems) == 2
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1


def test_every_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert set(generate_schemas()) == {f"{stem}.schema.json" for stem in SCHEMA_MODELS}
    for stem in SCHEMA_MODELS:
        validator(stem)


def test_there_is_an_example_for_every_input_kind() -> None:
    stems = {path.name.split(".")[0].split("-")[0] for path in EXAMPLES}
    assert {"click", "share", "purchase", "group_chat"} <= stems


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    stem = path.name.split(".")[0].split("-")[0]
    data = orjson.loads(path.read_bytes())
    validator(stem).validate(data)
    event = decode_event(path.read_bytes())  # the codec agrees with the schema
    assert event.kind == stem


@pytest.mark.parametrize(
    "fields",
    [
        {"amount": -1},
        {"amount": "1,5"},
        {"ts": "2024-11-22T00:00:00"},
        {"currency": "yuan"},
        {"user_id": ""},
        {"order_id": None},
    ],
)
def test_schema_and_codec_agree_on_bad_purchases(fields: dict[str, Any]) -> None:
    data = orjson.loads(raw("purchase", **{k: v for k, v in fields.items() if v is not None}))
    for key, value in fields.items():
        if value is None:
            del data[key]
    with pytest.raises(RecordRejected):
        decode_event(orjson.dumps(data))
    assert list(validator("purchase").iter_errors(data))


def test_real_triggers_and_dead_letters_match_their_schemas(default_journeys: JourneySet) -> None:
    triggers: list[TopicRecord] = []
    dead: list[DeadLetter] = []
    lines = [
        raw(event_id="a", ts=at(0), page="cart", campaign_id="c1"),
        raw(event_id="b", ts=at(1), page="product", landing_status=503),
        raw(event_id="late-checkout", ts=at(45), page="checkout"),  # comes back: a resolution
        b'{"kind": "purchase", "amount": -1}',
        b"\xff\xfe",
        raw(event_id="z", user_id="u9", ts=at(600)),
    ]
    replay_lines(lines, default_journeys, on_trigger=triggers.append, on_dead_letter=dead.append)
    assert {t.type for t in triggers} == {"dropoff", "dead_end", "resolution"}
    assert len(dead) == 2
    for record in triggers:
        stem = "resolution" if isinstance(record, Resolution) else "trigger"
        validator(stem).validate(record.model_dump(mode="json"))
    for letter in dead:
        validator("dead_letter").validate(letter.model_dump(mode="json"))
    assert dead[1].original_bytes() == b"\xff\xfe"
    assert dead[1].source == FileSource(path="-", line=5)


def test_dead_letters_can_say_where_in_kafka_they_came_from() -> None:
    source = KafkaSource(topic="events.click", partition=3, offset=1234)
    with pytest.raises(RecordRejected) as info:
        decode_event(b"{}")
    rejection = info.value
    letter = DeadLetter.from_rejection(b"{}", rejection, source)
    validator("dead_letter").validate(letter.model_dump(mode="json"))
    again = DeadLetter.from_rejection(b"{}", rejection, source)
    assert letter.dead_letter_id == again.dead_letter_id


OUTPUT_EXAMPLES = sorted((SCHEMAS / "examples" / "outputs").glob("*.json"))
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample-events.jsonl.gz"


def test_there_is_an_output_example_for_every_output_record() -> None:
    stems = {path.name.split(".")[0].split("-")[0] for path in OUTPUT_EXAMPLES}
    outputs = {stem for stem, (_, mode) in SCHEMA_MODELS.items() if mode == "serialization"}
    assert outputs - {"dead_letter"} <= stems


def test_output_examples_are_valid_and_really_produced_by_the_sample(
    default_journeys: JourneySet,
) -> None:
    """Each example validates against its schema, and is exactly what replaying the sample
    produces: the documentation cannot drift from the product."""
    produced: list[Any] = []
    with gzip.open(SAMPLE, "rb") as lines:
        replay_lines(
            lines,
            default_journeys,
            on_trigger=lambda t: produced.append(t.model_dump(mode="json")),
            on_record=lambda p: produced.append(p.record.model_dump(mode="json")),
            close_open=True,
        )
    for path in OUTPUT_EXAMPLES:
        stem = path.name.split(".")[0].split("-")[0]
        example = orjson.loads(path.read_bytes())
        validator(stem).validate(example)
        assert example in produced, f"{path.name} is not an output of the sample"
