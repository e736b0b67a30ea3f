"""The generated parts of the docs, rewritten from the code that defines them.

`focus-ledger docs` rewrites the JSON Schemas, the AsyncAPI 3 document of
every topic (`docs/asyncapi.json`, made by FastStream from the service's own
broker, with the default settings) and every block between
`<!-- generated: NAME ... -->` and `<!-- end -->` in `docs/` that it has a
generator for; the hostile-input table is made by `python -m tests.hostile`,
which owns that corpus. Tests compare the committed pages with what the code
makes, so docs and code cannot drift.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

from faststream.specification import AsyncAPI

from ledger.prices import PriceList
from service.database import create_engine
from service.ingest import Ingest
from service.schemas import write_schemas
from service.settings import REPO_ROOT, Settings, reference

DOCS = REPO_ROOT / "docs"
ASYNCAPI = DOCS / "asyncapi.json"
BLOCK = re.compile(r"(<!-- generated: (\w+)[^>]*-->\n)(.*?)(<!-- end -->)", re.S)


GENERATORS: dict[str, Callable[[], str]] = {"configuration": reference}


def render(page: str, made: dict[str, Callable[[], str]]) -> str:
    """The page with the blocks named in `made` rewritten; others untouched."""

    def replace(match: re.Match[str]) -> str:
        make = made.get(match.group(2))
        return (
            match.group(0)
            if make is None
            else (match.group(1) + make() + match.group(4))
        )

    return BLOCK.sub(replace, page)


def asyncapi() -> str:
    """The AsyncAPI 3 document of the service's topics, as FastStream makes it
    from the broker `focus-ledger serve` runs. Built from the defaults, not
    the environment, so the committed document does not depend on who ran
    the generator."""
    settings = Settings.model_construct()
    prices = PriceList.from_toml(settings.prices_path.read_text(encoding="utf-8"))
    ingest = Ingest(settings, prices, create_engine(settings))
    document = AsyncAPI(
        ingest.broker,
        title="focus-ledger",
        version=package_version("focus-ledger"),
        description="Prepaid credits in, FOCUS 1.2 rows out. Inputs are "
        "CloudEvents 1.0 keyed by billing account; outputs are published "
        "exactly once through a transactional outbox relay.",
        schema_version="3.0.0",
    ).to_specification()
    return json.dumps(json.loads(document.to_json()), indent=2, sort_keys=True) + "\n"


def regenerate(made: dict[str, Callable[[], str]] = GENERATORS) -> list[Path]:
    """Rewrite the schemas, the AsyncAPI document and every generated block of
    `made` in docs/."""
    changed = write_schemas(DOCS / "schemas")
    ASYNCAPI.write_text(asyncapi(), encoding="utf-8")
    changed.append(ASYNCAPI)
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        fresh = render(text, made)
        if fresh != text:
            page.write_text(fresh, encoding="utf-8")
            changed.append(page)
    return changed
