/* The gate display: one answer at a time, cleared after a few seconds; reconnects by itself.
 * Reads the display token from its own URL; writes text with textContent only (CSP). */
"use strict";

(function () {
  const body = document.body;
  const clearAfter = Math.max(2, parseInt(body.dataset.clearAfter || "6", 10)) * 1000;
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const url = window.location.pathname.replace(/\/$/, "") + "/events?token=" + encodeURIComponent(token);
  const idle = document.getElementById("idle-view");
  const answer = document.getElementById("answer-view");
  const headline = document.getElementById("headline");
  const detail = document.getElementById("detail");
  const link = document.getElementById("link");
  const clock = document.getElementById("clock");
  let timer = null;

  function showIdle() {
    body.className = "idle";
    answer.hidden = true;
    idle.hidden = false;
    headline.textContent = "";
    detail.textContent = "";
  }

  let shown = 0;
  function show(a) {
    clearTimeout(timer);
    shown += 1;
    body.dataset.shown = String(shown);  // how many answers this screen has shown (tests)
    body.className = a.granted ? "granted" : "denied";
    headline.textContent = a.headline || "";
    detail.textContent = a.detail || "";
    idle.hidden = true;
    answer.hidden = false;
    timer = setTimeout(showIdle, clearAfter);
  }

  function tick() {
    // the site's time, whatever the tablet's own clock is set to
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    try { clock.textContent = new Date().toLocaleTimeString([], Object.assign({ timeZone: body.dataset.tz }, opts)); }
    catch (e) { clock.textContent = new Date().toLocaleTimeString([], opts); }
  }
  tick();
  setInterval(tick, 10000);

  let source = null;
  let retry = 1000;
  function connect() {
    source = new EventSource(url);
    source.addEventListener("open", function () { link.textContent = "connected"; link.className = "link"; retry = 1000; });
    source.addEventListener("answer", function (e) {
      try { show(JSON.parse(e.data)); } catch (ex) { /* a bad line is skipped */ }
    });
    source.addEventListener("error", function () {
      link.textContent = "reconnecting…";
      link.className = "link down";
      if (source.readyState === EventSource.CLOSED) {
        // the server refused or went away for good (restart): try again, slower each time
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      }
    });
  }
  showIdle();
  connect();
})();
