"""The ops page at `/ui`, rendered by headless Chromium over a real ledger.

The demo month (`examples/events.jsonl`) is booked into a PostgreSQL database
of the module's own and the API is served by uvicorn on 127.0.0.1. Chromium
loads the page with the token in the URL fragment, as automation does; the
DOM it dumps is checked against what the API answers for the same account,
and a screenshot is kept in `tests/artifacts/` for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.api import UI_PAGE, build_api
from service.database import create_engine
from service.settings import Settings
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.integration

READER = "ops:read:r-0123456789abcdef"
SECRET = READER.split(":", 2)[2]
SCREENSHOT = ARTIFACTS / "ui-ops-page.png"
ROWS_SHOWN = 20
BROWSER_TIMEOUT_S = 60
BROWSER_VIRTUAL_TIME_MS = 15_000
SERVER_START_TIMEOUT_S = 10
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:"
)
# Spaces the page pads numbers with so a column lines up on the decimal point.
PADDING = "\u2007\u2008"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; CI must have it, a developer's machine may not."""
    found = shutil.which("chromium")
    if found is None:
        message = "no chromium on PATH: `apt-get install chromium` (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
async def api(demo_month_url: str) -> AsyncIterator[FastAPI]:
    settings = Settings(api_tokens=READER)
    engine = create_engine(settings, demo_month_url)
    yield build_api(engine, settings)
    await engine.dispose()


class Server(uvicorn.Server):
    """A uvicorn server that says when it is listening, so nothing polls."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


@pytest.fixture(scope="module")
async def served(api: FastAPI) -> AsyncIterator[str]:
    """The API over HTTP on a free port of 127.0.0.1, served from this loop.

    The socket is bound here, so the port is known before uvicorn starts and
    no other process can take it in between. Serving ends when the module's
    tests are done: uvicorn is told to exit and awaited, bounded in time.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        api, http="h11", ws="none", lifespan="on", log_level="warning"
    )
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait(
        {serving, listening},
        timeout=SERVER_START_TIMEOUT_S,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if not server.listening.is_set():
        listening.cancel()
        server.should_exit = True
        listener.close()
        pytest.fail("uvicorn did not start listening", pytrace=False)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(serving, SERVER_START_TIMEOUT_S)
    listener.close()


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=served,
        headers={"Authorization": f"Bearer {SECRET}"},
        trust_env=False,
        timeout=10,
    ) as client:
        yield client


async def browse(chromium: str, profile: Path, *action: str) -> bytes:
    """Run headless Chromium once (a fresh profile, no proxy), bounded in time.

    Returns what it printed: the rendered DOM for `--dump-dom`, nothing much
    for `--screenshot`. A browser that hangs is killed and the test fails.
    """
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        f"--virtual-time-budget={BROWSER_VIRTUAL_TIME_MS}",
        *action,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), BROWSER_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"chromium ran over {BROWSER_TIMEOUT_S} s", pytrace=False)
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        pytest.fail(f"chromium exited {process.returncode}:\n{tail}", pytrace=False)
    return out


@dataclass(slots=True)
class Element:
    tag: str
    attrs: dict[str, str]
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Every element of a serialized page, in order, with its text content."""

    VOID = frozenset(
        "area base br col embed hr img input link meta source track wbr".split()
    )

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, -1, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1].tag in ("script", "style"):
            return
        for element in self._open:
            element.chunks.append(data)

    def find(self, tag: str = "", **attrs: str) -> list[Element]:
        """Elements with the tag (any if empty) and these attribute values.

        Attribute names are written with `_` for `-`: `data_lot="..."`.
        """
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            e
            for e in self.elements
            if (not tag or e.tag == tag)
            and all(e.attrs.get(name) == value for name, value in wanted.items())
        ]

    def one(self, tag: str = "", **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} elements match {tag} {attrs}"
        return found[0]

    def state(self) -> str:
        return self.one("body").attrs.get("data-state", "")


def plain(text: str) -> str:
    """A number as the page shows it, back to the API's text."""
    return text.strip(PADDING + " ").replace(",", "")


async def account_to_show(http: httpx.AsyncClient) -> str:
    """acct-acme if it has two lots and an expiry, else the first that does."""
    accounts = (await http.get("/v1/accounts")).json()["accounts"]
    for account in sorted(accounts, key=lambda name: name != "acct-acme"):
        lots = (await http.get(f"/v1/accounts/{account}/burndown")).json()["lots"]
        if len(lots) >= 2 and any(lot["expires_at"] for lot in lots):
            return str(account)
    pytest.fail("no demo account has two lots and an expiry", pytrace=False)


async def answers(http: httpx.AsyncClient, account: str) -> dict[str, Any]:
    base = f"/v1/accounts/{account}"
    return {
        "balance": (await http.get(f"{base}/balance")).json(),
        "burndown": (await http.get(f"{base}/burndown")).json()["lots"],
        "lots": (await http.get(f"{base}/lots")).json()["lots"],
        "rows": (await http.get(f"{base}/charges?limit={ROWS_SHOWN}")).json()["rows"],
    }


def page_url(served: str, token: str, account: str) -> str:
    return f"{served}/ui#token={token}&account={account}"


async def test_the_page_is_served_without_a_token_under_a_strict_policy(
    api: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/ui")
        data = await client.get("/v1/accounts")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == UI_PAGE.read_text(encoding="utf-8")
    assert data.status_code == 401
    page = Dom(response.text)
    assert not [e for e in page.find("script") if "src" in e.attrs]
    assert [e.attrs["href"] for e in page.find("link")] == ["data:,"]
    assert "/ui" not in api.openapi()["paths"]


async def test_chromium_renders_the_accounts_balance_lots_chart_and_rows(
    chromium: str, served: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    account = await account_to_show(http)
    expected = await answers(http, account)

    html = await browse(
        chromium, tmp_path / "profile", "--dump-dom", page_url(served, SECRET, account)
    )
    dom = Dom(html.decode())

    assert dom.state() == "ready", dom.one(id="message").text
    assert SECRET not in html.decode()
    for line in expected["balance"]["balances"]:
        for name in ("credits", "owed_credits", "value", "open_lots"):
            shown = dom.one(data_field=name, data_currency=line["currency"])
            assert shown.attrs["data-value"] == str(line[name])
            assert plain(shown.text) == str(line[name])
    series = [e for e in dom.find("path") if "series" in e.classes()]
    assert [e.attrs["data-lot"] for e in series] == [
        lot["lot_id"] for lot in expected["burndown"]
    ]
    assert all(e.attrs["d"].startswith("M") for e in series)
    markers = [e for e in dom.find("g") if "expiry" in e.classes()]
    marked = {lot for e in markers for lot in e.attrs["data-lots"].split()}
    expiring = {lot["lot_id"] for lot in expected["burndown"] if lot["expires_at"]}
    assert expiring and expiring <= marked
    assert [e.attrs["data-lot"] for e in dom.find("tr") if "data-lot" in e.attrs] == [
        lot["lot_id"] for lot in expected["lots"]
    ]
    rows = [e for e in dom.find("tr") if "data-charge-id" in e.attrs]
    assert [e.attrs["data-charge-id"] for e in rows] == [
        row["x_ChargeId"] for row in expected["rows"]
    ]
    for column in ("EffectiveCost", "BilledCost", "PricingCurrencyEffectiveCost"):
        cells = dom.find("td", data_column=column)
        assert [plain(cell.text) for cell in cells] == [
            row[column] for row in expected["rows"]
        ]


@pytest.mark.parametrize(
    ("token", "account", "heading"),
    [
        ("not-the-secret-0000", "acct-acme", "401 Unauthorized"),
        (SECRET, "acct-nobody", "404 Not found"),
    ],
)
async def test_chromium_shows_a_refused_call_as_its_problem_details(
    chromium: str,
    served: str,
    tmp_path: Path,
    token: str,
    account: str,
    heading: str,
) -> None:
    html = await browse(
        chromium, tmp_path / "profile", "--dump-dom", page_url(served, token, account)
    )
    dom = Dom(html.decode())

    message = dom.one(id="message")
    assert dom.state() == "error"
    assert "hidden" not in message.attrs
    assert message.text.startswith(heading)
    assert len(message.text) > len(heading) + 10


async def test_chromium_takes_a_screenshot_of_the_page(
    chromium: str, served: str, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    account = await account_to_show(http)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)

    await browse(
        chromium,
        tmp_path / "profile",
        f"--screenshot={SCREENSHOT}",
        page_url(served, SECRET, account),
    )

    image = SCREENSHOT.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = (int.from_bytes(image[at : at + 4], "big") for at in (16, 20))
    assert (width, height) == (1280, 1000)
    assert len(image) > 50_000
