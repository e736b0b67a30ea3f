"""The documented contract is what the code decodes."""

from __future__ import annotations

from pathlib import Path

from service.schemas import all_schemas, render

FOLDER = Path(__file__).parents[2] / "docs" / "schemas"


def test_committed_schemas_match_the_models() -> None:
    for name, schema in all_schemas().items():
        committed = (FOLDER / name).read_text(encoding="utf-8")
        assert committed == render(schema), f"{name}: run make schemas"


def test_every_event_schema_fixes_its_type() -> None:
    for name, schema in all_schemas().items():
        if name != "focus-row.json":
            assert schema["properties"]["type"] == {"const": name.removesuffix(".json")}
