"""The desk at 6 pm, second round (issue 24), in a real headless Chromium against a daemon in
this test's event loop (tests/test_console_browser.py's set-up): *Needs attention* in groups,
reached to the last and dealt with per group, a check-in straight from a denial; alarms as
banners on every page until acknowledged, with a sound; an unknown card assigned from the
prompt, also one beyond the listed ones; the member card at a glance and a photo taken with
Chromium's fake camera, then that face on the feed, the gate card and the check-in; search
as you type, Enter in a dialog, the feed's filters a few Tab presses away, the display's
footer contrast. Screenshots go to tests/artifacts/ (docs/console.md shows them).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from simulator.turnstile import Fault
from sync.records import MemberIn
from sync.store import SyncBatch
from tests.photos import MAX_URL
from tests.test_console import DISPLAY_TOKEN, Site, running_site
from tests.test_console_alarms import contrast
from tests.test_console_attention import A_DAYS_CARDS
from tests.test_console_browser import (
    ARGS,
    ARTIFACTS,
    CHROMIUM,
    TABLET,
    VIEWPORT,
    Watch,
    _playwright,
    login,
)
from tests.test_daemon import wait_for

pytestmark = pytest.mark.browser

CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


async def browser(pw: Any, camera: bool = False) -> Any:
    return await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS + (CAMERA if camera else []), headless=True)


def relay_is(site: Site, health: str) -> bool:
    return bool(site.daemon.controllers["turnstile-in"].output.health.value == health)


async def test_needs_attention_in_groups_reached_to_the_last_and_a_check_in_from_a_denial(tmp_path: Any) -> None:
    async_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_site(tmp_path, extra=A_DAYS_CARDS) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            # 8 taps of one blocked member: one item that counts them, as they come
            for _ in range(8):
                await site.tap("DEADBEEF")
            max_item = page.locator("#attention-list li[data-key='member:m-blocked']")
            await max_item.locator(".count-badge", has_text="×8").wait_for(timeout=5000)
            assert re.search(r"8 taps since \d\d:\d\d", await max_item.inner_text())
            n = await page.locator("#attention-list li", has_text="Max Mustermann").count()
            assert n == 1, await page.locator("#attention").inner_html()
            # 35 cards nobody has: 36 items in all, a page of them and how many more
            for i in range(35):
                await site.tap(f"C0FFEE{i:02d}")
            await page.locator("#attention-count", has_text="36").wait_for(timeout=10000)
            more = page.locator("#attention-more")
            await more.wait_for(timeout=5000)
            assert (await more.inner_text()).endswith("more")
            oldest = page.locator("#attention-list li[data-key='card:uid:C0FFEE00']")
            assert await oldest.count() == 0
            while await more.is_visible():
                await more.click()
                await page.wait_for_timeout(300)
            await oldest.wait_for(timeout=5000)  # the oldest is reachable
            assert await page.locator("#attention-list li").count() == 36
            await page.screenshot(path=str(ARTIFACTS / "console-attention.png"))
            await oldest.locator("button", has_text="Done").click()
            await oldest.wait_for(state="detached", timeout=5000)
            await max_item.locator("button", has_text="Done").click()  # all 8 in one action
            await max_item.wait_for(state="detached", timeout=5000)
            rows = site.store.conn.execute("SELECT detail FROM audit WHERE action = 'denials_done'").fetchall()
            assert sorted(len(__import__("json").loads(r[0])["denials"]) for r in rows) == [1, 8]
            await page.locator("#dismiss-all").click()
            await page.locator("#attention").wait_for(state="hidden", timeout=10000)
            await page.reload()  # they stay done
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            await page.wait_for_timeout(1000)
            assert await page.locator("#attention-list li").count() == 0

            # the gate was offline when Bruno tapped: the desk lets him in from his denial
            site.turnstile.inject(Fault.NO_ANSWER)
            await wait_for(lambda: relay_is(site, "offline"), timeout=15)
            r = await site.tap("0499887766")
            assert r["decision"] == "denied"
            site.turnstile.inject(Fault.NONE)
            await wait_for(lambda: relay_is(site, "online"), timeout=15)
            bruno = page.locator("#attention-list li[data-key='member:m-bruno']")
            await bruno.locator("button", has_text="Check in").click()
            await page.locator("dialog h2", has_text="Check in Bruno Díaz").wait_for(timeout=5000)
            assert await page.input_value("dialog select[name='gate']") == "turnstile-in"  # the denial's gate
            unlocks = site.turnstile.unlocks
            await page.keyboard.press("Enter")  # from the first field, a select: Enter submits
            await page.locator(".toast", has_text="Checked in").wait_for(timeout=10000)
            assert site.turnstile.unlocks == unlocks + 1
            await bruno.wait_for(state="detached", timeout=5000)  # let in: dealt with
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_an_answer_older_than_the_live_denials_does_not_hide_them(tmp_path: Any) -> None:
    """The page's first read of Needs attention, answered after three live denials came in
    (held here, then answered as of before them): the three stay, counted once."""
    async_playwright = _playwright()
    async with running_site(tmp_path) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            release = asyncio.Event()
            held: list[Any] = []

            async def hold_first(route: Any) -> None:
                if held or route.request.method != "GET":
                    await route.continue_()
                    return
                held.append(route)
                await release.wait()
                await route.fulfill(status=200, content_type="application/json", body=json.dumps(
                    {"groups": [], "offset": 0, "total": 0, "denials": 0, "more": 0, "last_seq": 0}))

            await page.route("**/api/denials?*", hold_first)
            await login(page, site, "desk")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            for _ in range(3):
                await site.tap("DEADBEEF")
            item = page.locator("#attention-list li[data-key='member:m-blocked']")
            await item.locator(".count-badge", has_text="×3").wait_for(timeout=5000)
            assert held  # the first read is still unanswered
            release.set()
            await page.wait_for_timeout(500)
            assert await item.locator(".count-badge", has_text="×3").count() == 1
            await page.wait_for_timeout(2000)  # and the exact read a moment later agrees
            assert await item.locator(".count-badge", has_text="×3").count() == 1
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_alarms_on_every_page_until_acknowledged_with_a_sound(tmp_path: Any) -> None:
    async_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_site(tmp_path) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await page.locator(".gate[data-gate='turnstile-in'] button", has_text="Open once").wait_for(timeout=5000)
            sound = page.locator("#sound-toggle")
            assert await sound.get_attribute("aria-pressed") == "false"  # off until someone wants it
            await sound.click()
            assert await sound.get_attribute("aria-pressed") == "true"
            beeps = int(await page.get_attribute("body", "data-beeps") or 0)

            site.turnstile.inject(Fault.NO_ANSWER)
            banner = page.locator("#alerts .banner.bad", has_text="Gate offline")
            await banner.wait_for(timeout=15000)
            assert "Main entrance" in await banner.inner_text()
            await page.wait_for_function(f"() => Number(document.body.dataset.beeps || 0) > {beeps}", timeout=5000)
            # the gate card agrees: no "Open once" on a gate that would refuse it
            card = page.locator(".gate[data-gate='turnstile-in']")
            await card.locator(".why", has_text="offline").wait_for(timeout=5000)
            assert await card.locator("button", has_text="Open once").count() == 0
            await page.locator("#attention-alarms li", has_text="Gate offline").wait_for(timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "console-alarm.png"))
            for path in ("/members", "/classes", "/reports", "/audit"):
                await page.goto(site.base + path)
                await page.locator("#alerts .banner.bad", has_text="Gate offline").wait_for(timeout=10000)
            # acknowledged on the audit page: quiet everywhere, and in the audit log by name
            await page.locator("#alerts .banner.bad button", has_text="Acknowledge").click()
            await page.locator("#alerts .banner.quiet", has_text="Acknowledged by desk").wait_for(timeout=10000)
            await page.goto(site.base + "/")
            await page.locator("#alerts .banner.quiet", has_text="Gate offline").wait_for(timeout=10000)
            assert await page.locator("#alerts .banner.bad").count() == 0
            await page.goto(site.base + "/audit")
            await page.locator("#audit-body tr[data-action='alarm_acknowledged']", has_text="Acknowledged an alarm").wait_for(timeout=5000)
            # resolved: gone
            site.turnstile.inject(Fault.NONE)
            await page.locator("#alerts .banner", has_text="Gate offline").wait_for(state="detached", timeout=15000)

            # a forced door stays after it closed, until someone acknowledges it
            await page.goto(site.base + "/members")
            site.turnstile.force_door_open()
            forced = page.locator("#alerts .banner.bad", has_text="Door forced open")
            await forced.wait_for(timeout=15000)
            site.turnstile.close_door()
            await page.wait_for_timeout(5000)  # a few polls later
            assert await forced.count() == 1
            await forced.locator("button", has_text="Acknowledge").click()
            await forced.wait_for(state="detached", timeout=10000)
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_an_unknown_card_beyond_the_list_assigned_from_the_prompt(tmp_path: Any) -> None:
    """Bug 7 of issue 24: "Assign card" landed on the members page with no prompt and no
    focus, and a card not among the 20 listed was nowhere."""
    async_playwright = _playwright()
    async with running_site(tmp_path, extra=A_DAYS_CARDS) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            for i in range(30):  # more than the 20 listed, more than a page of Needs attention
                await site.tap(f"BADC0D{i:02d}")
            await login(page, site, "desk")
            more = page.locator("#attention-more")
            await more.wait_for(timeout=5000)
            await more.click()
            oldest = page.locator("#attention-list li[data-key='card:uid:BADC0D00']")
            await oldest.locator("a", has_text="Assign card").click()
            await page.wait_for_url(site.base + "/members?card=uid%3ABADC0D00")
            prompt = page.locator("#assign-prompt")
            await prompt.wait_for(timeout=5000)
            assert "Assign card uid:BADC0D00: find the member" in await prompt.inner_text()
            assert await page.evaluate("document.activeElement && document.activeElement.id") == "q"
            await page.locator("#unknown-cards li").first.wait_for(timeout=5000)
            assert await page.locator("#unknown-cards li[data-card='uid:BADC0D00']").count() == 0  # beyond the 20
            await page.keyboard.type("vog")  # no Enter: results as you type
            assign = page.locator("#results li", has_text="Lena Vogel").locator("button", has_text="Assign card")
            await assign.wait_for(timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "console-assign.png"))
            await assign.click()
            assert await page.input_value("dialog input[name='card']") == "uid:BADC0D00"
            await page.keyboard.press("Enter")
            await page.locator(".toast", has_text="Card assigned to Lena Vogel").wait_for(timeout=5000)
            await prompt.wait_for(state="hidden", timeout=5000)
            assert "card=" not in page.url
            assert (await site.tap("BADC0D00"))["member"] == "m-lena"
            # any card at all, typed into the dialog
            await page.fill("#q", "bruno")
            await page.locator("#member-detail h2", has_text="Bruno Díaz").wait_for(timeout=5000)
            await page.click("#btn-assign-card")
            await page.fill("dialog input[name='card']", "04NEWCARD9")
            await page.keyboard.press("Enter")
            await page.locator(".toast", has_text="Card assigned to Bruno Díaz").wait_for(timeout=5000)
            assert site.store.member_for_card("04NEWCARD9") == "m-bruno"
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_the_member_card_at_a_glance_and_a_photo_from_the_desk_camera(tmp_path: Any) -> None:
    async_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_site(tmp_path) as site, async_playwright() as pw:
        # what the central system says of Max: why he is blocked, a note, his photo
        site.store.apply_sync(SyncBatch([MemberIn(
            id="m-blocked", name="Max Mustermann", status="blocked", cards=["DEADBEEF"], photo=MAX_URL,
            status_reason="card payment failed on 3 Nov", note="Pays cash at the desk; ask for ID",
        )]), datetime.now(UTC))
        b = await browser(pw, camera=True)
        try:
            ctx = await b.new_context(viewport=VIEWPORT, permissions=["camera"])
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await site.tap("DEADBEEF")
            row = page.locator("#feed-body tr.denied", has_text="Max Mustermann")
            await row.wait_for(timeout=5000)
            await page.wait_for_function(
                "() => { const i = document.querySelector('#feed-body tr.denied .who img.face');"
                " return i && i.complete && i.naturalWidth > 0; }", timeout=5000)
            await page.goto(site.base + "/members#m-blocked")
            await page.locator("#why-blocked", has_text="card payment failed on 3 Nov").wait_for(timeout=5000)
            assert "ask for ID" in await page.locator("#member-note").inner_text()

            assert (await site.tap("0499887766"))["decision"] == "granted"
            await page.goto(site.base + "/members#m-bruno")
            await page.reload()  # the same page as before, with the visit
            glance = page.locator(".glance")
            await glance.wait_for(timeout=5000)
            text = await glance.inner_text()
            assert "Multipack 10" in text and "left" in text and "Last visits:" in text and "Main entrance" in text
            await page.click("#btn-photo")
            await page.wait_for_function(
                "() => { const v = document.querySelector('dialog video'); return v && v.videoWidth > 0; }",
                timeout=10000)
            await page.click("#camera-shoot")
            await page.locator("#camera-use").wait_for(timeout=5000)
            await page.screenshot(path=str(ARTIFACTS / "console-camera.png"))
            await page.click("#camera-use")
            await page.locator(".toast", has_text="Photo of Bruno Díaz saved").wait_for(timeout=5000)
            photo = page.locator(".glance img.face-large")
            await photo.wait_for(timeout=5000)
            await page.wait_for_function(
                "() => { const i = document.querySelector('.glance img.face-large');"
                " return i && i.complete && i.naturalWidth === 240 && i.naturalHeight === 320; }", timeout=5000)
            src = await photo.get_attribute("src")
            assert src is not None and src.startswith("/api/members/m-bruno/photo?v=")
            event = site.store.recent_events(5, types=["member_photo"])[0]
            assert event["member"] == "m-bruno" and event["photo"].startswith("data:image/jpeg;base64,/9j/")
            assert len(event["photo"]) <= int(await page.get_attribute("body", "data-photo-max") or 0)
            await page.screenshot(path=str(ARTIFACTS / "console-glance.png"))
            # the same face on the check-in dialog, the feed and the gate's last tap
            await page.click("#btn-check-in")
            assert await page.locator("dialog .dialog-face img").get_attribute("src") == src
            await page.keyboard.press("Escape")
            await page.goto(site.base + "/")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            await site.tap("0499887766", gate="exit")
            await page.locator("#feed-body tr.granted", has_text="Goodbye Bruno").locator(f"img[src='{src}']").wait_for(timeout=5000)
            await page.locator(f".gate[data-gate='exit'] .last-tap img[src='{src}']").wait_for(timeout=10000)
            await site.tap("04A1B2C3D4")  # Ana: no photo yet, her initials
            await site.tap("CAFE0001")
            await site.tap("DEADBEEF")  # Max again: his face beside the denial
            await page.locator("#feed-body tr", has_text="Card not recognised").wait_for(timeout=5000)
            await page.locator("#attention-list li[data-key='member:m-blocked'] .count-badge", has_text="×2").wait_for(timeout=5000)
            await page.wait_for_timeout(500)  # the photos drawn
            await page.screenshot(path=str(ARTIFACTS / "console-faces.png"))
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_faster_paths_for_the_desk(tmp_path: Any) -> None:
    async_playwright = _playwright()
    async with running_site(tmp_path) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            # the feed's filters, counted in Tab presses from the top of the page
            await page.goto(site.base + "/")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            presses = 0
            while await page.evaluate("document.activeElement && document.activeElement.id") != "only-denied":
                await page.keyboard.press("Tab")
                presses += 1
                assert presses <= 9, "the feed's filters are more than a few Tab presses away"
            await page.keyboard.press("Space")
            assert await page.is_checked("#only-denied")
            # by the skip link: Tab, Enter, Tab
            await page.goto(site.base + "/")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
            await page.keyboard.press("Enter")
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.id") == "only-denied"

            # search as you type: no Enter
            await page.goto(site.base + "/members")
            await page.click("#q")
            await page.keyboard.type("lóp")
            await page.locator("#member-detail h2", has_text="Ana López").wait_for(timeout=5000)
            # Enter submits the check-in dialog, from its first field
            await page.fill("#q", "")
            await page.keyboard.type("bruno")
            await page.locator("#member-detail h2", has_text="Bruno Díaz").wait_for(timeout=5000)
            unlocks = site.turnstile.unlocks
            await page.click("#btn-check-in")
            await page.locator("dialog select[name='gate']").wait_for(timeout=5000)
            assert await page.evaluate("document.activeElement.name") == "gate"
            await page.keyboard.press("Enter")
            await page.locator(".toast", has_text="Checked in").wait_for(timeout=10000)
            assert site.turnstile.unlocks == unlocks + 1
            assert watch.errors == []
            await ctx.close()

            # the display's footer: readable on every background, as drawn
            dctx = await b.new_context(viewport=TABLET)
            dp = await dctx.new_page()
            await dp.goto(f"{site.base}/display/entrance?token={DISPLAY_TOKEN}")
            await dp.locator("#link", has_text="connected").wait_for(timeout=5000)
            ratios = []
            for card, state in ((None, "idle"), ("0499887766", "granted"), ("DEADBEEF", "denied")):
                if card:
                    await site.tap(card)
                await dp.locator(f"body.{state}").wait_for(timeout=5000)
                colours = await dp.evaluate("""() => {
                    const parse = (c) => c.match(/[\\d.]+/g).map(Number);
                    const f = getComputedStyle(document.querySelector('footer'));
                    return [parse(getComputedStyle(document.querySelector('#link')).color),
                            parse(getComputedStyle(document.body).backgroundColor), Number(f.opacity)]; }""")
                fg, bg, opacity = colours
                alpha = opacity * (fg[3] if len(fg) > 3 else 1)
                blended = tuple((alpha * f + (1 - alpha) * k) / 255 for f, k in zip(fg[:3], bg[:3], strict=True))
                ratios.append(contrast(blended, tuple(k / 255 for k in bg[:3])))  # type: ignore[arg-type]
            assert min(ratios) >= 4.5, ratios
            await dctx.close()
        finally:
            await b.close()


async def test_the_page_says_a_hole_in_the_feed_and_a_record_done_but_not_on_disk(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's part of what the gate knows: a reconnected feed past its catch-up bound
    shows the events it skipped (static/feed.js, `gap`); "Adjust points" sends the dialog's
    request id (done once however often it is sent) and shows a record done but not yet on
    disk in red, never as not done."""
    import errno

    from gated.console import api

    async_playwright = _playwright()
    async with running_site(tmp_path) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            watch = Watch(page)
            await login(page, site, "desk")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            # the page's stream ends (as for a browser too slow) and 12 denials come meanwhile:
            # past the bound (5 here) the oldest are not sent, and the page says so
            monkeypatch.setattr(api, "REPLAY_MAX", 5)
            assert site.daemon.console is not None and site.daemon.console.console is not None
            hub = site.daemon.console.console.hub
            for q in list(hub.subscribers):
                hub._end(q)
            for _ in range(12):
                await site.tap("DEADBEEF")
            gap = page.locator("#feed-body tr.gap")
            await gap.wait_for(timeout=10000)
            assert re.search(r"\d+ events not shown .* reload", await gap.inner_text())
            await page.locator("#only-denied").check()
            assert await gap.is_visible()  # no filter hides a hole
            # points while the disk fails its flushes: done, and said to be not yet safe
            sent: list[dict[str, Any]] = []
            page.on("request", lambda r: sent.append(json.loads(r.post_data or "{}")) if r.url.endswith("/points") else None)
            wal = site.store.wal_sync
            assert wal is not None
            real = wal._fsync

            def eio(fd: int) -> None:
                raise OSError(errno.EIO, "Input/output error")

            wal._fsync = eio
            await page.goto(site.base + "/members#m-ana")
            await page.locator("#btn-points").click()
            await page.fill("dialog input[name='points']", "25")
            await page.fill("dialog input[name='reason']", "birthday")
            await page.keyboard.press("Enter")
            await page.locator(".toast.bad", has_text="not yet safe on disk").wait_for(timeout=5000)
            wal._fsync = real
            assert len(sent) == 1 and re.fullmatch(r"[0-9a-f]{32}", sent[0]["request_id"])
            assert site.store.points("m-ana") == 25
            assert watch.errors == []
            await ctx.close()
        finally:
            await b.close()


async def test_a_check_in_and_an_opening_whose_answer_was_lost_are_done_once_when_submitted_again(
        tmp_path: Any) -> None:
    """"Check in" and "Open once" sent no request id: the dialog submitted again after an
    answer lost on the way (the request done at the gate) charged Bruno a second visit and
    pulsed the turnstile a second time. Now the dialog's one id makes the retry the first
    answer again (gated/console/once.py)."""
    async_playwright = _playwright()
    async with running_site(tmp_path) as site, async_playwright() as pw:
        b = await browser(pw)
        try:
            ctx = await b.new_context(viewport=VIEWPORT)
            page = await ctx.new_page()
            await login(page, site, "desk")
            sent: list[dict[str, Any]] = []

            async def lose_the_first_answer(route: Any) -> None:
                sent.append(json.loads(route.request.post_data or "{}"))
                if len(sent) == 1:
                    await route.fetch()  # done at the gate ...
                    await route.abort("connectionreset")  # ... and its answer never reaches the page
                else:
                    await route.continue_()

            balance, unlocks = site.store.balance("p-bruno"), site.turnstile.unlocks
            await page.route("**/api/members/m-bruno/check-in", lose_the_first_answer)
            await page.goto(site.base + "/members#m-bruno")
            await page.locator("#member-detail h2", has_text="Bruno Díaz").wait_for(timeout=5000)
            await page.click("#btn-check-in")
            await page.locator("dialog button.primary", has_text="Check in").click()
            await page.locator("dialog p.error").filter(has_text=re.compile(r".+")).wait_for(timeout=10000)
            assert site.store.balance("p-bruno") == balance - 1 and site.turnstile.unlocks == unlocks + 1
            await page.locator("dialog button.primary", has_text="Check in").click()  # the desk tries again
            await page.locator(".toast", has_text="Checked in").wait_for(timeout=10000)
            assert (site.store.balance("p-bruno"), site.turnstile.unlocks) == (balance - 1, unlocks + 1)
            assert len(sent) == 2 and sent[0]["request_id"] == sent[1]["request_id"]
            assert re.fullmatch(r"[0-9a-f]{32}", sent[0]["request_id"])

            sent.clear()
            await page.route("**/api/gates/turnstile-in/open", lose_the_first_answer)
            await page.goto(site.base + "/")
            await page.wait_for_selector("#stream-state.live", timeout=5000)
            await page.locator(".gate[data-gate='turnstile-in'] button", has_text="Open once").click()
            await page.fill("dialog input[name='reason']", "delivery")
            await page.locator("dialog button.primary", has_text="Open gate").click()
            await page.locator("dialog p.error").filter(has_text=re.compile(r".+")).wait_for(timeout=10000)
            assert site.turnstile.unlocks == unlocks + 2
            await page.locator("dialog button.primary", has_text="Open gate").click()
            await page.locator(".toast", has_text="opened").wait_for(timeout=10000)
            assert site.turnstile.unlocks == unlocks + 2
            assert len(sent) == 2 and sent[0]["request_id"] == sent[1]["request_id"]
            assert len(site.store.recent_events(10, types=["override"])) == 1
            # a new dialog is a new action: it opens
            await page.locator(".gate[data-gate='turnstile-in'] button", has_text="Open once").click()
            await page.fill("dialog input[name='reason']", "visitor")
            await page.locator("dialog button.primary", has_text="Open gate").click()
            await page.locator(".toast", has_text="opened").nth(1).wait_for(timeout=10000)
            assert len(sent) == 3 and sent[2]["request_id"] != sent[0]["request_id"]
            assert site.turnstile.unlocks == unlocks + 3
            await ctx.close()
        finally:
            await b.close()
