"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
agents appear on registration and go on leave, live; a session's events appear in order."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from schemas.errors import RemoteError
from tests.gateway.conftest import ServeGateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Generous: a condition to wait for, not a latency target (bench/ measures those).
WAIT_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _open(browser: Browser, url: str) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    await page.wait_for_function(
        "document.querySelector('#conn').textContent === 'live'", timeout=WAIT_MS
    )
    assert not errors, errors
    return page


async def test_agents_appear_live_and_go_on_leave(
    browser: Browser, live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live:
        async with Agent("early", "planner", description="here before the page", settings=settings):
            page = await _open(browser, live.url + "/")
            await page.wait_for_selector('tr[data-name="early"]', timeout=WAIT_MS)
            agent = Agent("browser-1", "tester", version="1.4.0", settings=settings)
            async with agent:
                row = await page.wait_for_selector('tr[data-name="browser-1"]', timeout=WAIT_MS)
                assert row is not None
                assert "tester" in await row.inner_text()
                await page.fill("#q", "before the page")
                await page.wait_for_selector('tr[data-name="browser-1"]', state="detached")
                assert await page.locator('tr[data-name="early"]').count() == 1
                await page.fill("#q", "")
                await page.click('tr[data-name="browser-1"]')
                await page.wait_for_selector("#details >> text=v1.4.0", timeout=WAIT_MS)
            await page.wait_for_selector(
                'tr[data-name="browser-1"]', state="detached", timeout=WAIT_MS
            )
            assert await page.locator('tr[data-name="early"]').count() == 1
        await page.wait_for_selector('tr[data-name="early"]', state="detached", timeout=WAIT_MS)
        await page.close()


async def test_a_sessions_events_appear_in_order(
    browser: Browser, live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live, Bus(settings) as bus:
        log = bus.activity_log
        await log.emit("chat-9", "helper", "agent_started")
        await log.emit("chat-9", "helper", "agent_thinking", {"plan": "look it up"})
        page = await _open(browser, live.url + "/#session=chat-9")
        await page.wait_for_selector('li.activity[data-seq="2"]', timeout=WAIT_MS)
        await log.emit("chat-9", "helper", "tool_executing", {"tool": "search"})
        await log.emit("chat-9", "helper", "tool_completed", {"tool": "search"})
        await log.emit("chat-9", "helper", "agent_completed", {"answer": 42})
        await page.wait_for_selector('li.activity[data-seq="5"]', timeout=WAIT_MS)
        items = page.locator("li.activity")
        seqs = [await items.nth(i).get_attribute("data-seq") for i in range(await items.count())]
        types = [await items.nth(i).get_attribute("data-type") for i in range(len(seqs))]
        assert seqs == ["1", "2", "3", "4", "5"]
        assert types == [
            "agent_started", "agent_thinking", "tool_executing", "tool_completed",
            "agent_completed",
        ]  # fmt: skip
        await page.close()


async def test_a_tenants_session_from_the_url(
    browser: Browser, live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live, Bus(settings) as bus:
        log = bus.activity_log
        await log.emit("chat-t", "helper", "agent_failed")  # the untenanted chat-t: not this one
        await log.emit("chat-t", "helper", "agent_thinking", tenant="acme")
        page = await _open(browser, live.url + "/#session=chat-t&tenant=acme")
        first = await page.wait_for_selector('li.activity[data-seq="1"]', timeout=WAIT_MS)
        assert first is not None
        assert await first.get_attribute("data-type") == "agent_thinking"
        await page.close()


async def test_an_agents_tasks_show_in_its_details(
    browser: Browser, live_gateway: ServeGateway, settings: Settings
) -> None:
    worker = Agent("tasked", "worker", settings=settings)

    @worker.on("job")
    async def job(payload: dict[str, bool]) -> str:
        if payload["fail"]:
            raise RuntimeError("no")
        return "done"

    async with live_gateway() as live, worker, Bus(settings) as bus:
        await bus.request("tasked", "job", {"fail": False})
        with pytest.raises(RemoteError):
            await bus.request("tasked", "job", {"fail": True})
        assert worker.usage is not None
        await worker.usage.flush()
        page = await _open(browser, live.url + "/")
        await page.click('tr[data-name="tasked"]', timeout=WAIT_MS)
        await page.wait_for_selector("#agent-tasks tr.task", timeout=WAIT_MS)
        rows = page.locator("#agent-tasks tr.task")
        outcomes = [await rows.nth(i).get_attribute("data-outcome") for i in range(2)]
        assert outcomes == ["handler_error", "ok"]  # newest first
        assert "job" in await rows.nth(0).inner_text()
        # a new task shows after a refresh of the panel
        await bus.request("tasked", "job", {"fail": False})
        await worker.usage.flush()
        await page.click("#details h3 button")
        await page.wait_for_selector("#agent-tasks tr.task >> nth=2", timeout=WAIT_MS)
        assert await rows.nth(0).get_attribute("data-outcome") == "ok"
        await page.close()
