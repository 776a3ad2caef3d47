// The dashboard: follows GET /v1/pipeline/events (the graph once, then the
// status every second) and draws the pipeline, its stages, streams, delivery
// and latest notifications. Its buttons call the admin API, signed with the
// key the operator signed in with, so the key's policy decides.
"use strict";

const KEY_STORE = "weir.access-key";
const SVG = "http://www.w3.org/2000/svg";
const NODE = { width: 150, height: 58, columnGap: 74, rowGap: 16, pad: 8 };

let key = JSON.parse(sessionStorage.getItem(KEY_STORE) || "null");
let feed = null; // the AbortController of the open feed
let graph = null; // the graph event, with the elements drawn for it
let previous = null; // the last counts and when they were taken
const rates = new Map(); // edge id -> records per second, smoothed
const cards = new Map(); // stage name -> the elements of its card
const deliveryRows = new Map(); // delivery name -> the cells and button of its row

// ---- small helpers -------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const number = new Intl.NumberFormat("en-US");
const fmt = (n) => number.format(n);
const compact = (n) => (n >= 10000 ? new Intl.NumberFormat("en-US", { notation: "compact" }).format(n) : fmt(n));

function rateText(perSecond) {
  if (perSecond >= 100) return `${compact(Math.round(perSecond))}/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}/s`;
  return `${perSecond.toFixed(2)}/s`;
}

function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

const eventTime = (ms) => new Date(ms).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z");

const bytes = (n) =>
  n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;

// ---- the API, signed -----------------------------------------------------

async function call(method, path, signal) {
  const headers = key ? await SigV4.sign(key, method, path, "") : {};
  return fetch(path, { method, headers, signal, cache: "no-store" });
}

async function errorOf(response) {
  const answer = await response.json().catch(() => ({}));
  return (answer.error && answer.error.message) || answer.message || `${response.status} ${response.statusText}`;
}

// ---- signing in ----------------------------------------------------------

function showSignIn(message) {
  $("#dashboard").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-out").hidden = true;
  $("#who").textContent = "";
  $("#sign-in-error").textContent = message || "";
  setConnection("signed out", "");
}

$("#sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = { id: $("#key-id").value.trim(), secret: $("#key-secret").value };
  sessionStorage.setItem(KEY_STORE, JSON.stringify(key));
  $("#key-secret").value = "";
  follow();
});

$("#sign-out").addEventListener("click", () => {
  key = null;
  sessionStorage.removeItem(KEY_STORE);
  if (feed) feed.abort();
  showSignIn("");
});

function setConnection(text, state) {
  const pill = $("#connection");
  pill.textContent = text;
  pill.className = `pill ${state}`;
}

// ---- the live feed -------------------------------------------------------

async function follow() {
  if (feed) feed.abort();
  const controller = new AbortController();
  feed = controller;
  setConnection("connecting", "");
  let response;
  try {
    response = await call("GET", "/v1/pipeline/events", controller.signal);
  } catch (e) {
    return retry(controller);
  }
  if (response.status === 400 || response.status === 403) {
    // No key yet, or one the API refuses: say why and ask for one.
    const hadKey = key !== null;
    const message = await errorOf(response);
    key = null;
    sessionStorage.removeItem(KEY_STORE);
    return showSignIn(hadKey ? message : "");
  }
  if (!response.ok) return retry(controller);
  $("#sign-in").hidden = true;
  $("#dashboard").hidden = false;
  $("#sign-out").hidden = !key;
  $("#who").textContent = key ? `signed in as ${key.id}` : "open access (no keys)";
  setConnection("live", "live");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      received(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
  retry(controller);
}

function retry(controller) {
  if (controller.signal.aborted || feed !== controller) return;
  setConnection("reconnecting", "down");
  setTimeout(() => feed === controller && follow(), 2000);
}

// One server-sent event: `event:` and `data:` lines (`:` starts a keep-alive comment).
function received(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length === 0) return;
  const payload = JSON.parse(data.join("\n"));
  if (name === "graph") drawGraph(payload);
  else if (name === "status") update(payload);
}

// ---- the graph -----------------------------------------------------------

// Columns by the longest path from a node nothing feeds; rows in a column
// ordered by where their inputs are, to keep arrows short and uncrossed.
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < nodes.length; pass++) {
    let changed = false;
    for (const e of edges) {
      if (depth.has(e.from) && depth.has(e.to) && depth.get(e.to) < depth.get(e.from) + 1) {
        depth.set(e.to, depth.get(e.from) + 1);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of nodes) (columns[depth.get(n.id)] ||= []).push(n);
  const row = new Map();
  const inputsRow = (n) => {
    const rows = edges.filter((e) => e.to === n.id && row.has(e.from)).map((e) => row.get(e.from));
    return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
  };
  const tallest = Math.max(...columns.map((c) => (c ? c.length : 0)));
  const place = new Map();
  columns.forEach((column, c) => {
    if (!column) return;
    if (c > 0) column.sort((a, b) => inputsRow(a) - inputsRow(b));
    const offset = ((tallest - column.length) * (NODE.height + NODE.rowGap)) / 2;
    column.forEach((n, r) => {
      row.set(n.id, r + (tallest - column.length) / 2);
      place.set(n.id, {
        x: NODE.pad + c * (NODE.width + NODE.columnGap),
        y: NODE.pad + offset + r * (NODE.height + NODE.rowGap),
      });
    });
  });
  const width = NODE.pad * 2 + columns.length * NODE.width + (columns.length - 1) * NODE.columnGap;
  const height = NODE.pad * 2 + tallest * NODE.height + (tallest - 1) * NODE.rowGap;
  return { place, width, height };
}

function drawGraph(g) {
  $("#pipeline-name").textContent = g.pipeline;
  $("#description").textContent = g.description;
  document.title = `weir: ${g.pipeline}`;
  const svg = $("#graph");
  svg.replaceChildren();
  const { place, width, height } = layout(g.nodes, g.edges);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const edgeLayer = el("svg:g");
  const labelLayer = el("svg:g");
  const nodeLayer = el("svg:g");
  svg.append(edgeLayer, nodeLayer, labelLayer);
  const drawn = { ...g, edgeElements: new Map(), nodeElements: new Map() };
  for (const e of g.edges) {
    const from = place.get(e.from);
    const to = place.get(e.to);
    if (!from || !to) continue;
    const x1 = from.x + NODE.width;
    const y1 = from.y + NODE.height / 2;
    const x2 = to.x;
    const y2 = to.y + NODE.height / 2;
    const bend = (x2 - x1) / 2;
    const path = el("svg:path", {
      class: `edge ${e.kind}`,
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      "data-edge": e.id,
    });
    path.append(el("svg:title", { text: `${e.from} → ${e.to} (${e.kind})` }));
    const label = el("svg:text", { class: "rate", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 3, "text-anchor": "middle" });
    edgeLayer.append(path);
    labelLayer.append(label);
    drawn.edgeElements.set(e.id, { path, label });
  }
  for (const n of g.nodes) {
    const at = place.get(n.id);
    const group = el("svg:g", {
      class: `node ${n.kind}`,
      transform: `translate(${at.x},${at.y})`,
      "data-node": n.id,
      "data-kind": n.kind,
    });
    group.append(el("svg:title", { text: `${n.kind} ${n.name}${n.detail ? `: ${n.detail}` : ""}` }));
    group.append(el("svg:rect", { width: NODE.width, height: NODE.height, rx: 6 }));
    const name = el("svg:text", { class: "name", x: 8, y: 17, text: clip(n.name, 20) });
    const first = el("svg:text", { class: "figure", x: 8, y: 33, text: clip(n.detail || n.kind, 24) });
    const second = el("svg:text", { class: "figure", x: 8, y: 49 });
    group.append(name, first, second);
    nodeLayer.append(group);
    drawn.nodeElements.set(n.id, { group, first, second });
  }
  graph = drawn;
  previous = null;
}

const clip = (text, length) => (text.length > length ? `${text.slice(0, length - 1)}…` : text);

// ---- each second's status ------------------------------------------------

function update(tick) {
  const { status, counts } = tick;
  const now = status.now_ms;
  if (previous && now > previous.at) {
    const seconds = (now - previous.at) / 1000;
    for (const [id, count] of Object.entries(counts)) {
      const instant = Math.max(0, (count - (previous.counts[id] || 0)) / seconds);
      const smoothed = rates.has(id) ? rates.get(id) * 0.4 + instant * 0.6 : instant;
      rates.set(id, smoothed < 0.005 ? 0 : smoothed);
    }
  }
  previous = { at: now, counts };
  if (graph) updateGraph(tick);
  updateStages(tick);
  updateStreams(status);
  updateDeliveries(tick);
  updateNotifications(tick.notifications);
}

function updateGraph(tick) {
  const { status, counts } = tick;
  const into = new Map();
  for (const e of graph.edges) {
    const drawn = graph.edgeElements.get(e.id);
    if (!drawn) continue;
    const rate = rates.get(e.id) || 0;
    const count = counts[e.id] || 0;
    drawn.path.classList.toggle("flowing", rate > 0);
    drawn.label.textContent = rate > 0 ? rateText(rate) : count > 0 ? compact(count) : "";
    into.set(e.to, (into.get(e.to) || 0) + count);
  }
  const outOf = (id) => graph.edges.filter((e) => e.from === id).reduce((sum, e) => sum + (counts[e.id] || 0), 0);
  for (const n of graph.nodes) {
    const drawn = graph.nodeElements.get(n.id);
    let first = null;
    let second = "";
    if (n.kind === "stream") {
      const lags = status.consumers.filter((c) => c.stream === n.name);
      const lag = lags.reduce((max, c) => Math.max(max, c.lag_records), 0);
      const behind = lags.reduce((max, c) => Math.max(max, c.lag_ms), 0);
      first = `${compact(status.streams[n.name] || 0)} records`;
      second = lags.length ? `lag ${compact(lag)}${lag ? ` · ${duration(behind)}` : ""}` : "no readers";
    } else if (n.kind === "stage") {
      const stage = status.stages.find((s) => s.name === n.name);
      if (stage) {
        first = stage.plugin;
        const pending = tick.pending_dead_letters[n.name] || 0;
        const watermark = stage.windows && stage.windows.watermark_ms;
        second = watermark != null ? `wm lag ${duration(Math.max(0, status.now_ms - watermark))}` : `${compact(stage.records_in)} in`;
        if (pending) second += ` · ${compact(pending)} dead`;
        drawn.group.classList.toggle("failing", stage.phase !== "running" && stage.phase !== "finished");
      }
    } else if (n.kind === "delivery") {
      const d = status.deliveries.find((x) => x.name === n.name);
      if (d) {
        first = `${compact(d.records_buffered)} buffered`;
        second = `${compact(d.objects)} objects · ${compact(d.rows_loaded)} rows`;
      }
    } else if (n.kind === "channel") {
      const c = status.channels.find((x) => x.name === n.name);
      second = `${compact(c ? c.sent : 0)} sent`;
    } else if (n.kind === "source") {
      second = `${compact(outOf(n.id))} records`;
    } else {
      second = `${compact(into.get(n.id) || 0)} ${n.kind === "warehouse" ? "rows" : "records"}`;
    }
    if (first !== null) drawn.first.textContent = clip(first, 24);
    drawn.second.textContent = second;
  }
}

function updateStages(tick) {
  const container = $("#stages");
  for (const stage of tick.status.stages) {
    let card = cards.get(stage.name);
    if (!card) {
      card = stageCard(stage.name);
      cards.set(stage.name, card);
      container.append(card.root);
    }
    card.phase.textContent = stage.phase;
    card.phase.className = `phase ${stage.phase}`;
    card.plugin.textContent = stage.plugin;
    card.records.textContent = `${fmt(stage.records_in)} in · ${fmt(stage.records_out)} out`;
    const rate = graph
      ? graph.edges.filter((e) => e.to === `stage:${stage.name}`).reduce((sum, e) => sum + (rates.get(e.id) || 0), 0)
      : 0;
    card.rate.textContent = rateText(rate);
    const pending = tick.pending_dead_letters[stage.name];
    card.deadLetters.textContent = `${pending === undefined ? "…" : fmt(pending)} pending · ${fmt(stage.dead_lettered)} since start`;
    card.redrive.disabled = !pending;
    const failures = Object.entries(stage.plugin_failures || {}).map(([kind, n]) => `${n} ${kind}`);
    card.failures.textContent = failures.length ? failures.join(", ") : "none";
    if (stage.windows) {
      card.windowRow.forEach((e) => (e.hidden = false));
      const w = stage.windows;
      card.watermark.textContent =
        w.watermark_ms == null
          ? "none yet"
          : `${eventTime(w.watermark_ms)} (${duration(Math.max(0, tick.status.now_ms - w.watermark_ms))} behind)`;
      card.late.textContent = `${fmt(stage.late)} late · ${fmt(stage.revisions)} revised · ${fmt(w.open_windows)} open`;
    }
    card.error.textContent = stage.last_error || "";
    card.versionsSummary.textContent = `versions: ${stage.versions.length} (swaps ${fmt(stage.swaps)}, rollbacks ${fmt(stage.rollbacks)})`;
    const history = stage.versions.slice().reverse();
    const historyText = history.map((v) => `${v.plugin} ${v.since} ${v.active} ${v.records_in} ${v.failures}`).join("\n");
    if (card.history.dataset.text !== historyText) {
      card.history.dataset.text = historyText;
      card.history.replaceChildren(
        ...history.map((v) =>
          el("li", {
            class: v.active ? "active" : "",
            text: `${v.plugin}${v.active ? " (running)" : ""}, since ${v.since}: ${fmt(v.records_in)} in, ${fmt(v.failures)} failed batches`,
          }),
        ),
      );
    }
    const earlier = stage.versions.filter((v) => !v.active);
    card.rollback.disabled = earlier.length === 0;
    card.rollback.dataset.to = earlier.length ? earlier[earlier.length - 1].plugin : "";
  }
}

function stageCard(name) {
  const figure = (label, key) => {
    const dt = el("dt", { text: label });
    const dd = el("dd", { "data-figure": key });
    return [dt, dd];
  };
  const [pluginDt, plugin] = figure("plugin", "plugin");
  const [recordsDt, records] = figure("records", "records");
  const [rateDt, rate] = figure("rate", "rate");
  const [deadDt, deadLetters] = figure("dead letters", "dead-letters");
  const [failDt, failures] = figure("plugin failures", "failures");
  const [wmDt, watermark] = figure("watermark", "watermark");
  const [lateDt, late] = figure("windows", "late");
  for (const e of [wmDt, watermark, lateDt, late]) e.hidden = true;
  const phase = el("span", { class: "phase" });
  const error = el("p", { class: "error" });
  const history = el("ol");
  const versionsSummary = el("summary");
  const rollback = el("button", { type: "button", "data-action": "rollback", text: "Roll back" });
  const redrive = el("button", { type: "button", "data-action": "redrive", text: "Redrive dead letters" });
  const result = el("p", { class: "result", role: "status" });
  const root = el(
    "article",
    { class: "stage", "data-stage": name },
    el("h3", {}, el("span", { text: name }), phase),
    el("dl", {}, pluginDt, plugin, recordsDt, records, rateDt, rate, deadDt, deadLetters, failDt, failures, wmDt, watermark, lateDt, late),
    error,
    el("details", {}, versionsSummary, history),
    el("div", { class: "actions" }, rollback, redrive),
    result,
  );
  const card = { root, phase, plugin, records, rate, deadLetters, failures, watermark, late, windowRow: [wmDt, watermark, lateDt, late], error, history, versionsSummary, rollback, redrive, result };
  confirming(rollback, () => `Roll back to ${rollback.dataset.to}?`, async () => {
    const response = await call("POST", `/v1/stages/${encodeURIComponent(name)}/plugin/rollback`);
    if (!response.ok) return [false, `not rolled back: ${await errorOf(response)}`];
    const running = await response.json();
    return [true, `rolled back: ${running.plugin} runs now`];
  }, result);
  confirming(redrive, () => "Redrive them all?", async () => {
    const response = await call("POST", `/v1/stages/${encodeURIComponent(name)}/dead-letters/redrive`);
    if (!response.ok) return [false, `not redriven: ${await errorOf(response)}`];
    const done = await response.json();
    return [true, `redriven: ${fmt(done.redriven)}, set aside again: ${fmt(done.failed_again)}`];
  }, result);
  return card;
}

// A button that asks once more before it acts (the second click within 5 s acts).
function confirming(button, question, action, result) {
  const label = button.textContent;
  let timer = null;
  const reset = () => {
    clearTimeout(timer);
    button.textContent = label;
    button.classList.remove("confirm");
  };
  button.addEventListener("click", async () => {
    if (!button.classList.contains("confirm")) {
      button.textContent = question();
      button.classList.add("confirm");
      timer = setTimeout(reset, 5000);
      return;
    }
    reset();
    button.disabled = true;
    result.className = "result";
    result.textContent = "working…";
    try {
      const [ok, message] = await action();
      result.textContent = message;
      result.className = ok ? "result" : "result failed";
    } catch (e) {
      result.textContent = `failed: ${e.message}`;
      result.className = "result failed";
    }
    button.disabled = false;
  });
}

function rows(table, entries) {
  const body = $(`${table} tbody`);
  body.replaceChildren(...entries.map((cells) => el("tr", {}, ...cells.map((text) => el("td", { text: String(text) })))));
}

function updateStreams(status) {
  rows(
    "#streams",
    Object.entries(status.streams).map(([name, records]) => {
      const lags = status.consumers.filter((c) => c.stream === name);
      const lag = lags.reduce((max, c) => Math.max(max, c.lag_records), 0);
      const behind = lags.reduce((max, c) => Math.max(max, c.lag_ms), 0);
      const puts = status.puts[name];
      return [name, fmt(records), fmt(lag), lag ? duration(behind) : "–", fmt(puts ? puts.throttled : 0)];
    }),
  );
}

// A row per delivery stream, made once (its button keeps its state), its cells updated.
function updateDeliveries(tick) {
  const body = $("#deliveries tbody");
  for (const d of tick.status.deliveries) {
    let row = deliveryRows.get(d.name);
    if (!row) {
      const cells = Array.from({ length: 6 }, () => el("td"));
      const redrive = el("button", { type: "button", "data-action": "redrive", text: "Redrive" });
      row = { cells };
      deliveryRows.set(d.name, row);
      body.append(el("tr", { "data-delivery": d.name }, ...cells, el("td", {}, redrive)));
      row.redrive = redrive;
      confirming(redrive, () => "Redrive?", async () => {
        const response = await call("POST", `/v1/delivery/${encodeURIComponent(d.name)}/dead-letters/redrive`);
        if (!response.ok) return [false, `${d.name}: not redriven: ${await errorOf(response)}`];
        const done = await response.json();
        return [true, `${d.name}: redriven ${fmt(done.redriven)}, failed again ${fmt(done.failed_again)}`];
      }, $("#delivery-result"));
    }
    const pending = tick.pending_errors[d.name];
    const texts = [
      d.name,
      d.records_buffered ? `${fmt(d.records_buffered)}, ${bytes(d.bytes_buffered)}, ${duration(d.buffer_age_ms)}` : "0",
      fmt(d.objects),
      fmt(d.rows_loaded),
      fmt(d.retries),
      pending === undefined ? "…" : fmt(pending),
    ];
    texts.forEach((text, i) => (row.cells[i].textContent = text));
    row.redrive.disabled = !pending;
  }
}

function updateNotifications(notifications) {
  const list = $("#notifications");
  const text = JSON.stringify(notifications);
  if (list.dataset.text === text) return;
  list.dataset.text = text;
  if (notifications.length === 0) {
    list.replaceChildren(el("li", { class: "empty", text: "none yet" }));
    return;
  }
  list.replaceChildren(
    ...notifications.map((n) =>
      el("li", {}, el("div", { text: n.subject }), el("div", { class: "meta", text: `${n.channel} → ${n.recipient} · ${n.sent_at}` })),
    ),
  );
}

follow();
