"""The documented contract is what the code decodes."""

from __future__ import annotations

import json
from pathlib import Path

from service.docs import ASYNCAPI, GENERATORS, asyncapi
from service.docs import render as render_docs
from service.schemas import all_schemas, render
from service.settings import Settings, reference

FOLDER = Path(__file__).parents[2] / "docs" / "schemas"


def test_committed_schemas_match_the_models() -> None:
    for name, schema in all_schemas().items():
        committed = (FOLDER / name).read_text(encoding="utf-8")
        assert committed == render(schema), f"{name}: run make schemas"


def test_every_event_schema_fixes_its_type() -> None:
    for name, schema in all_schemas().items():
        if name != "focus-row.json":  # events in and alerts out
            assert schema["properties"]["type"] == {"const": name.removesuffix(".json")}


def test_the_generated_parts_of_the_docs_are_current() -> None:
    for page in sorted(FOLDER.parent.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert render_docs(text, GENERATORS) == text, f"{page.name}: run make docs"


def test_the_configuration_reference_is_generated() -> None:
    operations = (FOLDER.parent / "operations.md").read_text(encoding="utf-8")

    assert reference() in operations


def test_the_committed_asyncapi_document_is_what_faststream_makes() -> None:
    """The AsyncAPI document is generated from the service's own broker, so a
    topic, title or payload changed in code without the document fails here."""
    made = asyncapi()

    assert ASYNCAPI.read_text(encoding="utf-8") == made, "run make docs"


def test_the_asyncapi_document_names_every_topic_and_payload() -> None:
    document = json.loads(asyncapi())
    settings = Settings.model_construct()
    addresses = {channel["address"] for channel in document["channels"].values()}
    payloads = document["components"]["schemas"]

    assert document["asyncapi"] == "3.0.0"
    assert addresses == {
        settings.topic_purchases,
        settings.topic_usage,
        settings.topic_charges,
        settings.topic_alerts,
        settings.topic_dead_letter,
    }
    kinds = json.dumps(payloads["ledger-input:Message:Payload"])
    assert all(
        f'"const": "{t}"' in kinds for t in ("credits.purchased", "usage.recorded")
    )
    row = payloads["focus-charges:Message:Payload"]
    assert row["required"][:2] == ["AvailabilityZone", "BilledCost"]
