/* gated front-desk console: what every page uses — DOM helpers, the API, toasts, dialogs,
 * the sound setting and the page keys. Plain JavaScript modules, no build step, no inline
 * script (CSP). Every value from the server goes in with textContent, never innerHTML. */
"use strict";

export const page = document.body.dataset.page;
export const role = document.body.dataset.role;
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrf = csrfMeta ? csrfMeta.content : "";

export function $(sel, root) { return (root || document).querySelector(sel); }

export function el(tag, attrs, ...children) {
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
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function fmt(v) { return v === null || v === undefined ? "—" : String(v); }

export async function api(method, url, body) {
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

/* An id for one action of the person at the desk: the same dialog submitted again (an
 * answer that never came) sends the same id, and the gate does it once
 * (gated/console/once.py). Not crypto.randomUUID: that needs https. */
export function requestId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, function (x) { return x.toString(16).padStart(2, "0"); }).join("");
}

/* An action done whose record is not yet safe on disk (a storage fault): said, never as
 * "not done" — doing it again would do it twice. */
export function notDurable(r) {
  if (r && r.not_durable) toast(r.warning || "Done — but not yet safe on disk (storage fault): do not do it again", true);
}

export function toast(text, bad) {
  const box = $("#toasts");
  if (!box) return;
  const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: bad ? "alert" : "status", text: text });
  box.append(t);
  setTimeout(function () { t.remove(); }, bad ? 8000 : 4000);
}

/* A member's face: their photo, or their initials where there is none (no request). */
export function face(url, name, size) {
  const cls = "face" + (size ? " face-" + size : "");
  if (url) return el("img", { class: cls, src: url, alt: name ? "Photo of " + name : "", loading: "lazy", decoding: "async" });
  const initials = (name || "?").split(/\s+/).filter(Boolean).slice(0, 2).map(function (w) { return w[0]; }).join("").toUpperCase();
  return el("span", { class: cls + " none", "aria-hidden": "true", text: initials || "?" });
}

/* Keeps a list's nodes by key: an item whose data did not change keeps its node (and the
 * focus on its buttons) when the list is drawn again. */
export function keyed(container, items, key, render) {
  const old = new Map();
  for (const node of Array.from(container.children)) if (node.dataset.key) old.set(node.dataset.key, node);
  const nodes = items.map(function (item) {
    const k = key(item);
    const sig = JSON.stringify(item);
    const prev = old.get(k);
    if (prev && prev.dataset.sig === sig) { old.delete(k); return prev; }
    const node = render(item);
    node.dataset.key = k;
    node.dataset.sig = sig;
    return node;
  });
  nodes.forEach(function (node, i) { if (container.children[i] !== node) container.insertBefore(node, container.children[i] || null); });
  const keep = new Set(nodes);
  for (const child of Array.from(container.children)) if (!keep.has(child)) child.remove();
}

/* A modal form. fields: [{name, label, type, required, placeholder, checked, maxlength}].
 * Resolves with the values, or null when cancelled. `submit(values)` may throw to keep
 * the dialog open with the error shown. Enter submits from any field but a button. */
export function dialog(opts) {
  return new Promise(function (resolve) {
    const err = el("p", { class: "error", role: "alert" });
    const form = el("form", { method: "dialog" });
    const inputs = {};
    if (opts.text) form.append(el("p", { class: opts.danger ? "warn-text" : "", text: opts.text }));
    if (opts.before) form.append(opts.before);
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
      if (f.hint) form.append(el("p", { class: "hint-text", text: f.hint }));
      if (i === (opts.focus || 0)) input.setAttribute("autofocus", "");
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
    // a select does not submit its form on Enter by itself: the desk's hands stay on the keys
    form.addEventListener("keydown", function (e) {
      if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
      const t = e.target;
      if (t.tagName === "SELECT") { e.preventDefault(); if (!ok.disabled) form.requestSubmit(ok); }
    });
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

// -- sound: a setting of this browser, off until someone turns it on ---------------------

const SOUND_KEY = "gated-sound";
let audio = null;

export function soundOn() { return localStorage.getItem(SOUND_KEY) === "1"; }

/* A short tone (Web Audio: no file to load); "alarm" is two rising tones, three times. */
export function beep(kind) {
  if (!soundOn()) return;
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    if (audio.state === "suspended") audio.resume();
    const tones = kind === "alarm" ? [660, 880, 660, 880, 660, 880] : [660];
    tones.forEach(function (hz, i) {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = hz; g.gain.value = 0.15;
      o.connect(g); g.connect(audio.destination);
      const t = audio.currentTime + i * 0.18;
      o.start(t); o.stop(t + 0.15);
    });
    document.body.dataset.beeps = String(parseInt(document.body.dataset.beeps || "0", 10) + 1);  // tests
  } catch (e) { /* no audio: the banner still shows */ }
}

function initSound() {
  const btn = $("#sound-toggle");
  if (!btn) return;
  function show() {
    btn.setAttribute("aria-pressed", String(soundOn()));
    btn.textContent = soundOn() ? "Sound on" : "Sound off";
  }
  btn.addEventListener("click", function () {
    localStorage.setItem(SOUND_KEY, soundOn() ? "0" : "1");
    show();
    beep("denial");  // a click is the gesture a browser wants before it plays anything
  });
  show();
}

// -- keyboard --------------------------------------------------------------------------

function initKeys() {
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
}

initSound();
initKeys();
