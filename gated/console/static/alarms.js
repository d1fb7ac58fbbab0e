/* What the whole site must know at once, on every page: the safety switches (lockdown, fire,
 * emergency release) and the alarms (a gate offline, a door forced or held, a storage or
 * clock fault, the fire input unreachable, ...) until they are resolved or acknowledged
 * (gated/console/alarms.py). A new alarm beeps where the sound is on. */
"use strict";

import { $, api, beep, el, keyed, toast } from "./core.js";

const by = function (sw) {
  if (!sw || !sw.operator) return "";
  return " (" + sw.operator + (sw.reason ? ": “" + sw.reason + "”" : "") + ")";
};

/* The safety switches: state, not alarms — they end when an admin ends them. */
export function safetyBanners(h) {
  const out = [];
  const sf = h.safety || {};
  // in force but not on disk (a storage fault): a restart now would forget it
  const unstored = function (name) { return (sf.not_durable || []).indexOf(name) >= 0 ? " — NOT STORED: do not restart the gate" : ""; };
  if (h.lockdown) out.push({ id: "lockdown", cls: "bad", text: "LOCKDOWN — entries are refused" + by(sf.lockdown) + unstored("lockdown") });
  if (sf.fire_alarm) out.push({ id: "fire", cls: "bad", text: "FIRE ALARM — doors released, entries refused" });
  else if (h.fire_alarm) out.push({ id: "emergency", cls: "bad", text: "EMERGENCY RELEASE — doors released, entries refused" + by(sf.emergency_release) + unstored("emergency_release") });
  return out;
}

export function alarmText(a) {
  const where = a.gate_name ? a.gate_name + ": " : "";
  return a.title + " — " + where + (a.detail || "") + " (since " + a.since + ")";
}

export async function acknowledge(a, after) {
  try {
    await api("POST", "/api/alarms/ack", { id: a.id });
    toast("Acknowledged: " + a.title);
  } catch (e) { toast(e.message, true); }
  if (after) after();
}

let seen = null;  // alarm ids already heard: only a new one beeps

function banner(item, refresh) {
  if (item.alarm) {
    const a = item.alarm;
    if (a.acked_by) {
      return el("div", { class: "banner quiet", "data-alarm": a.id },
        el("span", { text: "Acknowledged by " + a.acked_by + " at " + a.acked_at + ", still on: " + alarmText(a) }));
    }
    return el("div", { class: "banner " + a.severity, role: "alert", "data-alarm": a.id },
      el("span", { text: alarmText(a) }),
      el("button", { type: "button", class: "small ack", text: "Acknowledge", onclick: function () { acknowledge(a, refresh); } }));
  }
  return el("div", { class: "banner " + item.cls, role: "alert", text: item.text });
}

/* Draws the banners of a health report at the top of the page. */
export function showBanners(h, refresh) {
  const box = $("#alerts");
  if (!box) return;
  const alarms = h.alarms || [];
  const items = safetyBanners(h).concat(alarms.map(function (a) { return { id: a.id, alarm: a }; }));
  keyed(box, items, function (i) { return i.id; }, function (i) { return banner(i, refresh); });
  const fresh = alarms.filter(function (a) { return !a.acked_by && !(seen && seen.has(a.id)); });
  if (seen && fresh.length) beep("alarm");
  seen = new Set(alarms.map(function (a) { return a.id; }));
  document.body.classList.toggle("alarmed", alarms.some(function (a) { return !a.acked_by && a.severity === "bad"; }));
}

/* Pages other than the feed poll the site's state for the banners only. */
export function pollBanners() {
  function poll() { api("GET", "/api/health").then(function (h) { showBanners(h, poll); }).catch(function () { /* next time */ }); }
  poll();
  setInterval(poll, 4000);
}
