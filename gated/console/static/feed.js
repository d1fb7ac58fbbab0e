/* The feed page: every tap as it happens (with the member's face), *Needs attention*
 * (alarms, and denials by member or card with a count), the gates, who is inside. */
"use strict";

import { $, api, beep, el, face, fmt, keyed, role, toast } from "./core.js";
import { checkIn, openGate, siteGates, twice } from "./actions.js";
import { acknowledge, alarmText, safetyBanners, showBanners } from "./alarms.js";

function feedRow(item, fresh) {
  const tr = el("tr", { "data-seq": item.seq, "data-type": item.type });
  if (item.type === "access") {
    tr.className = item.decision === "denied" ? "denied" : "granted";
    const out = item.direction === "out";
    const decText = item.decision === "denied" ? "✕ DENIED" : (out ? "← out" : (item.check_in ? "✓ in (desk)" : "✓ in"));
    const dec = el("span", { class: "dec " + item.decision + (out ? " exit" : ""), text: decText });
    const who = item.member_name || (item.reason === "override" ? "(front desk: " + fmt(item.operator) + ")" : "unknown card");
    let msg = item.message || "";
    if (item.card) msg += " — card " + item.card;
    if (item.check_in && item.operator) msg += " — checked in by " + item.operator;
    if (item.decision === "granted" && item.passed === false) msg += " — did not go through";
    if (item.anti_passback) msg += " — was already inside (anti-passback)";
    tr.append(
      el("td", { text: item.time }),
      el("td", { text: item.gate_name || "" }),
      el("td", null, el("span", { class: "who" }, item.member ? face(item.photo, item.member_name) : "",
        item.member ? el("a", { href: "/members#" + encodeURIComponent(item.member), text: who }) : who)),
      el("td", null, dec, el("span", { class: "reason", text: (item.reason || "").replace(/_/g, " ") })),
      el("td", { text: msg }),
      el("td", { text: item.pass_name || "" }),
      el("td", { class: "num", text: item.balance === null || item.balance === undefined ? "" : String(item.balance) }),
    );
  } else {
    tr.className = "notice" + (item.alert ? " alert" : "");
    tr.append(
      el("td", { text: item.time }),
      el("td", { text: item.gate_name || "" }),
      el("td", { text: item.member_name || "" }),
      el("td", { text: item.type }),
      el("td", { colspan: "2", text: item.text || "" }),
      el("td", { class: "num", text: item.balance === null || item.balance === undefined ? "" : String(item.balance) }),
    );
  }
  if (fresh) tr.classList.add("fresh");
  return tr;
}

/* The group a denial falls in: the server's key (sync/store/read_models.py, denial_key). */
function groupKey(item) {
  if (item.member) return "member:" + item.member;
  if (item.card) return "card:" + item.card;
  return "reason:" + (item.reason || "unknown");
}

/* Needs attention: the alarms, then today's denials by member or card, a page at a time
 * with how many more; each group dealt with by one "Done". Live denials are merged at
 * once, and the list is read again from the server shortly after (exact counts). */
function initAttention() {
  const panel = $("#attention");
  const list = $("#attention-list");
  const alarmList = $("#attention-alarms");
  const count = $("#attention-count");
  const more = $("#attention-more");
  let groups = [];  // newest first
  let total = 0, denials = 0, left = 0, loaded = 0;
  let alarms = [];
  let live = [];  // denials pushed live that no answer from the gate has counted yet
  let reloadTimer = null;

  function render() {
    keyed(alarmList, alarms.filter(function (a) { return !a.acked_by; }), function (a) { return a.id; }, function (a) {
      return el("li", { class: "alarm " + a.severity, "data-alarm": a.id },
        el("span", { class: "when", text: a.since }),
        el("span", { class: "what" }, el("strong", { text: a.title }), el("span", { class: "msg", text: (a.gate_name ? a.gate_name + ": " : "") + (a.detail || "") })),
        el("span", { class: "actions" }, el("button", { type: "button", class: "small", text: "Acknowledge",
          onclick: function () { acknowledge(a, refreshHealth); } })));
    });
    keyed(list, groups, function (g) { return g.key; }, groupItem);
    const open = alarms.filter(function (a) { return !a.acked_by; }).length;
    panel.classList.toggle("hidden", groups.length === 0 && open === 0 && left === 0);
    count.textContent = open + total ? String(open + total) : "";
    count.title = total + " member(s) or card(s), " + denials + " denial(s), " + open + " alarm(s)";
    more.classList.toggle("hidden", left <= 0);
    more.textContent = left + " more";
    $("#dismiss-all").classList.toggle("hidden", groups.length === 0);
  }

  function groupItem(g) {
    const who = g.member_name || (g.card ? "Unknown card " + g.card : "Not identified");
    const actions = el("span", { class: "actions" });
    if (g.member) {
      actions.append(el("button", { type: "button", class: "small primary", text: "Check in", "data-action": "check-in",
        onclick: function () { checkInFrom(g); } }));
      actions.append(el("a", { class: "button small", href: "/members#" + encodeURIComponent(g.member), text: "Open" }));
    } else if (g.card) {
      actions.append(el("a", { class: "button small", href: "/members?card=" + encodeURIComponent(g.card), text: "Assign card" }));
    }
    actions.append(el("button", { type: "button", class: "small", text: "Done", "data-action": "done",
      onclick: function () { dismiss([g]); } }));
    const when = g.count > 1 ? g.time + " · " + g.count + " taps since " + (g.first_time || "today") : g.time;
    return el("li", { "data-key": g.key, class: g.fresh ? "fresh" : "" },
      g.member ? face(g.photo, g.member_name) : el("span", { class: "face none", "aria-hidden": "true", text: "?" }),
      el("span", { class: "what" },
        el("strong", { text: who }), g.count > 1 ? el("span", { class: "count-badge", text: "×" + g.count }) : "",
        " at " + (g.gate_name || g.gate || "?"),
        el("span", { class: "msg", text: g.message || g.reason }),
        el("span", { class: "when", text: when })),
      actions);
  }

  async function checkInFrom(g) {
    let m;
    try { m = await api("GET", "/api/members/" + encodeURIComponent(g.member)); } catch (e) { toast(e.message, true); return; }
    const r = await checkIn(m, await siteGates(), null, g.gate);
    // let in: that was what the denial needed
    if (r && r.result && r.result.decision === "granted") dismiss([g], true);
  }

  async function load(offset, limit) {
    return api("GET", "/api/denials?offset=" + offset + "&limit=" + limit);
  }

  function take(page, append) {
    const fresh = new Set(groups.filter(function (g) { return g.fresh; }).map(function (g) { return g.key; }));
    groups = (append ? groups : []).concat(page.groups.map(function (g) { return Object.assign(g, { fresh: fresh.has(g.key) }); }));
    total = page.total; denials = page.denials;
    loaded = groups.length;
    left = page.more;
    // an answer asked for before the latest live denials does not have them: merged again
    live = live.filter(function (item) { return item.seq > page.last_seq; });
    if (!append) live.forEach(merge);
    render();
  }

  async function reload() {
    reloadTimer = null;
    try { take(await load(0, Math.max(25, loaded)), false); } catch (e) { /* shown again at the next change */ }
  }

  function soon() { if (!reloadTimer) reloadTimer = setTimeout(reload, 1200); }

  async function dismiss(gs, quiet) {
    const through = Math.max.apply(null, gs.map(function (g) { return g.through; }));
    try {
      const r = await api("POST", "/api/denials/dismiss", { groups: gs.map(function (g) { return g.key; }), through: through });
      if (!quiet) toast("Done: " + r.dismissed + " denial" + (r.dismissed === 1 ? "" : "s"));
    } catch (e) { toast(e.message, true); return; }
    const keys = new Set(gs.map(function (g) { return g.key; }));
    groups = groups.filter(function (g) { return !keys.has(g.key); });
    total = Math.max(0, total - keys.size);
    render();
    soon();
  }

  /* A denial as it happens: its group to the top, counted; a flash and a beep. */
  function push(item) {
    live.push(item);
    merge(item);
    render();
    document.body.classList.remove("flash"); void document.body.offsetWidth; document.body.classList.add("flash");
    beep("denial");
    soon();
  }

  function merge(item) {
    const key = groupKey(item);
    let g = groups.find(function (x) { return x.key === key; });
    if (g && g.seqs.indexOf(item.seq) >= 0) return;  // already counted
    if (g) {
      groups = groups.filter(function (x) { return x !== g; });
      // the first tap of the group: as the server gave it, else the one shown so far
      const first = g.first_time || (g.time || "").slice(0, 5);
      g = Object.assign({}, g, { count: g.count + 1, seqs: g.seqs.concat([item.seq]), first_time: first });
    } else {
      g = { key: key, member: item.member, member_name: item.member_name, card: item.card, count: 1, seqs: [item.seq],
        photo: item.photo, first_time: null };
      total += 1;
    }
    Object.assign(g, { through: Math.max(g.through || 0, item.seq), time: item.time, gate: item.gate, gate_name: item.gate_name,
      reason: item.reason, message: item.message || item.reason, fresh: true });
    groups.unshift(g);
    denials += 1;
  }

  $("#dismiss-all").addEventListener("click", function () { if (groups.length) dismiss(groups.slice()); });
  more.addEventListener("click", async function () {
    try { take(await load(loaded, 25), true); } catch (e) { toast(e.message, true); }
  });
  load(0, 25).then(function (p) { take(p, false); }).catch(function () { /* shown at the next change */ });
  return { push: push, alarms: function (a) { alarms = a; render(); } };
}

function evacuatedText(z) {
  return (z.evacuated_at ? " · counted since the evacuation at " + z.evacuated_at : "") +
    (z.exits_not_recorded ? " · " + z.exits_not_recorded + (z.exits_not_recorded === 1 ? " exit" : " exits") +
      " not recorded (storage fault) until " + z.exits_not_recorded_until + ": taken off the count" : "");
}

function occupancyBlock(zones) {
  return zones.map(function (z) {
    const cap = z.capacity;
    const pct = cap ? Math.min(100, Math.round(100 * z.inside / cap)) : null;
    const bar = cap ? el("div", { class: "bar" + (pct >= 90 ? " full" : ""), role: "meter", "aria-valuemin": "0",
      "aria-valuemax": String(cap), "aria-valuenow": String(z.inside) }, el("span", { "data-pct": String(pct) })) : "";
    const details = el("details", { class: "zone", "data-zone": z.zone },
      el("summary", null, el("span", { class: "zone-name", text: z.zone }), " ",
        el("strong", { class: "inside-count", text: String(z.inside) }), cap ? " / " + cap + " inside" : " inside",
        z.anonymous ? el("span", { class: "muted small", text: " · +" + z.anonymous + " let in by the desk" }) : "",
        el("span", { class: "muted small evacuated", text: evacuatedText(z) })),
      bar,
      el("ul", { class: "people" }));
    details.addEventListener("toggle", async function () {
      if (!details.open) return;
      const data = await api("GET", "/api/occupancy");
      const zone = data.zones.find(function (x) { return x.zone === z.zone; });
      const ul = details.querySelector("ul.people");
      ul.replaceChildren(...(zone ? zone.people : []).map(function (p) {
        return el("li", null, el("a", { href: "/members#" + encodeURIComponent(p.member), text: p.name }),
          el("span", { class: "muted small", text: " since " + p.since + (p.maybe_left ? " · may have left unrecorded" : "") }));
      }));
      if (!zone || zone.people.length === 0) ul.append(el("li", { class: "muted small", text: "Nobody inside." }));
    });
    if (bar) bar.firstChild.style.width = pct + "%";
    return details;
  });
}

/* A gate's card: its state in words, the last tap with the member's face (the desk's view
 * of who just came through), and "Open once" only where the gate would open. */
function gateCard(id, g) {
  const relay = g.relay || "none";
  const relayCls = relay === "online" ? "st-good" : (relay === "none" ? "" : "st-bad");
  const st = g.state || {};
  const door = st.door || "unknown";
  const doorCls = st.door_forced || st.door_held ? "st-bad" : (door === "closed" ? "st-good" : "st-warn");
  let held = "";
  if (st.held_by_hand) held = " — held open by hand";
  else if (st.released) held = " — released";
  const dl = el("dl", { class: "kv" },
    el("dt", { text: "Relay" }), el("dd", { class: "st " + relayCls, text: relay + (st.relay_error ? " (" + st.relay_error + ")" : "") }),
    el("dt", { text: "Door" }), el("dd", { class: "st " + doorCls, text: door + (st.door_forced ? " — FORCED" : "") + (st.door_held ? " — held open" : "") + held }),
  );
  const readers = Object.entries(g.readers || {});
  if (readers.length === 0) dl.append(el("dt", { text: "Readers" }), el("dd", { text: "none" }));
  readers.forEach(function (pair) {
    const h = pair[1].health;
    dl.append(el("dt", { text: "Reader " + pair[0] }), el("dd", { class: "st " + (h === "online" ? "st-good" : "st-bad"), text: h }));
  });
  const t = g.last_tap;
  const last = el("div", { class: "last-tap" + (t && t.decision === "denied" ? " denied" : "") },
    t && t.member ? face(t.photo, t.member_name, "big") : "",
    el("span", { class: "last-text", text: t ? t.time + " " + (t.member_name || (t.reason === "override" ? "front desk" : "unknown card")) + " — " + (t.decision === "denied" ? "denied: " : "") + (t.message || t.reason) : "No tap yet" }));
  const offer = g.open_once || { offered: false, why: "no relay" };
  const btn = offer.offered
    ? el("button", { type: "button", class: "small", text: "Open once", "data-gate": id,
      onclick: function () { openGate(id, g.name || id).then(function (r) { if (r) refreshHealth(); }); } })
    : el("span", { class: "muted small why", text: offer.why });
  return el("div", { class: "gate", "data-gate": id },
    el("div", { class: "gate-head" },
      el("span", null, el("span", { class: "gate-name", text: g.name || id }), " ",
        el("span", { class: "muted small", text: (g.direction === "out" ? "exit" : "entry") + " · " + g.zone })),
      btn),
    last, dl);
}

let attention = null;

async function refreshHealth() {
  let h;
  try { h = await api("GET", "/api/health"); } catch (e) { $("#health-at").textContent = "health unavailable"; return; }
  const list = $("#gate-list");
  keyed(list, Object.entries(h.gates || {}), function (p) { return p[0]; }, function (p) { return gateCard(p[0], p[1]); });
  const occ = $("#occupancy");
  if (!occ.querySelector("details[open]")) occ.replaceChildren(...occupancyBlock(h.occupancy || []));
  else (h.occupancy || []).forEach(function (z) {
    const zone = "details[data-zone='" + CSS.escape(z.zone) + "'] ";
    const d = occ.querySelector(zone + ".inside-count");
    if (d) d.textContent = String(z.inside);
    const e = occ.querySelector(zone + ".evacuated");
    if (e) e.textContent = evacuatedText(z);
  });
  const age = h.cache_age_seconds;
  const ageText = age === null || age === undefined ? "never synced" : (age < 120 ? age + " s" : age < 7200 ? Math.round(age / 60) + " min" : Math.round(age / 3600) + " h");
  const dl = el("dl", { class: "kv" },
    el("dt", { text: "Broker" }), el("dd", { class: "st " + (h.broker === "connected" ? "st-good" : "st-warn"), text: h.broker }),
    el("dt", { text: "Outbox" }), el("dd", { class: "st " + (h.outbox_depth > 100 ? "st-warn" : ""), text: fmt(h.outbox_depth) + " events" }),
    el("dt", { text: "Cache age" }), el("dd", { class: "st " + (h.cache_stale ? "st-bad" : ""), text: ageText }),
  );
  const notes = safetyBanners(h).map(function (b) { return el("div", { class: "banner " + b.cls, text: b.text }); });
  (h.alarms || []).filter(function (a) { return a.acked_by; }).forEach(function (a) {
    notes.push(el("div", { class: "banner quiet", text: "Acknowledged (" + a.acked_by + "): " + alarmText(a) }));
  });
  if (h.cache_stale) notes.push(el("div", { class: "banner warn", text: "Member data is stale — some passes may be refused" }));
  $("#site-state").replaceChildren(...notes, dl);
  $("#health-at").textContent = "as of " + (h.now_local || "").slice(11);
  if (role === "admin") {
    $("#admin-actions").classList.remove("hidden");
    const lb = $("#btn-lockdown");
    lb.textContent = h.lockdown ? "Release lockdown" : "Lock down all gates";
    lb.dataset.on = h.lockdown ? "1" : "";
    const eb = $("#btn-emergency");
    eb.textContent = h.fire_alarm ? "End emergency release" : "Emergency release";
    eb.dataset.on = h.fire_alarm ? "1" : "";
  }
  showBanners(h, refreshHealth);
  if (attention) attention.alarms(h.alarms || []);
}

/* A switch in force but not stored (a storage fault): a restart now would forget it. */
function notStored(r, name, on) {
  if (!r.not_durable || r.not_durable.indexOf(name) < 0) return;
  const what = name === "lockdown" ? (on ? "unlock the site" : "lock the site down again")
    : (on ? "lock the released doors again" : "release the doors again");
  toast((name === "lockdown" ? "Lockdown" : "Emergency release") + " NOT STORED (storage fault) — do not restart the gate: a restart now would " + what, true);
}

function initGates() {
  refreshHealth();
  setInterval(refreshHealth, 3000);
  if (role !== "admin") return;
  $("#btn-lockdown").addEventListener("click", async function () {
    const on = !this.dataset.on;
    const r = on
      ? await twice("Lock down", "Every entrance stays locked: no member gets in and nobody can open an entrance once or check a member in until an admin releases the lockdown. Exits keep working, and the desk can still open an exit once.", "LOCKDOWN", "/api/lockdown", { on: true })
      : await twice("Release lockdown", "Gates go back to normal operation.", "RELEASE", "/api/lockdown", { on: false });
    if (r) { toast(on ? "Lockdown is on" : "Lockdown released"); notStored(r, "lockdown", on); refreshHealth(); }
  });
  $("#btn-emergency").addEventListener("click", async function () {
    const on = !this.dataset.on;
    const r = on
      ? await twice("Emergency release", "Every fail-safe door is released, as on a fire alarm. Entries are refused until it ends.", "EMERGENCY", "/api/emergency", { on: true })
      : await twice("End emergency release", "Only end it when there is no fire alarm. Doors lock again.", "RESTORE", "/api/emergency", { on: false });
    if (r) { toast(on ? "Emergency release is active" : "Emergency release ended"); notStored(r, "emergency_release", on); refreshHealth(); }
  });
}

export function initFeed() {
  const body = $("#feed-body");
  const state = $("#stream-state");
  const onlyDenied = $("#only-denied");
  const showNotices = $("#show-notices");
  const MAX_ROWS = 300;
  let lastSeq = 0;
  const seen = new Set();

  function applyFilters() {
    for (const tr of body.rows) {
      if (tr.classList.contains("gap")) continue;  // a hole in the feed is shown whatever the filters
      const hide = (onlyDenied.checked && !tr.classList.contains("denied")) ||
        (!showNotices.checked && tr.classList.contains("notice"));
      tr.classList.toggle("hidden", hide);
    }
  }
  onlyDenied.addEventListener("change", applyFilters);
  showNotices.addEventListener("change", applyFilters);

  attention = initAttention();

  function add(item, fresh) {
    if (item.seq !== null && seen.has(item.seq)) return;
    seen.add(item.seq);
    if (fresh && item.type === "access" && item.decision === "denied") attention.push(item);
    lastSeq = Math.max(lastSeq, item.seq || 0);
    const tr = feedRow(item, fresh);
    const hide = (onlyDenied.checked && !tr.classList.contains("denied")) || (!showNotices.checked && tr.classList.contains("notice"));
    tr.classList.toggle("hidden", hide);
    body.prepend(tr);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    $("#feed-empty").classList.add("hidden");
    // when each line reached the page, where a test asked (tests/test_console_burst.py: tap to row)
    if (fresh && window.gatedRowAt) {
      const rows = window.gatedRowAt;
      requestAnimationFrame(function () { rows[item.seq] = performance.timeOrigin + performance.now(); });  // drawn
    }
  }

  function gap(g) {
    const text = g.missed + (g.missed === 1 ? " event" : " events") + " not shown (missed while this page was not connected) — reload";
    const tr = el("tr", { class: "notice alert gap", "data-gap": g.from + "-" + g.to },
      el("td", { colspan: "7" }, el("strong", { text: text }), " ",
        el("button", { type: "button", class: "small", text: "Reload", onclick: function () { window.location.reload(); } })));
    body.prepend(tr);
    $("#feed-empty").classList.add("hidden");
    toast(text, true);
  }

  function connect() {
    const source = new EventSource("/events?after=" + lastSeq);
    source.addEventListener("open", function () { state.textContent = "live"; state.className = "pill live"; });
    source.addEventListener("feed", function (e) {
      try { add(JSON.parse(e.data), true); } catch (ex) { /* a bad line is skipped */ }
    });
    // events the server will not send (too many missed while away, or no longer kept):
    // said on the feed, never shown as if the lines around them were continuous
    source.addEventListener("gap", function (e) {
      let g;
      try { g = JSON.parse(e.data); } catch (ex) { return; }
      lastSeq = Math.max(lastSeq, g.to || 0);
      gap(g);
    });
    source.addEventListener("error", function () {
      state.textContent = "reconnecting…"; state.className = "pill down";
      if (source.readyState === EventSource.CLOSED) {
        // refused (expired session?) — EventSource gives up; check and start again
        setTimeout(function () {
          api("GET", "/api/me").then(function () { connect(); }).catch(function () { /* redirected */ });
        }, 3000);
      }
    });
  }

  api("GET", "/api/feed?limit=100").then(function (data) {
    data.items.forEach(function (i) { add(i, false); });
    lastSeq = Math.max(lastSeq, data.last_seq || 0);
    connect();
  }).catch(function (e) { toast("Feed: " + e.message, true); connect(); });

  initGates();
}
