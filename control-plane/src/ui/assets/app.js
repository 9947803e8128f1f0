// Palisade web UI: namespace picker, service map, live flow table. Plain JS and SVG, no
// dependencies. Data comes from this origin's /api/v1 (see control-plane/src/ui.rs). Flow
// contents (pod names, HTTP paths, DNS names) are untrusted: they only ever reach the page as
// text nodes or attribute values, never as markup.
"use strict";

const POLL_MS = 2000;
const MAX_ROWS = 500;
const SVG = "http://www.w3.org/2000/svg";

const state = {
  token: null,
  filters: { namespace: "", verdict: "", pod: "", protocol: "" },
  cursor: null,
  flows: new Map(), // uuid -> flow
  selectedEdge: null,
  timer: null,
};

const $ = (id) => document.getElementById(id);

// --- URL fragment: filters (shareable) and a one-time token -----------------------------------

function readHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  for (const k of Object.keys(state.filters)) {
    if (params.has(k)) state.filters[k] = params.get(k);
  }
  if (params.has("token")) {
    // Keep it for this tab only and take it out of the address bar and history.
    sessionStorage.setItem("palisade-token", params.get("token"));
  }
  state.token = sessionStorage.getItem("palisade-token");
  writeHash();
}

function writeHash() {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) if (v) params.set(k, v);
  const hash = params.toString();
  history.replaceState(null, "", hash ? "#" + hash : location.pathname);
}

// --- API --------------------------------------------------------------------------------------

class AuthNeeded extends Error {}

async function api(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const res = await fetch(path + (q.toString() ? "?" + q : ""), { headers });
  if (res.status === 401) throw new AuthNeeded("a read token is needed");
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function setStatus(text, error) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

// --- namespace picker -------------------------------------------------------------------------

async function loadNamespaces() {
  const { namespaces } = await api("/api/v1/namespaces");
  const sel = $("namespace");
  const want = state.filters.namespace;
  const names = new Set(namespaces);
  if (want) names.add(want);
  while (sel.options.length > 1) sel.remove(1);
  for (const n of [...names].sort()) sel.add(new Option(n, n));
  sel.value = want;
}

// --- service map ------------------------------------------------------------------------------

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, cls, content) {
  const t = el("text", { x, y, class: cls }, parent);
  t.textContent = content;
  return t;
}

// Columns by longest path from the sources (cycles cut after a few rounds), rows in id order.
function layout(nodes, edges) {
  const rank = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const e of edges) {
      if (e.source === e.destination) continue;
      const r = rank.get(e.source) + 1;
      if (r > rank.get(e.destination) && r < nodes.length) {
        rank.set(e.destination, r);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const n of nodes) {
    const r = rank.get(n.id);
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r).push(n);
  }
  const pos = new Map();
  const W = 190, H = 54, COL = 420, ROW = 100, TOP = 90;
  for (const [r, col] of columns) {
    col.forEach((n, i) => pos.set(n.id, { x: 30 + r * COL, y: TOP + i * ROW, w: W, h: H, rank: r }));
  }
  const width = 60 + (Math.max(0, ...columns.keys()) + 1) * COL;
  const height = TOP + 30 + Math.max(1, ...[...columns.values()].map((c) => c.length)) * ROW;
  return { pos, width, height };
}

function edgeLines(e) {
  const lines = [[...e.ports].join(", ")];
  for (const [k, n] of Object.entries(e.http)) lines.push(`${k} ×${n}`);
  for (const [k, n] of Object.entries(e.dns)) lines.push(`DNS ${k} ×${n}`);
  return lines.filter((l) => l);
}

function renderMap(map) {
  const svg = $("map");
  svg.replaceChildren();
  const defs = el("defs", {}, svg);
  for (const v of ["forwarded", "dropped"]) {
    const m = el("marker", {
      id: "arrow-" + v, viewBox: "0 0 10 10", refX: "10", refY: "5",
      markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse",
    }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z" }, m);
  }
  $("map-caption").textContent =
    `${map.nodes.length} workloads, ${map.edges.length} edges from the last ${map.flows} flows`;
  if (map.nodes.length === 0) {
    svg.setAttribute("viewBox", "0 0 600 60");
    text(svg, 10, 30, "meta", "No flows in this namespace yet.");
    return;
  }
  const { pos, width, height } = layout(map.nodes, map.edges);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = Math.min(height, 900) + "px";

  const pairs = new Map();
  for (const e of map.edges) {
    const k = e.source + "\u0000" + e.destination;
    pairs.set(k, (pairs.get(k) || 0) + 1);
  }
  const edgeLayer = el("g", { class: "edges" }, svg);
  const nodeLayer = el("g", { class: "nodes" }, svg);
  // Labels last, so no workload box hides them.
  const labelLayer = el("g", { class: "edge-labels" }, svg);
  for (const e of map.edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    let d, lx, ly, above = true;
    if (e.source === e.destination) {
      const x = a.x + a.w * 0.7, y = a.y;
      d = `M${x},${y} C${x + 40},${y - 60} ${x + 90},${y + 10} ${a.x + a.w},${a.y + a.h / 2}`;
      lx = x + 50; ly = y - 40;
    } else {
      const forward = b.x > a.x;
      const x1 = forward ? a.x + a.w : a.x + a.w / 2, y1 = forward ? a.y + a.h / 2 : a.y + a.h;
      const x2 = forward ? b.x : b.x + b.w / 2, y2 = forward ? b.y + b.h / 2 : b.y;
      // Forwarded and dropped edges of one pair bend to opposite sides.
      const both = pairs.get(e.source + "\u0000" + e.destination) > 1;
      let bend = both ? (e.verdict === "dropped" ? 50 : -50) : (forward ? 0 : 60);
      // An edge that skips columns arcs over the workloads between its ends.
      const span = b.rank - a.rank;
      if (forward && span > 1) bend -= 70 * (span - 1);
      const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
      const len = Math.hypot(x2 - x1, y2 - y1) || 1;
      const cx = mx - ((y2 - y1) / len) * bend, cy = my + ((x2 - x1) / len) * bend;
      d = `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`;
      // On the curve: its middle for a bent pair, nearer the source for a lone edge, so
      // labels of edges converging on one workload do not pile up at its door.
      const t = both ? 0.5 : 0.35;
      lx = (1 - t) * (1 - t) * x1 + 2 * t * (1 - t) * cx + t * t * x2;
      ly = (1 - t) * (1 - t) * y1 + 2 * t * (1 - t) * cy + t * t * y2;
      above = cy <= (y1 + y2) / 2;
    }
    const g = el("g", { class: "map-edge" }, edgeLayer);
    const path = el("path", {
      d,
      class: "edge " + e.verdict,
      "marker-end": `url(#arrow-${e.verdict})`,
      "data-from": e.source,
      "data-to": e.destination,
      "data-verdict": e.verdict,
      "data-flows": String(e.flows),
      "data-ports": [...e.ports].join(","),
      "data-http": Object.keys(e.http).join("|"),
      "data-dns": Object.keys(e.dns).join("|"),
      "data-drop-reasons": [...e.drop_reasons].join(","),
    }, g);
    const title = el("title", {}, path);
    title.textContent = `${e.source} → ${e.destination}: ${e.verdict}, ${e.flows} flows`;
    path.addEventListener("click", () => showEdge(e, path));
    const lines = edgeLines(e).slice(0, 4);
    // Above an edge that bends up, below one that bends down: a pair's labels stay apart.
    const LINE = 13;
    const label = el("text", {
      x: lx, y: above ? ly - 5 - LINE * (lines.length - 1) : ly + LINE, class: "edge-label " + e.verdict,
      "data-from": e.source, "data-to": e.destination,
    }, labelLayer);
    lines.forEach((l, i) => {
      const t = el("tspan", { x: lx, dy: i === 0 ? "0" : "1.2em" }, label);
      t.textContent = l;
    });
  }
  for (const n of map.nodes) {
    const p = pos.get(n.id);
    const g = el("g", {
      class: "map-node" + (n.in_namespace ? "" : " peer"),
      "data-workload": n.id,
      "data-namespace": n.namespace,
      "data-pods": [...n.pods].join(","),
      transform: `translate(${p.x},${p.y})`,
    }, nodeLayer);
    el("rect", { width: p.w, height: p.h, rx: 6 }, g);
    const name = n.id.includes("/") ? n.id.slice(n.id.indexOf("/") + 1) : n.id;
    text(g, 10, 21, "name", name);
    const pods = [...n.pods];
    const meta = n.namespace
      ? `${n.namespace} · ${pods.length ? pods.length + " pod" + (pods.length > 1 ? "s" : "") : "remote"}`
      : "outside the cluster";
    text(g, 10, 40, "meta", meta);
    const title = el("title", {}, g);
    title.textContent = n.id + (pods.length ? "\npods: " + pods.join(", ") : "");
  }
  if (state.selectedEdge) {
    const sel = map.edges.find((e) => edgeKey(e) === state.selectedEdge);
    if (sel) showEdge(sel, null);
  }
}

function edgeKey(e) {
  return [e.source, e.destination, e.verdict].join("\u0000");
}

function showEdge(e, path) {
  state.selectedEdge = edgeKey(e);
  for (const p of document.querySelectorAll(".edge.selected")) p.classList.remove("selected");
  const target = path || [...document.querySelectorAll(".edge")].find(
    (p) => p.dataset.from === e.source && p.dataset.to === e.destination && p.dataset.verdict === e.verdict);
  if (target) target.classList.add("selected");
  const box = $("edge-details");
  box.replaceChildren();
  const h = document.createElement("h3");
  h.textContent = `${e.source} → ${e.destination} (${e.verdict}, ${e.flows} flows)`;
  box.appendChild(h);
  const list = (title, items) => {
    if (!items.length) return;
    const p = document.createElement("div");
    p.textContent = title;
    box.appendChild(p);
    const ul = document.createElement("ul");
    for (const i of items) {
      const li = document.createElement("li");
      li.textContent = i;
      ul.appendChild(li);
    }
    box.appendChild(ul);
  };
  list("Ports", [...e.ports]);
  list("Drop reasons", [...e.drop_reasons]);
  list("HTTP", Object.entries(e.http).map(([k, n]) => `${k} ×${n}`));
  list("DNS", Object.entries(e.dns).map(([k, n]) => `${k} ×${n}`));
  const close = document.createElement("button");
  close.textContent = "close";
  close.addEventListener("click", () => {
    state.selectedEdge = null;
    box.hidden = true;
    if (target) target.classList.remove("selected");
  });
  box.appendChild(close);
  box.hidden = false;
}

// --- flow table -------------------------------------------------------------------------------

function cell(tr, content, cls, sub) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = content;
  if (sub) {
    const s = document.createElement("div");
    s.className = "sub";
    s.textContent = sub;
    td.appendChild(s);
  }
  tr.appendChild(td);
}

function sideText(s) {
  const who = s.pod ? `${s.namespace}/${s.pod}` : s.workload;
  return [who, s.port ? `${s.ip}:${s.port}` : s.ip];
}

function renderFlows() {
  const body = $("flows").tBodies[0];
  body.replaceChildren();
  const rows = [...state.flows.values()].sort((a, b) =>
    a.time_ns === b.time_ns ? 0 : (BigInt(a.time_ns) < BigInt(b.time_ns) ? 1 : -1));
  for (const f of rows.slice(0, MAX_ROWS)) {
    const tr = document.createElement("tr");
    tr.className = f.verdict.toLowerCase();
    tr.dataset.uuid = f.uuid;
    tr.dataset.verdict = f.verdict;
    tr.dataset.from = f.source.workload;
    tr.dataset.to = f.destination.workload;
    tr.dataset.protocol = f.protocol;
    tr.dataset.node = f.node;
    cell(tr, f.time.replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1"));
    cell(tr, f.node);
    const [s1, s2] = sideText(f.source);
    cell(tr, s1, "", s2);
    const [d1, d2] = sideText(f.destination);
    cell(tr, d1, "", d2);
    cell(tr, f.protocol, "", f.direction === "TRAFFIC_DIRECTION_UNKNOWN" ? "" : f.direction.toLowerCase());
    cell(tr, f.verdict, "verdict", f.drop_reason);
    cell(tr, (f.is_reply ? "reply " : "") + f.summary, "details");
    body.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 7;
    td.className = "empty";
    td.textContent = "No flows match.";
    tr.appendChild(td);
    body.appendChild(tr);
  }
  $("flows-caption").textContent = `${Math.min(rows.length, MAX_ROWS)} shown, newest first`;
}

// --- polling ----------------------------------------------------------------------------------

async function refresh() {
  const f = state.filters;
  const [flows, map] = await Promise.all([
    api("/api/v1/flows", { ...f, since: state.cursor || "" }),
    api("/api/v1/map", { namespace: f.namespace }),
  ]);
  for (const fl of flows.flows) state.flows.set(fl.uuid, fl);
  if (state.flows.size > MAX_ROWS * 2) {
    const keep = [...state.flows.values()]
      .sort((a, b) => (BigInt(a.time_ns) < BigInt(b.time_ns) ? 1 : -1))
      .slice(0, MAX_ROWS);
    state.flows = new Map(keep.map((x) => [x.uuid, x]));
  }
  state.cursor = flows.cursor;
  renderFlows();
  renderMap(map);
  const down = flows.nodes.unavailable.map((u) => `${u.node} (${u.message})`);
  setStatus(
    `${flows.nodes.connected.length} node(s) answering` +
      (down.length ? `; unavailable: ${down.join(", ")}` : "") +
      ` · updated ${new Date().toLocaleTimeString()}`,
    down.length > 0,
  );
  document.body.dataset.state = "ready";
}

async function tick() {
  clearTimeout(state.timer);
  try {
    if (!$("paused").checked) await refresh();
  } catch (e) {
    if (e instanceof AuthNeeded) {
      $("login").hidden = false;
      setStatus("a read token is needed", true);
      document.body.dataset.state = "login";
      return;
    }
    setStatus(e.message, true);
    document.body.dataset.state = "error";
  }
  state.timer = setTimeout(tick, POLL_MS);
}

function restart() {
  state.cursor = null;
  state.flows.clear();
  state.selectedEdge = null;
  $("edge-details").hidden = true;
  writeHash();
  tick();
}

async function start() {
  readHash();
  for (const k of ["verdict", "pod", "protocol"]) $(k).value = state.filters[k];
  try {
    await loadNamespaces();
  } catch (e) {
    if (e instanceof AuthNeeded) {
      $("login").hidden = false;
      setStatus("a read token is needed", true);
      document.body.dataset.state = "login";
      return;
    }
    setStatus(e.message, true);
  }
  tick();
}

$("namespace").addEventListener("change", (e) => {
  state.filters.namespace = e.target.value;
  restart();
});
for (const k of ["verdict", "protocol"]) {
  $(k).addEventListener("change", (e) => {
    state.filters[k] = e.target.value;
    restart();
  });
}
let podTimer = null;
$("pod").addEventListener("input", (e) => {
  clearTimeout(podTimer);
  podTimer = setTimeout(() => {
    state.filters.pod = e.target.value.trim();
    restart();
  }, 400);
});
$("filters").addEventListener("submit", (e) => e.preventDefault());
$("paused").addEventListener("change", () => tick());
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("palisade-token", $("token").value.trim());
  $("token").value = "";
  $("login").hidden = true;
  start();
});

start();
