"""The AsyncAPI 3 contract (schemas/asyncapi.yaml): in sync with the code, read back exactly by
a real YAML parser, structurally AsyncAPI 3.0.0, and covering every topic and record model."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import linkwatch
from linkwatch.asyncapi import ASYNCAPI_FILE, CHANNELS, MESSAGES, build_document, to_yaml
from linkwatch.cli import main
from linkwatch.journeys import JourneySet
from linkwatch.replay import replay_lines
from linkwatch.schemas import SCHEMA_MODELS, check_schemas, generate_contract, generate_schemas
from linkwatch.settings import Settings
from linkwatch.signals import Published
from linkwatch.tiers import ProfileUpdate

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample-events.jsonl.gz"
TOPICS = {
    n.removeprefix("topic_"): f for n, f in Settings.model_fields.items() if n.startswith("topic_")
}
OUTPUTS = {stem for stem, (_, mode) in SCHEMA_MODELS.items() if mode == "serialization"}


def document() -> dict[str, Any]:
    return build_document(SCHEMA_MODELS)


# -- in sync -----------------------------------------------------------------------------------


def test_checked_in_document_is_what_the_code_generates() -> None:
    assert (SCHEMAS / ASYNCAPI_FILE).read_bytes() == generate_contract()[ASYNCAPI_FILE]
    assert check_schemas(SCHEMAS) == []


def test_schemas_command_writes_it_and_check_fails_when_it_is_edited(tmp_path: Path) -> None:
    assert main(["schemas", "--dir", str(tmp_path)]) == 0
    path = tmp_path / ASYNCAPI_FILE
    assert path.read_bytes() == generate_contract()[ASYNCAPI_FILE]
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 0
    path.write_text(path.read_text().replace("linkwatch.triggers", "linkwatch.trigger"))
    assert check_schemas(tmp_path) == [
        f"{path}: out of sync with the models (run `linkwatch schemas`)"
    ]
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1
    path.unlink()
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1


def test_the_environment_does_not_change_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKWATCH_TOPIC_TRIGGERS", "prod.triggers")
    monkeypatch.setenv("LINKWATCH_BROKERS", "kafka://broker-1:9093")
    assert generate_contract()[ASYNCAPI_FILE] == (SCHEMAS / ASYNCAPI_FILE).read_bytes()


# -- YAML: what a real parser reads is the document ------------------------------------------


@cache
def pyyaml_python() -> str | None:
    """A Python that has PyYAML: this venv's, or Debian's python3-yaml (a dependency of the
    docker-compose package that `make tools` installs). A third-party parser, YAML 1.1, the
    strictest common one about what a plain string may look like."""
    for python in (sys.executable, "/usr/bin/python3"):
        if Path(python).exists():
            found = subprocess.run([python, "-c", "import yaml"], capture_output=True, check=False)
            if found.returncode == 0:
                return python
    return None


def pyyaml_load(texts: list[str]) -> list[Any]:
    python = pyyaml_python()
    if python is None:
        reason = "PyYAML not found: `apt-get install python3-yaml` (or `make tools`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    code = (
        "import json,sys,yaml;print(json.dumps([yaml.safe_load(t) for t in json.load(sys.stdin)]))"
    )
    done = subprocess.run(
        [python, "-c", code], input=json.dumps(texts), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[Any] = json.loads(done.stdout)
    return loaded


def test_pyyaml_reads_the_checked_in_file_as_the_document() -> None:
    [loaded] = pyyaml_load([(SCHEMAS / ASYNCAPI_FILE).read_text()])
    assert loaded == json.loads(json.dumps(document()))


# Strings YAML reads as something else unless quoted, or cannot hold unescaped.
TRICKY = [
    "", " ", "yes", "No", "ON", "off", "y", "n", "true", "False", "null", "NULL", "~", "-", "- x",
    "3.0.0", "0.5", "1e3", "0x1f", "0o17", "12:30:00", "2024-11-22", ".inf", ".5", "=", "<<",
    "#/components/x", "a #b", "a: b", "a:b", "key:", "{bootstrap}", "[x]", "*alias", "&anchor",
    "!tag", "%dir", "@at", "`tick`", "'single'", '"double"', "back\\slash", "tab\there",
    "line\nbreak", "trailing\n", "two\n\n", "\nleading", " lead\nx", "trail \nx", "x\n y",
    "\r\n", "nel\x85", "ls\u2028", "ps\u2029", "bom\ufeff", "del\x7f", "nul\x00", "断路点",
    "emoji \U0001f600", "$ref", "./trigger.schema.json", "a" * 300, ("word " * 40).strip(),
    "word  " * 30, ("a\u2028 " * 50).strip(), ('"quoted" ' * 20).strip(),
    *("x" * n + "  y  z" for n in range(80, 100)),  # a long line broken at a double space
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Nested mappings and sequences of strings drawn from characters YAML treats specially."""
    alphabet = (
        " \t\n\r:#-?[]{},&*!|>'\"%@`\\$./=~aZ09yn\x00\x1f\x7f\x85\xa0\u2028\ufeff断\U0001f600"
    )
    kind = rng.randrange(8 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -7, 10**20])
    if kind < 4:
        words = [
            "".join(rng.choices(alphabet, k=rng.randrange(6))) for _ in range(rng.randrange(40))
        ]
        return " ".join(words)
    if kind < 6:
        return {str(random_value(rng, 3))[:40]: random_value(rng, depth + 1) for _ in range(3)}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_pyyaml_reads_back_every_value_the_emitter_writes() -> None:
    rng = random.Random(5)
    values: list[Any] = [{s: s for s in TRICKY}, TRICKY, *TRICKY, {}, [], [[1, [2]], {"a": []}]]
    values += [random_value(rng) for _ in range(300)]
    assert pyyaml_load([to_yaml(value) for value in values]) == values


def test_the_emitter_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        to_yaml({"ratio": 0.5})
    with pytest.raises(TypeError):
        to_yaml({1: "a"})


# -- AsyncAPI 3.0.0 structure ------------------------------------------------------------------

# The official AsyncAPI 3.0.0 JSON Schema is published on npm (@asyncapi/specs), not on PyPI,
# so the rules this document relies on are written out here: required fields, allowed fields
# (a v2 field like `publish` is an error), names, and what a reference looks like.
X = {r"^x-[\w\d.\-_]+$": {}}  # specification extensions, as the official schema allows them
REF = {"type": "object", "required": ["$ref"], "properties": {"$ref": {"type": "string"}}}
NAMES = {"pattern": r"^[A-Za-z0-9_.\-]+$"}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "patternProperties": X,
        "additionalProperties": False,
    }


def named(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "propertyNames": NAMES, "additionalProperties": schema}


TEXT = {"type": "string", "minLength": 1}
TAGS = {"type": "array", "items": obj(["name"], name=TEXT, description=TEXT)}
KAFKA_MESSAGE = obj(
    ["bindingVersion"],
    key={"type": "object"},
    schemaIdLocation={"enum": ["header", "payload"]},
    schemaIdPayloadEncoding=TEXT,
    schemaLookupStrategy=TEXT,
    bindingVersion={"enum": ["0.5.0", "0.4.0", "0.3.0"]},
)
MESSAGE = obj(
    ["payload"],
    name=TEXT,
    title=TEXT,
    summary=TEXT,
    description=TEXT,
    contentType=TEXT,
    headers={"type": "object"},
    payload=REF,
    correlationId=obj(["location"], location={"pattern": r"^\$message\.(header|payload)(#.*)?$"}),
    bindings={"type": "object", "properties": {"kafka": KAFKA_MESSAGE}},
    tags=TAGS,
)
STRUCTURE = obj(
    ["asyncapi", "info"],
    asyncapi={"const": "3.0.0"},
    id={"type": "string"},
    info=obj(["title", "version"], title=TEXT, version=TEXT, description=TEXT, tags=TAGS),
    defaultContentType=TEXT,
    servers=named(
        obj(
            ["host", "protocol"],
            host=TEXT,
            protocol=TEXT,
            description=TEXT,
            variables=named(obj([], default=TEXT, description=TEXT)),
        )
    ),
    channels=named(
        obj(
            [],
            address={"type": ["string", "null"]},
            title=TEXT,
            summary=TEXT,
            description=TEXT,
            messages=named(REF),
            tags=TAGS,
        )
    ),
    operations=named(
        obj(
            ["action", "channel"],
            action={"enum": ["send", "receive"]},
            channel=REF,
            title=TEXT,
            summary=TEXT,
            description=TEXT,
            messages={"type": "array", "items": REF},
        )
    ),
    components=obj([], messages=named(MESSAGE)),
)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(doc: dict[str, Any], pointer: str) -> Any:
    node: Any = doc
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def problems(doc: dict[str, Any]) -> list[str]:
    """What makes `doc` not a valid AsyncAPI 3.0.0 document whose files are in schemas/."""
    found = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(STRUCTURE).iter_errors(doc)
    ]
    if found:
        return found
    for ref in refs(doc):
        if ref.startswith("#/"):
            try:
                resolve(doc, ref)
            except (KeyError, IndexError):
                found.append(f"{ref}: does not resolve")
        elif ref.removeprefix("./") not in generate_schemas():
            found.append(f"{ref}: not a generated schema file")
        elif not (SCHEMAS / ref).is_file():
            found.append(f"{ref}: no such file in {SCHEMAS}")
    for name, operation in doc.get("operations", {}).items():
        channel = operation["channel"]["$ref"]  # its messages must be that channel's
        for message in operation.get("messages", []):
            if not message["$ref"].startswith(f"{channel}/messages/"):
                found.append(f"operation {name}: {message['$ref']} is not in {channel}")
    for name, server in doc.get("servers", {}).items():
        for variable in re.findall(r"\{([^}]*)\}", server["host"]):
            if variable not in server.get("variables", {}):
                found.append(f"server {name}: variable {variable} is not declared")
    return found


def test_the_document_is_structurally_asyncapi_3() -> None:
    assert problems(document()) == []


def broken(change: str) -> dict[str, Any]:
    doc = document()
    if change == "v2 operation":
        doc["operations"]["send_triggers"]["action"] = "publish"
    elif change == "no version":
        del doc["info"]["version"]
    elif change == "unknown field":
        doc["channels"]["triggers"]["publish"] = {}
    elif change == "dangling ref":
        doc["channels"]["dlq"]["messages"]["dead_letter"]["$ref"] = "#/components/messages/dlq"
    elif change == "missing file":
        doc["components"]["messages"]["trigger"]["payload"]["$ref"] = "./triggers.schema.json"
    elif change == "message of another channel":
        doc["operations"]["send_dlq"]["messages"][0]["$ref"] = (
            "#/channels/triggers/messages/trigger"
        )
    elif change == "undeclared variable":
        doc["servers"]["kafka"]["variables"] = {}
    return doc


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("v2 operation", "'publish' is not one of ['send', 'receive']"),
        ("no version", "'version' is a required property"),
        ("unknown field", "'publish' does not match any of the regexes"),
        ("dangling ref", "#/components/messages/dlq: does not resolve"),
        ("missing file", "./triggers.schema.json: not a generated schema file"),
        ("message of another channel", "is not in #/channels/dlq"),
        ("undeclared variable", "variable bootstrap is not declared"),
    ],
)
def test_the_structural_check_catches_a_broken_document(change: str, expected: str) -> None:
    found = problems(broken(change))
    assert any(expected in problem for problem in found), found


# -- coverage: every topic, every record -------------------------------------------------------


def test_every_topic_setting_is_a_channel_named_after_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channels = document()["channels"]
    assert set(channels) == set(TOPICS)
    for name, field in TOPICS.items():
        assert channels[name]["address"] == field.default
        variable = channels[name]["x-linkwatch-setting"]
        monkeypatch.setenv(variable, f"renamed.{name}")  # the variable named is the real one
        assert getattr(Settings(), f"topic_{name}") == f"renamed.{name}"


def test_inputs_are_received_outputs_sent_and_internal_topics_carry_no_contract() -> None:
    doc = document()
    received, sent = set(), set()
    for operation in doc["operations"].values():
        stems = {m["$ref"].rsplit("/", 1)[1] for m in operation["messages"]}
        (received if operation["action"] == "receive" else sent).update(stems)
    assert received == set(SCHEMA_MODELS) - OUTPUTS == {"click", "share", "purchase", "group_chat"}
    assert sent == OUTPUTS
    assert set(doc["components"]["messages"]) == set(SCHEMA_MODELS)
    for name in ("ticks", "signals"):
        channel = doc["channels"][name]
        assert channel["tags"] == [{"name": "internal"}]
        assert "messages" not in channel
        assert "no consumer contract" in channel["description"].lower()
        assert not [op for op in doc["operations"].values() if op["channel"]["$ref"].endswith(name)]


def test_messages_ref_their_schema_file_and_name_real_keys_and_ids() -> None:
    messages = document()["components"]["messages"]
    for stem in SCHEMA_MODELS:
        message = messages[stem]
        assert message["payload"] == {"$ref": f"./{stem}.schema.json"}
        schema = json.loads((SCHEMAS / f"{stem}.schema.json").read_bytes())
        assert MESSAGES[stem].dedup in schema["required"], stem
        assert f"`{MESSAGES[stem].dedup}`" in message["description"]
        key = message["bindings"]["kafka"]["key"]
        jsonschema.Draft7Validator.check_schema(key)
        if "user_id" in key.get("description", ""):
            assert "user_id" in schema["required"], stem


def test_info_states_the_version_and_the_delivery_guarantees() -> None:
    info = document()["info"]
    assert info["version"] == linkwatch.__version__
    assert "at least once" in info["description"]
    for field in ("trigger_id", "resolution_id", "alert_id", "update_id", "dead_letter_id"):
        assert f"`{field}`" in info["description"]


def test_a_model_or_topic_the_document_does_not_know_stops_the_build() -> None:
    with pytest.raises(ValueError, match="must be the same"):
        build_document({k: v for k, v in SCHEMA_MODELS.items() if k != "profile_update"})
    with pytest.raises(ValueError, match="must be the same"):
        build_document({**SCHEMA_MODELS, "extra": SCHEMA_MODELS["trigger"]})
    assert set(CHANNELS) == set(TOPICS)


def test_health_and_profile_records_of_the_sample_have_the_documented_keys(
    default_journeys: JourneySet,
) -> None:
    """Replays the sample: every record for the health and profiles topics goes to a channel
    that lists its message, and its Kafka key matches that message's key schema."""
    doc = document()
    stems = {model: stem for stem, (model, _) in SCHEMA_MODELS.items()}
    published: list[Published] = []
    with gzip.open(SAMPLE, "rb") as lines:
        replay_lines(lines, default_journeys, on_record=published.append, close_open=True)
    assert {stems[type(p.record)] for p in published} == {
        "link_alert", "community_alert", "profile_update"
    }  # fmt: skip
    for record in published:
        stem = stems[type(record.record)]
        assert stem in doc["channels"][record.topic]["messages"]
        key = doc["components"]["messages"][stem]["bindings"]["kafka"]["key"]
        jsonschema.validate(record.key, key)
        if stem == "profile_update":
            assert isinstance(record.record, ProfileUpdate)
            assert record.key == record.record.user_id


# The official AsyncAPI 3.0.0 JSON Schema, vendored from npm @asyncapi/specs 6.11.1
# (schemas/3.0.0-without-$id.json, Apache-2.0): `npm pack @asyncapi/specs@6.11.1`.
OFFICIAL = Path(__file__).resolve().parent / "data" / "asyncapi-3.0.0.schema.json"


def test_the_checked_in_document_validates_against_the_official_asyncapi_schema() -> None:
    import yaml

    schema = json.loads(OFFICIAL.read_text())
    validator = jsonschema.Draft7Validator(schema)
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    assert [error.message for error in validator.iter_errors(doc)] == []
    doc["operations"]["send_triggers"]["action"] = "publish"  # an AsyncAPI 2 habit
    assert list(validator.iter_errors(doc))
