"""The console in a real headless Chromium (Debian's, driven by Playwright) against a Daemon
started in this test's event loop, with the turnstile on a real Modbus TCP server.

Screenshots of the main pages go to tests/artifacts/ (gitignored); docs/screenshots/ holds
copies for the README.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gated.console.server import start_console
from tests.test_console import DISPLAY_TOKEN, PASSWORDS, Site, running_site

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
TABLET = {"width": 800, "height": 1180}  # a 10" tablet in portrait (desk) or on a turnstile post


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


async def test_who_is_inside_counts_from_an_evacuation(tmp_path: Path) -> None:
    """Bruno is inside; an admin's emergency release (an evacuation) and its end: the desk's
    panel, open on the list, shows nobody inside and says it counts from the evacuation."""
    async_playwright = _playwright()
    async with running_site(tmp_path) as site, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await site.tap("0499887766")  # Bruno, walk-in
            await page.locator("#occupancy .inside-count", has_text="1").wait_for(timeout=5000)
            assert await page.locator("#occupancy .evacuated").inner_text() == ""
            await page.click("#occupancy summary")
            await page.locator("#occupancy .people li", has_text="Bruno Díaz").wait_for(timeout=5000)
            await site.daemon.operator.set_emergency(True, "boss", "drill")
            await site.daemon.operator.set_emergency(False, "boss", "drill over")
            await page.locator("#occupancy .inside-count", has_text="0").wait_for(timeout=10000)
            since = re.compile(r"counted since the evacuation at \d\d:\d\d")
            await page.locator("#occupancy .evacuated", has_text=since).wait_for(timeout=10000)
            assert watch.errors == []
        finally:
            await browser.close()


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
            # the denial waits in "Needs attention" until the desk has dealt with it
            alert = page.locator("#attention-list li", has_text="Max Mustermann")
            await alert.wait_for(timeout=1000)
            assert await page.locator("#attention").is_visible()
            await site.tap("CAFE0001")  # a card nobody has: its number is shown, to assign it
            await page.locator("#attention-list li", has_text="Unknown card uid:CAFE0001").wait_for(timeout=1000)
            await alert.locator("button", has_text="Done").click()
            await alert.wait_for(state="detached", timeout=2000)
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
            await page.locator("#feed-body tr", has_text="opened by the front desk").first.wait_for(timeout=2000)
            # an exit reads as one, and a gate without a relay offers no "Open once"
            await site.tap("0499887766", gate="exit")
            exit_row = page.locator("#feed-body tr.granted", has_text="Goodbye Bruno")
            await exit_row.wait_for(timeout=1000)
            assert "← out" in await exit_row.inner_text()
            assert await page.locator(".gate[data-gate='exit'] button").count() == 0
            await site.tap("0499887766")  # back in: one person inside
            await page.locator("#occupancy .inside-count", has_text="1").wait_for(timeout=5000)
            await page.click("#occupancy summary")
            await page.locator("#occupancy .people li", has_text="Bruno Díaz").wait_for(timeout=5000)
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
            unlocks = site.turnstile.unlocks
            r = await ctx.request.post(
                site.base + "/api/gates/turnstile-in/open",
                headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
                data='{"reason": "csrf"}',
            )
            assert r.status == 403
            assert site.turnstile.unlocks == unlocks

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
            # the page keys work on the Members page (the search box does not grab focus)
            await page.locator("#unknown-cards li", has_text="CAFE0001").wait_for(timeout=5000)
            await page.keyboard.press("/")
            await page.keyboard.type("lopez")  # no accent, lower case
            await page.keyboard.press("Enter")
            await page.locator("#member-detail h2", has_text="Ana López").wait_for(timeout=5000)
            await page.click("#btn-points")
            await page.fill("dialog input[name='points']", "15")
            await page.fill("dialog input[name='reason']", "birthday bonus")
            await page.keyboard.press("Enter")
            await page.locator(".points-big", has_text="15").wait_for(timeout=5000)
            assert site.store.points("m-ana") == 15
            await page.screenshot(path=str(ARTIFACTS / "console-member.png"))

            # -- the unknown card from the feed, given to Lena --------------------------------
            await page.goto(site.base + "/members?card=CAFE0001")
            await page.fill("#q", "vogel")
            await page.keyboard.press("Enter")
            await page.locator("#member-detail h2", has_text="Lena Vogel").wait_for(timeout=5000)
            await page.click("#btn-assign-card")
            assert await page.input_value("dialog input[name='card']") == "CAFE0001"
            await page.click("dialog button[type='submit']")
            await page.locator(".toast", has_text="Card assigned to Lena Vogel").wait_for(timeout=5000)
            await page.locator("#member-detail", has_text="CAFE0001").wait_for(timeout=5000)
            assert (await site.tap("CAFE0001"))["member"] == "m-lena"
            await page.locator("#unknown-cards li", has_text="CAFE0001").wait_for(state="detached", timeout=5000)

            # -- check-in at the desk: the same rules and ledger as a tap --------------------
            await page.fill("#q", "bruno@exa")
            await page.keyboard.press("Enter")
            await page.locator("#member-detail h2", has_text="Bruno Díaz").wait_for(timeout=5000)
            unlocks = site.turnstile.unlocks
            balance = site.store.balance("p-bruno")
            await page.click("#btn-check-in")
            await page.select_option("dialog select[name='use']", "p:p-bruno")
            await page.fill("dialog input[name='reason']", "forgot his card")
            await page.click("dialog button[type='submit']")
            await page.locator(".toast", has_text="Checked in").wait_for(timeout=5000)
            assert site.turnstile.unlocks == unlocks + 1
            assert site.store.balance("p-bruno") == balance - 1
            access = site.store.recent_events(5, types=["access"])[0]
            assert access["member"] == "m-bruno" and access["operator"] == "desk" and access["credential"] == "desk"
            assert access["desk_reason"] == "forgot his card" and access["reason"] == "walk_in"

            # -- loyalty report and its CSV --------------------------------------------------
            await page.keyboard.press("Escape")
            await page.keyboard.press("r")
            await page.wait_for_url(site.base + "/reports")
            line = page.locator("#report-body tr", has_text="Ana López")
            await line.wait_for(timeout=5000)
            assert "15" in await line.inner_text()
            href = await page.get_attribute("#report-csv", "href")
            assert href is not None and href.startswith("/reports/loyalty.csv?from=")
            r = await ctx.request.get(site.base + href)
            # the columns as on screen: member, id, classes, credited, adjustments, adjusted, total
            assert r.status == 200 and "Ana López,m-ana,0,0,1,15,15" in (await r.body()).decode("utf-8-sig")
            await page.screenshot(path=str(ARTIFACTS / "console-reports.png"))

            # -- audit log --------------------------------------------------------------------
            await page.keyboard.press("a")
            await page.wait_for_url(site.base + "/audit")
            await page.locator("#audit-body tr[data-action='mark_attended']", has_text="Marked attended").wait_for(timeout=5000)
            for action in ("override", "adjust_points", "check_in"):
                assert await page.locator(f"#audit-body tr[data-action='{action}']").count() == 1
            login_row = page.locator("#audit-body tr[data-action='login']").first
            assert "Logged in" in await login_row.inner_text()
            assert re.search(r"\d\d:\d\d:\d\d CET|CEST", await login_row.locator("td.when").inner_text())
            assert "{" not in await page.locator("#audit-body").inner_text()  # words, not JSON
            assert (await page.get_attribute("#csv-link", "href")) == "/audit.csv"
            await page.screenshot(path=str(ARTIFACTS / "console-audit.png"))

            # -- the disk's free-space reserve is gone: every page says the gates are out of order
            storage = site.daemon.storage
            assert storage is not None
            reserve = storage.guard.min_free
            storage.guard.min_free = 1 << 62  # more than any disk has: the real free-space check fails
            try:
                await page.locator("#alerts .banner", has_text="GATES OUT OF ORDER").wait_for(timeout=10000)
                assert (await site.tap("0499887766"))["reason"] == "storage_fault"
            finally:
                storage.guard.min_free = reserve
            await page.locator("#alerts .banner", has_text="GATES OUT OF ORDER").wait_for(state="detached", timeout=10000)

            # -- a tablet in portrait: the gates come first, not 3,000 px down ----------------
            await page.set_viewport_size(TABLET)
            await page.goto(site.base + "/")
            await page.wait_for_selector(".gate[data-gate='turnstile-in']")
            gates_box = await page.locator("aside.gates").bounding_box()
            feed_box = await page.locator("section.feed").bounding_box()
            assert gates_box is not None and feed_box is not None
            assert gates_box["y"] < feed_box["y"] and gates_box["y"] < TABLET["height"] / 4
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
            await ap.fill("dialog input[name='reason']", "intruder in the car park")  # said, kept, shown
            await ap.fill("dialog input[name='confirm']", "LOCKDOWN")
            await ap.keyboard.press("Enter")
            await ap.locator(".toast", has_text="Lockdown is on").wait_for(timeout=5000)
            assert site.daemon.lockdown
            await ap.locator("#alerts .banner", has_text="LOCKDOWN").wait_for(timeout=5000)
            await ap.locator("#alerts .banner", has_text="boss: “intruder in the car park”").wait_for(timeout=5000)
            # nobody opens a gate once during a lockdown: the button is gone
            await ap.locator(".gate[data-gate='turnstile-in'] .gate-head", has_text="locked down").wait_for(timeout=5000)
            assert await ap.locator(".gate[data-gate='turnstile-in'] button").count() == 0
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


async def test_gate_display_on_a_tablet(tmp_path: Path) -> None:
    """The member-facing display at tablet size: the answer to each tap, big, then idle again;
    a wrong token gets nothing; no member id or other member's data on the page."""
    async_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_site(tmp_path) as site, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            ctx = await browser.new_context(viewport=TABLET)
            page = await ctx.new_page()
            watch = Watch(page)
            r = await ctx.request.get(site.base + "/display/entrance?token=wrong-token-wrong-token-wrong")
            assert r.status == 403
            r = await ctx.request.get(site.base + "/display/entrance/events?token=")
            assert r.status == 403
            await page.goto(f"{site.base}/display/entrance?token={DISPLAY_TOKEN}")
            await page.locator("#link", has_text="connected").wait_for(timeout=5000)
            assert "Tap your card" in await page.locator("#idle-view").inner_text()
            await page.screenshot(path=str(ARTIFACTS / "display-idle.png"))

            await site.tap("0499887766")  # Bruno: walk-in on his multipack
            await page.locator("body.granted #headline", has_text="Welcome Bruno").wait_for(timeout=1000)
            detail = await page.locator("#detail").inner_text()
            assert "Multipack 10" in detail and "9 left" in detail
            text = await page.locator("body").inner_text()
            assert "m-bruno" not in text and "Díaz" not in text  # first name only, no ids
            await page.screenshot(path=str(ARTIFACTS / "display-granted.png"))
            await page.locator("body.idle").wait_for(timeout=6000)  # cleared by itself

            await site.tap("04A1B2C3D4")  # Ana, 20 minutes early for Spinning: a paid walk-in, said so
            await page.locator("body.granted #detail", has_text="entry now is a walk-in").wait_for(timeout=1000)
            assert "Spinning" in await page.locator("#detail").inner_text()

            await site.tap("DEADBEEF")
            await page.locator("body.denied #headline", has_text="Membership on hold").wait_for(timeout=1000)
            assert "front desk" in await page.locator("#detail").inner_text()
            await page.screenshot(path=str(ARTIFACTS / "display-denied.png"))
            # a tap at another gate never shows here: of the exit tap and the next entrance
            # tap, only the entrance's answer arrives
            shown = int(await page.get_attribute("body", "data-shown") or 0)
            await site.tap("04A1B2C3D4", gate="exit")
            await site.tap("DEADBEEF")
            await page.wait_for_function(f"document.body.dataset.shown === '{shown + 1}'", timeout=2000)
            assert "Membership on hold" in await page.locator("#headline").inner_text()
            await page.locator("body.idle").wait_for(timeout=6000)
            assert await page.get_attribute("body", "data-shown") == str(shown + 1)

            # the console goes away and comes back (a daemon restart): the display reconnects
            # by itself and shows the next tap
            assert watch.errors == []
            await site.daemon.console.stop()
            await page.locator("#link.down").wait_for(timeout=5000)
            site.daemon.console = await start_console(site.daemon.operator)
            await page.locator("#link", has_text="connected").wait_for(timeout=15000)
            await site.tap("0499887766")
            await page.locator("body.granted #headline", has_text="Welcome Bruno").wait_for(timeout=2000)
            await ctx.close()
        finally:
            await browser.close()


def copy_screenshots_to_docs() -> None:
    """Run by hand after the browser test to refresh the README's pictures."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    docs.mkdir(parents=True, exist_ok=True)
    for png in [*ARTIFACTS.glob("console-*.png"), *ARTIFACTS.glob("display-*.png")]:
        shutil.copy2(png, docs / png.name)


if __name__ == "__main__":
    copy_screenshots_to_docs()
