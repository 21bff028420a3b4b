// agentbus dashboard: no build step. Reads /api/agents once, then follows /api/events from the
// revision it read (nothing missed between the two); EventSource reconnects by itself and
// resumes with Last-Event-ID, so a gateway restart loses nothing either.
"use strict";

const $ = (sel) => document.querySelector(sel);
const agents = new Map(); // name -> {name, role, status, load, max_concurrency, version, health}
const STALE_AFTER_MS = 45000; // three keep-alives: the connection is dead, reconnect
let feed = null, sessionFeed = null, lastHeard = 0, statsTimer = null;

function token() { return localStorage.getItem("agentbus-token") || ""; }
function withToken(url) {
  const t = token();
  if (!t) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(t);
}
async function api(path, options = {}) {
  const headers = Object.assign({"Content-Type": "application/json"}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, {headers}));
  const body = await response.json();
  if (!response.ok) throw new Error(`${body.error.code}: ${body.error.description}`);
  return body;
}
function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value == null ? "-" : String(value);
  if (cls) el.className = cls;
  return el;
}
function setConn(state, label) { const el = $("#conn"); el.className = "conn " + state; el.textContent = label; }

// -- agents -------------------------------------------------------------------------------
function fromRecord(record, old) {
  return {
    name: record.name, role: record.role, status: record.status || "ready",
    load: Number(record.load || 0), max_concurrency: Number(record.max_concurrency || 1),
    version: record.version, description: record.description || "",
    health: record.health != null ? record.health : (old ? old.health : null),
  };
}
function render() {
  const q = $("#q").value.toLowerCase().split(/\s+/).filter(Boolean);
  const role = $("#role").value, status = $("#status").value;
  const tbody = $("#agents tbody");
  const rows = [];
  const roles = new Set();
  for (const a of [...agents.values()].sort((x, y) => (x.name < y.name ? -1 : 1))) {
    roles.add(a.role);
    const hay = (a.name + "\n" + a.description).toLowerCase();
    if (q.some((w) => !hay.includes(w)) || (role && a.role !== role) || (status && a.status !== status)) continue;
    const tr = document.createElement("tr");
    tr.dataset.name = a.name;
    tr.dataset.status = a.status;
    tr.append(text("td", a.name, "name"), text("td", a.role), text("td", a.status, "status-" + a.status),
      text("td", `${a.load}/${a.max_concurrency}`), text("td", a.version), text("td", a.health));
    tr.addEventListener("click", () => showAgent(a.name));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  $("#count").textContent = `${rows.length} of ${agents.size}`;
  const select = $("#role"), chosen = select.value;
  const options = [...roles].sort().map((r) => { const o = text("option", r); o.value = r; return o; });
  const all = text("option", "every role"); all.value = "";
  select.replaceChildren(all, ...options);
  select.value = chosen;
}
async function loadAgents() {
  agents.clear();
  let cursor = null, revision = null;
  do {
    const page = await api("/api/agents?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    if (revision === null) revision = page.revision;
    for (const a of page.agents) agents.set(a.name, fromRecord(a));
    cursor = page.next_cursor;
  } while (cursor);
  render();
  return revision;
}
function apply(type, event) {
  if (type === "agent_registered" || (type === "agent_updated" && event.record)) {
    agents.set(event.name, fromRecord(Object.assign({name: event.name, role: event.role}, event.record), agents.get(event.name)));
  } else if (type === "agent_updated") {
    const a = agents.get(event.name);
    if (!a) return;
    for (const [field, change] of Object.entries(event.changes || {})) {
      const value = change[1];
      a[field] = field === "load" || field === "max_concurrency" ? Number(value) : value;
    }
  } else if (type === "agent_deregistered" || type === "agent_expired") {
    agents.delete(event.name);
  }
  render();
  scheduleStats();
}
async function follow() {
  if (feed) feed.close();
  let revision;
  try { revision = await loadAgents(); } catch (e) { setConn("down", "error: " + e.message); setTimeout(follow, 2000); return; }
  feed = new EventSource(withToken("/api/events?since=" + encodeURIComponent(revision)));
  const heard = () => { lastHeard = Date.now(); setConn("live", "live"); };
  feed.addEventListener("ready", heard);
  feed.addEventListener("keepalive", heard);
  for (const type of ["agent_registered", "agent_updated", "agent_deregistered", "agent_expired"]) {
    feed.addEventListener(type, (m) => { heard(); apply(type, JSON.parse(m.data)); });
  }
  feed.addEventListener("events_lost", () => follow()); // trimmed past us: reload, then follow
  feed.addEventListener("cutoff", () => setConn("down", "resuming…")); // EventSource resumes
  feed.onerror = () => setConn("down", "reconnecting…");
}
setInterval(() => { if (lastHeard && Date.now() - lastHeard > STALE_AFTER_MS) { lastHeard = 0; follow(); } }, 5000);

// -- details, stats, dead letters ---------------------------------------------------------------
async function showAgent(name) {
  const panel = $("#details");
  try {
    const d = await api("/api/agents/" + encodeURIComponent(name));
    const a = d.agent, h = d.health;
    const parts = [text("h2", a.name), text("p", a.description || ""),
      text("p", `${a.role} · v${a.version} · ${a.status} · load ${a.load}/${a.max_concurrency}`),
      text("p", `health ${h.score} (errors ${(h.error_rate * 100).toFixed(1)} %, p95 ${h.p95_ms ?? "-"} ms)`),
      text("p", "capabilities: " + (a.capabilities.join(", ") || "-") + " · tags: " + (a.tags.join(", ") || "-"))];
    const table = document.createElement("table");
    table.append(...d.usage.map((u) => {
      const tr = document.createElement("tr");
      tr.append(text("td", u.type), text("td", u.invocations + " calls"), text("td", u.errors + " errors"), text("td", (u.p50_ms ?? "-") + " ms p50"));
      return tr;
    }));
    panel.replaceChildren(...parts, table, tasksTable(name, d.tasks));
    const row = agents.get(name);
    if (row) { row.health = h.score; render(); }
  } catch (e) { panel.replaceChildren(text("h2", "agent"), text("p", e.message)); }
}
function tasksTable(name, tasks) {
  // the agent's newest handled messages (GET /api/agents/{name}/tasks for more)
  const box = document.createElement("div");
  const head = text("h3", "tasks ");
  const again = text("button", "↻");
  again.title = "refresh";
  again.addEventListener("click", () => showAgent(name));
  head.append(again);
  const table = document.createElement("table");
  table.id = "agent-tasks";
  table.append(...tasks.map((t) => {
    const tr = document.createElement("tr");
    tr.className = "task";
    tr.dataset.outcome = t.outcome;
    tr.dataset.type = t.type;
    tr.title = `message ${t.id} (${t.kind})` + (t.session ? ` · session ${t.session}` : "");
    tr.append(text("td", new Date(t.start).toLocaleTimeString()), text("td", t.type),
      text("td", t.sender), text("td", t.duration_ms.toFixed(1) + " ms"),
      text("td", t.outcome, t.ok ? "ok" : "failed"));
    return tr;
  }));
  box.append(head, tasks.length ? table : text("p", "no tasks recorded yet", "hint"));
  return box;
}
async function refreshStats() {
  statsTimer = null;
  try {
    const s = await api("/api/stats");
    const st = Object.entries(s.by_status).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
    $("#stats").textContent = `${s.agents} agents (${st || "none"}) · load ${s.load}/${s.capacity} · ` +
      `errors ${(s.error_rate * 100).toFixed(1)} % · dead letters ${s.deadletters} · control lag ${s.control_lag ?? "-"} · coordinators ${s.coordinators}`;
  } catch (e) { $("#stats").textContent = e.message; }
}
function scheduleStats() { if (!statsTimer) statsTimer = setTimeout(refreshStats, 500); }
async function loadDeadLetters() {
  const list = $("#deadletters");
  try {
    const d = await api("/api/deadletters?limit=50");
    list.replaceChildren(...d.deadletters.map((l) => {
      const li = document.createElement("li");
      const button = text("button", "replay");
      button.addEventListener("click", async () => {
        try { await api(`/api/deadletters/${l.id}/replay`, {method: "POST"}); loadDeadLetters(); }
        catch (e) { button.textContent = e.message; }
      });
      li.append(text("b", l.type || "?"), " ", text("span", `${l.code}: ${l.reason}`), " ", text("code", l.id), " ", button);
      return li;
    }));
    if (!d.deadletters.length) list.replaceChildren(text("li", "none", "hint"));
  } catch (e) { list.replaceChildren(text("li", e.message)); }
}

// -- a session's activity -------------------------------------------------------------------------
function followSession(id, tenant) {
  if (sessionFeed) sessionFeed.close();
  const list = $("#session-events");
  list.replaceChildren();
  const of = tenant ? "?tenant=" + encodeURIComponent(tenant) : "";  // another tenant: operators
  sessionFeed = new EventSource(withToken("/api/sessions/" + encodeURIComponent(id) + "/events" + of));
  const types = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed", "agent_failed"];
  for (const type of types) {
    sessionFeed.addEventListener(type, (m) => {
      const e = JSON.parse(m.data);
      const li = document.createElement("li");
      li.className = "activity";
      li.dataset.seq = e.seq;
      li.dataset.type = e.type;
      li.append(text("b", e.type), " ", text("span", e.agent), " ", text("code", e.payload == null ? "" : JSON.stringify(e.payload)));
      list.append(li);
    });
  }
  sessionFeed.addEventListener("events_lost", () => { list.append(text("li", "older events were trimmed", "hint")); });
}

// -- wiring -----------------------------------------------------------------------------------
$("#token").value = token();
$("#token").addEventListener("change", (e) => { localStorage.setItem("agentbus-token", e.target.value.trim()); follow(); refreshStats(); loadDeadLetters(); });
for (const id of ["#q", "#role", "#status"]) $(id).addEventListener("input", render);
$("#session-form").addEventListener("submit", (e) => { e.preventDefault(); const id = $("#session-id").value.trim(); if (id) followSession(id); });
$("#dl-refresh").addEventListener("click", loadDeadLetters);
const hashParams = new URLSearchParams(location.hash.slice(1));
const fromHash = hashParams.get("session");
if (fromHash) { $("#session-id").value = fromHash; followSession(fromHash, hashParams.get("tenant")); }
follow();
refreshStats();
loadDeadLetters();
setInterval(refreshStats, 10000);
