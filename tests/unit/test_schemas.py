"""The documented contract is what the code decodes."""

from __future__ import annotations

from pathlib import Path

from service.docs import GENERATORS
from service.docs import render as render_docs
from service.schemas import all_schemas, render
from service.settings import reference

FOLDER = Path(__file__).parents[2] / "docs" / "schemas"


def test_committed_schemas_match_the_models() -> None:
    for name, schema in all_schemas().items():
        committed = (FOLDER / name).read_text(encoding="utf-8")
        assert committed == render(schema), f"{name}: run make schemas"


def test_every_event_schema_fixes_its_type() -> None:
    for name, schema in all_schemas().items():
        if name != "focus-row.json":
            assert schema["properties"]["type"] == {"const": name.removesuffix(".json")}


def test_the_generated_parts_of_the_docs_are_current() -> None:
    for page in sorted(FOLDER.parent.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert render_docs(text, GENERATORS) == text, f"{page.name}: run make docs"


def test_the_configuration_reference_is_generated() -> None:
    operations = (FOLDER.parent / "operations.md").read_text(encoding="utf-8")

    assert reference() in operations
