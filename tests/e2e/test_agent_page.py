"""The agent's customer card page in a real browser: headless Chromium driven by Playwright.

The read model holds real cards: a synthetic population (``touchpoint
generate``) folded by the very ``Folder`` the workers run, each card
and its identifier keys written as the agent's customer-views record through
``CustomersProjection`` into a database of this module's own. The lookup API
runs in uvicorn on a free port. The browser opens the CTI pop-up link (a
phone number in national format), signs in with an agent's key, and the test
reads what the agent sees: the name (sealed in the read model, as the pipeline
seals it), language and preferred channel, segment, points balance and tier, the top likely
reason, the masked e-mail and phone, the data's freshness; then searches by
e-mail with the form. A screenshot goes to pytest's ``tmp_path``.

Chromium is Debian's (``./run test`` installs it); Playwright only drives it
(``playwright install`` is never run).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import phonenumbers
import psycopg
import pytest
import uvicorn

from connectors.frontline.access import digest
from connectors.frontline.lookup import COOKIE, create_lookup_app
from connectors.platform.keystore import PostgresKeyStore
from projections.customers import CustomersProjection
from projections.writer import Record, write_batch
from tests.fix_stack import scoped
from touchpoint.core.fold import Folder
from touchpoint.core.masking import mask_identifier
from touchpoint.core.normalise import identifier_key
from touchpoint.core.profile import render
from touchpoint.core.pseudonym import seal_text
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration

AGENT_KEY = "e2e-agent-key-4f1c2b9a7d"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_settings(settings: Settings) -> Iterator[Settings]:
    """A fresh, migrated database of this module's own, and one agent key."""
    with scoped(settings, f"{settings.pg_database}_agent_page") as own:
        yield own.model_copy(update={"api_keys": {digest(AGENT_KEY): {"name": "alice", "role": "agent"}}})


@pytest.fixture(scope="module")
def customer(page_settings: Settings) -> dict[str, Any]:
    """Fold a small population into the read model; the card of someone worth calling about."""
    settings = page_settings
    folder = Folder(secret=settings.identifier_key.get_secret_value().encode())
    for event in generate(customers=40, days=150, seed=11):
        folder.add_json(json.dumps(event))
    # As the profile agent publishes: the card as of the log's clock, with its identifiers' keys.
    as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)
    stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    records, cards = [], []
    names: dict[str, str] = {}  # customer id -> the name sealed in their card
    secret = settings.identifier_key.get_secret_value().encode()
    live = {customer_id: render(view, as_of, folder.config.segment, folder.rules)
            for customer_id, view in sorted(folder.views.items()) if customer_id not in folder.merged_into}
    # Names sealed as the pipeline seals a profile's (under the customer number's data key): at rest the card
    # holds no name in clear, and the API opens it for the agent.
    number_keys = {customer_id: identifier_key("customer_no", card["identifiers"]["customer_no"][0], secret)
                   for customer_id, card in live.items()
                   if card["person"]["name"] and card["identifiers"].get("customer_no")}

    async def data_keys() -> dict[str, bytes]:
        keystore = PostgresKeyStore(settings)
        try:
            return await keystore.data_keys(set(number_keys.values()), create=True)
        finally:
            await keystore.close()

    sealing = asyncio.run(data_keys())
    for offset, (customer_id, card) in enumerate(live.items()):
        if customer_id in number_keys:
            key = number_keys[customer_id]
            names[customer_id] = card["person"]["name"]
            card = {**card, "person": {**card["person"], "name": seal_text(key, card["person"]["name"], sealing[key],
                                                                          os.urandom(12))}}
        keys = {kind: sorted(found) for kind, found in folder.views[customer_id].keys.items()}
        doc = {"customer_id": customer_id, "as_of": stamp, "view": card, "keys": keys}
        records.append(Record(settings.topic("customer-views"), 0, offset, customer_id.encode(),
                              json.dumps(doc).encode()))
        cards.append(card)
    with psycopg.connect(settings.pg_conninfo()) as conn:
        write_batch(conn, CustomersProjection(settings), records)
        stored = "".join(row[0] for row in conn.execute("SELECT view::text || masked_identifiers::text FROM customers"))
    assert names and not [name for name in names.values() if name in stored], "a name in clear at rest"
    # Someone with a name, one phone and one e-mail (so the lookup is theirs alone), points and a reason to call.
    fits = [{**c, "name": names[c["customer_id"]]} for c in cards if c["customer_id"] in names
            and len(c["identifiers"].get("phone", [])) == 1
            and len(c["identifiers"].get("email", [])) == 1 and c["likely_reasons"] and c["loyalty"]["balance"] > 0
            and any(t["type"] == "purchase" and "points" in t["detail"] for t in c["timeline"])]
    assert fits, "the synthetic population has nobody with a phone, an e-mail, points and a likely reason"
    return fits[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(page_settings: Settings, customer: dict[str, Any]) -> Iterator[str]:
    """The lookup API served by uvicorn in a thread, as ``touchpoint api`` serves it."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_lookup_app(page_settings), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="lookup-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the lookup API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_agent_page_in_chromium(base_url: str, customer: dict[str, Any], tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (./run test installs it)")
    from playwright.sync_api import expect, sync_playwright

    phone = customer["identifiers"]["phone"][0]
    national = phonenumbers.format_number(phonenumbers.parse(phone), phonenumbers.PhoneNumberFormat.NATIONAL)
    email = customer["identifiers"]["email"][0]
    masked_email = mask_identifier("email", email)
    top_reason = customer["likely_reasons"][0]["text"]
    segment = customer["value_segment"].replace("_", " ").capitalize()
    balance = f"{customer['loyalty']['balance']:,}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 1400})
            page = context.new_page()
            # The CTI pop-up: a link with the caller's number, opened by a browser with no session yet.
            answer = page.goto(f"{base_url}/agent?phone={national.replace(' ', '%20')}")
            assert answer is not None and answer.status == 401
            page.fill("input[name=key]", AGENT_KEY)
            with page.expect_navigation():
                page.click("#login button[type=submit]")
            # Back on the pop-up's link, signed in.
            assert page.url.startswith(f"{base_url}/agent?phone="), page.url
            # The name to greet the caller with (sealed at rest, opened for the agent), language and channel.
            expect(page.locator("#name")).to_have_text(customer["name"])
            assert customer["name"] in page.title()
            person = customer["person"]
            if person["language"] == "en-GB":
                expect(page.locator("#language")).to_have_text("English (UK)")
            if person["preferred_channel"]:
                expect(page.locator("#preferred-channel")).to_have_text(person["preferred_channel"].capitalize())
            expect(page.locator("#segment")).to_have_text(segment)
            expect(page.locator("#balance")).to_have_text(balance)
            expect(page.locator("#tier")).to_have_text(customer["loyalty"]["tier"].capitalize())
            expect(page.locator("#customer-id")).to_have_text(customer["customer_id"])
            expect(page.locator("#reasons li").first).to_contain_text(top_reason)
            identifiers = page.locator("#identifiers")
            expect(identifiers).to_contain_text(masked_email)
            expect(identifiers).to_contain_text(mask_identifier("phone", phone))
            # The freshness line, filled in by the page's script from /v1/lag.
            expect(page.locator("#lag")).to_contain_text("data as of")
            content = page.content()
            assert email not in content and phone not in content
            assert len(page.locator("#timeline tr").all()) == len(customer["timeline"]) + 1
            # The timeline with what happened: a purchase's amount, categories and the points it earned, and why.
            bought = next(t for t in reversed(customer["timeline"])
                          if t["type"] == "purchase" and "points" in t["detail"])
            detail = bought["detail"]
            row = page.locator("#timeline tr", has_text=f"{detail['total_minor'] / 100:,.2f} {detail['currency']}")
            expect(row.first).to_contain_text(", ".join(detail["categories"]))
            expect(row.first).to_contain_text(f"{detail['points']:+,} points")
            expect(row.first).to_contain_text(detail["points_why"][0])
            # A case with its subject, when the customer's timeline holds one.
            case = next((t for t in customer["timeline"] if t["type"] == "case" and t["detail"].get("subject")), None)
            if case is not None:
                expect(page.locator("#timeline")).to_contain_text(case["detail"]["subject"])
            # RFM as numbers and the last contact per channel.
            rfm = customer["rfm"]
            expect(page.locator("#frequency")).to_have_text(str(rfm["frequency"]))
            expect(page.locator("#recency")).to_have_text(f"{rfm['recency_days']} days ago")
            for channel in customer["last_contact"]:
                expect(page.locator("#last-contact")).to_contain_text(channel.capitalize())
            (session,) = [c for c in context.cookies() if c["name"] == COOKIE]
            assert session["httpOnly"] and session["sameSite"] == "Lax"
            assert page.evaluate("document.cookie") == ""  # the key is out of the page's scripts' reach
            page.screenshot(path=str(tmp_path / "agent_page.png"), full_page=True)

            # The search form: the agent types the e-mail the caller gives.
            page.select_option("#search select[name=kind]", "email")
            page.fill("#search input[name=value]", email.upper())
            page.click("#search button[type=submit]")
            expect(page.locator("#customer-id")).to_have_text(customer["customer_id"])
            expect(page.locator("#identifiers")).to_contain_text(masked_email)
            page.screenshot(path=str(tmp_path / "agent_page_by_email.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "agent_page.png").stat().st_size > 10_000
