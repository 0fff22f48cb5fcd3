"""JSON Schemas generated from the models: the published contract, checked in under schemas/.

`linkwatch schemas` writes them, and the AsyncAPI document that refers to them (asyncapi.py);
`linkwatch schemas --check` fails when the checked-in files differ from what the code generates,
so the contract cannot drift silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import BaseModel

from linkwatch.asyncapi import ASYNCAPI_FILE, render_asyncapi
from linkwatch.communities import CommunityAlert
from linkwatch.deadletters import DeadLetter
from linkwatch.events import ClickEvent, GroupChatEvent, PurchaseEvent, ShareEvent
from linkwatch.links import LinkAlert
from linkwatch.tiers import ProfileUpdate
from linkwatch.triggers import Resolution, Trigger

# file stem → (model, mode): inputs are described as accepted, outputs as produced.
SCHEMA_MODELS: Final[dict[str, tuple[type[BaseModel], str]]] = {
    "click": (ClickEvent, "validation"),
    "share": (ShareEvent, "validation"),
    "purchase": (PurchaseEvent, "validation"),
    "group_chat": (GroupChatEvent, "validation"),
    "trigger": (Trigger, "serialization"),
    "resolution": (Resolution, "serialization"),
    "dead_letter": (DeadLetter, "serialization"),
    "link_alert": (LinkAlert, "serialization"),
    "community_alert": (CommunityAlert, "serialization"),
    "profile_update": (ProfileUpdate, "serialization"),
}
SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def generate_schemas() -> dict[str, bytes]:
    """File name → file content for every schema."""
    out: dict[str, bytes] = {}
    for stem, (model, mode) in SCHEMA_MODELS.items():
        schema: dict[str, Any] = {
            "$schema": SCHEMA_DIALECT,
            "$id": f"https://linkwatch.example/schemas/{stem}.schema.json",
            **model.model_json_schema(mode=mode),  # type: ignore[arg-type]
        }
        out[f"{stem}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return out


def generate_contract() -> dict[str, bytes]:
    """Every generated file of the contract: the schemas and the AsyncAPI document."""
    return {**generate_schemas(), ASYNCAPI_FILE: render_asyncapi(SCHEMA_MODELS)}


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in generate_contract().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


def check_schemas(directory: Path) -> list[str]:
    """Problems found (empty when in sync)."""
    problems = []
    for name, content in generate_contract().items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing (run `linkwatch schemas`)")
        elif path.read_bytes() != content:
            problems.append(f"{path}: out of sync with the models (run `linkwatch schemas`)")
    return problems


def load_schema(directory: Path, stem: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((directory / f"{stem}.schema.json").read_bytes())
    return loaded
