// The ranking page (flows/ranking_page.py): one waiting prompt at a time, its K responses side by
// side, the ranking in the sticky bar. The server's labels file is the only state: this script
// keeps nothing that is not yet submitted, so a reload shows the next prompt still waiting.
"use strict";

const $ = (id) => document.getElementById(id);
const FLAG_TEXT = { not_an_answer: "not an answer", unsafe: "unsafe" };

let state = null;   // the server's /api/state
let cur = null;     // the prompt on screen: {key, id, kind, prompt, responses}
let K = 0;
let picks = [];     // 0-based response indices, best first
let autoLast = false; // the last of picks was filled in (the only one left), not chosen
let flags = [];     // per response: a Set of flag names
let busy = false;   // a submit is on its way

function remaining() {
  const out = [];
  for (let i = 0; i < K; i++) if (!picks.includes(i)) out.push(i);
  return out;
}

function ordinal(n) {
  const s = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th");
  return n + s;
}

function duration(s) {
  if (s < 90) return Math.max(1, Math.round(s)) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "ok";
}

// ---- choosing ---------------------------------------------------------------------------

function changed() {  // the person goes on ranking: a refusal shown before no longer applies
  if ($("message").className === "error") say("", false);
  render();
}

function fillLast() {  // one response left: it is the worst, no key needed
  if (K > 1 && picks.length === K - 1) {
    picks.push(remaining()[0]);
    autoLast = true;
  }
}

function pick(i) {  // key i+1 or a click on a chip: the best of those remaining
  if (!cur || busy || i < 0 || i >= K || picks.includes(i)) return;
  picks.push(i);
  autoLast = false;
  fillLast();
  changed();
}

function undo() {
  if (!cur || busy || !picks.length) return;
  picks.pop();
  if (autoLast) picks.pop();  // the filled-in last goes with the choice that implied it
  autoLast = false;
  changed();
}

function place(i, pos) {  // drag and drop into the ranking at position pos
  const rest = picks.filter((x) => x !== i);
  rest.splice(Math.min(pos, rest.length), 0, i);
  picks = rest;
  autoLast = false;
  fillLast();
  changed();
}

function unplace(i) {  // dragged back out of the ranking
  picks = picks.filter((x) => x !== i);
  autoLast = false;
  changed();
}

// ---- talking to the server --------------------------------------------------------------

async function load(key) {
  let r;
  try {
    r = await fetch("api/state" + (key ? "?key=" + encodeURIComponent(key) : ""), { cache: "no-store" });
  } catch (e) {
    say("The ranking server does not answer (stopped?). Every submitted answer is saved; start it again and reload.", true);
    return;
  }
  if (!r.ok) { say((await r.text()).trim(), true); return; }
  state = await r.json();
  showProgress(state.done, state.total);
  showQueue();
  if (!state.current) { showDone(); return; }
  if (!cur || cur.key !== state.current.key) {
    cur = state.current;
    K = cur.responses.length;
    picks = [];
    autoLast = false;
    flags = cur.responses.map(() => new Set());
    $("note").value = "";
    renderPrompt();
  }
  render();
}

async function submit() {
  if (!cur || busy) return;
  if (picks.length !== K) { say(`Rank all ${K} responses first (${picks.length} ranked).`, true); return; }
  busy = true;
  const body = { key: cur.key, ranking: picks.map((i) => i + 1) };
  if (flags.some((f) => f.size)) body.flags = flags.map((f) => state.flags.filter((name) => f.has(name)));
  const note = $("note").value.trim();
  if (note) body.note = note;
  try {
    let r;
    try {
      r = await fetch("api/rank", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    } catch (e) {
      say("Not saved: the ranking server does not answer. Start it again; this prompt will still be waiting.", true);
      return;
    }
    if (!r.ok) {
      say("Not saved: " + (await r.text()).trim(), true);
      if (r.status === 409 || r.status === 404) { cur = null; await load(); }
      return;
    }
    const res = await r.json();
    say(`Saved ${res.saved}: ${res.ranking.join(" > ")}`, false);
    cur = null;
    if (res.done === res.total) { showProgress(res.done, res.total); state.queue = []; showQueue(); showDone(); return; }
    await load();
  } finally {
    busy = false;
  }
}

// ---- drawing ----------------------------------------------------------------------------

function showProgress(done, total) {
  $("count").textContent = `${done} / ${total} ranked`;
  $("meter-fill").style.width = (total ? (100 * done) / total : 100) + "%";
  const per = state && state.seconds_per_prompt;
  const left = total - done;
  $("eta").textContent = !left ? "done" : per == null ? "time left: after the first answer"
    : `about ${duration(per * left)} left at ${duration(per)} a prompt`;
}

function showQueue() {
  const list = $("queue-list");
  list.replaceChildren();
  $("queue-count").textContent = `(${state.queue.length})`;
  for (const q of state.queue) {
    const li = document.createElement("li");
    li.textContent = q.id;
    li.title = q.prompt;
    li.dataset.key = q.key;
    if (state.current && q.key === state.current.key) li.className = "current";
    li.addEventListener("click", () => { if (!busy) load(q.key); });
    list.append(li);
  }
}

function showDone() {
  cur = null;
  $("work").hidden = true;
  $("done").hidden = false;
  $("done-file").textContent = state ? state.labels_file : "the labels file";
  $("ranking").replaceChildren();
  $("pool").replaceChildren();
  $("submit").disabled = true;
}

function chip(i, place) {
  const el = document.createElement("li");
  el.className = "chip";
  el.dataset.i = i;
  el.draggable = true;
  if (place) {
    const p = document.createElement("span");
    p.className = "place";
    p.textContent = ordinal(place);
    el.append(p);
  }
  el.append(String(i + 1));
  el.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(i)); e.dataTransfer.effectAllowed = "move"; el.classList.add("dragging"); });
  el.addEventListener("dragend", () => el.classList.remove("dragging"));
  return el;
}

function renderPrompt() {
  $("work").hidden = false;
  $("done").hidden = true;
  $("prompt-id").textContent = cur.id;
  $("prompt-kind").textContent = cur.kind ? "· " + cur.kind : "";
  $("prompt").textContent = cur.prompt;
  $("kmax").textContent = String(K);
  const box = $("responses");
  box.replaceChildren();
  cur.responses.forEach((text, i) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.i = i;
    const head = document.createElement("div");
    head.className = "card-head";
    head.draggable = true;
    head.title = `press ${i + 1}, or drag into the ranking`;
    head.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(i)); e.dataTransfer.effectAllowed = "move"; });
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = String(i + 1);
    const badge = document.createElement("span");
    badge.className = "badge";
    head.append(num, "Response " + (i + 1), badge);
    const body = document.createElement("pre");
    if (text.trim()) body.textContent = text;
    else { body.textContent = "(empty)"; body.className = "empty"; }
    const fl = document.createElement("div");
    fl.className = "flags";
    for (const name of state.flags) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.flag = name;
      box.addEventListener("change", () => {
        if (box.checked) flags[i].add(name); else flags[i].delete(name);
        card.classList.toggle("flagged", flags[i].size > 0);
        box.blur();  // keys go back to ranking
      });
      label.append(box, FLAG_TEXT[name] || name);
      fl.append(label);
    }
    card.append(head, body, fl);
    box.append(card);
  });
}

function render() {
  if (!cur) return;
  const ranking = $("ranking");
  ranking.replaceChildren(...picks.map((i, n) => {
    const el = chip(i, n + 1);
    if (autoLast && n === K - 1) { el.classList.add("auto"); el.title = "the only one left"; }
    return el;
  }));
  $("pool").replaceChildren(...remaining().map((i) => {
    const el = chip(i, 0);
    el.title = `press ${i + 1}: the best of those left`;
    el.addEventListener("click", () => pick(i));
    return el;
  }));
  for (const card of document.querySelectorAll(".card")) {
    const n = picks.indexOf(Number(card.dataset.i));
    card.classList.toggle("ranked", n >= 0);
    card.querySelector(".badge").textContent = n >= 0 ? ordinal(n + 1) : "";
  }
  $("submit").disabled = picks.length !== K;
  $("undo").disabled = !picks.length;
}

// ---- input ------------------------------------------------------------------------------

function dropIndex(list, x, y, dragged) {  // where in the chips a drop at (x, y) lands
  let pos = 0;
  for (const el of list.querySelectorAll(".chip")) {
    if (Number(el.dataset.i) === dragged) continue;
    const r = el.getBoundingClientRect();
    if (y > r.bottom || (y >= r.top && x > r.left + r.width / 2)) pos++;
  }
  return pos;
}

function dropZone(el, onDrop) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    const i = Number(e.dataTransfer.getData("text/plain"));
    if (!cur || busy || !Number.isInteger(i) || i < 0 || i >= K) return;
    onDrop(i, e);
  });
}

dropZone($("ranking"), (i, e) => place(i, dropIndex($("ranking"), e.clientX, e.clientY, i)));
dropZone($("pool"), (i) => unplace(i));

$("submit").addEventListener("click", (e) => { e.currentTarget.blur(); submit(); });
$("undo").addEventListener("click", (e) => { e.currentTarget.blur(); undo(); });

document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox"))) {
    if (e.key === "Escape") t.blur();
    else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[1-9]$/.test(e.key)) { e.preventDefault(); pick(Number(e.key) - 1); }
  else if (e.key === "Backspace") { e.preventDefault(); undo(); }
  else if (e.key === "Enter") { e.preventDefault(); submit(); }
});

load();
