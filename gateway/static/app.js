// The try-on page: photo and clicks -> /workflow/preprocess -> mask and brush strokes ->
// /workflow/generate -> results. Progress comes from /workflow/{id}/events (Server-Sent Events,
// read with fetch so the API key can ride in a header); polling GET is the fallback.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  photo: null,          // HTMLImageElement of the upload
  photoDataUrl: null,   // what is sent as originalImageBase64
  points: [],           // [{x, y, label}] normalised on the photo
  workflowId: null,
  uris: null,           // {imageUri, maskUri} from preprocessing
  canvasImage: null,    // the photo on the 2000x2667 canvas (background removed when it was)
  maskImage: null,
  transform: null,      // canvas_transform: where the photo sits on the canvas
  strokes: [],          // [{mode, size, canvasPoints: [[x, y]]}] in canvas pixels
  blobUrls: [],
};
const OVERLAY_SCALE = 0.25; // the mask preview is painted at a quarter of the canvas resolution

// ------------------------------------------------------------------ plumbing

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw new Error(await messageOf(response));
  return response;
}

async function messageOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `HTTP ${response.status}`;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function busy(on) {
  for (const id of ["preprocess", "generate", "clear-points", "undo-stroke"]) $(id).disabled = on;
  if (!on) {
    $("preprocess").disabled = !state.photo || !state.points.some((p) => p.label === 1);
    $("clear-points").disabled = state.points.length === 0;
    $("undo-stroke").disabled = state.strokes.length === 0;
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be loaded"));
    img.src = src;
  });
}

async function artifact(name) {
  const response = await api("GET", `/workflow/${state.workflowId}/artifacts/${name}`);
  return response.blob();
}

function blobUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.blobUrls.push(url);
  return url;
}

// ------------------------------------------------------------------ progress

function showProgress(s) {
  $("progress").hidden = false;
  $("step-name").textContent = s.currentStep;
  $("progress-value").textContent = s.progress;
  $("bar-fill").style.width = `${s.progress}%`;
  showEta(s);
}

// "N ahead of you in the queue · about N s left": the gateway sends a new ETA only when it moves
// beyond this countdown, so the page counts down by itself in between (never below 1 s).
let etaTimer = null;
function showEta(s) {
  hideEta();
  const running = s.status === undefined || s.status === "RUNNING";
  // 0 ahead: first in line, taken at the next free place ("0 ahead of you" read as a fault).
  const waiting = running && s.queuePosition != null;
  const ahead = !waiting ? "" : s.queuePosition === 0 ? "next in the queue" : `${s.queuePosition} ahead of you in the queue`;
  const until = running && s.etaSeconds != null ? Date.now() + s.etaSeconds * 1000 : null;
  const render = () => {
    const left = until === null ? "" : `about ${Math.max(1, Math.round((until - Date.now()) / 1000))} s left`;
    const text = [ahead, left].filter(Boolean).join(" · ");
    $("eta").textContent = text;
    $("eta").hidden = !text;
  };
  render();
  if (until !== null) etaTimer = setInterval(render, 1000);
}

// Also when the page stops following a request it cannot hear from any more (the gateway gone, say):
// a countdown left running would promise an end the page will never show.
function hideEta() {
  clearInterval(etaTimer);
  etaTimer = null;
  $("eta").textContent = "";
  $("eta").hidden = true;
}

// Resolves with the final state (what GET returns once the workflow ended).
async function follow(workflowId) {
  try {
    return await followEvents(workflowId);
  } catch (err) {
    console.warn("event stream failed, polling instead:", err);
    return followPolling(workflowId);
  }
}

async function followEvents(workflowId) {
  const response = await fetch(`/workflow/${workflowId}/events`, { headers: headers() });
  if (!response.ok || !response.body) throw new Error(await messageOf(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the event stream ended before the workflow did");
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (event === "progress") showProgress(payload);
      else if (event === "final") { reader.cancel(); return payload; }
      else if (event === "error" || event === "timeout") throw new Error(payload.detail);
    }
  }
}

// A poll answered 503 or 429 with Retry-After (the pipeline's storage slow to answer, Dagster
// restarting, a rate limit) is asked again after that wait, and one the gateway did not answer
// at all (restarting, a network blip) after UNREACHABLE_WAIT_MS, for up to POLL_RETRY_BUDGET_MS
// in a row; past it, or on an error without Retry-After, the page says why it stopped following.
const POLL_RETRY_BUDGET_MS = 60_000;
const UNREACHABLE_WAIT_MS = 2_000;

async function followPolling(workflowId) {
  let unavailableSince = null;
  const waitOrStop = async (wait, error) => {
    unavailableSince ??= Date.now();
    if (wait === null || Date.now() - unavailableSince + wait > POLL_RETRY_BUDGET_MS) throw error;
    await sleep(wait);
  };
  for (;;) {
    let response;
    try {
      response = await fetch(`/workflow/${workflowId}`, { headers: headers() });
    } catch (err) {
      await waitOrStop(UNREACHABLE_WAIT_MS, err);
      continue;
    }
    if (!response.ok) {
      await waitOrStop(retryAfterMs(response), new Error(await messageOf(response)));
      continue;
    }
    unavailableSince = null;
    const s = await response.json();
    if (s.status !== "RUNNING") return s;
    showProgress(s);
    await sleep(1000);
  }
}

function retryAfterMs(response) {
  if (response.status !== 503 && response.status !== 429) return null;
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 30) * 1000 : null;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function ended(s) {
  if (s.status === "COMPLETED") {
    showProgress(s);
    return true;
  }
  hideEta(); // ended: no ETA left to count down
  const step = s.failedStep ? ` at ${s.failedStep}` : "";
  showError(s.status === "CANCELLED" ? "The workflow was cancelled." : `The workflow failed${step}: ${s.error || "no reason given"}`);
  return false;
}

// ------------------------------------------------------------------ step 1: photo and clicks

async function choosePhoto(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError("Please choose an image file (JPEG, PNG or WebP).");
    return;
  }
  showError("");
  state.photoDataUrl = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  state.photo = await loadImage(state.photoDataUrl);
  state.points = [];
  $("step-mask").hidden = true;
  $("results").hidden = true;
  $("progress").hidden = true;
  drawPhoto();
  busy(false);
}

function drawPhoto() {
  const canvas = $("photo-canvas");
  const img = state.photo;
  const scale = Math.min(1, 900 / img.naturalWidth, 700 / img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  for (const p of state.points) {
    const x = p.x * canvas.width;
    const y = p.y * canvas.height;
    ctx.beginPath();
    ctx.arc(x, y, 9, 0, 2 * Math.PI);
    ctx.fillStyle = p.label === 1 ? "rgba(10,160,60,0.85)" : "rgba(200,0,30,0.85)";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.fillStyle = "#fff";
    ctx.font = "bold 14px system-ui";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(p.label === 1 ? "+" : "−", x, y + 1);
  }
}

function normalised(event, canvas) {
  const box = canvas.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return { x: clamp((event.clientX - box.left) / box.width), y: clamp((event.clientY - box.top) / box.height) };
}

function addPoint(event) {
  if (!state.photo) return;
  const chosen = Number(document.querySelector("input[name=point-label]:checked").value);
  const label = event.shiftKey ? 0 : chosen;
  const { x, y } = normalised(event, $("photo-canvas"));
  state.points.push({ x: +x.toFixed(4), y: +y.toFixed(4), label });
  drawPhoto();
  busy(false);
}

async function preprocess() {
  showError("");
  busy(true);
  $("results").hidden = true;
  try {
    const started = await (await api("POST", "/workflow/preprocess", {
      originalImageBase64: state.photoDataUrl,
      maskPoints: state.points,
    })).json();
    state.workflowId = started.workflowId;
    showProgress({ currentStep: "Starting", progress: 0 });
    const final = await follow(started.workflowId);
    if (!ended(final)) return;
    state.uris = { imageUri: final.result.imageUri, maskUri: final.result.maskUri };
    $("mask-backends").textContent = backendList(final.result.backends, PREPARED_BY);
    const [image, mask, transform] = await Promise.all([
      artifact("background_removed_image.png"),
      artifact("jewelry_mask.png"),
      artifact("canvas_transform.json"),
    ]);
    state.canvasImage = await loadImage(blobUrl(image));
    state.maskImage = await loadImage(blobUrl(mask));
    state.transform = JSON.parse(await transform.text());
    state.strokes = [];
    prepareOverlay();
    $("step-mask").hidden = false;
    drawMask();
  } catch (err) {
    hideEta();
    showError(err.message);
  } finally {
    busy(false);
  }
}

// ------------------------------------------------------------------ step 2: mask and strokes

let overlay = null; // a canvas holding the mask (white = jewelry) at OVERLAY_SCALE, strokes applied

function prepareOverlay() {
  overlay = document.createElement("canvas");
  overlay.width = Math.round(state.maskImage.naturalWidth * OVERLAY_SCALE);
  overlay.height = Math.round(state.maskImage.naturalHeight * OVERLAY_SCALE);
  const ctx = overlay.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(state.maskImage, 0, 0, overlay.width, overlay.height);
  for (const stroke of state.strokes) paintStroke(stroke);
}

function paintStroke(stroke) {
  const ctx = overlay.getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = stroke.mode === "add" ? "#fff" : "#000";
  ctx.lineWidth = stroke.size * OVERLAY_SCALE;
  ctx.lineCap = ctx.lineJoin = "round";
  const pts = stroke.canvasPoints.map(([x, y]) => [x * OVERLAY_SCALE, y * OVERLAY_SCALE]);
  ctx.beginPath();
  ctx.moveTo(pts[0][0], pts[0][1]);
  for (const [x, y] of pts.slice(1)) ctx.lineTo(x, y);
  if (pts.length === 1) ctx.lineTo(pts[0][0] + 0.01, pts[0][1]);
  ctx.stroke();
}

function drawMask() {
  const canvas = $("mask-canvas");
  const img = state.canvasImage;
  const scale = Math.min(1, 700 / img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  // Tint the jewelry: the mask's white turned into translucent violet, its black transparent.
  const tint = document.createElement("canvas");
  tint.width = overlay.width;
  tint.height = overlay.height;
  const t = tint.getContext("2d");
  const pixels = overlay.getContext("2d").getImageData(0, 0, overlay.width, overlay.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] > 127;
    pixels.data[i] = 122; pixels.data[i + 1] = 60; pixels.data[i + 2] = 255;
    pixels.data[i + 3] = on ? 120 : 0;
  }
  t.putImageData(pixels, 0, 0);
  ctx.drawImage(tint, 0, 0, canvas.width, canvas.height);
}

let painting = null;

function canvasPoint(event) {
  const { x, y } = normalised(event, $("mask-canvas"));
  return [x * state.canvasImage.naturalWidth, y * state.canvasImage.naturalHeight];
}

function strokeStart(event) {
  if (!state.canvasImage) return;
  event.preventDefault();
  $("mask-canvas").setPointerCapture(event.pointerId);
  painting = {
    mode: document.querySelector("input[name=brush-mode]:checked").value,
    size: Number($("brush-size").value),
    canvasPoints: [canvasPoint(event)],
  };
}

function strokeMove(event) {
  if (!painting) return;
  painting.canvasPoints.push(canvasPoint(event));
  paintStroke({ ...painting, canvasPoints: painting.canvasPoints.slice(-2) });
  drawMask();
}

function strokeEnd() {
  if (!painting) return;
  state.strokes.push(painting);
  paintStroke(painting);
  painting = null;
  drawMask();
  busy(false);
}

// Canvas pixels -> the API's stroke points: /workflow/generate reads them normalised on the
// image at imageUri, the canvas itself, so margins can be painted too.
function apiStrokes() {
  const t = state.transform;
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return state.strokes.map((s) => ({
    mode: s.mode,
    size: s.size,
    points: s.canvasPoints.map(([x, y]) => ({
      x: +clamp(x / t.canvas_width).toFixed(6),
      y: +clamp(y / t.canvas_height).toFixed(6),
    })),
  }));
}

async function generate() {
  showError("");
  busy(true);
  try {
    const started = await (await api("POST", "/workflow/generate", { ...state.uris, brushStrokes: apiStrokes() })).json();
    state.workflowId = started.workflowId;
    showProgress({ currentStep: "Starting", progress: 0 });
    const final = await follow(started.workflowId);
    if (ended(final)) await showResults(final);
  } catch (err) {
    hideEta();
    showError(err.message);
  } finally {
    busy(false);
  }
}

// ------------------------------------------------------------------ step 3: results

async function showResults(final) {
  const r = final.result;
  $("workflow-id").textContent = final.workflowId;
  $("original-img").src = state.photoDataUrl;
  $("flux-img").src = `data:image/jpeg;base64,${r.flux_result_base64}`;
  $("flux-download").href = blobUrl(await artifact("flux_generation.png"));
  const gemini = r.gemini_result_base64;
  $("gemini-img").hidden = !gemini;
  $("gemini-download").hidden = !gemini;
  $("gemini-missing").hidden = !!gemini;
  if (gemini) {
    $("gemini-img").src = `data:image/jpeg;base64,${gemini}`;
    $("gemini-download").href = blobUrl(await artifact("gemini_generation.png"));
  }
  const backends = r.backends || {};
  $("original-backends").textContent = backendList(backends, PREPARED_BY);
  $("flux-backend").textContent = backends.flux || "not recorded";
  $("gemini-backend").textContent = backends.gemini || "not recorded";
  showProvenance("flux-ai-label", (r.provenance || {}).flux_result);
  showProvenance("gemini-ai-label", gemini ? (r.provenance || {}).gemini_result : null);
  const check = (r.checks || {}).fidelity;
  $("fidelity-verdict").textContent = check ? (check.passed ? "· passed" : `· failed: ${check.violations || ""}`) : "";
  $("fidelity-verdict").className = check ? (check.passed ? "pass" : "fail") : "";
  const rows = Object.entries(r.flux_metrics || {}).map(([k, v]) =>
    `<tr><td>${escapeHtml(k)}</td><td>${escapeHtml(typeof v === "number" ? +v.toFixed(4) : JSON.stringify(v))}</td></tr>`);
  $("metrics").tBodies[0].innerHTML = rows.join("");
  const metrics = { workflowId: final.workflowId, flux_metrics: r.flux_metrics, checks: r.checks };
  $("metrics-download").href = blobUrl(new Blob([JSON.stringify(metrics, null, 2)], { type: "application/json" }));
  $("results").hidden = false;
  $("results").scrollIntoView({ behavior: "smooth" });
}

// result.provenance: what each image's C2PA manifest says, read by the gateway from the very JPEG
// shown here. The label shows only for a manifest that validates and says "made by a trained model".
function showProvenance(id, manifest) {
  const label = $(id);
  label.hidden = !(manifest && manifest.label);
  label.textContent = manifest && manifest.label ? manifest.label : "";
  label.title = manifest && manifest.label
    ? `C2PA manifest: ${manifest.generator} (${manifest.backend}), ${manifest.createdAt}, signed by ${manifest.signedBy}`
    : "";
}

// result.backends names which implementation made each part: a model service ("http"), Gemini's
// model, or one of the local stand-ins ("local-…"), so a stand-in is never mistaken for the real one.
const PREPARED_BY = ["imageManipulator", "birefnet", "sam3", "maskRefiner"];

function backendList(backends, services) {
  const named = services.filter((s) => (backends || {})[s]).map((s) => `${s} ${backends[s]}`);
  return named.length ? named.join(" · ") : "not recorded";
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ------------------------------------------------------------------ wiring

// sessionStorage, not localStorage: the key is gone when the tab closes, and no other tab or
// later visitor of this browser profile reads it.
localStorage.removeItem("jewel-api-key"); // what earlier versions of this page left behind
$("api-key").value = sessionStorage.getItem("jewel-api-key") || "";
$("api-key").addEventListener("change", () => sessionStorage.setItem("jewel-api-key", $("api-key").value.trim()));
document.querySelector("form.key").addEventListener("submit", (e) => e.preventDefault()); // no inline handler: CSP
$("file").addEventListener("change", (e) => choosePhoto(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  choosePhoto(e.dataTransfer.files[0]);
});
$("photo-canvas").addEventListener("click", addPoint);
$("clear-points").addEventListener("click", () => { state.points = []; drawPhoto(); busy(false); });
$("preprocess").addEventListener("click", preprocess);
$("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
$("mask-canvas").addEventListener("pointerdown", strokeStart);
$("mask-canvas").addEventListener("pointermove", strokeMove);
$("mask-canvas").addEventListener("pointerup", strokeEnd);
$("mask-canvas").addEventListener("pointercancel", strokeEnd);
$("undo-stroke").addEventListener("click", () => { state.strokes.pop(); prepareOverlay(); drawMask(); busy(false); });
$("generate").addEventListener("click", generate);
