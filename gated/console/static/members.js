/* The members page: search as you type; the member's card — face, why they are blocked,
 * what their passes have left and until when, the last visits, the central system's note —
 * with Check in, Assign a card, Take photo, Adjust points; and the unknown cards, any of
 * which (listed or not) can be given to any member found. */
"use strict";

import { $, api, el, face, role, toast } from "./core.js";
import { adjustPoints, assignCard, bookingTable, checkIn, siteGates } from "./actions.js";
import { takePhoto } from "./camera.js";

const SEARCH_DELAY = 250;  // ms after the last key: a search per pause, not per letter

function passLine(p) {
  const left = p.balance === null ? "" : p.balance + " left";
  const until = p.valid_until ? "until " + p.valid_until + (p.days_left !== null ? " (" + p.days_left + " day" + (p.days_left === 1 ? "" : "s") + ")" : "") : "no end date";
  let why = p.state === "valid" ? "used up" : p.state;
  if (p.stale && p.state === "valid") why = "not at the gate now";  // refused while the member data is stale
  return el("li", { class: p.usable ? "" : "unusable" },
    el("span", { class: "badge " + (p.usable ? "valid" : "expired"), text: p.usable ? "usable" : why, title: p.stale || null }),
    " ", el("strong", { text: p.name }), " — " + [left, until].filter(Boolean).join(" · "),
    p.stale ? el("span", { class: "hint", text: p.stale }) : "");
}

/* Since when the member is inside — in doubt when exits opened unrecorded after their
 * entry (a storage fault): the gate no longer counts them inside, nor does the occupancy. */
function insideText(m) {
  return "inside since " + m.inside_since + (m.maybe_left ? " — may have left unrecorded" : "");
}

/* What the desk needs at a glance, before any table. */
function glance(m, reload) {
  const canPhoto = role === "staff" || role === "admin";
  const photo = el("div", { class: "glance-photo" }, face(m.photo, m.name, "large"),
    canPhoto ? el("button", { type: "button", class: "small", id: "btn-photo", text: m.photo ? "Retake photo" : "Take photo",
      onclick: function () { takePhoto(m, reload); } }) : "");
  const facts = el("div", { class: "glance-facts" });
  if (m.status === "blocked") {
    facts.append(el("p", { class: "status-line blocked", id: "why-blocked" },
      el("strong", { text: "Blocked" }), " — " + (m.status_reason || "by the central system (no reason given)")));
  } else {
    const usable = m.passes.filter(function (p) { return p.usable; });
    facts.append(el("p", { class: "status-line " + (usable.length ? "ok" : "warn") },
      el("strong", { text: usable.length ? "Active" : "Active, no usable pass" }),
      m.status_reason ? " — " + m.status_reason : ""));
  }
  if (m.cache_stale) {
    facts.append(el("p", { class: "status-line warn", id: "data-stale" }, el("strong", { text: "Member data is stale" }),
      " — passes, balances and bookings as of " + (m.data_as_of || "never synced") + "; the gate refuses what is marked below"));
  }
  if (m.note) facts.append(el("p", { class: "note", id: "member-note" }, el("strong", { text: "Note: " }), m.note));
  if (m.passes.length) facts.append(el("ul", { class: "glance-passes" }, ...m.passes.map(passLine)));
  const visits = m.visits.length
    ? "Last visits: " + m.visits.map(function (v) { return v.date + " " + v.time + " (" + (v.gate_name || v.zone) + ")"; }).join(", ")
    : "No visit recorded here";
  facts.append(el("p", { class: "muted small", id: "last-visits", text: visits + (m.inside_since ? " · " + insideText(m) : "") }));
  return el("div", { class: "glance" }, photo, facts);
}

export function initMembers() {
  const form = $("#search-form");
  const q = $("#q");
  const results = $("#results");
  const detail = $("#member-detail");
  const prompt = $("#assign-prompt");
  let current = null;
  let asked = 0;  // the latest search sent: an older answer arriving late is dropped
  let timer = null;

  // a card waiting for its member: from the feed's "Assign card", or "Use" on the list
  let pendingCard = new URLSearchParams(window.location.search).get("card") || "";

  function showPrompt() {
    prompt.classList.toggle("hidden", !pendingCard);
    if (!pendingCard) return;
    prompt.replaceChildren(
      el("span", null, "Assign card ", el("strong", { class: "card-no", text: pendingCard }), ": find the member"),
      el("button", { type: "button", class: "small link-like", text: "Not now", onclick: function () { setPending(""); } }));
  }

  function setPending(card) {
    pendingCard = card;
    const url = new URL(window.location.href);
    if (card) url.searchParams.set("card", card); else url.searchParams.delete("card");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
    showPrompt();
    loadUnknown();
    results.querySelectorAll("button.assign").forEach(function (b) { b.classList.toggle("hidden", !card); });
  }

  function assigned() { setPending(""); if (current) show(current); }

  async function search(text) {
    const mine = ++asked;
    const data = await api("GET", "/api/members?q=" + encodeURIComponent(text));
    if (mine !== asked) return;
    results.replaceChildren(...data.results.map(function (m) {
      return el("li", null,
        el("button", { type: "button", class: "pick", "data-member": m.id, "aria-pressed": String(m.id === current),
          onclick: function () { show(m.id); } },
          m.name, " ", m.status === "blocked" ? el("span", { class: "badge blocked", text: "blocked" }) : "",
          el("span", { class: "sub", text: [m.email, m.phone, m.cards.join(", ")].filter(Boolean).join(" · ") })),
        el("button", { type: "button", class: "small assign" + (pendingCard ? "" : " hidden"), "data-assign": m.id,
          text: "Assign card", onclick: function () { assignCard(m, pendingCard, assigned); } }));
    }));
    if (data.results.length === 0) results.append(el("li", { class: "empty", text: "No member found." }));
    if (data.results.length === 1) show(data.results[0].id);
  }

  async function show(id) {
    current = id;
    if (window.location.hash !== "#" + encodeURIComponent(id)) history.replaceState(null, "", window.location.pathname + window.location.search + "#" + encodeURIComponent(id));
    for (const b of results.querySelectorAll("button[data-member]")) b.setAttribute("aria-pressed", String(b.dataset.member === id));
    let m;
    try { m = await api("GET", "/api/members/" + encodeURIComponent(id)); } catch (e) { detail.replaceChildren(el("p", { class: "error", text: e.message })); return; }
    if (current !== id) return;
    const reload = function () { show(id); };
    const passes = el("table", null,
      el("thead", null, el("tr", null, ...["Pass", "Kind", "Balance", "Valid", "Charged"].map(function (h) { return el("th", { scope: "col", text: h }); }))),
      el("tbody", null, ...m.passes.map(function (p) {
        return el("tr", null, el("td", { text: p.name }), el("td", { text: p.kind }),
          el("td", { class: "num", text: p.balance === null ? "—" : String(p.balance) }),
          el("td", null, el("span", { class: "badge " + (p.state === "valid" ? "valid" : "expired"), text: p.state }),
            " " + (p.valid_from || "") + (p.valid_until ? " → " + p.valid_until : (p.valid_from ? " →" : ""))),
          el("td", { class: "small muted", text: p.deduct_on === "booking" ? "at booking" : "at access" }));
      })));
    const taps = el("table", null,
      el("thead", null, el("tr", null, ...["When", "Gate", "Decision", "Message"].map(function (h) { return el("th", { scope: "col", text: h }); }))),
      el("tbody", null, ...m.taps.map(function (t) {
        return el("tr", { class: t.decision === "denied" ? "denied" : "" },
          el("td", { text: t.date + " " + t.time }), el("td", { text: t.gate_name || "" }),
          el("td", null, el("span", { class: "dec " + t.decision, text: t.decision }), el("span", { class: "reason", text: (t.reason || "").replace(/_/g, " ") })),
          el("td", { text: t.message || "" }));
      })));
    const loyalty = el("ul", { class: "small" }, ...m.loyalty.map(function (l) {
      return el("li", { text: l.at + "  " + (l.points > 0 ? "+" : "") + l.points + (l.reason ? " — " + l.reason : (l.booking ? " — " + (l.class_name || "a class") : "")) + (l.operator ? " (" + l.operator + ")" : "") });
    }));
    const actions = el("div", { class: "member-actions" },
      el("button", { type: "button", class: "primary", id: "btn-check-in", text: "Check in",
        onclick: async function () { await checkIn(m, await siteGates(), reload); } }),
      el("button", { type: "button", id: "btn-assign-card", text: pendingCard ? "Assign card " + pendingCard : "Assign a card",
        onclick: function () { assignCard(m, pendingCard, assigned); } }));
    detail.replaceChildren(
      el("div", { class: "detail-head" },
        el("h2", { text: m.name }),
        el("span", { class: "badge " + m.status, text: m.status }),
        m.inside_since ? el("span", { class: "badge " + (m.maybe_left ? "st-warn" : "st-in"), id: "inside-badge",
          title: m.maybe_left ? "Exits opened unrecorded after this entry (a storage fault): one of them may have been this member" : null,
          text: insideText(m) }) : "",
        el("span", { class: "muted small", text: [m.email, m.phone, "cards: " + (m.cards.join(", ") || "none")].filter(Boolean).join(" · ") })),
      glance(m, reload),
      actions,
      el("h3", { text: "Passes" }), m.passes.length ? passes : el("p", { class: "empty", text: "No passes." }),
      el("h3", { text: "Today's bookings (" + m.today + ")" }),
      m.bookings.length ? bookingTable(m.bookings, true, reload) : el("p", { class: "empty", text: "No bookings today." }),
      el("div", { class: "cols" },
        el("div", null,
          el("h3", null, "Loyalty points ", el("span", { class: "points-big", text: String(m.points) })),
          el("button", { type: "button", text: "Adjust points", id: "btn-points", onclick: function () { adjustPoints(m, reload); } }),
          m.loyalty.length ? loyalty : ""),
        el("div", null, el("h3", { text: "Recent taps" }), m.taps.length ? taps : el("p", { class: "empty", text: "No taps recorded." }))),
    );
  }

  const unknown = $("#unknown-cards");
  async function loadUnknown() {
    let data;
    try { data = await api("GET", "/api/unknown-cards"); } catch (e) { return; }
    unknown.replaceChildren(...data.items.map(function (c) {
      return el("li", { "data-card": c.card, class: c.card === pendingCard ? "picked" : "" },
        el("span", { class: "card-no", text: c.card }),
        el("span", { class: "muted small", text: c.date + " " + c.time + " · " + (c.gate_name || c.gate) + (c.count > 1 ? " · " + c.count + " reads" : "") }),
        el("button", { type: "button", class: "small", text: "Use", onclick: function () {
          setPending(c.card);
          if (current) $("#btn-assign-card").click();
          else q.focus();
        } }));
    }));
    if (data.items.length === 0) unknown.append(el("li", { class: "empty", text: "No unknown cards read recently." }));
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    clearTimeout(timer);
    if (q.value.trim()) search(q.value.trim()).catch(function (ex) { toast(ex.message, true); });
  });
  // as you type: the search runs in a worker thread on the gate, a pause apart
  q.addEventListener("input", function () {
    clearTimeout(timer);
    const text = q.value.trim();
    if (text.length < 2) return;
    timer = setTimeout(function () { search(text).catch(function () { /* the next key tries again */ }); }, SEARCH_DELAY);
  });
  window.addEventListener("hashchange", function () {
    const h = decodeURIComponent(window.location.hash.slice(1));
    if (h && h !== current) show(h);
  });
  showPrompt();
  loadUnknown();
  const hash = decodeURIComponent(window.location.hash.slice(1));
  if (hash) show(hash);
  if (pendingCard) q.focus();  // straight to typing the member's name
}
