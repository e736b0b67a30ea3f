"""JSON Schemas of the input events and the output rows, generated from code.

`focus-ledger schemas --out docs/schemas` writes them; a test checks that the
committed files are what the code generates, so the documented contract
cannot drift from the decoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ledger.alerts import AlertKind
from ledger.charges import COLUMNS, DATETIME_COLUMNS, DECIMAL_COLUMNS, JSON_COLUMNS
from ledger.events import DATA_MODELS, CloudEvent, EventType

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


_DECIMAL_TEXT = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
_ALERT_DATA: dict[AlertKind, dict[str, Any]] = {
    AlertKind.BALANCE_LOW: {
        "currency": {"type": "string"},
        "balance": _DECIMAL_TEXT,
        "threshold": _DECIMAL_TEXT,
        "billing_currency": {"type": ["string", "null"]},
    },
    AlertKind.EXPIRING: {
        "currency": {"type": "string"},
        "lot_id": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
        "credits": _DECIMAL_TEXT,
        "value": _DECIMAL_TEXT,
        "billing_currency": {"type": "string"},
        "invoice_id": {"type": "string"},
    },
}


def alert_schema(kind: AlertKind) -> dict[str, Any]:
    """An alert the ledger publishes: a structured CloudEvent (see
    `ledger.alerts`)."""
    data = _ALERT_DATA[kind]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"{kind} (CloudEvents 1.0, structured mode)",
        "type": "object",
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid"},
            "source": {"type": "string"},
            "type": {"const": str(kind)},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "description": "Billing account id."},
            "datacontenttype": {"const": "application/json"},
            "data": {
                "type": "object",
                "properties": data,
                "required": sorted(data),
                "additionalProperties": False,
            },
        },
        "required": ["specversion", "id", "source", "type", "time", "subject", "data"],
    }


def one_of(*schemas: dict[str, Any]) -> dict[str, Any]:
    """Several schemas as one message payload (a topic that carries several
    event types); their `$defs` are merged, their dialect keys dropped."""
    definitions: dict[str, Any] = {}
    variants = []
    for schema in schemas:
        variant = {k: v for k, v in schema.items() if k != "$schema"}
        definitions.update(variant.pop("$defs", {}))
        variants.append(variant)
    merged: dict[str, Any] = {"oneOf": variants}
    if definitions:
        merged["$defs"] = definitions
    return merged


def topic_payloads() -> dict[str, dict[str, Any]]:
    """The payload of each kind of topic, for the AsyncAPI document."""
    return {
        "purchases": one_of(
            event_schema(EventType.PURCHASED), event_schema(EventType.REFUNDED)
        ),
        "usage": event_schema(EventType.USAGE),
        "charges": row_schema(),
        "alerts": one_of(*(alert_schema(kind) for kind in AlertKind)),
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    schemas = {f"{name}.json": event_schema(name) for name in DATA_MODELS}
    schemas["focus-row.json"] = row_schema()
    schemas.update({f"{kind}.json": alert_schema(kind) for kind in AlertKind})
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
