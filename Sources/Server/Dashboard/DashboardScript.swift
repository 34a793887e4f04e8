// The dashboard's script (served at `/dashboard/app.js`): plain JavaScript, no framework, no
// build step. Charts are its own SVG. Every API call carries the token from sessionStorage in
// `Authorization: Bearer`; the token is never put in a URL.
enum DashboardScript {
    static let js = #"""
"use strict";
(() => {
  const TOKEN_KEY = "capstan.token";
  const MAX_LOG_LINES = 4000;
  const $ = (sel, root = document) => root.querySelector(sel);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const enc = encodeURIComponent;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const main = $("#main");
  // Figures for scripts/bench-dashboard.sh (and anyone curious): when the job list was first painted.
  const perf = (window.capstanDashboard = { jobsRendered: null, jobsAllRendered: null, overviewFetchMs: null, renderMs: null });

  let token = sessionStorage.getItem(TOKEN_KEY);
  let view = null;

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
  }

  async function errorBody(r) {
    try { const j = await r.json(); return (j && j.error) || {}; } catch { return {}; }
  }

  /** GET an API route with the token; JSON, or AuthError (401) / ApiError. */
  async function api(path, signal) {
    let r;
    try {
      r = await fetch(path, { headers: { Authorization: "Bearer " + token, Accept: "application/json" }, cache: "no-store", signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "The server cannot be reached (" + e.message + ").", "Is `capstan serve` still running?");
    }
    if (r.status === 401) throw new AuthError((await errorBody(r)).message || "The server refused the token.");
    if (!r.ok) {
      const b = await errorBody(r);
      throw new ApiError(r.status, b.message || r.status + " " + r.statusText, b.hint);
    }
    return r.json();
  }

  // ---- formatting ----
  function num(x) {
    if (x == null || !isFinite(x)) return "—";
    const a = Math.abs(x);
    if (a !== 0 && (a < 0.001 || a >= 1e6)) return x.toExponential(2);
    return String(+x.toPrecision(4));
  }
  function thousands(x) {
    if (x == null || !isFinite(x)) return "—";
    if (x >= 10000) return (x / 1000).toFixed(0) + "k";
    if (x >= 1000) return (x / 1000).toFixed(1) + "k";
    return num(x);
  }
  function money(x) {
    if (x == null || !isFinite(x)) return "—";
    if (x === 0) return "$0";
    if (x < 0.01) return "$" + x.toFixed(4);
    if (x < 1000) return "$" + x.toFixed(2);
    return "$" + Math.round(x).toLocaleString("en-US");
  }
  function bytes(n) {
    if (n == null) return "—";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function duration(s) {
    if (s == null || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s / 3600) % 24 + "h";
  }
  /** A stable time for lists: HH:MM today, else "Nov 29 HH:MM". */
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso), now = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    return d.toDateString() === now.toDateString() ? hm : d.toLocaleDateString("en-US", { month: "short", day: "numeric" }) + " " + hm;
  }
  const ago = (iso) => (iso ? duration((Date.now() - Date.parse(iso)) / 1000) + " ago" : "—");
  const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "—");
  const badge = (status) => `<span class="badge s-${esc(status)}">${esc(status)}</span>`;
  function bar(fraction, hot) {
    const w = Math.max(0, Math.min(1, fraction || 0)) * 100;
    return `<svg class="bar${hot ? " hot" : ""}" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true"><rect class="bg" width="100" height="8" rx="3"/><rect class="fg" width="${w.toFixed(1)}" height="8" rx="3"/></svg>`;
  }
  function progress(j) {
    if (j.step == null) return "—";
    if (j.totalSteps) return `<progress max="${j.totalSteps}" value="${Math.min(j.step, j.totalSteps)}"></progress> ${j.step} / ${j.totalSteps}`;
    return "step " + j.step;
  }

  // ---- header: live indicator, breadcrumbs, login ----
  function setLive(ok, message) {
    const live = $("#live");
    live.classList.toggle("stale", !ok);
    live.textContent = ok ? "live · " + new Date().toLocaleTimeString([], { hour12: false }) : "connection lost: " + message + " — retrying";
  }
  function crumbs(html) { $("#crumbs").innerHTML = html; }

  function showLogin(message) {
    stopView();
    main.innerHTML = "";
    crumbs("");
    $("#live").textContent = "";
    $("#signout").hidden = true;
    $("#login").hidden = false;
    const err = $("#login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("#token").focus();
  }
  function refused(message) {
    return message + " Check the token, or create one with `capstan serve token create NAME` on the server.";
  }
  /** The server refused the stored token: forget it and ask again, saying why. */
  function authFailed(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(refused(message));
  }

  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = $("#token").value.trim();
    if (!value) return;
    const button = $("#login-button");
    button.disabled = true;
    token = value;
    try {
      await api("/v1/jobs?limit=1");
      sessionStorage.setItem(TOKEN_KEY, value);
      $("#token").value = "";
      route();
    } catch (err) {
      token = null;
      const box = $("#login-error");
      box.hidden = false;
      box.textContent = err instanceof AuthError ? refused(err.message) : err.message + (err.hint ? " " + err.hint : "");
    } finally {
      button.disabled = false;
    }
  });
  $("#signout").addEventListener("click", () => {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });

  // ---- views ----
  function stopView() {
    if (!view) return;
    view.stopped = true;
    view.controller.abort();
    view.stops.forEach((f) => f());
    view = null;
  }
  /** Runs `fn` now and every `ms` (or the number of ms `fn` returns) while the view lives; errors show in the header. */
  function poll(v, fn, ms) {
    let timer = null;
    const tick = async () => {
      if (v.stopped) return;
      let next = ms;
      try {
        const wait = await fn();
        if (typeof wait === "number") next = wait;
        setLive(true);
      } catch (e) {
        if (v.stopped || e.name === "AbortError") return;
        if (e instanceof AuthError) return authFailed(e.message);
        setLive(false, e.message);
      }
      if (!v.stopped) timer = setTimeout(tick, next);
    };
    tick();
    v.stops.push(() => clearTimeout(timer));
  }

  function route() {
    stopView();
    if (!token) return showLogin("");
    $("#login").hidden = true;
    $("#signout").hidden = false;
    const controller = new AbortController();
    view = { stopped: false, controller, signal: controller.signal, stops: [] };
    const m = location.hash.match(/^#\/jobs\/(.+)$/);
    if (m) jobView(view, decodeURIComponent(m[1]));
    else overviewView(view);
  }

  // ---- overview: clusters and jobs ----
  function overviewView(v) {
    crumbs("");
    document.title = "Capstan";
    main.innerHTML = `
<section class="card"><h2>Clusters <span class="count" id="cluster-count"></span></h2>
  <div class="scroll"><table id="clusters"><thead><tr><th>Cluster</th><th>Status</th><th>Provider</th><th>Instance</th><th class="num">Nodes</th><th class="num">$/h</th><th class="num">Cost so far</th><th class="num">Up</th></tr></thead><tbody></tbody></table></div>
  <p class="empty" id="no-clusters" hidden>No live clusters.</p></section>
<section class="card"><h2>Jobs <span class="count" id="job-count"></span><input id="job-filter" class="filter" type="search" placeholder="Filter: name, id, status…" aria-label="Filter jobs"></h2>
  <div class="scroll"><table id="jobs"><thead><tr><th>Job</th><th>Status</th><th class="num">Attempt</th><th class="num">Nodes</th><th>Progress</th><th class="num">Loss</th><th class="num">Tokens/s</th><th class="num">Cost</th><th>Started</th><th>Error</th></tr></thead><tbody></tbody></table></div>
  <p class="empty" id="no-jobs" hidden>No jobs yet. Launch one with <code>capstan launch job.yaml</code>.</p></section>`;
    let last = null;
    const filter = $("#job-filter");
    filter.addEventListener("input", () => last && renderJobs(last.jobs, filter.value));
    $("#jobs tbody").addEventListener("click", (e) => {
      const row = e.target.closest("tr[data-job]");
      if (row && !e.target.closest("a")) location.hash = "#/jobs/" + enc(row.dataset.job);
    });
    poll(v, async () => {
      const t0 = performance.now();
      const data = await api("/v1/overview?limit=1000", v.signal);
      if (v.stopped) return;
      const t1 = performance.now();
      last = data;
      renderClusters(data.clusters);
      renderJobs(data.jobs, filter.value);
      if (perf.overviewFetchMs == null) { perf.overviewFetchMs = t1 - t0; perf.renderMs = performance.now() - t1; }
      if (perf.jobsRendered == null) {
        // After the next paint: what a person sees.
        requestAnimationFrame(() => setTimeout(() => {
          perf.jobsRendered = performance.now();
          performance.mark("capstan-jobs-rendered");
        }, 0));
      }
    }, 3000);
  }

  function renderClusters(clusters) {
    const rate = clusters.reduce((s, c) => s + (c.pricePerHour || 0), 0);
    const spent = clusters.reduce((s, c) => s + (c.costSoFar || 0), 0);
    $("#cluster-count").textContent = clusters.length ? `${clusters.length} live · ${money(rate)}/h · ${money(spent)} so far` : "";
    $("#no-clusters").hidden = clusters.length > 0;
    $("#clusters tbody").innerHTML = clusters.map((c) => `<tr data-cluster="${esc(c.name)}">
<td><b>${esc(c.name)}</b></td><td>${badge(c.status)}</td><td>${esc([c.provider, c.region].filter(Boolean).join(" · ") || "—")}</td>
<td>${esc(c.instanceType || "—")}${c.gpusPerNode ? ` <span class="count">${c.gpusPerNode}× ${esc(c.gpu || "GPU")}</span>` : ""}${c.spot ? ' <span class="badge">spot</span>' : ""}</td>
<td class="num">${c.nodes}</td><td class="num">${c.pricePerHour == null ? "—" : money(c.pricePerHour)}</td><td class="num">${money(c.costSoFar)}</td><td class="num">${duration(c.uptimeSeconds)}</td></tr>`).join("");
  }

  // The job table: the first screenful at once, the rest after it is painted (in chunks);
  // later refreshes replace only the rows that changed.
  const FIRST_ROWS = 60, CHUNK_ROWS = 200;
  let jobRows = { ids: [], html: [] }, renderRun = 0;
  function jobRow(j) {
    return `<tr data-job="${esc(j.id)}" data-status="${esc(j.status)}"><td><a href="#/jobs/${esc(enc(j.id))}"><b>${esc(j.name)}</b></a> <span class="count mono">${esc(j.id)}</span></td>` +
      `<td>${badge(j.status)}</td><td class="num">${j.attempt}${j.restarts ? ` <span class="count">(${j.restarts} restart${j.restarts === 1 ? "" : "s"})</span>` : ""}</td><td class="num">${j.nodes ?? "—"}</td>` +
      `<td>${progress(j)}</td><td class="num">${num(j.loss)}</td><td class="num">${thousands(j.tokensPerSecond)}</td><td class="num">${money(j.cost)}</td>` +
      `<td>${when(j.startedAt)}</td><td class="err" title="${esc(j.lastError || "")}">${esc(j.lastError || "")}</td></tr>`;
  }
  function renderJobs(jobs, filter) {
    const running = jobs.filter((j) => j.status === "running").length;
    const f = (filter || "").trim().toLowerCase();
    const shown = f ? jobs.filter((j) => (j.id + " " + j.name + " " + j.status + " " + j.cluster).toLowerCase().includes(f)) : jobs;
    $("#job-count").textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"} · ${running} running${f ? ` · ${shown.length} shown` : ""}`;
    $("#no-jobs").hidden = jobs.length > 0;
    const tbody = $("#jobs tbody");
    const ids = shown.map((j) => j.id);
    const same = tbody.dataset.complete === "1" && ids.length === jobRows.ids.length && ids.every((id, i) => id === jobRows.ids[i]);
    if (same) {
      const html = shown.map(jobRow), prev = jobRows.html;
      jobRows = { ids, html };
      for (let i = 0; i < html.length; i++) if (html[i] !== prev[i]) tbody.rows[i].outerHTML = html[i];
      return;
    }
    const run = ++renderRun, html = [];
    jobRows = { ids, html };
    const rows = (from, to) => {
      const out = [];
      for (let i = from; i < Math.min(to, shown.length); i++) out.push((html[i] = jobRow(shown[i])));
      return out.join("");
    };
    tbody.dataset.complete = "0";
    tbody.innerHTML = rows(0, FIRST_ROWS);
    let at = FIRST_ROWS;
    const more = () => {
      if (run !== renderRun) return;
      if (at < shown.length) {
        tbody.insertAdjacentHTML("beforeend", rows(at, at + CHUNK_ROWS));
        at += CHUNK_ROWS;
        return setTimeout(more, 0);
      }
      tbody.dataset.complete = "1";
      if (perf.jobsAllRendered == null) requestAnimationFrame(() => setTimeout(() => { perf.jobsAllRendered = performance.now(); }, 0));
    };
    requestAnimationFrame(() => setTimeout(more, 0));
  }

  // ---- one job ----
  function jobView(v, id) {
    crumbs(`<a href="#/">Jobs</a> / <span class="mono">${esc(id)}</span>`);
    document.title = id + " · Capstan";
    main.innerHTML = `
<div id="job-banner"></div>
<div class="jobhead"><h1 id="job-name">${esc(id)}</h1><span id="job-status"></span><span class="count mono">${esc(id)}</span></div>
<div class="facts card" id="job-facts">Loading…</div>
<div class="grid">
  <section class="card"><h3>Metrics <select id="metric" aria-label="Metric"></select><span class="spacer"></span></h3>
    <div id="chart" class="chart-box" data-points="0"><p class="empty">No metrics yet: the job prints JSON lines such as <code>{"step": 1, "loss": 2.3}</code>.</p></div>
    <p class="chart-note" id="chart-note"></p></section>
  <section class="card"><h3>Nodes: GPU, CPU and memory</h3><div id="telemetry"><p class="empty">Loading…</p></div></section>
  <section class="card wide"><h3>Logs <span class="tabs" id="log-tabs" role="group" aria-label="Node"></span><span class="spacer"></span><span id="log-status" class="count"></span></h3>
    <pre id="logs" class="logs" data-lines="0" tabindex="0"></pre></section>
  <section class="card"><h3>Timeline <span class="count" id="event-count"></span></h3><ol id="events" class="timeline"></ol></section>
  <section class="card"><h3>Checkpoints <span class="count" id="ckpt-count"></span></h3><div class="scroll"><table id="checkpoints"><thead><tr><th class="num">Step</th><th class="num">Attempt</th><th class="num">Size</th><th>Written</th><th>Verified</th></tr></thead><tbody></tbody></table></div>
    <p class="empty" id="no-ckpt">No checkpoints yet.</p></section>
</div>`;
    const path = "/v1/jobs/" + enc(id);
    const logs = new LogPane($("#logs"), $("#log-tabs"));
    v.metric = null;
    poll(v, async () => {
      let j;
      try {
        j = await api(path + "/summary", v.signal);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          $("#job-banner").innerHTML = `<div class="banner">${esc(e.message)} ${esc(e.hint || "")} <a href="#/">Back to the jobs</a>.</div>`;
        }
        throw e;
      }
      if (v.stopped) return;
      renderJobHead(j);
      logs.ensureNodes(j.nodes || 1);
      if (!v.logsStarted) { v.logsStarted = true; streamLogs(v, path, logs); }
    }, 2000);
    poll(v, async () => renderMetrics(v, await api(path + "/metrics", v.signal)), 2000);
    poll(v, async () => renderEvents(await api(path + "/events?limit=1000", v.signal)), 3000);
    poll(v, async () => renderCheckpoints(await api(path + "/checkpoints", v.signal)), 5000);
    const telemetry = new Telemetry($("#telemetry"));
    poll(v, async () => {
      try {
        telemetry.render(await api(path + "/telemetry", v.signal));
      } catch (e) {
        // A server without the route (or no samples for the job): say so, and ask less often.
        if (e instanceof ApiError && (e.status === 404 || e.status === 501)) { telemetry.none(); return 15000; }
        throw e;
      }
    }, 3000);
    $("#metric").addEventListener("change", (e) => { v.metric = e.target.value; if (v.points) renderMetrics(v, v.points); });
  }

  function renderJobHead(j) {
    $("#job-name").textContent = j.name;
    $("#job-status").innerHTML = badge(j.status);
    const facts = [
      ["attempt", j.attempt + (j.restarts ? ` (${j.restarts} restart${j.restarts === 1 ? "" : "s"})` : "")],
      ["nodes", j.nodes ?? "—"],
      ["cluster", j.cluster],
      ["step", j.step == null ? "—" : j.totalSteps ? `${j.step} / ${j.totalSteps}` : j.step],
      ["loss", num(j.loss)],
      ["tokens/s", thousands(j.tokensPerSecond)],
      ["cost", money(j.cost)],
      ["checkpoint", j.latestCheckpoint == null ? "—" : "step " + j.latestCheckpoint],
      ["started", j.startedAt ? ago(j.startedAt) : "—"],
    ];
    if (j.finishedAt) facts.push(["finished", ago(j.finishedAt)]);
    $("#job-facts").innerHTML = facts.map(([k, val]) => `<span>${esc(k)} <b>${esc(val)}</b></span>`).join("");
    $("#job-banner").innerHTML = j.lastError && j.status !== "running" ? `<div class="banner">${esc(j.lastError)}</div>` : "";
  }

  // ---- metrics chart (SVG) ----
  const HIDDEN_METRICS = new Set(["total_steps", "max_steps"]);
  function renderMetrics(v, points) {
    v.points = points;
    const keys = new Set();
    for (const p of points) for (const k in p.values) if (!HIDDEN_METRICS.has(k)) keys.add(k);
    const ordered = [...keys].sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    const select = $("#metric");
    if (select.dataset.keys !== ordered.join(",")) {
      select.dataset.keys = ordered.join(",");
      select.innerHTML = ordered.map((k) => `<option value="${esc(k)}">${esc(k)}</option>`).join("");
    }
    if (!v.metric || !keys.has(v.metric)) v.metric = ordered[0] || null;
    if (v.metric) select.value = v.metric;
    select.hidden = ordered.length === 0;
    if (!v.metric) return;
    const series = [];
    for (const p of points) {
      const y = p.values[v.metric];
      if (y != null && isFinite(y)) series.push([p.step, y, p.attempt]);
    }
    const box = $("#chart");
    box.dataset.points = series.length;
    box.dataset.metric = v.metric;
    drawChart(box, series, v.metric);
    const last = series[series.length - 1];
    $("#chart-note").textContent = last ? `${series.length} points · step ${last[0]}: ${v.metric} ${num(last[1])}` : "";
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    const step = (r >= 7.5 ? 10 : r >= 3.5 ? 5 : r >= 1.5 ? 2 : 1) * mag;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  /** A line chart of [step, value, attempt] into `box`, with axes, attempt boundaries and a hover readout. */
  function drawChart(box, series, label) {
    if (series.length === 0) { box.innerHTML = `<p class="empty">No points for ${esc(label)} yet.</p>`; return; }
    const W = Math.max(320, box.clientWidth || 640), H = 260, L = 58, R = 14, T = 12, B = 30;
    const pw = W - L - R, ph = H - T - B;
    let x0 = series[0][0], x1 = series[series.length - 1][0];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    let y0 = Infinity, y1 = -Infinity;
    for (const p of series) { if (p[1] < y0) y0 = p[1]; if (p[1] > y1) y1 = p[1]; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * pw, sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * ph;
    // More points than pixels: each pixel column keeps its first, lowest, highest and last point.
    let pts = series;
    if (series.length > pw * 2) {
      pts = [];
      let col = -1, bucket = [];
      const flush = () => {
        if (!bucket.length) return;
        let lo = bucket[0], hi = bucket[0];
        for (const p of bucket) { if (p[1] < lo[1]) lo = p; if (p[1] > hi[1]) hi = p; }
        const keep = [bucket[0], lo, hi, bucket[bucket.length - 1]].sort((a, b) => a[0] - b[0]);
        for (const p of keep) if (pts[pts.length - 1] !== p) pts.push(p);
      };
      for (const p of series) {
        const c = Math.floor(sx(p[0]));
        if (c !== col) { flush(); bucket = []; col = c; }
        bucket.push(p);
      }
      flush();
    }
    let d = "";
    for (let i = 0; i < pts.length; i++) d += (i ? "L" : "M") + sx(pts[i][0]).toFixed(1) + " " + sy(pts[i][1]).toFixed(1);
    let g = "";
    for (const t of niceTicks(y0, y1, 5)) {
      const y = sy(t).toFixed(1);
      g += `<line class="grid-line" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/><text x="${L - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${esc(num(t))}</text>`;
    }
    for (const t of niceTicks(x0, x1, Math.max(2, Math.floor(pw / 90)))) {
      if (t !== Math.round(t)) continue;
      const x = sx(t).toFixed(1);
      g += `<line class="axis" x1="${x}" x2="${x}" y1="${T + ph}" y2="${T + ph + 4}"/><text x="${x}" y="${H - 10}" text-anchor="middle">${t}</text>`;
    }
    // Where an attempt began (a restart): a dashed line.
    let prev = null;
    for (const p of series) {
      if (p[2] != null && prev != null && p[2] !== prev) {
        const x = sx(p[0]).toFixed(1);
        g += `<line class="attempt" x1="${x}" x2="${x}" y1="${T}" y2="${T + ph}"/><text class="attempt-label" x="${+x + 4}" y="${T + 10}">attempt ${p[2]}</text>`;
      }
      if (p[2] != null) prev = p[2];
    }
    box.innerHTML = `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)} by step">
${g}<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${T + ph}"/><line class="axis" x1="${L}" x2="${W - R}" y1="${T + ph}" y2="${T + ph}"/>
<text x="${L + 4}" y="${T + 10}">${esc(label)}</text><path class="series" d="${d}"/>
<g class="hover" visibility="hidden"><line class="cursor" y1="${T}" y2="${T + ph}"/><circle class="dot" r="3.5"/><text class="tip" y="${T + 24}"></text></g></svg>`;
    const svg = box.firstElementChild, hover = svg.querySelector(".hover");
    svg.addEventListener("mousemove", (e) => {
      const rect = svg.getBoundingClientRect();
      const step = x0 + (((e.clientX - rect.left) * (W / rect.width) - L) / pw) * (x1 - x0);
      let lo = 0, hi = series.length - 1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (series[mid][0] < step) lo = mid + 1; else hi = mid; }
      if (lo > 0 && Math.abs(series[lo - 1][0] - step) < Math.abs(series[lo][0] - step)) lo--;
      const p = series[lo], x = sx(p[0]), y = sy(p[1]);
      hover.setAttribute("visibility", "visible");
      const line = hover.querySelector("line"), dot = hover.querySelector("circle"), tip = hover.querySelector("text");
      line.setAttribute("x1", x); line.setAttribute("x2", x);
      dot.setAttribute("cx", x); dot.setAttribute("cy", y);
      tip.textContent = `step ${p[0]}: ${num(p[1])}${p[2] != null ? " (attempt " + p[2] + ")" : ""}`;
      const right = x > L + pw * 0.6;
      tip.setAttribute("x", right ? x - 8 : x + 8);
      tip.setAttribute("text-anchor", right ? "end" : "start");
    });
    svg.addEventListener("mouseleave", () => hover.setAttribute("visibility", "hidden"));
  }

  // ---- logs: a followed NDJSON stream, read with fetch (EventSource cannot send the token) ----
  class LogPane {
    constructor(pre, tabs) {
      this.pre = pre; this.tabs = tabs;
      this.lines = []; this.pending = []; this.total = 0; this.nodes = new Set();
      this.filter = "all"; this.scheduled = false;
      tabs.addEventListener("click", (e) => {
        const b = e.target.closest("button");
        if (!b) return;
        this.filter = b.dataset.node === "all" ? "all" : +b.dataset.node;
        this.renderTabs();
        this.rebuild();
      });
    }
    ensureNodes(n) {
      let changed = false;
      for (let i = 0; i < n; i++) if (!this.nodes.has(i)) { this.nodes.add(i); changed = true; }
      if (changed || !this.tabs.childElementCount) this.renderTabs();
    }
    renderTabs() {
      const all = ["all", ...[...this.nodes].sort((a, b) => a - b)];
      this.tabs.innerHTML = all.map((n) => `<button type="button" data-node="${n}" aria-pressed="${this.filter === n}">${n === "all" ? "all nodes" : "node " + n}</button>`).join("");
    }
    add(node, text) {
      this.total++;
      const item = [node, text];
      this.lines.push(item);
      if (this.lines.length > MAX_LOG_LINES * 1.25) this.lines.splice(0, this.lines.length - MAX_LOG_LINES);
      if (!this.nodes.has(node)) { this.nodes.add(node); this.renderTabs(); }
      if (this.filter === "all" || this.filter === node) {
        this.pending.push(item);
        if (this.pending.length > MAX_LOG_LINES * 2) this.pending.splice(0, this.pending.length - MAX_LOG_LINES);
      }
      if (!this.scheduled) { this.scheduled = true; requestAnimationFrame(() => this.flush()); }
    }
    line([node, text]) {
      const div = document.createElement("span");
      div.className = "ln n" + (node % 4);
      const tag = document.createElement("span");
      tag.className = "nd";
      tag.textContent = "[" + node + "]";
      div.append(tag, text + "\n");
      return div;
    }
    flush() {
      this.scheduled = false;
      const pre = this.pre;
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 40;
      const frag = document.createDocumentFragment();
      for (const item of this.pending.slice(-MAX_LOG_LINES)) frag.appendChild(this.line(item));
      this.pending = [];
      pre.appendChild(frag);
      for (let extra = pre.childElementCount - MAX_LOG_LINES; extra > 0; extra--) pre.firstElementChild.remove();
      pre.dataset.lines = this.total;
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
    rebuild() {
      this.pre.textContent = "";
      this.pending = this.lines.filter(([n]) => this.filter === "all" || this.filter === n);
      this.flush();
    }
    status(text) { $("#log-status").textContent = text; }
  }

  /** Follows the job's logs until it ends; on a dropped stream, reconnects and skips the lines it has (lines come in file order per node). */
  async function streamLogs(v, path, pane) {
    const seen = {};
    let backoff = 1000;
    while (!v.stopped) {
      const skip = Object.assign({}, seen);
      try {
        const r = await fetch(path + "/logs?follow=true", { headers: { Authorization: "Bearer " + token, Accept: "application/x-ndjson" }, cache: "no-store", signal: v.signal });
        if (r.status === 401) return authFailed((await errorBody(r)).message || "The server refused the token.");
        if (!r.ok) throw new Error((await errorBody(r)).message || r.status + " " + r.statusText);
        pane.status("following");
        backoff = 1000;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let rest = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const parts = (rest + value).split("\n");
          rest = parts.pop();
          for (const raw of parts) {
            if (!raw.trim()) continue;
            let item;
            try { item = JSON.parse(raw); } catch { continue; }
            if (item.end) { pane.status("the job " + item.end.status + "; the log is complete"); return; }
            if (item.line == null) continue;
            const n = item.node ?? 0;
            if (skip[n] > 0) { skip[n]--; continue; }
            seen[n] = (seen[n] || 0) + 1;
            pane.add(n, item.line);
          }
        }
      } catch (e) {
        if (v.stopped || e.name === "AbortError") return;
        pane.status("log stream lost (" + e.message + "); reconnecting…");
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  // ---- timeline and checkpoints ----
  function kindClass(kind) {
    const k = kind.toLowerCase();
    if (/fail|error|lost|corrupt|abandon|dead|kill/.test(k)) return "k-bad";
    if (/restart|replac|retry|preempt|cancel|stop|stall/.test(k)) return "k-warn";
    if (/checkpoint|upload|restore/.test(k)) return "k-info";
    if (/succe|start|ready|running|launch|finish|up/.test(k)) return "k-ok";
    return "";
  }
  function renderEvents(events) {
    const list = $("#events");
    const key = events.length + ":" + (events.length ? events[events.length - 1].id : "");
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    $("#event-count").textContent = events.length ? events.length + "" : "";
    list.innerHTML = events.length ? events.slice().reverse().map((e) => `<li class="${kindClass(e.kind)}"><time datetime="${esc(e.time)}" title="${esc(e.time)}">${clock(e.time)}</time><span class="kind" title="${esc(e.kind)}">${esc(e.kind)}</span><span>${esc(e.message)}</span></li>`).join("")
      : `<li class="empty"><span></span><span></span><span>No events yet.</span></li>`;
  }
  function renderCheckpoints(list) {
    $("#no-ckpt").hidden = list.length > 0;
    $("#ckpt-count").textContent = list.length ? list.length + "" : "";
    $("#checkpoints tbody").innerHTML = list.slice().sort((a, b) => b.step - a.step).map((c) => `<tr class="${c.corrupt ? "k-bad" : ""}"><td class="num">${c.step}</td><td class="num">${c.attempt ?? "—"}</td><td class="num">${bytes(c.bytes)}</td><td>${c.createdAt ? ago(c.createdAt) : "—"}</td><td>${c.corrupt ? `<span class="error" title="${esc(c.corrupt)}">corrupt</span>` : c.verified ? "✓" : "—"}</td></tr>`).join("");
  }

  // ---- per-node telemetry (GET /v1/jobs/{id}/telemetry) ----
  class Telemetry {
    constructor(box) { this.box = box; this.history = new Map(); }
    none() {
      this.box.dataset.state = "none";
      this.box.innerHTML = `<p class="empty">No telemetry: this server does not report GPU, CPU and memory samples for this job.</p>`;
    }
    remember(key, sampledAt, value) {
      let h = this.history.get(key);
      if (!h) this.history.set(key, (h = { at: null, values: [] }));
      if (value != null && h.at !== sampledAt) {
        h.at = sampledAt;
        h.values.push(value);
        if (h.values.length > 60) h.values.shift();
      }
      return h.values;
    }
    spark(values) {
      if (values.length < 2) return "";
      const d = values.map((v, i) => (i ? "L" : "M") + ((i / (values.length - 1)) * 100).toFixed(1) + " " + (24 - Math.max(0, Math.min(100, v)) * 0.22).toFixed(1)).join("");
      return `<svg class="spark" viewBox="0 0 100 26" preserveAspectRatio="none" aria-hidden="true"><path d="${d}"/></svg>`;
    }
    row(label, fraction, text, hot) {
      return `<div class="metric-row"><span>${esc(label)}</span>${bar(fraction, hot)}<span class="mono">${esc(text)}</span></div>`;
    }
    render(data) {
      const latest = new Map();
      for (const n of (data && data.nodes) || []) {
        const have = latest.get(n.node);
        if (!have || n.attempt > have.attempt || (n.attempt === have.attempt && n.sampledAt > have.sampledAt)) latest.set(n.node, n);
      }
      const nodes = [...latest.values()].sort((a, b) => a.node - b.node);
      this.box.dataset.state = nodes.length ? "nodes" : "empty";
      if (!nodes.length) {
        this.box.innerHTML = `<p class="empty">No telemetry yet: the job's agents have not sent a sample.</p>`;
        return;
      }
      const pct = (x) => (x == null ? "—" : Math.round(x) + "%");
      this.box.innerHTML = `<div class="nodes">${nodes.map((n) => {
        let h = `<div class="node" data-node="${n.node}"><header>node ${n.node}<span>attempt ${n.attempt ?? "—"} · ${ago(n.sampledAt)}</span></header>`;
        if (n.cpuPercent != null) h += this.row("CPU", n.cpuPercent / 100, pct(n.cpuPercent), n.cpuPercent > 90);
        if (n.memoryTotalBytes) h += this.row("Memory", n.memoryUsedBytes / n.memoryTotalBytes, `${bytes(n.memoryUsedBytes)} / ${bytes(n.memoryTotalBytes)}`, n.memoryUsedBytes / n.memoryTotalBytes > 0.9);
        for (const g of n.gpus || []) {
          const hist = this.remember(n.node + "/" + g.index, n.sampledAt, g.utilizationPercent);
          const extra = [g.temperatureC != null ? Math.round(g.temperatureC) + " °C" : null, g.powerW != null ? Math.round(g.powerW) + " W" : null].filter(Boolean).join(" · ");
          h += `<div class="gpu" data-gpu="${g.index}"><div class="name"><span>GPU ${g.index}${g.name ? " · " + esc(g.name) : ""}</span><span>${esc(extra)}</span></div>`;
          h += this.row("Util", (g.utilizationPercent || 0) / 100, pct(g.utilizationPercent), false);
          if (g.memoryTotalMiB) h += this.row("Memory", (g.memoryUsedMiB || 0) / g.memoryTotalMiB, `${bytes((g.memoryUsedMiB || 0) * 1048576)} / ${bytes(g.memoryTotalMiB * 1048576)}`, (g.memoryUsedMiB || 0) / g.memoryTotalMiB > 0.95);
          h += this.spark(hist) + `</div>`;
        }
        if (!(n.gpus || []).length) h += `<p class="empty">No GPUs on this node.</p>`;
        return h + `</div>`;
      }).join("")}</div>`;
    }
  }

  window.addEventListener("hashchange", route);
  route();
})();
"""#
}
