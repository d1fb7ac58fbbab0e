"""The console in a real headless Chromium (Debian's, driven by Playwright) against a Daemon
started in this test's event loop, with the turnstile on a real Modbus TCP server.

Screenshots of the main pages go to tests/artifacts/ (gitignored); docs/screenshots/ holds
copies for the README.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_console import PASSWORDS, Site, running_site

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1366, "height": 768}


def _playwright() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    return async_playwright


class Watch:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Any):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


async def login(page: Any, site: Site, user: str) -> None:
    await page.goto(site.base + "/")
    assert page.url.endswith("/login")
    await page.fill("#user", user)
    await page.fill("#password", PASSWORDS[user])
    await page.press("#password", "Enter")  # keyboard only
    await page.wait_for_url(site.base + "/")


async def test_console_in_chromium(tmp_path: Path) -> None:
    async_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_site(tmp_path) as site, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # -- staff: the feed, a tap, open a gate ------------------------------------------
            ctx = await browser.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            await page.wait_for_selector(".gate[data-gate='turnstile-in']", timeout=5000)

            result = await site.tap("DEADBEEF")
            assert result["decision"] == "denied"
            row = page.locator("#feed-body tr.denied", has_text="Max Mustermann")
            await row.wait_for(timeout=1000)  # within a second of the tap
            assert "Membership on hold" in await row.inner_text()
            await site.tap("0499887766")  # Bruno, walk-in on a pay-per-access pass
            await page.locator("#feed-body tr.granted", has_text="Bruno Díaz").wait_for(timeout=1000)

            unlocks = site.turnstile.unlocks  # Bruno's walk-in turned it once already
            await page.click(".gate[data-gate='turnstile-in'] button")
            await page.fill("dialog input[name='reason']", "member forgot her card")
            await page.keyboard.press("Enter")
            await page.locator(".toast", has_text="opened").wait_for(timeout=5000)
            assert site.turnstile.unlocks == unlocks + 1
            assert any(bit for _, bit in site.turnstile.coil_history)
            ov = site.store.recent_events(5, types=["override"])[0]
            assert ov["operator"] == "desk" and ov["reason"] == "member forgot her card"
            await page.locator("#feed-body tr", has_text="Opened by the front desk").first.wait_for(timeout=2000)
            await page.screenshot(path=str(ARTIFACTS / "console-feed.png"))
            # the staff user sees no site-wide switches, and the server refuses them anyway
            assert await page.locator("#admin-actions").is_hidden()
            status = await page.evaluate(
                """async () => (await fetch('/api/lockdown', {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
                body: JSON.stringify({on: true, confirm: 'LOCKDOWN'})})).status"""
            )
            assert status == 403 and not site.daemon.lockdown
            watch.errors = [e for e in watch.errors if "status of 403" not in e]  # that refusal was expected
            # a cross-site POST with the staff's cookies is refused
            r = await ctx.request.post(
                site.base + "/api/gates/turnstile-in/open",
                headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
                data='{"reason": "csrf"}',
            )
            assert r.status == 403
            assert site.turnstile.unlocks == unlocks + 1

            # -- SPORTRICK: 20 minutes early = walk-in; staff mark attended + refund ---------
            await site.tap("04A1B2C3D4")
            assert site.store.balance("p-ana") == 8
            await page.keyboard.press("c")  # keyboard navigation to the classes page
            await page.wait_for_url(site.base + "/classes")
            button = page.locator("tr[data-booking='b-spin'] button", has_text="refund")
            await button.wait_for(timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "console-classes.png"))
            await button.click()
            assert await page.locator("dialog input[name='refund']").is_checked()
            await page.click("dialog button[type='submit']")
            await page.locator(".toast", has_text="refunded 1").wait_for(timeout=5000)
            assert site.store.balance("p-ana") == 9
            await page.locator("tr[data-booking='b-spin'] .badge.st-in").wait_for(timeout=5000)

            # -- member look-up and loyalty points --------------------------------------------
            await page.keyboard.press("m")
            await page.wait_for_url(site.base + "/members")
            await page.fill("#q", "ana")
            await page.keyboard.press("Enter")
            await page.locator("#member-detail h2", has_text="Ana López").wait_for(timeout=5000)
            await page.click("#btn-points")
            await page.fill("dialog input[name='points']", "15")
            await page.fill("dialog input[name='reason']", "birthday bonus")
            await page.keyboard.press("Enter")
            await page.locator(".points-big", has_text="15").wait_for(timeout=5000)
            assert site.store.points("m-ana") == 15
            await page.screenshot(path=str(ARTIFACTS / "console-member.png"))

            # -- audit log --------------------------------------------------------------------
            await page.keyboard.press("a")
            await page.wait_for_url(site.base + "/audit")
            await page.locator("#audit-body tr", has_text="mark_attended").wait_for(timeout=5000)
            for action in ("override", "adjust_points"):
                assert await page.locator("#audit-body tr", has_text=action).count() == 1
            assert (await page.get_attribute("#csv-link", "href")) == "/audit.csv"
            await page.screenshot(path=str(ARTIFACTS / "console-audit.png"))

            # -- a tablet in portrait ---------------------------------------------------------
            await page.set_viewport_size({"width": 800, "height": 1180})
            await page.goto(site.base + "/")
            await page.wait_for_selector(".gate[data-gate='turnstile-in']")
            await page.screenshot(path=str(ARTIFACTS / "console-tablet.png"))

            # -- logout; the old cookie is refused afterwards ---------------------------------
            cookie = next(c for c in await ctx.cookies() if c["name"] == "gated_session")
            await page.click("button:has-text('Log out')")
            await page.wait_for_url(site.base + "/login")
            assert watch.errors == []
            replay = await browser.new_context(viewport=VIEWPORT)
            await replay.add_cookies([cookie])
            rp = await replay.new_page()
            await rp.goto(site.base + "/")
            assert rp.url.endswith("/login")
            r = await replay.request.get(site.base + "/api/health")
            assert r.status == 401
            await replay.close()
            await ctx.close()

            # -- admin: lockdown, confirmed twice ---------------------------------------------
            actx = await browser.new_context(viewport=VIEWPORT)
            ap = await actx.new_page()
            awatch = Watch(ap)
            await login(ap, site, "boss")
            await ap.wait_for_selector("#admin-actions:not(.hidden)")
            await ap.click("#btn-lockdown")
            await ap.click("dialog button[type='submit']")  # first: continue
            await ap.fill("dialog input[name='confirm']", "LOCKDOWN")
            await ap.keyboard.press("Enter")
            await ap.locator(".toast", has_text="Lockdown is on").wait_for(timeout=5000)
            assert site.daemon.lockdown
            await ap.locator("#alerts .banner", has_text="LOCKDOWN").wait_for(timeout=5000)
            await ap.screenshot(path=str(ARTIFACTS / "console-lockdown.png"))
            await ap.click("#btn-lockdown")
            await ap.click("dialog button[type='submit']")
            await ap.fill("dialog input[name='confirm']", "RELEASE")
            await ap.keyboard.press("Enter")
            await ap.locator(".toast", has_text="released").wait_for(timeout=5000)
            assert not site.daemon.lockdown
            assert awatch.errors == []
            await actx.close()

            # -- nobody logged in: the login page, nothing else --------------------------------
            anon = await browser.new_context()
            r = await anon.request.get(site.base + "/api/feed")
            assert r.status == 401
            r = await anon.request.get(site.base + "/healthz")
            assert r.status == 200
            await anon.close()
        finally:
            await browser.close()


def copy_screenshots_to_docs() -> None:
    """Run by hand after the browser test to refresh the README's pictures."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    docs.mkdir(parents=True, exist_ok=True)
    for png in ARTIFACTS.glob("console-*.png"):
        shutil.copy2(png, docs / png.name)


if __name__ == "__main__":
    copy_screenshots_to_docs()
