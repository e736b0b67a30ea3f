"""The generated parts of the docs, rewritten from the code that defines them.

`focus-ledger docs` rewrites the JSON Schemas and every block between
`<!-- generated: NAME ... -->` and `<!-- end -->` in `docs/` that it has a
generator for; the hostile-input table is made by `python -m tests.hostile`,
which owns that corpus. Tests compare the committed pages with what the code
makes, so docs and code cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from service.schemas import write_schemas
from service.settings import REPO_ROOT, reference

DOCS = REPO_ROOT / "docs"
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


def regenerate(made: dict[str, Callable[[], str]] = GENERATORS) -> list[Path]:
    """Rewrite the schemas and every generated block of `made` in docs/."""
    changed = write_schemas(DOCS / "schemas")
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        fresh = render(text, made)
        if fresh != text:
            page.write_text(fresh, encoding="utf-8")
            changed.append(page)
    return changed
