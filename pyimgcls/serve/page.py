"""``GET /``: one self-contained HTML page (no external scripts, fonts or styles) to drop or pick an
image and see the top-5 classes with bars. It posts the file to ``/v1/predict`` as multipart field
``image``; an API key typed in the page is sent as ``Authorization: Bearer``."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pyimgcls serve</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { background: #eef4ff; border-color: #36c; }
  #preview { width: 6rem; height: auto; image-rendering: pixelated; display: none; margin: 1rem auto 0; }
  table { width: 100%; border-collapse: collapse; margin-top: 1rem; }
  td { padding: 0.2rem 0.4rem; }
  td.label { width: 30%; white-space: nowrap; }
  td.pct { width: 5.5rem; text-align: right; font-variant-numeric: tabular-nums; }
  .track { background: #eee; height: 1rem; border-radius: 3px; }
  .bar { background: #36c; height: 100%; border-radius: 3px; }
  #status.error { color: #b00; }
  #key-row { margin-top: 1rem; font-size: 0.9rem; }
</style>
</head>
<body>
<h1>pyimgcls serve: <span id="model">...</span></h1>
<div id="drop" tabindex="0">Drop an image here, or click to choose one
  <input id="file" type="file" accept="image/*" hidden>
  <img id="preview" alt="the image sent">
</div>
<div id="key-row" hidden><label>API key <input id="key" type="password" autocomplete="off"></label></div>
<p id="status"></p>
<table id="results"><tbody></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), file = $("file"), statusEl = $("status"), rows = $("results").tBodies[0];

function setStatus(text, isError) {
  statusEl.textContent = text;
  statusEl.className = isError ? "error" : "";
}

fetch("v1/models").then((r) => r.json()).then((info) => {
  const m = info.models[0];
  $("model").textContent = `${m.name} (${m.num_classes} classes, ${m.input.width}x${m.input.height})`;
  $("key-row").hidden = !m.auth_required;
}).catch(() => setStatus("cannot reach the server", true));

async function classify(f) {
  if (!f) return;
  $("preview").src = URL.createObjectURL(f);
  $("preview").style.display = "block";
  rows.replaceChildren();
  setStatus(`classifying ${f.name} ...`, false);
  const body = new FormData();
  body.append("image", f, f.name);
  const headers = {};
  const key = $("key").value.trim();
  if (key) headers["Authorization"] = `Bearer ${key}`;
  let answer;
  try {
    const r = await fetch("v1/predict?top_k=5", { method: "POST", body, headers });
    answer = await r.json();
    if (!r.ok) { setStatus(`error ${r.status}: ${answer.error}`, true); return; }
  } catch (e) {
    setStatus(`request failed: ${e}`, true);
    return;
  }
  for (const p of answer.predictions) {
    const tr = rows.insertRow();
    tr.className = "prediction";
    tr.dataset.index = p.index;
    tr.dataset.probability = p.probability;
    const label = tr.insertCell(), bar = tr.insertCell(), pct = tr.insertCell();
    label.className = "label";
    label.textContent = p.label;
    bar.innerHTML = '<div class="track"><div class="bar"></div></div>';
    bar.querySelector(".bar").style.width = `${(100 * p.probability).toFixed(2)}%`;
    pct.className = "pct";
    pct.textContent = `${(100 * p.probability).toFixed(2)}%`;
  }
  setStatus(`${f.name}: top ${answer.predictions.length} of ${answer.model}`, false);
}

drop.addEventListener("click", () => file.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") file.click(); });
file.addEventListener("change", () => classify(file.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  classify(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
