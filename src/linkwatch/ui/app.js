// The live funnel page: polls ui/data.json and redraws. Plain JS, no framework.
// Every value from the worker is put in the page as text (textContent), never as HTML:
// link ids and user ids come from input events.
"use strict";

const POLL_MS = 2000;
const number = new Intl.NumberFormat("en-US");
const percent = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });
let previous = null; // { events, at }: for events/s between two polls

// el("td", {class: "num", "data-metric": "x"}, "text", child, ...)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A number the tests read back: `metric` names it (see tests/integration/test_ui.py).
function count(metric, value, tag = "td") {
  return el(tag, { class: "num", "data-metric": metric }, number.format(value));
}

function bar(fraction) {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`; // CSSOM: allowed by the CSP
  return el("span", { class: "bar" }, fill);
}

function utc(timestamp) {
  return timestamp ? timestamp.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "–";
}

function tile(label, metric, value) {
  return el("div", { class: "tile" }, el("dt", {}, label), count(metric, value, "dd"));
}

function renderPipeline(data) {
  const now = performance.now();
  let rate = "–";
  if (previous && now > previous.at) {
    rate = (Math.max(0, data.events - previous.events) / ((now - previous.at) / 1000)).toFixed(1);
  }
  previous = { events: data.events, at: now };
  const tiles = [
    tile("valid events", "events", data.events),
    el("div", { class: "tile" }, el("dt", {}, "events/s"), el("dd", { id: "rate" }, rate)),
  ];
  for (const [type, value] of Object.entries(data.triggers)) {
    tiles.push(tile(`${type.replace("_", " ")} triggers`, `triggers.${type}`, value));
  }
  tiles.push(
    tile("resolutions", "resolutions", data.resolutions),
    tile("rejected", "rejected", data.rejected),
    tile("late", "late", data.late),
    tile("duplicate", "duplicate", data.duplicate),
  );
  document.getElementById("pipeline").replaceChildren(...tiles);
}

function renderJourney(journey) {
  const first = journey.steps.length ? journey.steps[0].reached : 0;
  const rows = journey.steps.map((step, index) =>
    el(
      "tr",
      { "data-step": step.name },
      el("td", {}, step.name),
      count(`reached.${journey.name}.${step.name}`, step.reached),
      el("td", { class: "num" }, first ? percent.format(step.reached / first) : "–"),
      el("td", {}, bar(first ? step.reached / first : 0)),
      index ? count(`dropped.${journey.name}.${step.name}`, step.dropped) : el("td", {}),
      el("td", { class: "cause" }, step.cause || ""),
    ),
  );
  const head = el(
    "tr",
    {},
    ...["step", "reached", "of started", "", "dropped off before", "cause"].map((name, i) =>
      el("th", [1, 2, 4].includes(i) ? { class: "num" } : {}, name),
    ),
  );
  const j = journey.name;
  return el(
    "article",
    { class: "journey", "data-journey": j },
    el("h3", {}, j, " ", el("small", {}, journey.description)),
    el(
      "dl",
      { class: "inline" },
      el("dt", {}, "started"), count(`started.${j}`, journey.started, "dd"),
      el("dt", {}, "open"), count(`open.${j}`, journey.open, "dd"),
      el("dt", {}, "converted"), count(`converted.${j}`, journey.converted, "dd"),
    ),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
  );
}

function renderCauses(causes) {
  const most = Math.max(1, ...Object.values(causes));
  const rows = Object.entries(causes).map(([cause, value]) =>
    el("tr", {}, el("td", {}, cause), count(`causes.${cause}`, value), el("td", {}, bar(value / most))),
  );
  document.getElementById("causes").replaceChildren(...rows);
}

function empty(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, text));
}

function renderBroken(data) {
  const rows = data.broken.map((link) =>
    el(
      "tr",
      { class: "alert" },
      el("td", {}, link.kind),
      el("td", { class: "id" }, link.id),
      el("td", {}, utc(link.since)),
      el("td", {}, link.reasons.join(", ")),
      el("td", { class: "num" }, number.format(link.clicks)),
      el("td", { class: "num" }, number.format(link.dead_ends)),
      el("td", { class: "num" }, percent.format(link.dead_end_rate)),
      el("td", { class: "num" }, percent.format(link.dropoff_rate)),
    ),
  );
  document.getElementById("broken").replaceChildren(...(rows.length ? rows : [empty(8, "none")]));
  // The gauge (linkwatch_links_broken) counts them all; the table lists the latest alerts.
  const summary = Object.entries(data.links_broken).map(([kind, value]) =>
    el("span", {}, `${kind}s `, el("b", { "data-metric": `links_broken.${kind}` }, number.format(value))),
  );
  document.getElementById("broken-summary").replaceChildren("broken now: ", ...summary);
}

function renderRecent(data) {
  const rows = data.recent.map((t) =>
    el(
      "tr",
      { class: t.type },
      el("td", {}, utc(t.event_time)),
      el("td", {}, t.type.replace("_", " ")),
      el("td", {}, t.journey || "–"),
      el("td", {}, t.step || "–"),
      el("td", {}, t.cause),
      el("td", { class: "id" }, t.user_id),
    ),
  );
  const none = empty(6, "none yet");
  document.getElementById("recent").replaceChildren(...(rows.length ? rows : [none]));
}

function render(data) {
  renderPipeline(data);
  document.getElementById("funnels").replaceChildren(...data.journeys.map(renderJourney));
  renderCauses(data.causes);
  renderBroken(data);
  renderRecent(data);
}

function setStatus(text, ok) {
  const status = document.getElementById("status");
  status.textContent = text;
  document.body.classList.toggle("stale", !ok); // keep the last numbers, but greyed out
}

async function poll() {
  try {
    const response = await fetch("ui/data.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    render(data);
    setStatus(`live · updated ${utc(data.generated_at)} UTC`, true);
  } catch (error) {
    setStatus(`connection lost (${error.message}); retrying…`, false);
  } finally {
    setTimeout(poll, POLL_MS); // one request at a time, however slow the worker answers
  }
}

poll();
