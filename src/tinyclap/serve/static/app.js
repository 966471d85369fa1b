// tinyclap serve: the page. Uses only the JSON API of the same server; builds the DOM with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#3b5bdb", "#2f9e44", "#e8590c", "#ae3ec9", "#1098ad", "#f59f00", "#c92a2a", "#5c940d"];
const state = { info: null, blob: null, name: "", recorder: null };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

let statusTimer = null;
function status(text, isError = false, sticky = false) {
  const s = $("status");
  s.textContent = text;
  s.className = "show" + (isError ? " error" : "");
  clearTimeout(statusTimer);
  if (!sticky) statusTimer = setTimeout(() => { s.className = ""; }, isError ? 8000 : 2500);
}

async function api(url, options) {
  const res = await fetch(url, options);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || `HTTP ${res.status}`);
  return body;
}

function fmtCount(n) {
  if (n === undefined || n === null) return "?";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function latencyFact(info) {
  // a warm median measured at start-up (never one cold run): say so next to the number
  const lat = info.latency || {};
  const clip = (lat.clip_seconds || info.clip_seconds || 5) + " s clip";
  if (lat.median_ms == null) return ["latency (" + clip + ")", "?"];
  return ["latency (" + clip + ")", lat.median_ms.toFixed(1) + " ms, median of " + lat.runs + " warm runs"];
}

function showFacts(info) {
  const m = info.model || {};
  const facts = [
    ["student", m.name || m.student || m.kind || "?"],
    ["parameters", fmtCount(m.params)],
    ["MACs / clip", fmtCount(m.macs)],
    latencyFact(info),
  ];
  const dl = $("facts");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    const d = el("div");
    d.append(el("dt", "", k), el("dd", "", v));
    dl.append(d);
  }
}

function showLabelsPanel(info) {
  if (info.free_text_labels) {
    $("free-text").hidden = false;
    $("labels-title").textContent = "Describe what it might be";
    if (info.labels && info.labels.length) $("labels").value = info.labels.join(", ");
  } else {
    $("fixed").hidden = false;
    $("labels-title").textContent = "Classes";
    const ul = $("class-list");
    for (const lb of info.labels || []) ul.append(el("li", "", lb));
  }
}

async function init() {
  try {
    const info = await api("/api/info");
    state.info = info;
    showFacts(info);
    showLabelsPanel(info);
    $("limit-mb").textContent = Math.round(info.limits.max_upload_bytes / 1048576);
    $("limit-s").textContent = Math.round(info.limits.max_seconds);
    $("search-card").hidden = !info.search;
    if (info.search && info.index && !info.index.text_search) $("query").placeholder = "text search needs a text side";
  } catch (e) {
    status("Cannot reach the server: " + e.message, true, true);
  }
}

function choose(blob, name) {
  state.blob = blob;
  state.name = name;
  $("chosen").textContent = name + " (" + (blob.size / 1024).toFixed(0) + " KB)";
  const p = $("preview");
  if (p.src) URL.revokeObjectURL(p.src);
  p.src = URL.createObjectURL(blob);
  p.hidden = false;
  $("classify").disabled = false;
  $("like").disabled = false;
}

// ---- recording: MediaRecorder gives WebM/Opus, which the server does not decode; the browser decodes it
// and the page sends 16-bit PCM WAV instead.
function encodeWav(buffer) {
  const n = buffer.length, rate = buffer.sampleRate, chans = buffer.numberOfChannels;
  const mono = new Float32Array(n);
  for (let c = 0; c < chans; c++) {
    const d = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += d[i] / chans;
  }
  const out = new DataView(new ArrayBuffer(44 + 2 * n));
  const str = (o, s) => { for (let i = 0; i < s.length; i++) out.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); out.setUint32(4, 36 + 2 * n, true); str(8, "WAVE"); str(12, "fmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, rate, true); out.setUint32(28, rate * 2, true); out.setUint16(32, 2, true);
  out.setUint16(34, 16, true); str(36, "data"); out.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) out.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, mono[i])) * 32767, true);
  return new Blob([out], { type: "audio/wav" });
}

async function toggleRecording() {
  const btn = $("record");
  if (state.recorder) { state.recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status("Recording needs a browser with MediaRecorder (and https or localhost)", true);
    return;
  }
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) {
    status("No microphone: " + e.message, true);
    return;
  }
  const chunks = [];
  const rec = new MediaRecorder(stream);
  rec.ondataavailable = (ev) => chunks.push(ev.data);
  rec.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    btn.classList.remove("recording");
    btn.textContent = "\u25CF Record";
    try {
      const ctx = new AudioContext();
      const audio = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
      choose(encodeWav(audio), "recording.wav");
      ctx.close();
    } catch (e) { status("Cannot decode the recording: " + e.message, true); }
  };
  rec.start();
  state.recorder = rec;
  btn.classList.add("recording");
  btn.textContent = "\u25A0 Stop";
}

// ---- results
function showBars(labels) {
  const ol = $("bars");
  ol.replaceChildren();
  const max = Math.max(...labels.map((l) => l.probability), 1e-9);
  for (const l of labels) {
    const li = el("li", "bar");
    const track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = "0%";
    track.append(fill);
    li.append(el("span", "name", l.label), track, el("span", "value", (100 * l.probability).toFixed(1) + " %"));
    li.title = l.label;
    ol.append(li);
    requestAnimationFrame(() => { fill.style.width = (100 * l.probability / max).toFixed(1) + "%"; });
  }
}

function drawTimeline(tl) {
  const canvas = $("timeline");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 900, h = 260;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const pad = { l: 44, r: 12, t: 10, b: 30 };
  const rows = tl.rows, C = tl.labels.length;
  const peak = tl.labels.map((_, j) => Math.max(...rows.map((r) => r.probabilities[j])));
  const shown = peak.map((p, j) => [p, j]).sort((a, b) => b[0] - a[0]).slice(0, 6).map((x) => x[1]);
  const t0 = rows[0].start, t1 = rows[rows.length - 1].end;
  const x = (t) => pad.l + (w - pad.l - pad.r) * (t - t0) / Math.max(t1 - t0, 1e-9);
  const top = Math.max(...shown.map((j) => peak[j]));
  const yMax = Math.min(1, Math.max(0.1, Math.ceil(top * 5) / 5));  // scaled to the data, at most 1
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / yMax);
  g.clearRect(0, 0, w, h);
  g.font = "12px system-ui, sans-serif"; g.fillStyle = "#667085"; g.strokeStyle = "#e3e6ed"; g.lineWidth = 1;
  for (let v = 0; v <= yMax * 1.0001; v += yMax / 4) {
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v.toFixed(2), 6, y(v) + 4);
  }
  const step = Math.max(1, Math.ceil((t1 - t0) / 10));
  for (let t = Math.ceil(t0); t <= t1; t += step) g.fillText(t + " s", x(t) - 8, h - 10);
  shown.forEach((j, k) => {
    g.strokeStyle = COLORS[k % COLORS.length]; g.lineWidth = 2; g.beginPath();
    rows.forEach((r, i) => {
      const mid = (r.start + Math.min(r.end, r.start + tl.hop)) / 2;
      if (i === 0) g.moveTo(x(mid), y(r.probabilities[j])); else g.lineTo(x(mid), y(r.probabilities[j]));
    });
    g.stroke();
  });
  const legend = $("legend");
  legend.replaceChildren();
  shown.forEach((j, k) => {
    const li = el("li");
    const sw = el("i"); sw.style.background = COLORS[k % COLORS.length];
    li.append(sw, document.createTextNode(tl.labels[j]));
    legend.append(li);
  });
  if (C > shown.length) legend.append(el("li", "muted", `+ ${C - shown.length} more`));
}

async function classify() {
  if (!state.blob) return;
  const form = new FormData();
  form.append("audio", state.blob, state.name);
  if (state.info && state.info.free_text_labels) form.append("labels", $("labels").value);
  const btn = $("classify");
  btn.disabled = true; btn.textContent = "Classifying\u2026";
  try {
    const r = (await api("/api/classify", { method: "POST", body: form })).results[0];  // docs/json.md
    $("results-card").hidden = false;
    showBars(r.labels);
    $("result-meta").textContent = `${r.file || "upload"}: ${r.duration.toFixed(1)} s ${r.format}, ` +
      `${r.elapsed_ms.toFixed(0)} ms on the server` + (r.timeline ? ", probabilities averaged over the windows" : "");
    $("timeline-box").hidden = !r.timeline;
    if (r.timeline) drawTimeline(r.timeline);
  } catch (e) {
    status(e.message, true);
  } finally {
    btn.disabled = false; btn.textContent = "Classify";
  }
}

// ---- search
function showHits(hits, what) {
  const ol = $("hits");
  ol.replaceChildren();
  $("search-meta").textContent = hits.length ? `${hits.length} matches for ${what}` : `no match for ${what}`;
  for (const h of hits) {
    const li = el("li", "hit");
    const play = el("button", "", "\u25B6");
    play.type = "button"; play.title = "play " + h.name; play.setAttribute("aria-label", "play " + h.name);
    play.onclick = () => {
      const p = $("player");
      p.src = h.audio_url;
      p.currentTime = 0;
      p.addEventListener("loadedmetadata", () => { p.currentTime = h.start; }, { once: true });
      p.play().catch((e) => status("Cannot play: " + e.message, true));
    };
    li.append(play, el("span", "name", h.name), el("span", "where", `${h.start.toFixed(1)}\u2013${h.end.toFixed(1)} s`),
      el("span", "score", h.cosine.toFixed(3)));
    ol.append(li);
  }
}

async function searchText(ev) {
  ev.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  try {
    const r = await api("/api/search?q=" + encodeURIComponent(q));
    showHits(r.hits, `\u201C${q}\u201D`);
  } catch (e) { status(e.message, true); }
}

async function searchLike() {
  if (!state.blob) return;
  const form = new FormData();
  form.append("audio", state.blob, state.name);
  try {
    const r = await api("/api/search", { method: "POST", body: form });
    showHits(r.hits, state.name);
  } catch (e) { status(e.message, true); }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => { const f = ev.target.files[0]; if (f) choose(f, f.name); });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const f = ev.dataTransfer.files[0];
    if (f) choose(f, f.name);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
  $("record").addEventListener("click", toggleRecording);
  $("classify").addEventListener("click", classify);
  $("labels").addEventListener("keydown", (ev) => { if (ev.key === "Enter") classify(); });
  $("search-form").addEventListener("submit", searchText);
  $("like").addEventListener("click", searchLike);
}

wire();
init();
