"""JSON Schemas of the input events and the output rows, generated from code.

`focus-ledger schemas --out docs/schemas` writes them; a test checks that the
committed files are what the code generates, so the documented contract
cannot drift from the decoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ledger.charges import COLUMNS, DATETIME_COLUMNS, DECIMAL_COLUMNS, JSON_COLUMNS
from ledger.events import DATA_MODELS, CloudEvent

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(event_type: str) -> dict[str, Any]:
    """A whole structured CloudEvent of one type, `data` included."""
    model = DATA_MODELS[event_type]  # type: ignore[index]
    envelope = CloudEvent.model_json_schema()
    data = model.model_json_schema()
    definitions = {**envelope.pop("$defs", {}), **data.pop("$defs", {})}
    envelope["properties"]["type"] = {"const": event_type}
    envelope["properties"]["data"] = data
    envelope["title"] = f"{event_type} (CloudEvents 1.0, structured mode)"
    schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT, **envelope}
    if definitions:
        schema["$defs"] = definitions
    return schema


def row_schema() -> dict[str, Any]:
    """One FOCUS row as published on the charges topic."""
    properties: dict[str, Any] = {}
    for column in COLUMNS:
        if column in DECIMAL_COLUMNS:
            kind: dict[str, Any] = {
                "type": ["string", "null"],
                "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
            }
        elif column in DATETIME_COLUMNS:
            kind = {
                "type": ["string", "null"],
                "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
            }
        elif column in JSON_COLUMNS:
            kind = {
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"},
            }
        else:
            kind = {"type": ["string", "null"]}
        properties[column] = kind
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "FOCUS 1.2 charge row (focus-ledger)",
        "description": "FOCUS columns in specification order, then x_ columns. "
        "Decimals are strings of plain decimal text.",
        "type": "object",
        "properties": properties,
        "required": list(COLUMNS),
        "additionalProperties": False,
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    schemas = {f"{name}.json": event_schema(name) for name in DATA_MODELS}
    schemas["focus-row.json"] = row_schema()
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = folder / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
