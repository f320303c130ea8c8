// The victoria dashboard: plain DOM over the gateway's JSON and event-stream routes. No build, no
// framework, nothing from another origin. Every URL is relative (the page may live under a path
// prefix), every piece of data goes into the DOM as text (goals are user input), and the token
// travels only in an Authorization header: event streams are read with fetch(), not EventSource.

const TOKEN_KEY = "victoria-token";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUSES = ["queued", "running", "completed", "failed", "cancelled"];
const base = new URL(".", location.href);
let traceUrl = null;
let current = null; // the view shown now: {stop()}

// --- DOM ------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// replaceChildren() writes null as the text "null": leave out what is not there.
const fill = (el, ...children) => el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));

const badge = (status) => h("span", { class: `badge ${status}` }, status);
const short = (id) => String(id).slice(0, 12);
const clock = (ts) => (ts ? new Date(ts).toLocaleTimeString() : "");

function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// A tool call's duration: most take milliseconds.
const callTime = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : seconds(s));

function megabytes(bytes) {
  return bytes === null || bytes === undefined ? "" : `${(bytes / 1048576).toFixed(0)} MB`;
}

function ago(ts) {
  if (!ts) return "never";
  const s = (Date.now() - new Date(ts).getTime()) / 1000;
  return s < 1 ? "just now" : `${seconds(s)} ago`;
}

function setConnection(text) {
  document.getElementById("connection").textContent = text;
}

// --- HTTP: the token, JSON, event streams -----------------------------------------------------------

let asking = null;

function askToken(refused) {
  if (asking) return asking;
  sessionStorage.removeItem(TOKEN_KEY);
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-why").textContent = refused
    ? "The gateway refused that token. Enter another; it is kept for this tab only."
    : "This gateway asks for a token. It is kept for this tab only.";
  asking = new Promise((resolve) => {
    const form = document.getElementById("token-form");
    const done = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.removeEventListener("submit", done);
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = "";
      dialog.close();
      asking = null;
      resolve();
    };
    form.addEventListener("submit", done);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

function headers(extra) {
  const out = { Accept: "application/json", ...(extra || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

async function request(path, options = {}) {
  for (;;) {
    const response = await fetch(new URL(path, base), {
      ...options,
      headers: headers(options.headers),
      cache: "no-store",
    });
    if (response.status !== 401) return response;
    await askToken(Boolean(sessionStorage.getItem(TOKEN_KEY)));
  }
}

async function getJSON(path) {
  const response = await request(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// Server-sent events over fetch, so the token goes in a header. Calls onEvent(type, data, id) for
// each event; resolves when the stream ends, rejects when it breaks (not when aborted).
async function readEvents(path, onEvent, signal) {
  const response = await request(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let at;
    while ((at = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, at).replace(/\r$/, "");
      buffer = buffer.slice(at + 1);
      if (line === "") {
        if (data.length) {
          let parsed = null;
          try {
            parsed = JSON.parse(data.join("\n"));
          } catch {
            parsed = null;
          }
          if (parsed !== null) onEvent(type, parsed, id);
        }
        type = "message";
        data = [];
        id = null;
      } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      else if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("id:")) id = line.slice(3).trim();
    }
  }
}

// Keep a never-ending stream open: reconnect a second after it ends or breaks, until stopped.
function keepReading(path, onEvent, onOpen) {
  const controller = new AbortController();
  (async () => {
    while (!controller.signal.aborted) {
      try {
        if (onOpen) await onOpen();
        setConnection("");
        await readEvents(path, onEvent, controller.signal);
      } catch (error) {
        if (controller.signal.aborted) return;
        setConnection("reconnecting…");
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
  return controller;
}

// --- the list of tasks ----------------------------------------------------------------------------

function taskList(root) {
  const tasks = new Map();
  const rows = new Map();
  const status = h("select", { id: "filter-status", "aria-label": "status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  const project = h("input", { id: "filter-project", type: "search", placeholder: "project", "aria-label": "project" });
  const search = h("input", { id: "filter-q", type: "search", placeholder: "search id or goal words", "aria-label": "search" });
  const goal = h("textarea", { id: "goal", rows: 2, placeholder: "A goal for Victoria…", required: true });
  const note = h("span", { class: "muted" });
  const form = h("form", { id: "submit-form", class: "submit" }, goal, h("button", { type: "submit" }, "Run"), note);
  const body = h("tbody", { id: "task-rows" });
  const empty = h("p", { class: "muted", id: "no-tasks" }, "No tasks yet.");
  const table = h("table", { class: "tasks" },
    h("thead", {}, h("tr", {}, ["id", "goal", "status", "stage", "attempts", "model", "duration", ""].map((t) => h("th", {}, t)))),
    body);
  root.replaceChildren(h("h1", {}, "Tasks"), form, h("div", { class: "filters" }, status, project, search), table, empty);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = goal.value.trim();
    if (!text) return;
    note.textContent = "submitting…";
    try {
      const response = await request("run?async_mode=true", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ goal: text }),
      });
      const answer = await response.json();
      if (response.status !== 202) throw new Error(answer.detail || `HTTP ${response.status}`);
      goal.value = "";
      note.textContent = `task ${short(answer.task_id)} submitted`;
    } catch (error) {
      note.textContent = `not submitted: ${error.message}`;
    }
  });

  function matches(task) {
    if (status.value && task.status !== status.value) return false;
    if (project.value.trim() && task.project !== project.value.trim()) return false;
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const text = `${task.task_id} ${task.goal}`.toLowerCase();
    return words.every((word) => text.includes(word));
  }

  function duration(task) {
    if (task.duration_s !== null && task.duration_s !== undefined) return seconds(task.duration_s);
    if (!task.created_at || TERMINAL.has(task.status)) return "";
    return seconds(Math.max(0, (Date.now() - new Date(task.created_at).getTime()) / 1000));
  }

  function row(task) {
    const cancel = !TERMINAL.has(task.status)
      ? h("button", {
          class: "cancel",
          onclick: async (event) => {
            event.stopPropagation();
            event.currentTarget.disabled = true;
            await request(`run/${encodeURIComponent(task.task_id)}/cancel`, { method: "POST" });
          },
        }, "Cancel")
      : null;
    const link = h("a", { href: `#/task/${encodeURIComponent(task.task_id)}` }, short(task.task_id));
    return h("tr", { "data-task": task.task_id, "data-status": task.status, class: "clickable",
      onclick: () => { location.hash = `#/task/${encodeURIComponent(task.task_id)}`; } },
      h("td", { class: "mono" }, link),
      h("td", { class: "goal", title: task.goal }, task.goal),
      h("td", {}, badge(task.status)),
      h("td", {}, task.stage || ""),
      h("td", { class: "num" }, task.attempts),
      h("td", {}, task.model || ""),
      h("td", { class: "num duration" }, duration(task)),
      h("td", {}, cancel));
  }

  let scheduled = false;
  function render() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      const shown = [...tasks.values()].filter(matches)
        .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""))
        .slice(0, 500);
      const fresh = shown.map((task) => {
        const old = rows.get(task.task_id);
        if (old && old.task === task) return old.el;
        const el = row(task);
        rows.set(task.task_id, { task, el });
        return el;
      });
      body.replaceChildren(...fresh);
      empty.hidden = shown.length > 0;
    });
  }

  function put(task) {
    const known = tasks.get(task.task_id);
    if (known && (known.updated_at || "") > (task.updated_at || "")) return;
    tasks.set(task.task_id, task);
    render();
  }

  async function load() {
    const params = new URLSearchParams({ limit: "500" });
    if (status.value) params.set("status", status.value);
    if (project.value.trim()) params.set("project", project.value.trim());
    if (search.value.trim()) params.set("q", search.value.trim());
    const page = await getJSON(`tasks?${params}`);
    traceUrl = page.trace_url;
    page.tasks.forEach(put);
    render();
  }

  let timer = null;
  const refilter = () => {
    render();
    clearTimeout(timer);
    timer = setTimeout(() => load().catch(() => {}), 300);
  };
  status.addEventListener("change", refilter);
  project.addEventListener("input", refilter);
  search.addEventListener("input", refilter);

  // The stream first, then the list: a change between the two is in one or the other.
  let first = true;
  const stream = keepReading("tasks/events", (type, data) => {
    if (type === "task") put(data);
  }, async () => {
    if (!first) await load().catch(() => {});
  });
  first = false;
  load().catch((error) => setConnection(error.message));
  const tick = setInterval(() => {
    for (const tr of body.querySelectorAll("tr[data-status='running'], tr[data-status='queued']")) {
      const task = tasks.get(tr.dataset.task);
      if (task) tr.querySelector(".duration").textContent = duration(task);
    }
  }, 1000);
  return { stop: () => { stream.abort(); clearInterval(tick); clearTimeout(timer); } };
}

// --- one task -------------------------------------------------------------------------------------

function taskPage(root, taskId) {
  const controller = new AbortController();
  const title = h("h1", {}, "Task ", h("span", { class: "mono" }, taskId));
  const head = h("dl", { class: "facts", id: "task-facts" });
  const strip = h("div", { class: "strip", id: "timeline-strip" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const result = h("section", { id: "result" });
  const toolRows = h("tbody", { id: "tool-rows" });
  const noTools = h("p", { class: "muted", id: "no-tools" }, "No tool calls.");
  const logs = h("tbody", { id: "log-rows" });
  const noLogs = h("p", { class: "muted" }, "No log records for this task (at INFO a task that goes well logs nothing).");
  root.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← all tasks")),
    title, head,
    h("h2", {}, "Time line"), strip, timeline,
    h("h2", {}, "Tool calls"),
    h("table", { class: "toolcalls" }, h("thead", {}, h("tr", {}, ["tool", "arguments", "outcome", "duration", "approval"].map((t) => h("th", {}, t)))), toolRows),
    noTools,
    h("h2", {}, "Result"), result,
    h("h2", {}, "Log"), h("table", { class: "logs" }, h("thead", {}, h("tr", {}, ["time", "actor", "level", "message"].map((t) => h("th", {}, t)))), logs), noLogs);

  let start = null;
  let attempt = 0;
  let finished = false;
  const calls = new Map(); // request_id -> {el, words, got}
  const toolCalls = new Map(); // call_id -> what its events said, and its row
  const stages = []; // {name, attempt, at}
  let endAt = null;

  const offset = (ts) => (start && ts ? `+${((new Date(ts) - start) / 1000).toFixed(1)} s` : "");

  function fact(name, value) {
    return [h("dt", {}, name), h("dd", {}, value)];
  }

  function showStatus(s) {
    const trace = s.trace_id
      ? traceUrl
        ? h("a", { href: traceUrl.replace("{trace_id}", encodeURIComponent(s.trace_id)), target: "_blank", rel: "noopener noreferrer", id: "trace-link" }, s.trace_id)
        : h("span", { class: "mono" }, s.trace_id)
      : "none";
    const cancel = !TERMINAL.has(s.status)
      ? h("button", { class: "cancel", onclick: (e) => { e.currentTarget.disabled = true; request(`run/${encodeURIComponent(taskId)}/cancel`, { method: "POST" }); } }, "Cancel")
      : null;
    head.replaceChildren(
      ...fact("goal", h("span", { class: "goal-full" }, s.goal || "")),
      ...fact("status", [h("span", { id: "task-status" }, badge(s.status)), " ", cancel]),
      ...fact("stage", s.stage || ""),
      ...fact("attempts", String(s.attempts)),
      ...fact("created", s.created_at ? new Date(s.created_at).toLocaleString() : ""),
      ...fact("trace", trace));
    for (const p of s.pending_approvals || []) {
      const c = toolCall(p.id);
      if (!c.requested) {
        c.requested = { tool: p.tool, args: p.arguments, effect: p.effect, ts: p.requested_at, timeout_s: p.timeout_s };
        drawTool(c);
      }
    }
    result.replaceChildren();
    if (s.output) result.append(h("pre", { class: "output", id: "task-output" }, s.output));
    if (s.error) result.append(h("pre", { class: "error", id: "task-error" }, `${s.error_kind || "error"}: ${s.error}`));
    if (!s.output && !s.error) result.append(h("p", { class: "muted" }, TERMINAL.has(s.status) ? "No output." : "Not finished yet."));
  }

  function item(cls, ts, ...content) {
    const li = h("li", { class: cls }, h("span", { class: "at" }, offset(ts)), ...content);
    timeline.append(li);
    return li;
  }

  function newAttempt(n, instance, ts) {
    if (n <= attempt) return;
    if (attempt > 0) {
      item("crash", ts, h("strong", {}, `attempt ${attempt} ended without a result`),
        " (its process stopped or lost the task); the task resumed from its events");
    }
    attempt = n;
    item("attempt", ts, h("strong", {}, `attempt ${n}`), instance ? ` on ${instance}` : "");
  }

  function stage(name, ts) {
    const last = stages[stages.length - 1];
    if (last && last.name === name && last.attempt === attempt) return;
    stages.push({ name, attempt, at: new Date(ts) });
    item("stage", ts, h("span", { class: "stage-name" }, name));
    drawStrip();
  }

  function drawStrip() {
    const end = endAt || new Date();
    strip.replaceChildren(...stages.map((s, i) => {
      const next = stages[i + 1];
      const until = next ? next.at : end;
      const width = Math.max(0.5, (until - s.at) / 1000);
      const crash = next && next.attempt !== s.attempt;
      return h("span", { class: `segment attempt-${Math.min(s.attempt, 4)}${crash ? " crashed" : ""}`,
        style: null, title: `${s.name} (attempt ${s.attempt}): ${seconds(width)}`, "data-grow": width }, s.name);
    }));
    for (const el of strip.children) el.style.flexGrow = el.dataset.grow;
  }

  function call(requestId, ts) {
    let found = calls.get(requestId);
    if (found) return found;
    const words = h("pre", { class: "words" });
    const meta = h("span", { class: "meta" }, "asking…");
    const el = item("call", ts, h("span", { class: "kind" }, "model call "), h("span", { class: "mono" }, requestId), " ", meta, words);
    found = { el, words, meta, got: false };
    calls.set(requestId, found);
    return found;
  }

  // One row per tool call: what its approval_requested, approval_decided, tool_intent and
  // tool_outcome events said (any of them may come first on a reload, or be missing).
  function toolCall(id) {
    let c = toolCalls.get(id);
    if (c) return c;
    const cells = {
      tool: h("td", { class: "tool" }),
      args: h("td", { class: "args" }),
      outcome: h("td", { class: "outcome" }),
      duration: h("td", { class: "num duration" }),
      approval: h("td", { class: "approval" }),
    };
    const row = h("tr", { "data-call": id }, Object.values(cells));
    toolRows.append(row);
    noTools.hidden = true;
    c = { id, row, cells, li: null, meta: null, requested: null, decided: null, intent: null, outcome: null,
      note: "", shown: null, sending: false };
    toolCalls.set(id, c);
    return c;
  }

  function onTimeline(c, ts) {
    if (c.li) return;
    c.meta = h("span", { class: "meta" });
    c.li = item("tool", ts, h("span", { class: "kind" }, "tool "), h("strong", {}, toolName(c)), " ", c.meta);
    c.li.dataset.call = c.id;
  }

  const toolName = (c) => (c.intent || c.requested || c.outcome || {}).tool || "";

  function toolState(c) {
    if (c.outcome) return c.outcome.interrupted ? "interrupted" : c.outcome.ok ? "ok" : "failed";
    if (c.decided && c.decided.decision === "deny") return "denied";
    if (c.requested && !c.decided) return finished ? "undecided" : "waiting";
    return finished ? "unknown" : "running";
  }

  const OUTCOME = { ok: "ok", failed: "error", interrupted: "interrupted", denied: "denied", waiting: "waiting",
    undecided: "not run", running: "running", unknown: "unknown" };

  function argLines(args) {
    return Object.entries(args || {}).map(([k, v]) => {
      const text = typeof v === "string" ? v : JSON.stringify(v);
      return `${k}: ${text.length > 2000 ? `${text.slice(0, 2000)}…` : text}`;
    }).join("\n");
  }

  function decisionText(d) {
    const said = `${d.decision === "approve" ? "approved" : "denied"} by ${d.by || "someone"}`;
    return `${said}${d.reason ? `: ${d.reason}` : ""}${d.ts ? ` at ${clock(d.ts)}` : ""}`;
  }

  function drawTool(c) {
    const state = toolState(c);
    c.row.dataset.state = state;
    const effect = (c.intent || c.requested || {}).effect;
    fill(c.cells.tool, h("strong", {}, toolName(c)), effect ? h("div", { class: "muted effect" }, effect) : null);
    const args = (c.intent || c.requested || {}).args;
    fill(c.cells.args, args && Object.keys(args).length ? h("pre", { class: "args" }, argLines(args)) : "");
    const o = c.outcome;
    const outcome = [h("span", { class: `badge ${state}` }, OUTCOME[state])];
    if (o && o.exit_code !== null && o.exit_code !== undefined) outcome.push(h("span", { class: "exit" }, ` exit ${o.exit_code}`));
    if (o && o.error) outcome.push(h("div", { class: "tool-error" }, o.error));
    if (!o && state === "denied") outcome.push(h("div", { class: "tool-error" }, "not run"));
    if (o && o.output) outcome.push(h("pre", { class: "excerpt" }, o.output.length > 2000 ? `${o.output.slice(0, 2000)}…` : o.output));
    fill(c.cells.outcome, ...outcome);
    c.cells.duration.textContent = o ? callTime(o.duration_s || 0) : "";
    drawApproval(c, state);
    if (c.li) {
      c.li.className = `tool ${state}`;
      c.li.querySelector("strong").textContent = toolName(c);
      c.meta.textContent = state === "waiting" ? "waits for a person's decision"
        : state === "running" ? "running…"
          : state === "denied" ? decisionText(c.decided)
            : o ? `${OUTCOME[state]}${o.exit_code !== null && o.exit_code !== undefined ? ` (exit ${o.exit_code})` : ""} in ${callTime(o.duration_s || 0)}${o.error ? `: ${o.error}` : ""}`
              : OUTCOME[state];
    }
  }

  // The approval cell is redrawn only when what it says changes, so a reason being typed survives.
  function drawApproval(c, state) {
    const by = c.intent && c.intent.approved_by;
    const key = JSON.stringify([state === "waiting", c.requested, c.decided, by, c.note, c.sending]);
    if (c.shown === key) return;
    c.shown = key;
    const cell = c.cells.approval;
    const note = c.note ? h("div", { class: "note" }, c.note) : null;
    if (c.decided) {
      fill(cell, h("span", { class: `decision ${c.decided.decision}` }, decisionText(c.decided)), note);
    } else if (by) {
      fill(cell, h("span", { class: "decision approve" }, `approved by ${by}`), note);
    } else if (!c.requested) {
      fill(cell, h("span", { class: "muted" }, "not needed"));
    } else if (state !== "waiting") {
      fill(cell, h("span", { class: "muted" }, "never decided"), note);
    } else {
      const r = c.requested;
      const until = r.timeout_s ? new Date(new Date(r.ts).getTime() + r.timeout_s * 1000) : null;
      const reason = h("input", { class: "reason", type: "text", required: true, maxlength: 2000,
        placeholder: "why not (the model reads it)", "aria-label": "reason" });
      const form = h("form", { class: "deny-form", hidden: true }, reason, h("button", { type: "submit", class: "deny-send" }, "Send denial"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (reason.value.trim()) decide(c, "deny", reason.value.trim());
      });
      fill(cell, 
        h("div", {}, "waits for a decision", until ? h("span", { class: "muted" }, ` (denied at ${clock(until)} if none)`) : null),
        h("div", { class: "decide" },
          h("button", { class: "approve", disabled: c.sending, onclick: () => decide(c, "approve", "") }, "Approve"),
          h("button", { class: "deny", disabled: c.sending, onclick: () => { form.hidden = false; reason.focus(); } }, "Deny")),
        form, note);
    }
  }

  async function decide(c, decision, reason) {
    c.sending = true;
    c.note = "sending…";
    drawTool(c);
    try {
      const response = await request(`run/${encodeURIComponent(taskId)}/approvals/${encodeURIComponent(c.id)}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ decision, reason }),
      });
      const body = await response.json().catch(() => ({}));
      if (response.status === 200 || response.status === 409) {
        c.decided = c.decided || { decision: body.decision, reason: body.reason, by: body.by, ts: body.decided_at };
        c.note = response.status === 409 ? "decided before" : "";
      } else {
        c.note = `not sent: ${body.detail || `HTTP ${response.status}`}`;
      }
    } catch (error) {
      c.note = `not sent: ${error.message}`;
    }
    c.sending = false;
    drawTool(c);
    refresh();
  }

  function onEvent(type, e) {
    if (!start && e.ts) start = new Date(e.ts);
    switch (type) {
      case "task_submitted":
        item("stage", e.ts, "queued");
        break;
      case "task_started":
        newAttempt(e.attempt, e.instance, e.ts);
        break;
      case "task_stage":
        stage(e.step !== null && e.step !== undefined ? `step ${e.step}` : e.stage, e.ts);
        if (e.detail) item("detail", e.ts, e.detail);
        break;
      case "llm_requested": {
        if (e.attempt !== null && e.attempt !== undefined) newAttempt(e.attempt, e.instance, e.ts);
        if (e.stage) stage(e.step !== null && e.step !== undefined ? `step ${e.step}` : e.stage, e.ts);
        const c = call(e.request_id, e.ts);
        c.meta.textContent = `${e.purpose}${e.model ? `, ${e.model}` : ""}: asking…`;
        break;
      }
      case "token_chunk": {
        const c = call(e.request_id, e.ts);
        if (e.text) {
          c.words.append(e.text);
          c.got = true;
        }
        break;
      }
      case "llm_result": {
        const c = call(e.request_id, e.ts);
        const tokens = [e.prompt_tokens, e.completion_tokens].some((t) => t !== null && t !== undefined)
          ? `, ${e.prompt_tokens ?? "?"} + ${e.completion_tokens ?? "?"} tokens` : "";
        c.meta.textContent = `${e.model || "model"}, ${seconds(e.duration_s)}${tokens}${e.ok ? "" : `: ${e.error || "failed"}`}`;
        c.el.classList.add(e.ok ? "ok" : "failed");
        if (!c.got && e.content) c.words.textContent = e.content;
        break;
      }
      case "tool_result": {
        const args = Object.entries(e.args || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
        item(`tool ${e.ok ? "ok" : "failed"}`, e.ts, h("span", { class: "kind" }, "tool "), h("strong", {}, e.tool), ` ${args}: `,
          e.ok ? "ok" : e.error || "failed", e.output ? h("pre", { class: "words" }, e.output.slice(0, 4000)) : null);
        break;
      }
      case "approval_requested": {
        const c = toolCall(e.approval_id);
        c.requested = e;
        onTimeline(c, e.ts);
        drawTool(c);
        refresh();
        break;
      }
      case "approval_decided": {
        const c = toolCall(e.approval_id);
        c.decided = e;
        if (c.note === "decided before") c.note = "";
        onTimeline(c, e.ts);
        drawTool(c);
        refresh();
        break;
      }
      case "tool_intent": {
        const c = toolCall(e.call_id);
        c.intent = e;
        onTimeline(c, e.ts);
        drawTool(c);
        break;
      }
      case "tool_outcome": {
        const c = toolCall(e.call_id);
        c.outcome = e;
        onTimeline(c, e.ts);
        drawTool(c);
        break;
      }
      case "task_cancel_requested":
        item("detail", e.ts, `cancel requested: ${e.reason || ""}`);
        break;
      case "task_completed":
      case "task_failed":
      case "task_cancelled":
        finished = true;
        endAt = new Date(e.ts);
        item(`end ${type.slice(5)}`, e.ts, h("strong", {}, type.slice(5)));
        toolCalls.forEach(drawTool);
        drawStrip();
        refresh();
        break;
      default:
        break;
    }
  }

  async function refresh() {
    try {
      const s = await getJSON(`run/status/${encodeURIComponent(taskId)}`);
      if (TERMINAL.has(s.status) && !finished) {
        finished = true;
        toolCalls.forEach(drawTool);
      }
      showStatus(s);
    } catch (error) {
      head.replaceChildren(h("p", { class: "error" }, error.message));
    }
  }

  let logNext = 0;
  async function readLogs() {
    try {
      const page = await getJSON(`run/${encodeURIComponent(taskId)}/logs${logNext ? `?after=${logNext}` : ""}`);
      logNext = page.next;
      for (const r of page.records) {
        logs.append(h("tr", { class: `level-${r.level.toLowerCase()}` }, h("td", {}, clock(r.ts)), h("td", {}, `${r.actor}/${r.instance}`),
          h("td", {}, r.level), h("td", { class: "message" }, r.message)));
      }
      noLogs.hidden = logs.children.length > 0;
    } catch {
      /* the next poll tries again */
    }
  }

  (async () => {
    if (traceUrl === null) {
      try {
        traceUrl = (await getJSON(`tasks?limit=1&q=${encodeURIComponent(taskId)}`)).trace_url;
      } catch {
        traceUrl = null;
      }
    }
    await refresh();
    readLogs();
    try {
      await readEvents(`run/${encodeURIComponent(taskId)}/events`, onEvent, controller.signal);
    } catch (error) {
      if (!controller.signal.aborted) setConnection(error.message);
    }
  })();
  const poll = setInterval(() => {
    if (!finished) { refresh(); drawStrip(); }
    readLogs();
  }, 2000);
  return { stop: () => { controller.abort(); clearInterval(poll); } };
}

// --- services -------------------------------------------------------------------------------------

async function readServices() {
  const body = await getJSON("services");
  const down = body.services.filter((s) => s.status === "down").length;
  const count = document.getElementById("down-count");
  count.hidden = down === 0;
  count.textContent = down ? `${down} down` : "";
  return body;
}

function servicesPage(root) {
  const services = h("tbody", { id: "service-rows" });
  const deps = h("tbody", { id: "dependency-rows" });
  const servers = h("div", { id: "model-servers" });
  root.replaceChildren(
    h("h1", {}, "Services"),
    h("table", { class: "services" }, h("thead", {}, h("tr", {}, ["service", "instance", "status", "reason", "restarts", "last seen", "memory", "in flight", "pid"].map((t) => h("th", {}, t)))), services),
    h("h2", {}, "Dependencies"),
    h("table", {}, h("thead", {}, h("tr", {}, ["name", "target", "status", "reason", "checked"].map((t) => h("th", {}, t)))), deps),
    h("h2", {}, "Model servers"), servers);

  async function draw() {
    let body;
    try {
      body = await readServices();
      setConnection("");
    } catch (error) {
      setConnection(error.message);
      return;
    }
    services.replaceChildren(...body.services.map((s) => h("tr", { "data-service": `${s.name}/${s.instance}`, "data-status": s.status },
      h("td", {}, s.name), h("td", {}, s.instance), h("td", {}, badge(s.status)), h("td", { class: "reason" }, s.reason || ""),
      h("td", { class: "num" }, s.restarts), h("td", {}, ago(s.last_seen)), h("td", { class: "num" }, megabytes(s.rss_bytes)),
      h("td", { class: "num" }, s.in_flight ?? ""), h("td", { class: "num" }, s.pid ?? ""))));
    deps.replaceChildren(...(body.dependencies || []).map((d) => h("tr", {},
      h("td", {}, d.name), h("td", { class: "mono" }, d.target), h("td", {}, badge(d.status)),
      h("td", { class: "reason" }, d.reason || "", ...(d.stderr && d.stderr.length ? [h("pre", { class: "stderr" }, d.stderr.join("\n"))] : [])),
      h("td", {}, ago(d.last_checked)))));
    const list = body.model_servers || [];
    servers.replaceChildren(...(list.length ? list.map((m) => h("div", { class: "server" },
      h("h3", {}, m.url || "", " ", badge(m.status || "unknown"), m.api ? ` ${m.api}` : ""),
      h("ul", {}, (m.models || []).map((model) => h("li", { class: model.loaded ? "loaded" : "" }, model.name,
        model.loaded ? " (loaded)" : "", model.tokens_per_s ? `, ${model.tokens_per_s.toFixed(0)} tokens/s` : "",
        model.ttft_s ? `, first token ${seconds(model.ttft_s)}` : ""))))) : [h("p", { class: "muted" }, "No model server reported yet.")]));
  }
  draw();
  const timer = setInterval(draw, 1000);
  return { stop: () => clearInterval(timer) };
}

// --- routing --------------------------------------------------------------------------------------

function route() {
  if (current) current.stop();
  const root = document.getElementById("view");
  const hash = location.hash.replace(/^#\/?/, "");
  for (const id of ["nav-tasks", "nav-services"]) document.getElementById(id).classList.remove("active");
  if (hash.startsWith("task/")) {
    current = taskPage(root, decodeURIComponent(hash.slice(5)));
  } else if (hash === "services") {
    document.getElementById("nav-services").classList.add("active");
    current = servicesPage(root);
  } else {
    document.getElementById("nav-tasks").classList.add("active");
    current = taskList(root);
  }
}

window.addEventListener("hashchange", route);
route();
setInterval(() => {
  if (!location.hash.startsWith("#/services")) readServices().catch(() => {});
}, 5000);
