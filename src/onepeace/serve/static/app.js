// The onepeace search page: compose a query (text, image, audio, any other file modality of the
// model such as video, weights), POST /search as multipart form data, show the ranked hits.
// Plain JavaScript, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const files = {};           // modality -> the file chosen for it
let fileTypes = {};         // modality -> the file name extensions it reads (from /health)
const objectUrls = [];
let apiKey = sessionStorage.getItem("onepeace-api-key") || "";

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

// ------------------------------------------------------------------ server info
async function loadInfo() {
  const info = $("#info");
  try {
    const r = await fetch("/health", { headers: authHeaders() });
    const h = await r.json();
    $("#key-row").hidden = !h.auth;
    if (!h.model) {
      info.textContent = "this server needs an API key: enter it below";
      return;
    }
    const idx = h.index;
    const counts = idx ? Object.entries(idx.modalities || {}).map(([m, n]) => `${n} ${m}`).join(", ") : "no index";
    const short = h.model.split("/").filter(Boolean).slice(-2).join("/");  // the full path is the tooltip
    const precision = h.precision ? ` · ${h.precision}` : "";
    info.textContent = `model ${short}${precision} · ${h.dim}-d · index: ${counts || "empty"}`;
    info.title = `model ${h.model}; index ${idx ? idx.rows : 0} rows`;
    if (h.search === false) {  // `onepeace serve --model M`: embeddings only
      info.textContent = `model ${short}${precision} · ${h.dim}-d · search is off: this server has no index ` +
        "(it serves embeddings: POST /v1/embeddings)";
      $("#search").disabled = true;
      showStatus("search is off: start the server with an index (onepeace serve DB) to search", true);
    }
    fileTypes = h.file_types || {};
    for (const m of Object.keys(fileTypes)) {
      if (!$(`#${m}-slot`)) addSlot(m);  // a slot per file modality of the model (video, ...)
    }
    for (const slot of ["image", "audio"]) {
      if (!h.modalities.includes(slot)) $(`#${slot}-slot`).hidden = true;
    }
    if (idx && idx.modalities) {
      indexModalities = ["image", "audio", "text"].filter((m) => m in idx.modalities)
        .concat(Object.keys(idx.modalities).filter((m) => !["image", "audio", "text"].includes(m)));
    }
    for (const m of indexModalities) {
      if (!document.querySelector(`#target input[value="${m}"]`)) addTarget(m);
    }
    for (const radio of document.querySelectorAll('#target input[type="radio"]')) {
      if (radio.value && idx && !(radio.value in (idx.modalities || {}))) radio.parentElement.hidden = true;
    }
  } catch (e) {
    info.textContent = `cannot reach the server: ${e}`;
  }
}

// ------------------------------------------------------------------ inputs
const HINTS = { image: "drop an image here or <u>choose one</u>", audio: "drop a sound here or <u>choose one</u>" };
const hint = (m) => HINTS[m] || `drop a ${m} file here or <u>choose one</u>`;
const PREVIEW_TAGS = { image: "img", audio: "audio", video: "video" };

// an upload slot like the image and audio ones, for another file modality of the model
function addSlot(m) {
  const slot = document.createElement("div");
  slot.className = "slot drop";
  slot.id = `${m}-slot`;
  slot.dataset.modality = m;
  slot.tabIndex = 0;
  const exts = (fileTypes[m] || []).join(",");
  slot.innerHTML = `<label for="${m}"></label><div class="zone"><video id="${m}-preview" controls muted hidden></video>` +
    `<span class="hint"></span><input id="${m}" type="file"></div>` +
    `<label class="weight">weight <input type="range" id="w-${m}" min="-1" max="2" step="0.1" value="1"><output for="w-${m}">1.0</output></label>` +
    `<button type="button" class="clear" hidden>remove</button>`;
  slot.querySelector("label").textContent = m[0].toUpperCase() + m.slice(1);
  slot.querySelector(".hint").innerHTML = hint(m);
  slot.querySelector("input[type=file]").accept = exts;
  slot.querySelector(".clear").dataset.clear = m;
  $("section.inputs").appendChild(slot);
  wireSlot(slot);
}

function addTarget(m) {
  const label = document.createElement("label");
  label.innerHTML = `<input type="radio" name="modality"> `;
  label.querySelector("input").value = m;
  label.append(KIND_NAMES[m] ? KIND_NAMES[m].toLowerCase() : `${m}s`);
  const texts = document.querySelector('#target input[value="text"]');
  $("#target").insertBefore(label, texts ? texts.parentElement : null);
}

function wireSlot(slot) {
  const m = slot.dataset.modality;
  const input = $(`#${m}`);
  input.addEventListener("change", () => setFile(m, input.files[0] || null));
  slot.querySelector("button.clear").addEventListener("click", () => setFile(m, null));
  const range = slot.querySelector('input[type="range"]');
  const out = range.parentElement.querySelector("output");
  const show = () => { out.textContent = Number(range.value).toFixed(1); };
  range.addEventListener("input", show);
  show();
}

function setFile(modality, file) {
  files[modality] = file;
  let preview = $(`#${modality}-preview`);
  const slot = $(`#${modality}-slot`);
  const tag = file && PREVIEW_TAGS[(file.type || "").split("/")[0]];
  if (tag && preview.tagName.toLowerCase() !== tag) {  // show the file as what it is
    const other = document.createElement(tag);
    other.id = preview.id;
    if (tag !== "img") other.controls = true;
    preview.replaceWith(other);
    preview = other;
  }
  if (preview.src && preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    slot.classList.add("filled");
    slot.querySelector(".hint").textContent = file.name;
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
    slot.classList.remove("filled");
    slot.querySelector(".hint").innerHTML = hint(modality);
    $(`#${modality}`).value = "";
  }
  slot.querySelector(".clear").hidden = !file;
}

function modalityOf(file) {
  const name = file.name.toLowerCase();
  for (const [m, exts] of Object.entries(fileTypes)) {  // the model's own list, by extension
    if (exts.some((e) => name.endsWith(e)) && $(`#${m}-slot`) && !$(`#${m}-slot`).hidden) return m;
  }
  const major = (file.type || "").split("/")[0];
  if (major && $(`#${major}-slot`) && !$(`#${major}-slot`).hidden) return major;
  if (/\.(wav|flac|ogg|oga|opus|mp3|aiff?)$/i.test(file.name)) return "audio";
  if (/\.(png|jpe?g|webp|bmp|gif|tiff?)$/i.test(file.name)) return "image";
  return null;
}

function setupInputs() {
  for (const modality of ["image", "audio"]) {
    const input = $(`#${modality}`);
    input.addEventListener("change", () => setFile(modality, input.files[0] || null));
  }
  for (const button of document.querySelectorAll("button.clear")) {
    button.addEventListener("click", () => setFile(button.dataset.clear, null));
  }
  for (const range of document.querySelectorAll('input[type="range"]')) {
    const out = range.parentElement.querySelector("output");
    const show = () => { out.textContent = Number(range.value).toFixed(1); };
    range.addEventListener("input", show);
    show();
  }
  // drop a file anywhere: it goes to the image or the audio slot by its type
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    for (const file of e.dataTransfer.files) {
      const modality = modalityOf(file);
      if (modality) setFile(modality, file);
      else showStatus(`${file.name}: not a kind of file this model reads (${Object.keys(fileTypes).join(", ") || "image, audio"})`, true);
    }
  });
  $("#api-key").value = apiKey;
  $("#api-key").addEventListener("change", () => {
    apiKey = $("#api-key").value.trim();
    sessionStorage.setItem("onepeace-api-key", apiKey);
    loadInfo();
  });
}

function showStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ search
async function mediaUrl(url, thumb) {
  const full = thumb ? `${url}?thumb=${thumb}` : url;
  if (!apiKey) return full;
  const r = await fetch(full, { headers: authHeaders() });  // <img src> cannot send the key
  if (!r.ok) return "";
  const blobUrl = URL.createObjectURL(await r.blob());
  objectUrls.push(blobUrl);
  return blobUrl;
}

function describe(hit) {
  const meta = hit.metadata || {};
  const parts = [];
  if (meta.label !== undefined && meta.label !== null) parts.push(`label ${meta.label}`);
  if (hit.modality !== "text" && hit.text) parts.push(hit.text);
  if (hit.name) parts.push(hit.name);
  return parts.join(" · ");
}

// seconds as m:ss (h:mm:ss from an hour), tenths shown when not whole (or as `tenths` says): 41 -> "0:41"
function clock(seconds, tenths) {
  const count = Math.round(seconds * 10);
  const whole = Math.floor(count / 10), frac = count % 10;
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const mm = h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`;
  const shown = tenths === undefined ? frac !== 0 : tenths;
  return `${mm}:${String(s).padStart(2, "0")}${shown ? `.${frac}` : ""}`;
}

// a moment's range, both ends at one precision: "0:17.2–0:18.0", "0:16–0:19"
function timeRange(start, end) {
  const tenths = [start, end].some((x) => Math.round(x * 10) % 10 !== 0);
  return `${clock(start, tenths)}–${clock(end, tenths)}`;
}

// a moment: a player that starts at the range's start (media fragment #t=start,end, and
// currentTime set once the metadata is known), the range as text and marked on a timeline
async function renderMoment(hit, media) {
  const major = (hit.media_type || "").split("/")[0];
  const player = document.createElement(major === "video" ? "video" : "audio");
  player.controls = true;
  player.preload = "metadata";
  player.className = "moment-player";
  player.dataset.start = hit.start;
  player.dataset.end = hit.end;
  const url = await mediaUrl(hit.media_url, 0);
  const timeline = document.createElement("div");
  timeline.className = "timeline";
  timeline.title = "the matching range in the whole file";
  const mark = document.createElement("i");
  const cursor = document.createElement("b");
  timeline.append(mark, cursor);
  const range = document.createElement("div");
  range.className = "range";
  range.title = "play this range";
  range.textContent = timeRange(hit.start, hit.end);
  const draw = () => {
    const total = Number.isFinite(player.duration) && player.duration > 0 ? player.duration : (hit.metadata || {}).duration;
    if (!total) return;
    mark.style.left = `${(100 * hit.start / total).toFixed(3)}%`;
    mark.style.width = `${(100 * (hit.end - hit.start) / total).toFixed(3)}%`;
    cursor.style.left = `${(100 * Math.min(player.currentTime || hit.start, total) / total).toFixed(3)}%`;
    if (!range.querySelector("small")) range.insertAdjacentHTML("beforeend", ` <small>of ${clock(total)}</small>`);
  };
  player.addEventListener("loadedmetadata", () => {
    if (Math.abs(player.currentTime - hit.start) > 0.01) player.currentTime = hit.start;
    draw();
  }, { once: true });
  player.addEventListener("timeupdate", draw);
  const playRange = () => { player.currentTime = hit.start; player.play().catch(() => {}); };
  range.addEventListener("click", playRange);
  timeline.addEventListener("click", playRange);
  player.src = url ? `${url}#t=${hit.start.toFixed(3)},${hit.end.toFixed(3)}` : "";
  media.append(player, timeline);
  draw();
  return range;
}

async function renderHit(hit, rank) {
  const li = document.createElement("li");
  li.className = `result ${hit.modality}`;
  li.dataset.id = hit.id;
  const media = document.createElement("div");
  media.className = "media";
  const major = (hit.media_type || "").split("/")[0];
  let range = null;
  if (hit.start !== undefined && hit.start !== null && hit.media_url) {
    li.classList.add("moment");
    range = await renderMoment(hit, media);
  } else if (major === "video" && hit.media_url) {  // a player, with the middle frame as its poster
    const video = document.createElement("video");
    video.controls = true;
    video.preload = "none";
    video.muted = false;
    if (hit.thumb_url) video.poster = await mediaUrl(hit.media_url, 256);
    video.src = await mediaUrl(hit.media_url, 0);
    media.appendChild(video);
  } else if ((hit.modality === "image" || major === "image") && hit.media_url) {
    const img = document.createElement("img");
    img.alt = hit.name || hit.id;
    img.loading = "lazy";
    // small images (digits) are enlarged with sharp pixels, large ones scaled down smoothly
    img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 128));
    img.src = await mediaUrl(hit.media_url, 256);
    media.appendChild(img);
  } else if ((hit.modality === "audio" || major === "audio") && hit.media_url) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = await mediaUrl(hit.media_url, 0);
    media.appendChild(audio);
  } else {
    const q = document.createElement("blockquote");
    q.textContent = hit.text || "(empty text)";
    media.appendChild(q);
  }
  li.appendChild(media);
  const meta = document.createElement("div");
  meta.className = "meta";
  const head = document.createElement("div");
  head.className = "score";
  head.innerHTML = `<span class="rank">#${rank}</span> <span class="modality"></span> <b></b>`;
  head.querySelector(".modality").textContent = hit.modality;
  head.querySelector("b").textContent = hit.score.toFixed(3);
  meta.appendChild(head);
  if (range) meta.appendChild(range);
  if (hit.prob !== null && hit.prob !== undefined) {
    const bar = document.createElement("div");
    bar.className = "prob";
    bar.title = `probability among these results: ${(100 * hit.prob).toFixed(1)}%`;
    bar.innerHTML = `<i style="width:${Math.max(1, 100 * hit.prob).toFixed(1)}%"></i><span>${(100 * hit.prob).toFixed(1)}%</span>`;
    meta.appendChild(bar);
  }
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = describe(hit);
  meta.appendChild(caption);
  li.appendChild(meta);
  return li;
}

const KIND_NAMES = { image: "Images", audio: "Audio", video: "Videos", text: "Texts" };
const MOMENT_KINDS = ["audio", "video"];
let indexModalities = ["image", "audio", "text"];

function queryForm(modality, k) {
  const form = new FormData();
  const weights = {};
  const text = $("#text").value.trim();
  if (text) { form.append("text", text); weights.text = Number($("#w-text").value); }
  for (const m of Object.keys(files)) {
    if (files[m]) {
      form.append(m, files[m], files[m].name);
      weights[m] = Number($(`#w-${m}`).value);
    }
  }
  if (!Object.keys(weights).length) return null;
  form.append("weights", JSON.stringify(weights));
  if (modality) form.append("modality", modality);
  form.append("k", k);
  if ($("#moments").checked) form.append("moments", "true");
  const filter = $("#where").value.trim();  // a structured filter (JSON); the server takes no raw SQL
  if (filter) form.append("filter", filter);
  return form;
}

async function searchOne(modality, k) {
  const r = await fetch("/search", { method: "POST", body: queryForm(modality, k), headers: authHeaders() });
  if (!r.ok) throw new Error(await errorMessage(r));
  return r.json();
}

async function search(event) {
  event.preventDefault();
  const target = document.querySelector('#target input[name="modality"]:checked').value;
  const k = $("#k").value || "6";
  if (!queryForm(target, k)) {
    showStatus("type a text, or drop an image or a sound, then search", true);
    return;
  }
  // "each kind": one search per kind of item, side by side (scores of different kinds are not
  // comparable: a text is always closest to texts). The server runs their query embeddings in
  // one batch. Moments: one search over the time ranges of the long audio and video.
  const moments = $("#moments").checked;
  const kinds = moments ? [MOMENT_KINDS.includes(target) ? target : ""] : target ? [target] : indexModalities;
  const button = $("#search");
  button.disabled = true;
  showStatus("searching…");
  const t0 = performance.now();
  try {
    const answers = await Promise.all(kinds.map((m) => searchOne(m, k)));
    while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
    const groups = [];
    let n = 0;
    for (const [i, body] of answers.entries()) {
      const section = document.createElement("section");
      section.className = moments ? "group moments" : `group ${kinds[i]}`;
      const h = document.createElement("h2");
      const name = moments ? `Moments${kinds[i] ? ` in ${kinds[i]}` : ""}` : KIND_NAMES[kinds[i]] || kinds[i];
      h.textContent = `${name} (${body.hits.length})`;
      const list = document.createElement("ol");
      list.className = moments ? "grid moments" : "grid";
      list.replaceChildren(...await Promise.all(body.hits.map((hit, j) => renderHit(hit, j + 1))));
      section.append(h, list);
      groups.push(section);
      n += body.hits.length;
    }
    $("#results").replaceChildren(...groups);
    const inputs = answers.length ? answers[0].inputs.join(" + ") : "";
    const what = moments ? "moment" : "result";
    showStatus(`${n} ${what}${n === 1 ? "" : "s"} for ${inputs} in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    showStatus(e.message || `search failed: ${e}`, true);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupInputs();
  $("#query").addEventListener("submit", search);
  loadInfo();
});
