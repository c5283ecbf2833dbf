// The page's behaviour (see medsweep/serving/page.py). Plain JavaScript, no dependencies. Text is
// written with textContent only (never innerHTML): a note cannot inject markup.
"use strict";

const TOKEN_KEY = "medsweep-token";
let current = null; // {predictionId, label, labels}

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function showToken() {
  const set = Boolean(token());
  $("token").value = "";
  $("token").placeholder = set ? "token set for this tab" : "the service's bearer token";
  $("forget-token").hidden = !set;
  $("token-status").textContent = set
    ? "Token set: kept in this tab only (sessionStorage) and sent with each request."
    : "Enter the service's API token once; it is kept in this tab only (sessionStorage).";
}

// One API call with the bearer token; the parsed JSON, or an Error with the service's one line.
async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token()},
    body: JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    if (response.status === 401) throw new Error("The API token was refused: enter it again above.");
    const detail = data && data.detail;
    const text = typeof detail === "string" ? detail
      : Array.isArray(detail) ? detail.map((d) => (d.loc || []).join(".") + ": " + d.msg).join("; ")
      : "HTTP " + response.status;
    throw new Error(text);
  }
  return data;
}

function renderBars(prediction) {
  const bars = $("bars");
  bars.replaceChildren();
  const inSet = new Set(prediction.prediction_set || []);
  const entries = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  entries.forEach(([name, p], i) => {
    const label = document.createElement("span");
    label.className = "bar-name" + (inSet.has(name) ? " in-set" : "");
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar" + (i === 0 ? " top" : "");
    bar.style.width = (100 * p).toFixed(1) + "%"; // CSSOM, allowed by style-src 'self' (no inline style attribute)
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", name);
    bar.setAttribute("aria-valuenow", p.toFixed(3));
    track.appendChild(bar);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = p.toFixed(3);
    bars.append(label, track, value);
  });
}

function renderSet(prediction) {
  const set = $("set");
  if (prediction.prediction_set === undefined) {
    set.textContent = "";
  } else if (prediction.label === "refer") {
    set.textContent = "Refer: the model cannot narrow this note to one label (prediction set: "
      + (prediction.prediction_set.join(", ") || "empty") + ").";
  } else {
    set.textContent = "Prediction set (" + prediction.set_size + " label" + (prediction.set_size === 1 ? "" : "s")
      + " at the promoted coverage): " + (prediction.prediction_set.join(", ") || "empty");
  }
}

function renderWords(text, explanation) {
  const box = $("words");
  box.replaceChildren();
  const words = explanation.words.filter((w) => w.segment === 0);
  const largest = Math.max(1e-12, ...words.map((w) => Math.abs(w.score)));
  let position = 0;
  for (const w of words) {
    box.append(document.createTextNode(text.slice(position, w.start)));
    const span = document.createElement("span");
    span.textContent = text.slice(w.start, w.end);
    const alpha = Math.min(1, Math.abs(w.score) / largest);
    span.style.backgroundColor = w.score >= 0 ? `rgba(0,160,0,${alpha.toFixed(2)})` : `rgba(220,0,0,${alpha.toFixed(2)})`;
    span.title = w.score.toFixed(4);
    box.append(span);
    position = w.end;
  }
  box.append(document.createTextNode(text.slice(position)));
  if (explanation.truncated) {
    const note = document.createElement("em");
    note.textContent = " (the model read only the beginning of this note)";
    box.append(note);
  }
}

async function classify() {
  showError("");
  const note = $("note").value;
  if (!token()) { showError("Enter the API token first."); return; }
  if (!note.trim()) { showError("Paste a note first."); return; }
  $("classify").disabled = true;
  try {
    const answer = await api("/predict", {texts: [note]});
    const prediction = answer.predictions[0];
    current = {predictionId: prediction.prediction_id, label: prediction.label, labels: answer.labels};
    $("label").textContent = prediction.label;
    $("label").className = prediction.label === "refer" ? "refer" : "";
    renderSet(prediction);
    renderBars(prediction);
    const select = $("right-label");
    select.replaceChildren(...answer.labels.map((name) => new Option(name, name)));
    select.value = answer.labels.find((name) => name !== prediction.label) || answer.labels[0];
    $("right").disabled = prediction.label === "refer" || !prediction.prediction_id;
    $("wrong").disabled = !prediction.prediction_id;
    $("comment").value = "";
    $("feedback-status").textContent = "";
    $("words").textContent = "…";
    $("result").hidden = false;
    try {
      renderWords(note, await api("/explain", {text: note}));
    } catch (e) {
      $("words").textContent = "No explanation: " + e.message;
    }
  } catch (e) {
    showError(e.message);
  } finally {
    $("classify").disabled = false;
  }
}

async function sendFeedback(right) {
  if (!current) return;
  const status = $("feedback-status");
  const body = {prediction_id: current.predictionId, label: right ? current.label : $("right-label").value};
  const comment = $("comment").value.trim();
  if (comment) body.comment = comment;
  try {
    const saved = await api("/feedback", body);
    status.className = "ok";
    status.textContent = "Thank you: feedback #" + saved.id + " saved (" + (saved.agrees ? "right" : "wrong, right label "
      + saved.label) + ").";
    $("right").disabled = $("wrong").disabled = true;
  } catch (e) {
    status.className = "error";
    status.textContent = "Feedback not saved: " + e.message;
  }
}

async function showModel() {
  try {
    const health = await (await fetch("/health", {cache: "no-store"})).json();
    $("model").textContent = "model " + (health.version || "unversioned") + ": " + health.labels.join(", ");
  } catch (e) {
    $("model").textContent = "model: the service did not answer";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("save-token").addEventListener("click", () => {
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    showToken();
  });
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") $("save-token").click(); });
  $("forget-token").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showToken(); });
  $("classify").addEventListener("click", classify);
  $("right").addEventListener("click", () => sendFeedback(true));
  $("wrong").addEventListener("click", () => sendFeedback(false));
  showToken();
  showModel();
});
