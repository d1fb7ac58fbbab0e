/* gated front-desk console: the entry point of every page (a module: static/core.js and the
 * page's own module load with it). The classes, audit and reports pages are here; the feed
 * in feed.js, the members page in members.js. */
"use strict";

import { $, api, el, fmt, page, toast } from "./core.js";
import { bookingTable, STATE_TEXT } from "./actions.js";
import { pollBanners } from "./alarms.js";
import { initFeed } from "./feed.js";
import { initMembers } from "./members.js";

// -- classes page ----------------------------------------------------------------------

function initClasses() {
  const day = $("#day");
  const list = $("#class-list");
  async function load() {
    const data = await api("GET", "/api/classes" + (day.value ? "?day=" + encodeURIComponent(day.value) : ""));
    if (!day.value) day.value = data.day;
    if (data.classes.length === 0) { list.replaceChildren(el("p", { class: "empty", text: "No classes booked on " + data.day + "." })); return; }
    list.replaceChildren(...data.classes.map(function (c) {
      const counts = Object.entries(c.counts).map(function (p) { return el("span", { class: "badge st-" + p[0], text: (STATE_TEXT[p[0]] || p[0]) + " " + p[1] }); });
      return el("section", { class: "class-block" },
        el("header", null, el("span", { class: "time", text: c.starts + "–" + c.ends }), el("h2", { text: c.class }),
          el("span", { class: "muted small", text: c.zone + " · " + c.bookings.length + " booked" }), ...counts),
        el("div", { class: "table-wrap" }, bookingTable(c.bookings, false, load)));
    }));
  }
  day.addEventListener("change", function () { load().catch(function (e) { toast(e.message, true); }); });
  $("#day-today").addEventListener("click", function () { day.value = ""; load().catch(function (e) { toast(e.message, true); }); });
  load().catch(function (e) { toast(e.message, true); });
  setInterval(function () { if (!document.querySelector("dialog[open]")) load().catch(function () {}); }, 30000);
}

// -- audit page ------------------------------------------------------------------------

function initAudit() {
  const form = $("#audit-form");
  const body = $("#audit-body");
  let facetsLoaded = false;
  async function load() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (v) params.set(k, v);
    const data = await api("GET", "/api/audit?" + params.toString());
    if (!facetsLoaded) {
      facetsLoaded = true;
      data.facets.operators.forEach(function (o) { $("#f-operator").append(el("option", { value: o, text: o })); });
      data.facets.actions.forEach(function (a) { $("#f-action").append(el("option", { value: a, text: a })); });
    }
    $("#csv-link").setAttribute("href", data.csv);
    body.replaceChildren(...data.rows.map(function (r) {
      return el("tr", { "data-action": r.action }, el("td", { class: "when", text: r.at }), el("td", { text: r.operator }),
        el("td", { text: r.action_text, title: r.action }),
        el("td", { class: "detail", text: r.detail_text }), el("td", { class: "num", text: fmt(r.seq) }));
    }));
    $("#audit-empty").classList.toggle("hidden", data.rows.length > 0);
  }
  form.addEventListener("submit", function (e) { e.preventDefault(); load().catch(function (ex) { toast(ex.message, true); }); });
  load().catch(function (e) { toast(e.message, true); });
}

// -- reports page ----------------------------------------------------------------------

function initReports() {
  const form = $("#report-form");
  const body = $("#report-body");
  const foot = $("#report-foot");
  async function load() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (v) params.set(k, v);
    const data = await api("GET", "/api/reports/loyalty?" + params.toString());
    $("#r-from").value = data.from;
    $("#r-to").value = data.to;
    $("#report-csv").setAttribute("href", data.csv);
    body.replaceChildren(...data.lines.map(function (l) {
      return el("tr", null, el("td", null, el("a", { href: "/members#" + encodeURIComponent(l.member), text: l.name })),
        el("td", { class: "num", text: String(l.classes) }), el("td", { class: "num", text: String(l.credited) }),
        el("td", { class: "num", text: String(l.adjustments) }), el("td", { class: "num", text: (l.adjusted > 0 ? "+" : "") + l.adjusted }),
        el("td", { class: "num total", text: String(l.total) }));
    }));
    foot.replaceChildren(el("tr", null, el("th", { scope: "row", text: "All members (" + data.lines.length + ")" }), el("td"),
      el("td", { class: "num", text: String(data.totals.credited) }), el("td"),
      el("td", { class: "num", text: String(data.totals.adjusted) }), el("td", { class: "num total", text: String(data.totals.total) })));
    $("#report-empty").classList.toggle("hidden", data.lines.length > 0);
  }
  form.addEventListener("submit", function (e) { e.preventDefault(); load().catch(function (ex) { toast(ex.message, true); }); });
  load().catch(function (e) { toast(e.message, true); });
}

// -- start -----------------------------------------------------------------------------

const init = { feed: initFeed, members: initMembers, classes: initClasses, reports: initReports, audit: initAudit }[page];
if (init) init();
if (init && page !== "feed") pollBanners();
