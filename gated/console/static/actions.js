/* The desk's actions, as dialogs: open a gate once, check a member in, assign a card, mark
 * attended, adjust points, the site-wide switches; and the bookings table they share. */
"use strict";

import { api, dialog, el, face, notDurable, requestId, toast } from "./core.js";

export async function openGate(gateId, gateName) {
  const rid = requestId();  // one per dialog: submitted again after an answer that never came, it opens once
  const r = await dialog({
    title: "Open " + gateName + " once",
    text: "The gate opens for one person. This is logged with your name.",
    fields: [{ name: "reason", label: "Reason", required: true, placeholder: "e.g. member forgot card" }],
    ok: "Open gate",
    submit: function (v) { return api("POST", "/api/gates/" + encodeURIComponent(gateId) + "/open", { reason: v.reason, request_id: rid }); },
  });
  if (r) toast(gateName + " opened" + (r.result && r.result.passed === false ? " (nobody went through)" : ""));
  return r;
}

let gatesCache = null;
/* The site's gates (from the health), once per page. */
export async function siteGates() {
  if (!gatesCache) gatesCache = (await api("GET", "/api/health")).gates || {};
  return gatesCache;
}

/* Check a member in at a gate: the same rules as their card, the gate opens once. `gate`
 * preselects one (the gate of the denial it answers). Their face is on the dialog: the
 * person at the desk should be the one in the photo. */
export async function checkIn(m, gates, after, gate) {
  const entries = Object.entries(gates).filter(function (p) { return p[1].direction !== "out"; });
  if (entries.length === 0) { toast("No entry gate is configured", true); return null; }
  const options = [{ value: "", label: "Let the rules choose (as a card tap would)" }];
  m.bookings.filter(function (b) { return b.status === "booked"; }).forEach(function (b) {
    options.push({ value: "b:" + b.id, label: "Class: " + b.class + " at " + b.starts });
  });
  m.passes.forEach(function (p) {
    options.push({ value: "p:" + p.id, label: "Pass: " + p.name + (p.balance !== null ? " (" + p.balance + " left)" : "") });
  });
  const rid = requestId();  // one per dialog: submitted again, it charges and opens once
  const r = await dialog({
    title: "Check in " + m.name,
    before: el("div", { class: "dialog-face" }, face(m.photo, m.name, "big"),
      el("span", { class: "muted small", text: m.photo ? "Is this the person at the desk?" : "No photo yet: take one on the member's card." })),
    text: "Decided like a tap of the member's card: the pass is charged and the class attended if the rules say so. The gate opens once. Logged with your name.",
    fields: [
      { name: "gate", label: "Gate", type: "select", value: gate || undefined,
        options: entries.map(function (p) { return { value: p[0], label: p[1].name || p[0] }; }) },
      { name: "use", label: "For", type: "select", options: options },
      { name: "reason", label: "Reason", placeholder: "e.g. forgot card", value: "forgot card" },
    ],
    ok: "Check in",
    submit: function (v) {
      const body = { gate: v.gate, reason: v.reason, request_id: rid };
      if (v.use.startsWith("b:")) body.booking = v.use.slice(2);
      if (v.use.startsWith("p:")) body.pass = v.use.slice(2);
      return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/check-in", body);
    },
  });
  if (!r) return null;
  const res = r.result || {};
  if (res.decision === "granted") toast("Checked in: " + (res.message || res.reason));
  else toast("Not let in: " + (res.message || res.reason), true);
  if (after) after(r);
  return r;
}

/* Give a card to a member: it works at once, the central system is told. Any number can be
 * typed (or scanned into the field), not only the unknown cards listed. */
export async function assignCard(m, card, after) {
  const r = await dialog({
    title: "Assign a card to " + m.name,
    text: "The card opens the gates for " + m.name + " from now on. Logged with your name.",
    fields: [{ name: "card", label: "Card number", required: true, value: card || "", maxlength: 64,
      hint: "Any card: type its number or scan it into this field." }],
    ok: "Assign card",
    submit: function (v) { return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/cards", { card: v.card }); },
  });
  if (r) { notDurable(r); toast("Card assigned to " + m.name); if (after) after(); }
  return r;
}

export async function markAttended(b, after) {
  const rid = requestId();
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
    // one id for this dialog: submitted again after an answer that never came, it is done once
    submit: function (v) { return api("POST", "/api/bookings/" + encodeURIComponent(b.id) + "/attend", { refund: !!v.refund, request_id: rid }); },
  });
  if (!r) return;
  notDurable(r);
  if (r.refunded) toast("Marked attended; refunded " + r.refunded.amount + (r.refunded.balance !== undefined && r.refunded.balance !== null ? " — balance now " + r.refunded.balance : ""));
  else if (r.refund_waiting) toast("Marked attended; the refund waits to hear " + r.refund_waiting.for.join(", ") + " up to now (a walk-in charge, or a refund of it, may be on its way) and is settled then");
  else if (r.refund_requested) toast("Marked attended; no walk-in charge was found to refund");
  else toast("Marked attended");
  if (after) after();
}

export async function adjustPoints(m, after) {
  const rid = requestId();
  const r = await dialog({
    title: "Adjust loyalty points",
    text: m.name + " has " + m.points + " points.",
    fields: [
      { name: "points", label: "Points (negative to take away)", required: true, inputmode: "numeric", pattern: "-?[0-9]{1,6}", placeholder: "e.g. 50 or -20" },
      { name: "reason", label: "Reason (shown to the member)", required: true },
    ],
    ok: "Adjust",
    submit: function (v) { return api("POST", "/api/members/" + encodeURIComponent(m.id) + "/points", { points: parseInt(v.points, 10), reason: v.reason, request_id: rid }); },
  });
  if (r) { notDurable(r); toast("Points now " + r.points); if (after) after(); }
}

/* A site-wide switch: a warning, then the reason (required to switch it on: it is
   recorded and shown on every page's banner) and the word typed to confirm. */
export async function twice(title, warning, word, url, body) {
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

// -- bookings (member page and classes page) ---------------------------------------------

export const STATE_TEXT = { in: "in", arriving: "arriving", expected: "expected", late: "late", no_show: "no-show", no_show_pending: "no-show (pending)", cancelled: "cancelled" };

function bookingRow(b, withClass, reload) {
  const canMark = b.state !== "in" && b.state !== "cancelled";
  const note = [];
  if (b.on_site_since) note.push(el("span", { class: "hint", text: "On site since " + b.on_site_since }));
  if (b.walk_in) note.push(el("span", { class: "hint", text: "Paid a walk-in at " + b.walk_in.time + " (" + b.walk_in.amount + " from " + b.walk_in.pass_name + ")" }));
  if (b.refund_waiting) note.push(el("span", { class: "hint refund-waiting", text: "Refund waits to hear " + b.refund_waiting.for.join(", ") }));
  return el("tr", { "data-booking": b.id },
    withClass ? el("td", { text: b.starts + " " + b.class }) : el("td", null, el("a", { href: "/members#" + encodeURIComponent(b.member), text: b.member_name })),
    el("td", null, el("span", { class: "badge st-" + b.state, text: STATE_TEXT[b.state] || b.state }), b.attended_at ? " " + b.attended_at : "", ...note),
    el("td", { text: b.pass_name + (b.balance !== null && b.balance !== undefined ? " (" + b.balance + " left)" : "") }),
    el("td", { class: "small muted", text: b.arrival_from + "–" + b.arrival_until }),
    el("td", null, canMark ? el("button", { type: "button", class: "small", text: b.walk_in ? "Mark attended + refund" : "Mark attended",
      onclick: function () { markAttended(b, reload); } }) : ""),
  );
}

export function bookingTable(bookings, withClass, reload) {
  return el("table", null,
    el("thead", null, el("tr", null,
      el("th", { scope: "col", text: withClass ? "Class" : "Member" }), el("th", { scope: "col", text: "Status" }),
      el("th", { scope: "col", text: "Pass" }), el("th", { scope: "col", text: "Arrival window" }), el("th", { scope: "col", text: "" }))),
    el("tbody", null, ...bookings.map(function (b) { return bookingRow(b, withClass, reload); })));
}
