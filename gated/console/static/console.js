/* gated front-desk console. Plain JavaScript, no build step, no inline script (CSP).
 * Every value from the server goes into the page through textContent, never innerHTML. */
"use strict";

(function () {
  const page = document.body.dataset.page;
  const role = document.body.dataset.role;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  // -- small helpers ---------------------------------------------------------------------

  function $(sel, root) { return (root || document).querySelector(sel); }

  function el(tag, attrs) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "text") node.textContent = v;
        else if (k === "class") node.className = v;
        else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : v);
      }
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmt(v) { return v === null || v === undefined ? "—" : String(v); }

  async function api(method, url, body) {
    const opts = { method: method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    if (res.status === 401) { window.location.href = "/login"; throw new Error("login required"); }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) throw new Error((data && data.error) || ("HTTP " + res.status));
    return data;
  }

  function toast(text, bad) {
    const box = $("#toasts");
    if (!box) return;
    const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: bad ? "alert" : "status", text: text });
    box.append(t);
    setTimeout(function () { t.remove(); }, bad ? 8000 : 4000);
  }

  /* A modal form. fields: [{name, label, type, required, placeholder, checked, maxlength}].
   * Resolves with the values, or null when cancelled. `submit(values)` may throw to keep
   * the dialog open with the error shown. */
  function dialog(opts) {
    return new Promise(function (resolve) {
      const err = el("p", { class: "error", role: "alert" });
      const form = el("form", { method: "dialog" });
      const inputs = {};
      if (opts.text) form.append(el("p", { class: opts.danger ? "warn-text" : "", text: opts.text }));
      (opts.fields || []).forEach(function (f, i) {
        let input;
        if (f.type === "checkbox") {
          input = el("input", { type: "checkbox", name: f.name, checked: f.checked ? "checked" : null });
          form.append(el("label", { class: "check" }, input, " " + f.label));
        } else if (f.type === "select") {
          input = el("select", { name: f.name }, ...f.options.map(function (o) {
            return el("option", { value: o.value, selected: o.value === f.value ? "selected" : null, text: o.label });
          }));
          form.append(el("label", null, f.label, input));
        } else {
          input = el("input", {
            type: f.type || "text", name: f.name, required: f.required ? "required" : null,
            placeholder: f.placeholder || null, maxlength: f.maxlength || 200, autocomplete: "off",
            inputmode: f.inputmode || null, pattern: f.pattern || null,
          });
          if (f.value !== undefined) input.value = f.value;
          form.append(el("label", null, f.label, input));
        }
        if (i === 0) input.setAttribute("autofocus", "");
        inputs[f.name] = input;
      });
      form.append(err);
      const cancel = el("button", { type: "button", text: "Cancel" });
      const ok = el("button", { type: "submit", class: opts.danger ? "danger" : "primary", text: opts.ok || "OK" });
      form.append(el("div", { class: "buttons" }, cancel, ok));
      const dlg = el("dialog", { "aria-labelledby": "dlg-title" }, el("h2", { id: "dlg-title", text: opts.title }), form);
      document.body.append(dlg);
      let done = false;
      function finish(v) { if (done) return; done = true; dlg.close(); dlg.remove(); resolve(v); }
      cancel.addEventListener("click", function () { finish(null); });
      dlg.addEventListener("cancel", function (e) { e.preventDefault(); finish(null); });
      form.addEventListener("submit", async function (e) {
        e.preventDefault();
        const values = {};
        for (const [k, input] of Object.entries(inputs)) values[k] = input.type === "checkbox" ? input.checked : input.value.trim();
        if (opts.submit) {
          ok.disabled = true;
          try { const r = await opts.submit(values); finish(r === undefined ? values : r); }
          catch (ex) { err.textContent = ex.message; ok.disabled = false; }
        } else finish(values);
      });
      dlg.showModal();
    });
  }

  // -- keyboard --------------------------------------------------------------------------

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) {
      // Esc leaves the field, so the page keys work again without reaching for the mouse
      if (e.key === "Escape" && !document.querySelector("dialog[open]")) t.blur();
      return;
    }
    if (document.querySelector("dialog[open]")) return;
    const go = { f: "/", m: "/members", c: "/classes", r: "/reports", a: "/audit" }[e.key];
    if (go && page !== "login") { window.location.href = go; e.preventDefault(); return; }
    if (e.key === "/") {
      const s = $("#q") || $("#f-q");
      if (s) { s.focus(); e.preventDefault(); } else if (page !== "login") window.location.href = "/members";
    }
  });

  // -- shared actions --------------------------------------------------------------------

  async function openGate(gateId, gateName) {
    const r = await dialog({
      title: "Open " + gateName + " once",
      text: "The gate opens for one person. This is logged with your name.",
      fields: [{ name: "reason", label: "Reason", required: true, placeholder: "e.g. member forgot card" }],
      ok: "Open gate",
      submit: function (v) { return api("POST", "/api/gates/" + encodeURIComponent(gateId) + "/open", { reason: v.reason }); },
    });
    if (r) toast(gateName + " opened" + (r.result && r.result.passed === false ? " (nobody went through)" : ""));
    return r;
  }

  /* Check a member in at a gate: the same rules as their card, the gate opens once. */
  async function checkIn(m, gates, after) {
    const entries = Object.entries(gates).filter(function (p) { return p[1].direction !== "out"; });
    if (entries.length === 0) { toast("No entry gate is configured", true); return null; }
    const options = [{ value: "", label: "Let the rules choose (as a card tap would)" }];
    m.bookings.filter(function (b) { return b.status === "booked"; }).forEach(function (b) {
      options.push({ value: "b:" + b.id, label: "Class: " + b.class + " at " + b.starts });
    });
    m.passes.forEach(function (p) {
      options.push({ value: "p:" + p.id, label: "Pass: " + p.name + (p.balance !== null ? " (" + p.balance + " left)" : "") });
    });
    const r = await dialog({
      title: "Check in " + m.name,
      text: "Decided like a tap of the member's card: the pass is charged and the class attended if the rules say so. The gate opens once. Logged with your name.",
      fields: [
        { name: "gate", label: "Gate", type: "select", options: entries.map(function (p) { return { value: p[0], label: p[1].name || p[0] }; }) },
        { name: "use", label: "For", type: "select", options: options },
        { name: "reason", label: "Reason", placeholder: "e.g. forgot card", value: "forgot card" },
      ],
      ok: "Check in",
      submit: function (v) {
        const body = { gate: v.gate, reason: v.reason };
        if (v.use.startsWith("b:")) body.booking = v.use.slice(2);
        if (v.use.startsWith("p:")) body.pass = v.use.slice(2);
        return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/check-in", body);
      },
    });
    if (!r) return null;
    const res = r.result || {};
    if (res.decision === "granted") toast("Checked in: " + (res.message || res.reason));
    else toast("Not let in: " + (res.message || res.reason), true);
    if (after) after();
    return r;
  }

  /* Give an unknown card to a member: it works at once, the central system is told. */
  async function assignCard(m, card, after) {
    const r = await dialog({
      title: "Assign a card to " + m.name,
      text: "The card opens the gates for " + m.name + " from now on. Logged with your name.",
      fields: [{ name: "card", label: "Card number", required: true, value: card || "", maxlength: 64 }],
      ok: "Assign card",
      submit: function (v) { return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/cards", { card: v.card }); },
    });
    if (r) { toast("Card assigned to " + m.name); if (after) after(); }
    return r;
  }

  async function markAttended(b, after) {
    const fields = [];
    if (b.walk_in) {
      fields.push({
        name: "refund", type: "checkbox", checked: true,
        label: "Refund the walk-in charge (" + b.walk_in.amount + " from " + b.walk_in.pass_name + " at " + b.walk_in.time + ")",
      });
    } else {
      fields.push({ name: "refund", type: "checkbox", checked: false, label: "Refund an extra walk-in charge of today, if any" });
    }
    const r = await dialog({
      title: "Mark attended",
      text: b.member_name + " — " + b.class + " at " + b.starts,
      fields: fields,
      ok: "Mark attended",
      submit: function (v) { return api("POST", "/api/bookings/" + encodeURIComponent(b.id) + "/attend", { refund: !!v.refund }); },
    });
    if (!r) return;
    if (r.refunded) toast("Marked attended; refunded " + r.refunded.amount + (r.refunded.balance !== undefined && r.refunded.balance !== null ? " — balance now " + r.refunded.balance : ""));
    else if (r.refund_requested) toast("Marked attended; no walk-in charge was found to refund");
    else toast("Marked attended");
    if (after) after();
  }

  async function adjustPoints(m, after) {
    const r = await dialog({
      title: "Adjust loyalty points",
      text: m.name + " has " + m.points + " points.",
      fields: [
        { name: "points", label: "Points (negative to take away)", required: true, inputmode: "numeric", pattern: "-?[0-9]{1,6}", placeholder: "e.g. 50 or -20" },
        { name: "reason", label: "Reason (shown to the member)", required: true },
      ],
      ok: "Adjust",
      submit: function (v) { return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/points", { points: parseInt(v.points, 10), reason: v.reason }); },
    });
    if (r) { toast("Points now " + r.points); if (after) after(); }
  }

  /* Site-wide switches: a first confirmation, then the word typed out. */
  /* A site-wide switch: a warning, then the reason (required to switch it on: it is
     recorded and shown on every page's banner) and the word typed to confirm. */
  async function twice(title, warning, word, url, body) {
    const first = await dialog({ title: title, text: warning, danger: true, ok: "Continue" });
    if (!first) return null;
    return dialog({
      title: title + " — confirm",
      text: "Say why, and type " + word + " to confirm.",
      danger: true,
      fields: [
        { name: "reason", label: "Reason", required: !!body.on, placeholder: body.on ? "e.g. intruder reported in the car park" : "optional" },
        { name: "confirm", label: "Confirmation", required: true, placeholder: word },
      ],
      ok: title,
      submit: function (v) { return api("POST", url, Object.assign({ confirm: v.confirm, reason: v.reason }, body)); },
    });
  }

  // -- feed page -------------------------------------------------------------------------

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
        el("td", null, item.member ? el("a", { href: "/members#" + encodeURIComponent(item.member), text: who }) : who),
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

  function initFeed() {
    const body = $("#feed-body");
    const state = $("#stream-state");
    const onlyDenied = $("#only-denied");
    const showNotices = $("#show-notices");
    const MAX_ROWS = 300;
    let lastSeq = 0;
    const seen = new Set();

    function applyFilters() {
      for (const tr of body.rows) {
        const hide = (onlyDenied.checked && !tr.classList.contains("denied")) ||
          (!showNotices.checked && tr.classList.contains("notice"));
        tr.classList.toggle("hidden", hide);
      }
    }
    onlyDenied.addEventListener("change", applyFilters);
    showNotices.addEventListener("change", applyFilters);

    const attention = initAttention();

    function add(item, fresh) {
      if (item.seq !== null && seen.has(item.seq)) return;
      seen.add(item.seq);
      if (fresh && item.type === "access" && item.decision === "denied") attention.push(item, true);
      lastSeq = Math.max(lastSeq, item.seq || 0);
      const tr = feedRow(item, fresh);
      body.prepend(tr);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
      $("#feed-empty").classList.add("hidden");
      applyFilters();
    }

    let source = null;
    function connect() {
      source = new EventSource("/events?after=" + lastSeq);
      source.addEventListener("open", function () { state.textContent = "live"; state.className = "pill live"; });
      source.addEventListener("feed", function (e) {
        try { add(JSON.parse(e.data), true); } catch (ex) { /* a bad line is skipped */ }
      });
      source.addEventListener("error", function () {
        if (source.readyState === EventSource.CLOSED) {
          // refused (expired session?) — EventSource gives up; check and start again
          state.textContent = "reconnecting…"; state.className = "pill down";
          setTimeout(function () {
            api("GET", "/api/me").then(function () { connect(); }).catch(function () { /* redirected */ });
          }, 3000);
        } else {
          state.textContent = "reconnecting…"; state.className = "pill down";
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

  /* Denials still to deal with: a list the desk ticks off, a flash and (if wanted) a beep. */
  function initAttention() {
    const panel = $("#attention");
    const list = $("#attention-list");
    const count = $("#attention-count");
    const sound = $("#sound");
    const items = new Map();
    let audio = null;
    sound.checked = localStorage.getItem("gated-sound") === "1";
    sound.addEventListener("change", function () { localStorage.setItem("gated-sound", sound.checked ? "1" : "0"); if (sound.checked) beep(); });

    function beep() {
      try {
        audio = audio || new (window.AudioContext || window.webkitAudioContext)();
        const o = audio.createOscillator(), g = audio.createGain();
        o.frequency.value = 660; g.gain.value = 0.15;
        o.connect(g); g.connect(audio.destination);
        o.start(); o.stop(audio.currentTime + 0.25);
      } catch (e) { /* no audio: the flash still shows */ }
    }

    function render() {
      panel.classList.toggle("hidden", items.size === 0);
      count.textContent = items.size ? String(items.size) : "";
    }

    async function dismiss(seqs) {
      try { await api("POST", "/api/denials/dismiss", { seq: seqs }); } catch (e) { toast(e.message, true); return; }
      seqs.forEach(function (q) { const li = items.get(q); if (li) li.remove(); items.delete(q); });
      render();
    }

    function push(item, fresh) {
      if (items.has(item.seq)) return;
      const who = item.member_name || (item.card ? "Unknown card " + item.card : "Unknown card");
      const actions = el("span", { class: "actions" });
      if (item.member) actions.append(el("a", { class: "button small", href: "/members#" + encodeURIComponent(item.member), text: "Open member" }));
      else if (item.card) actions.append(el("a", { class: "button small", href: "/members?card=" + encodeURIComponent(item.card), text: "Assign card" }));
      actions.append(el("button", { type: "button", class: "small", text: "Done", onclick: function () { dismiss([item.seq]); } }));
      const li = el("li", { "data-seq": item.seq, class: fresh ? "fresh" : "" },
        el("span", { class: "when", text: item.time }),
        el("span", { class: "what" }, el("strong", { text: who }), " at " + (item.gate_name || item.gate || "?"),
          el("span", { class: "msg", text: item.message || item.reason })),
        actions);
      items.set(item.seq, li);
      list.prepend(li);
      render();
      if (fresh) {
        document.body.classList.remove("flash"); void document.body.offsetWidth; document.body.classList.add("flash");
        if (sound.checked) beep();
      }
    }

    $("#dismiss-all").addEventListener("click", function () { dismiss(Array.from(items.keys())); });
    api("GET", "/api/denials").then(function (d) { d.items.slice().reverse().forEach(function (i) { push(i, false); }); })
      .catch(function () { /* shown again at the next load */ });
    return { push: push };
  }

  function occupancyBlock(zones) {
    return zones.map(function (z) {
      const cap = z.capacity;
      const pct = cap ? Math.min(100, Math.round(100 * z.inside / cap)) : null;
      const bar = cap ? el("div", { class: "bar" + (pct >= 90 ? " full" : ""), role: "meter", "aria-valuemin": "0",
        "aria-valuemax": String(cap), "aria-valuenow": String(z.inside) }, el("span", { style: null, "data-pct": String(pct) })) : "";
      const details = el("details", { class: "zone", "data-zone": z.zone },
        el("summary", null, el("span", { class: "zone-name", text: z.zone }), " ",
          el("strong", { class: "inside-count", text: String(z.inside) }), cap ? " / " + cap + " inside" : " inside",
          z.anonymous ? el("span", { class: "muted small", text: " · +" + z.anonymous + " let in by the desk" }) : ""),
        bar,
        el("ul", { class: "people" }));
      details.addEventListener("toggle", async function () {
        if (!details.open) return;
        const data = await api("GET", "/api/occupancy");
        const zone = data.zones.find(function (x) { return x.zone === z.zone; });
        const ul = details.querySelector("ul.people");
        ul.replaceChildren.apply(ul, (zone ? zone.people : []).map(function (p) {
          return el("li", null, el("a", { href: "/members#" + encodeURIComponent(p.member), text: p.name }),
            el("span", { class: "muted small", text: " since " + p.since }));
        }));
        if (!zone || zone.people.length === 0) ul.append(el("li", { class: "muted small", text: "Nobody inside." }));
      });
      if (bar) bar.firstChild.style.width = pct + "%";
      return details;
    });
  }

  function gateCard(id, g, locked) {
    const relay = g.relay || "none";
    const relayCls = relay === "online" ? "st-good" : (relay === "none" ? "" : "st-bad");
    const st = g.state || {};
    const door = st.door || "unknown";
    const doorCls = st.door_forced || st.door_held ? "st-bad" : (door === "closed" ? "st-good" : "st-warn");
    const dl = el("dl", { class: "kv" },
      el("dt", { text: "Relay" }), el("dd", { class: "st " + relayCls, text: relay + (st.relay_error ? " (" + st.relay_error + ")" : "") }),
      el("dt", { text: "Door" }), el("dd", { class: "st " + doorCls, text: door + (st.door_forced ? " — FORCED" : "") + (st.door_held ? " — held open" : "") + (st.released ? " — released" : "") }),
    );
    const readers = Object.entries(g.readers || {});
    if (readers.length === 0) dl.append(el("dt", { text: "Readers" }), el("dd", { text: "none" }));
    readers.forEach(function (pair) {
      const h = pair[1].health;
      dl.append(el("dt", { text: "Reader " + pair[0] }), el("dd", { class: "st " + (h === "online" ? "st-good" : "st-bad"), text: h }));
    });
    const t = g.last_tap;
    dl.append(el("dt", { text: "Last tap" }), el("dd", {
      class: t && t.decision === "denied" ? "st-bad" : "",
      text: t ? t.time + " " + (t.member_name || (t.reason === "override" ? "front desk" : "unknown card")) + " — " + (t.decision === "denied" ? "denied: " : "") + (t.message || t.reason) : "—",
    }));
    const btn = relay === "none" ? el("span", { class: "muted small", text: "no relay" }) :
      locked ? el("span", { class: "muted small", text: "locked down" }) :
      el("button", { type: "button", class: "small", text: "Open once", "data-gate": id,
        onclick: function () { openGate(id, g.name || id).then(function (r) { if (r) refreshHealth(); }); } });
    return el("div", { class: "gate", "data-gate": id },
      el("div", { class: "gate-head" },
        el("span", null, el("span", { class: "gate-name", text: g.name || id }), " ",
          el("span", { class: "muted small", text: (g.direction === "out" ? "exit" : "entry") + " · " + g.zone })),
        btn),
      dl);
  }

  /* What the whole site must know at once: lockdown, fire, emergency release, storage. */
  function siteAlerts(h) {
    const alerts = [];
    const sf = h.safety || {};
    const by = function (sw) {
      if (!sw || !sw.operator) return "";
      return " (" + sw.operator + (sw.reason ? ": “" + sw.reason + "”" : "") + ")";
    };
    if (h.lockdown) alerts.push(el("div", { class: "banner bad", role: "alert", text: "LOCKDOWN — entries are refused" + by(sf.lockdown) }));
    if (sf.fire_alarm) alerts.push(el("div", { class: "banner bad", role: "alert", text: "FIRE ALARM — doors released, entries refused" }));
    else if (h.fire_alarm) alerts.push(el("div", { class: "banner bad", role: "alert", text: "EMERGENCY RELEASE — doors released, entries refused" + by(sf.emergency_release) }));
    if (sf.fire_input && !sf.fire_input.known) alerts.push(el("div", { class: "banner bad", role: "alert",
      text: "FIRE-ALARM INPUT UNREACHABLE — " + (sf.fire_input.error || "no answer") + " (policy: " + sf.fire_input.policy + ")" }));
    const st = h.storage;
    if (st && st.ok === false) alerts.push(el("div", { class: "banner bad", role: "alert",
      text: "GATES OUT OF ORDER — entries cannot be recorded (" + (st.problem || "storage") + (st.detail ? ": " + st.detail : "") + "); exits work" }));
    if (h.cache_stale) alerts.push(el("div", { class: "banner warn", text: "Member data is stale — some passes may be refused" }));
    return alerts;
  }

  function showBanners(alerts) {
    const banner = $("#alerts");
    if (!banner) return;
    banner.replaceChildren.apply(banner, alerts.filter(function (a) { return a.classList.contains("bad"); }).map(function (a) { return a.cloneNode(true); }));
  }

  /* Pages other than the feed poll the site's state for the banners only. */
  function pollBanners() {
    api("GET", "/api/health").then(function (h) { showBanners(siteAlerts(h)); }).catch(function () { /* next time */ });
  }

  let healthTimer = null;
  async function refreshHealth() {
    let h;
    try { h = await api("GET", "/api/health"); } catch (e) { $("#health-at").textContent = "health unavailable"; return; }
    const list = $("#gate-list");
    list.replaceChildren.apply(list, Object.entries(h.gates || {}).map(function (p) { return gateCard(p[0], p[1], h.lockdown); }));
    const occ = $("#occupancy");
    if (!occ.querySelector("details[open]")) occ.replaceChildren.apply(occ, occupancyBlock(h.occupancy || []));
    else (h.occupancy || []).forEach(function (z) {
      const d = occ.querySelector("details[data-zone='" + CSS.escape(z.zone) + "'] .inside-count");
      if (d) d.textContent = String(z.inside);
    });
    const site = $("#site-state");
    const alerts = siteAlerts(h);
    const age = h.cache_age_seconds;
    const ageText = age === null || age === undefined ? "never synced" : (age < 120 ? age + " s" : age < 7200 ? Math.round(age / 60) + " min" : Math.round(age / 3600) + " h");
    const dl = el("dl", { class: "kv" },
      el("dt", { text: "Broker" }), el("dd", { class: "st " + (h.broker === "connected" ? "st-good" : "st-warn"), text: h.broker }),
      el("dt", { text: "Outbox" }), el("dd", { class: "st " + (h.outbox_depth > 100 ? "st-warn" : ""), text: fmt(h.outbox_depth) + " events" }),
      el("dt", { text: "Cache age" }), el("dd", { class: "st " + (h.cache_stale ? "st-bad" : ""), text: ageText }),
    );
    site.replaceChildren.apply(site, alerts.concat([dl]));
    $("#health-at").textContent = "as of " + (h.now_local || "").slice(11);
    const admin = $("#admin-actions");
    if (role === "admin") {
      admin.classList.remove("hidden");
      const lb = $("#btn-lockdown");
      lb.textContent = h.lockdown ? "Release lockdown" : "Lock down all gates";
      lb.dataset.on = h.lockdown ? "1" : "";
      const eb = $("#btn-emergency");
      eb.textContent = h.fire_alarm ? "End emergency release" : "Emergency release";
      eb.dataset.on = h.fire_alarm ? "1" : "";
    }
    showBanners(alerts);
  }

  function initGates() {
    refreshHealth();
    healthTimer = setInterval(refreshHealth, 3000);
    if (role !== "admin") return;
    $("#btn-lockdown").addEventListener("click", async function () {
      const on = !this.dataset.on;
      const r = on
        ? await twice("Lock down", "Every gate stays locked: no member gets in and nobody can open a gate once or check a member in until an admin releases the lockdown. Exits keep working.", "LOCKDOWN", "/api/lockdown", { on: true })
        : await twice("Release lockdown", "Gates go back to normal operation.", "RELEASE", "/api/lockdown", { on: false });
      if (r) { toast(on ? "Lockdown is on" : "Lockdown released"); refreshHealth(); }
    });
    $("#btn-emergency").addEventListener("click", async function () {
      const on = !this.dataset.on;
      const r = on
        ? await twice("Emergency release", "Every fail-safe door is released, as on a fire alarm. Entries are refused until it ends.", "EMERGENCY", "/api/emergency", { on: true })
        : await twice("End emergency release", "Only end it when there is no fire alarm. Doors lock again.", "RESTORE", "/api/emergency", { on: false });
      if (r) { toast(on ? "Emergency release is active" : "Emergency release ended"); refreshHealth(); }
    });
  }

  // -- bookings (member page and classes page) -------------------------------------------

  const STATE_TEXT = { in: "in", arriving: "arriving", expected: "expected", late: "late", no_show: "no-show", no_show_pending: "no-show (pending)", cancelled: "cancelled" };

  function bookingRow(b, withClass, reload) {
    const canMark = b.state !== "in" && b.state !== "cancelled";
    const note = [];
    if (b.on_site_since) note.push(el("span", { class: "hint", text: "On site since " + b.on_site_since }));
    if (b.walk_in) note.push(el("span", { class: "hint", text: "Paid a walk-in at " + b.walk_in.time + " (" + b.walk_in.amount + " from " + b.walk_in.pass_name + ")" }));
    return el("tr", { "data-booking": b.id },
      withClass ? el("td", { text: b.starts + " " + b.class }) : el("td", null, el("a", { href: "/members#" + encodeURIComponent(b.member), text: b.member_name })),
      el("td", null, el("span", { class: "badge st-" + b.state, text: STATE_TEXT[b.state] || b.state }), b.attended_at ? " " + b.attended_at : "", ...note),
      el("td", { text: b.pass_name + (b.balance !== null && b.balance !== undefined ? " (" + b.balance + " left)" : "") }),
      el("td", { class: "small muted", text: b.arrival_from + "–" + b.arrival_until }),
      el("td", null, canMark ? el("button", { type: "button", class: "small", text: b.walk_in ? "Mark attended + refund" : "Mark attended",
        onclick: function () { markAttended(b, reload); } }) : ""),
    );
  }

  function bookingTable(bookings, withClass, reload) {
    return el("table", null,
      el("thead", null, el("tr", null,
        el("th", { scope: "col", text: withClass ? "Class" : "Member" }), el("th", { scope: "col", text: "Status" }),
        el("th", { scope: "col", text: "Pass" }), el("th", { scope: "col", text: "Arrival window" }), el("th", { scope: "col", text: "" }))),
      el("tbody", null, ...bookings.map(function (b) { return bookingRow(b, withClass, reload); })));
  }

  // -- members page ----------------------------------------------------------------------

  function initMembers() {
    const form = $("#search-form");
    const q = $("#q");
    const results = $("#results");
    const detail = $("#member-detail");
    let current = null;

    async function search(text) {
      const data = await api("GET", "/api/members?q=" + encodeURIComponent(text));
      results.replaceChildren.apply(results, data.results.map(function (m) {
        return el("li", null, el("button", { type: "button", "data-member": m.id, "aria-pressed": String(m.id === current),
          onclick: function () { show(m.id); } },
          m.name, " ", m.status === "blocked" ? el("span", { class: "badge blocked", text: "blocked" }) : "",
          el("span", { class: "sub", text: [m.email, m.phone, m.cards.join(", ")].filter(Boolean).join(" · ") })));
      }));
      if (data.results.length === 0) results.append(el("li", { class: "empty", text: "No member found." }));
      if (data.results.length === 1) show(data.results[0].id);
    }

    async function show(id) {
      current = id;
      if (window.location.hash !== "#" + encodeURIComponent(id)) history.replaceState(null, "", "#" + encodeURIComponent(id));
      for (const b of results.querySelectorAll("button[data-member]")) b.setAttribute("aria-pressed", String(b.dataset.member === id));
      let m;
      try { m = await api("GET", "/api/members/" + encodeURIComponent(id)); } catch (e) { detail.replaceChildren(el("p", { class: "error", text: e.message })); return; }
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
          onclick: async function () { await checkIn(m, await gatesOnce(), reload); } }),
        el("button", { type: "button", id: "btn-assign-card", text: "Assign a card",
          onclick: function () { assignCard(m, pendingCard, function () { pendingCard = ""; reload(); loadUnknown(); }); } }));
      detail.replaceChildren(
        el("div", { class: "detail-head" },
          el("h2", { text: m.name }),
          el("span", { class: "badge " + m.status, text: m.status }),
          m.inside_since ? el("span", { class: "badge st-in", text: "inside since " + m.inside_since }) : "",
          el("span", { class: "muted small", text: [m.email, m.phone, "cards: " + (m.cards.join(", ") || "none")].filter(Boolean).join(" · ") })),
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

    let gates = null;
    async function gatesOnce() {
      if (!gates) gates = (await api("GET", "/api/health")).gates || {};
      return gates;
    }

    // a card from the feed's "Assign card" link, waiting for a member to be picked
    let pendingCard = new URLSearchParams(window.location.search).get("card") || "";
    const unknown = $("#unknown-cards");
    async function loadUnknown() {
      let data;
      try { data = await api("GET", "/api/unknown-cards"); } catch (e) { return; }
      unknown.replaceChildren.apply(unknown, data.items.map(function (c) {
        return el("li", { "data-card": c.card, class: c.card === pendingCard ? "picked" : "" },
          el("span", { class: "card-no", text: c.card }),
          el("span", { class: "muted small", text: c.date + " " + c.time + " · " + (c.gate_name || c.gate) + (c.count > 1 ? " · " + c.count + " reads" : "") }),
          el("button", { type: "button", class: "small", text: "Use", onclick: function () {
            pendingCard = c.card;
            loadUnknown();
            if (current) $("#btn-assign-card").click();
            else { toast("Now find the member and press “Assign a card”"); q.focus(); }
          } }));
      }));
      if (data.items.length === 0) unknown.append(el("li", { class: "empty", text: "No unknown cards read recently." }));
    }
    loadUnknown();

    form.addEventListener("submit", function (e) { e.preventDefault(); if (q.value.trim()) search(q.value.trim()).catch(function (ex) { toast(ex.message, true); }); });
    window.addEventListener("hashchange", function () {
      const h = decodeURIComponent(window.location.hash.slice(1));
      if (h && h !== current) show(h);
    });
    const hash = decodeURIComponent(window.location.hash.slice(1));
    if (hash) show(hash);
  }

  // -- classes page ----------------------------------------------------------------------

  function initClasses() {
    const day = $("#day");
    const list = $("#class-list");
    async function load() {
      const data = await api("GET", "/api/classes" + (day.value ? "?day=" + encodeURIComponent(day.value) : ""));
      if (!day.value) day.value = data.day;
      if (data.classes.length === 0) { list.replaceChildren(el("p", { class: "empty", text: "No classes booked on " + data.day + "." })); return; }
      list.replaceChildren.apply(list, data.classes.map(function (c) {
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
      body.replaceChildren.apply(body, data.rows.map(function (r) {
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
      body.replaceChildren.apply(body, data.lines.map(function (l) {
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
  if (init && page !== "feed") { pollBanners(); setInterval(pollBanners, 4000); }
})();
