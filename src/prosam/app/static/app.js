// prosam's labelling page: plain JavaScript over the JSON API of prosam.app.server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  image: null, width: 0, height: 0, picture: null,
  points: [], labels: [], box: null, history: [],
  mask: null, maskPicture: null, maskInfo: null, folders: new Set(),
};
window.prosam = state; // read by the browser test

// An error stays on screen until the user dismisses it (a later poll must not hide it).
function showError(message) {
  const box = $("error");
  box.replaceChildren();
  if (message) {
    box.append(el("span", {}, message), " ", el("button", { type: "button", class: "dismiss", title: "dismiss", onclick: () => showError("") }, "×"));
  }
  box.hidden = !message;
}

// The server accepts a change only with this page's token (read from its own HTML).
const TOKEN = document.querySelector('meta[name="prosam-token"]').content;

async function api(path, options = {}) {
  const init = { ...options };
  init.headers = { "X-Prosam-Token": TOKEN, ...(init.headers || {}) };
  if (init.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(init.json);
    delete init.json;
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ---------- 1. the reference

async function browse(folder) {
  const listing = await api(`/api/browse?folder=${encodeURIComponent(folder)}`);
  const crumbs = $("crumbs");
  crumbs.replaceChildren(el("a", { onclick: () => browse("") }, "root"));
  let path = "";
  for (const part of listing.folder ? listing.folder.split("/") : []) {
    path = path ? `${path}/${part}` : part;
    const target = path;
    crumbs.append(" / ", el("a", { onclick: () => browse(target) }, part));
  }
  const files = $("files");
  files.replaceChildren();
  for (const f of listing.folders) {
    files.append(el("li", { class: "folder", title: f, onclick: () => browse(f) }, f.split("/").pop()));
    state.folders.add(f);
  }
  for (const f of listing.images) {
    files.append(el("li", { class: "image", title: f, "data-path": f, onclick: () => openImage(f) }, f.split("/").pop()));
  }
  if (listing.images.length) state.folders.add(listing.folder);
  $("folders").replaceChildren(...[...state.folders, "@uploaded-targets"].map((f) => el("option", { value: f })));
  if (!$("targets").value && listing.images.length && listing.folder) $("targets").value = listing.folder;
}

function loadPicture(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be shown"));
    img.src = src;
  });
}

async function openImage(name) {
  $("mask-status").textContent = "Encoding the image with SAM…";
  let info;
  try {
    info = await api("/api/open", { json: { image: name } });
  } catch (err) {
    $("mask-status").textContent = `${name} could not be opened.`;
    throw err;
  }
  state.picture = await loadPicture(`/api/image?name=${encodeURIComponent(name)}`);
  Object.assign(state, { image: name, width: info.width, height: info.height });
  for (const li of document.querySelectorAll("#files li")) li.classList.toggle("open", li.dataset.path === name);
  const canvas = $("canvas");
  canvas.width = info.width; canvas.height = info.height;
  canvas.style.width = `${Math.min(info.width, 720)}px`;
  $("placeholder").hidden = true;
  clearPrompts();
  $("mask-status").textContent = `${name}: ${info.width}×${info.height}, encoded in ${info.ms.toFixed(0)} ms. Click on the object.`;
}

function clearPrompts() {
  Object.assign(state, { points: [], labels: [], box: null, history: [], mask: null, maskPicture: null, maskInfo: null });
  $("add-reference").disabled = true;
  draw();
}

function draw(preview) {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  if (!state.picture) return;
  ctx.drawImage(state.picture, 0, 0);
  if (state.maskPicture) ctx.drawImage(state.maskPicture, 0, 0);
  const r = Math.max(4, Math.round(Math.max(state.width, state.height) / 120));
  const box = preview || state.box;
  if (box) {
    ctx.lineWidth = Math.max(2, r / 2);
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] ? "#00c853" : "#e53935";
    ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
  });
}

async function colourMask(dataUrl) {
  const img = await loadPicture(dataUrl);
  const off = document.createElement("canvas");
  off.width = img.width; off.height = img.height;
  const ctx = off.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const on = px[i] > 127;
    px[i] = 30; px[i + 1] = 144; px[i + 2] = 255; px[i + 3] = on ? 120 : 0;
  }
  ctx.putImageData(data, 0, 0);
  return off;
}

let asked = 0;
async function updateMask() {
  if (!state.points.length && !state.box) { state.mask = null; state.maskPicture = null; draw(); return; }
  const ticket = ++asked;
  const t0 = performance.now();
  const prompts = { image: state.image, points: state.points, labels: state.labels, box: state.box };
  const sent = JSON.stringify(prompts);
  const result = await api("/api/mask", { json: prompts });
  if (ticket !== asked) return; // a newer click is on its way
  state.maskFor = sent; // the prompts this mask answers
  state.mask = result.mask;
  state.maskInfo = result;
  state.maskPicture = await colourMask(result.mask);
  draw();
  const roundTrip = performance.now() - t0;
  state.roundTrip = roundTrip;
  $("mask-status").textContent = `mask: ${result.area} px · SAM's predicted IoU ${result.score.toFixed(2)} · ${roundTrip.toFixed(0)} ms (decoder ${result.ms.toFixed(0)} ms)`;
  $("mask-status").dataset.area = result.area;
  $("add-reference").disabled = result.area === 0;
}

function imagePoint(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  return [
    Math.min(state.width - 1, Math.max(0, ((event.clientX - rect.left) * state.width) / rect.width)),
    Math.min(state.height - 1, Math.max(0, ((event.clientY - rect.top) * state.height) / rect.height)),
  ];
}

function setupCanvas() {
  const canvas = $("canvas");
  let start = null; let stroke = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => {
    if (!state.image) return;
    start = { at: imagePoint(e), negative: e.button === 2 || e.shiftKey };
    const tool = document.querySelector("input[name=tool]:checked").value;
    stroke = tool === "scribble" ? [start.at] : null;
  });
  canvas.addEventListener("mousemove", (e) => {
    if (!start) return;
    const at = imagePoint(e);
    if (stroke) {
      const last = stroke[stroke.length - 1];
      const step = Math.max(state.width, state.height) / 40;
      if (Math.hypot(at[0] - last[0], at[1] - last[1]) >= step) stroke.push(at);
      draw();
      const ctx = canvas.getContext("2d");
      ctx.strokeStyle = start.negative ? "#e53935" : "#00c853"; ctx.lineWidth = 3;
      ctx.beginPath(); stroke.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y))); ctx.stroke();
    } else {
      draw(boxFrom(start.at, at));
    }
  });
  window.addEventListener("mouseup", (e) => {
    if (!start) return;
    const at = imagePoint(e);
    const label = start.negative ? 0 : 1;
    state.history.push({ points: state.points.length, box: state.box });
    if (stroke) {
      const n = Math.min(stroke.length, 24); // evenly along the stroke
      for (let i = 0; i < n; i++) {
        const p = stroke[Math.floor((i * stroke.length) / n)];
        state.points.push(p.map(Math.round)); state.labels.push(label);
      }
    } else {
      const moved = Math.hypot(at[0] - start.at[0], at[1] - start.at[1]);
      if (moved > Math.max(state.width, state.height) / 100) state.box = boxFrom(start.at, at).map(Math.round);
      else { state.points.push(start.at.map(Math.round)); state.labels.push(label); }
    }
    start = null; stroke = null;
    updateMask().catch((err) => showError(err.message));
  });
}

function boxFrom(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

async function addReference() {
  const body = { image: state.image, class: $("class-name").value.trim(), points: state.points, labels: state.labels, box: state.box };
  const result = await api("/api/references", { json: body });
  showReferences(result.references);
  clearPrompts();
  $("mask-status").textContent = "Reference added. Add another (any class), or preview below.";
}

function showReferences(list) {
  const ul = $("references");
  ul.replaceChildren();
  if (!list.length) ul.append(el("li", { class: "muted" }, "None yet."));
  for (const ref of list) {
    const remove = el("button", { type: "button", title: "remove", onclick: async () => showReferences((await api(`/api/references/${ref.index}`, { method: "DELETE" })).references) }, "×");
    ul.append(el("li", { class: "reference" }, el("img", { src: ref.thumb, alt: ref.class }), el("b", {}, ref.class), ` ${ref.image.split("/").pop()}`, remove));
  }
}

async function upload(files, to) {
  let last = null;
  for (const file of files) {
    const headers = { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) };
    const response = await api(`/api/upload${to ? `?to=${to}` : ""}`, { method: "POST", body: file, headers });
    last = response.image;
  }
  return last;
}

// ---------- 2. preview

async function preview() {
  const button = $("preview");
  button.disabled = true;
  $("preview-status").textContent = "Segmenting a sample of the targets…";
  try {
    const result = await api("/api/preview", { json: { method: $("method").value, targets: $("targets").value.trim() } });
    const ul = $("previews");
    ul.replaceChildren();
    for (const card of result.cards) {
      const lines = card.classes.map((c) => c.found
        ? el("div", {}, `${c.class}: score ${c.score.toFixed(2)}, ${c.instances} instance${c.instances === 1 ? "" : "s"}${c.quality == null ? "" : `, expected IoU ${c.quality.toFixed(2)}`}`)
        : el("div", { class: "absent" }, `${c.class}: not in this image`));
      ul.append(el("li", { class: "preview" }, el("img", { src: card.overlay, alt: card.name }), el("div", {}, el("b", {}, card.name)), ...lines));
    }
    $("preview-status").textContent = `${result.method} on ${result.cards.length} targets of ${result.targets}: ${result.seconds.toFixed(1)} s`;
  } finally {
    button.disabled = false;
  }
}

// ---------- 3. jobs

function showJobs(jobs) {
  const ul = $("jobs");
  ul.replaceChildren();
  for (const job of jobs) {
    const total = job.total ?? 0;
    const bar = el("progress", { max: String(Math.max(total, 1)), value: String(job.done + job.failed) });
    const links = el("span", {});
    if (job.outputs.includes("coco.json")) links.append(" ", el("a", { href: `/api/jobs/${job.name}/files/coco.json`, target: "_blank" }, "coco.json"));
    if (job.outputs.includes("review.csv")) links.append(" ", el("a", { href: `/api/jobs/${job.name}/files/review.csv` }, "review.csv"));
    if (job.done) links.append(" ", el("a", { href: `/api/jobs/${job.name}/download` }, "all outputs (.zip)"));
    const li = el("li", { "data-job": job.name, "data-state": job.state },
      el("b", {}, job.name), ` ${job.method} on ${job.targets} `,
      el("span", { class: `state-${job.state}` }, job.state), el("br"), bar,
      ` ${job.done} of ${job.total ?? "?"} done, ${job.failed} failed`, links);
    if (job.failures.length) li.append(el("details", {}, el("summary", {}, "failures"), el("pre", {}, job.failures.join("\n"))));
    if (job.log_tail) li.append(el("pre", {}, job.log_tail));
    ul.append(li);
  }
}

let polling = null;
async function refreshJobs() {
  const { jobs } = await api("/api/jobs");
  showJobs(jobs);
  const running = jobs.some((j) => j.state === "running");
  if (running && !polling) polling = setInterval(() => refreshJobs().catch((e) => showError(e.message)), 1000);
  if (!running && polling) { clearInterval(polling); polling = null; }
}

async function startJob() {
  const formats = [...document.querySelectorAll("#formats input:checked")].map((i) => i.value);
  await api("/api/jobs", { json: { name: $("job-name").value.trim(), targets: $("targets").value.trim(), method: $("method").value, formats } });
  await refreshJobs();
}

// ---------- start

function guard(fn) {
  return (...args) => Promise.resolve(fn(...args)).catch((err) => showError(err.message));
}

async function main() {
  const config = await api("/api/config");
  $("root").textContent = config.root;
  $("model").textContent = `SAM: ${config.model}`;
  for (const m of config.methods) {
    $("method").append(el("option", { value: m.name, title: m.summary }, m.name));
  }
  $("method").value = config.default_method;
  for (const f of config.formats) {
    const box = el("input", { type: "checkbox", value: f });
    box.checked = config.default_formats.includes(f);
    $("formats").append(el("label", {}, box, ` ${f} `));
  }
  setupCanvas();
  $("undo").addEventListener("click", guard(() => {
    const last = state.history.pop();
    if (!last) return;
    state.points.length = last.points; state.labels.length = last.points; state.box = last.box;
    return updateMask();
  }));
  $("clear").addEventListener("click", () => clearPrompts());
  $("add-reference").addEventListener("click", guard(addReference));
  $("upload").addEventListener("change", guard(async (e) => openImage(await upload(e.target.files))));
  $("upload-targets").addEventListener("change", guard(async (e) => {
    await upload(e.target.files, "targets");
    $("targets").value = "@uploaded-targets";
  }));
  $("preview").addEventListener("click", guard(preview));
  $("start").addEventListener("click", guard(startJob));
  showReferences((await api("/api/references")).references);
  await browse("");
  await refreshJobs();
}

main().catch((err) => showError(err.message));
