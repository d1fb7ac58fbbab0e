/* "Take photo": the desk PC's webcam (getUserMedia), one frame cut to a portrait on a
 * canvas and made small enough to send as a JPEG (sync/photos.py: at most 32 KiB; a
 * member_photo event takes it to the central system). The camera is on only while the
 * dialog is open. */
"use strict";

import { api, el, notDurable, toast } from "./core.js";

const WIDTH = 240, HEIGHT = 320;  // 3:4 portrait: a face, shoulders, nothing behind
// the longest photo data: URL the gate keeps (sync/photos.py PHOTO_MAX_TEXT, given by the page)
const MAX_URL = parseInt(document.body.dataset.photoMax || "40000", 10);

/* The frame, centred and cut to 3:4, as the smallest good-enough JPEG under the bound. */
function snapshot(video) {
  const canvas = el("canvas", { width: String(WIDTH), height: String(HEIGHT) });
  const vw = video.videoWidth, vh = video.videoHeight;
  const scale = Math.min(vw / WIDTH, vh / HEIGHT);
  const sw = WIDTH * scale, sh = HEIGHT * scale;
  canvas.getContext("2d").drawImage(video, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, WIDTH, HEIGHT);
  for (let q = 0.85; q >= 0.3; q -= 0.1) {
    const url = canvas.toDataURL("image/jpeg", q);
    if (url.length <= MAX_URL) return url;
  }
  return null;
}

export async function takePhoto(m, after) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    toast("No camera here: the browser allows one only on https or on the gate PC itself (localhost)", true);
    return null;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (e) {
    toast("The camera is not available: " + e.message, true);
    return null;
  }
  return new Promise(function (resolve) {
    const video = el("video", { autoplay: true, playsinline: true, muted: true, class: "camera" });
    video.srcObject = stream;
    const preview = el("img", { class: "camera-shot hidden", alt: "The photo just taken" });
    const err = el("p", { class: "error", role: "alert" });
    const shoot = el("button", { type: "button", class: "primary", id: "camera-shoot", text: "Take" });
    const again = el("button", { type: "button", class: "hidden", text: "Again" });
    const use = el("button", { type: "button", class: "primary hidden", id: "camera-use", text: "Use this photo" });
    const cancel = el("button", { type: "button", text: "Cancel" });
    const dlg = el("dialog", { "aria-labelledby": "cam-title", class: "camera-dialog" },
      el("h2", { id: "cam-title", text: "Photo of " + m.name }),
      el("p", { class: "muted small", text: "Face the camera, then Take. Kept on the gate and sent to the central system; logged with your name." }),
      el("div", { class: "camera-frame" }, video, preview), err,
      el("div", { class: "buttons" }, cancel, again, shoot, use));
    document.body.append(dlg);
    let shot = null;
    let done = false;
    function finish(v) {
      if (done) return;
      done = true;
      stream.getTracks().forEach(function (t) { t.stop(); });
      dlg.close(); dlg.remove(); resolve(v);
    }
    function showing(photo) {
      preview.classList.toggle("hidden", !photo);
      video.classList.toggle("hidden", !!photo);
      shoot.classList.toggle("hidden", !!photo);
      again.classList.toggle("hidden", !photo);
      use.classList.toggle("hidden", !photo);
    }
    shoot.addEventListener("click", function () {
      if (!video.videoWidth) { err.textContent = "The camera has not started yet"; return; }
      shot = snapshot(video);
      if (!shot) { err.textContent = "The photo would be too large to keep"; return; }
      err.textContent = "";
      preview.src = shot;  // a data: URL: allowed by the console's img-src
      showing(true);
      use.focus();
    });
    again.addEventListener("click", function () { shot = null; showing(false); shoot.focus(); });
    use.addEventListener("click", async function () {
      use.disabled = true;
      try {
        const r = await api("POST", "/api/members/" + encodeURIComponent(m.id) + "/photo", { photo: shot });
        notDurable(r);
        toast("Photo of " + m.name + " saved");
        finish(r);
        if (after) after(r);
      } catch (e) { err.textContent = e.message; use.disabled = false; }
    });
    cancel.addEventListener("click", function () { finish(null); });
    dlg.addEventListener("cancel", function (e) { e.preventDefault(); finish(null); });
    dlg.showModal();
    shoot.focus();
  });
}
