// The dashboard's stylesheet (served at `/dashboard/app.css`).
enum DashboardStyle {
    static let css = #"""
:root {
  --bg: #f6f7f9; --panel: #fff; --text: #1d2330; --muted: #677085; --line: #e1e4ea;
  --accent: #2f6fde; --ok: #1f9d55; --warn: #c98a00; --bad: #d64545; --info: #6b5bd2;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #12151b; --panel: #1a1e26; --text: #e3e6ee; --muted: #8f97a8; --line: #2b313d; --accent: #5b93f5; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--text); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre, .mono { font-family: var(--mono); font-size: 12.5px; }
.top { display: flex; align-items: center; gap: 16px; padding: 10px 20px; background: var(--panel); border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 5; }
.brand { font-weight: 700; font-size: 16px; color: var(--text); }
#crumbs { flex: 1; color: var(--muted); }
#crumbs a { color: var(--muted); }
.live { color: var(--muted); font-size: 12px; }
.live.stale { color: var(--bad); }
.live::before { content: "●"; margin-right: 5px; color: var(--ok); }
.live.stale::before { color: var(--bad); }
button, select, input { font: inherit; color: inherit; }
button { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; cursor: pointer; }
button:hover { border-color: var(--accent); }
main { padding: 18px 20px 40px; max-width: 1500px; margin: 0 auto; }
h1 { font-size: 20px; margin: 0 0 8px; }
h2 { font-size: 16px; margin: 0 0 10px; display: flex; align-items: center; gap: 10px; }
h3 { font-size: 13px; margin: 0 0 10px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); display: flex; align-items: center; gap: 10px; }
.count { color: var(--muted); font-weight: 400; font-size: 13px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; margin-bottom: 16px; min-width: 0; }
.notice, .empty { color: var(--muted); }
.error { color: var(--bad); }
.banner { background: color-mix(in srgb, var(--bad) 12%, var(--panel)); border: 1px solid var(--bad); color: var(--text); border-radius: 8px; padding: 10px 14px; margin-bottom: 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover { background: color-mix(in srgb, var(--accent) 6%, transparent); }
td.err { max-width: 380px; overflow: hidden; text-overflow: ellipsis; color: var(--bad); }
.scroll { overflow: auto; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: var(--line); color: var(--text); }
.s-running, .s-succeeded { background: color-mix(in srgb, var(--ok) 18%, transparent); color: var(--ok); }
.s-pending, .s-provisioning, .s-restarting, .s-cancelling, .s-terminating { background: color-mix(in srgb, var(--warn) 18%, transparent); color: var(--warn); }
.s-failed { background: color-mix(in srgb, var(--bad) 18%, transparent); color: var(--bad); }
.s-cancelled, .s-terminated { color: var(--muted); }
.bar { display: inline-block; width: 120px; height: 8px; vertical-align: middle; }
.bar .bg { fill: var(--line); }
.bar .fg { fill: var(--accent); }
.bar.hot .fg { fill: var(--warn); }
progress { width: 100px; height: 8px; vertical-align: middle; margin-right: 6px; accent-color: var(--accent); }
.login { position: fixed; inset: 0; display: grid; place-items: center; background: var(--bg); z-index: 10; }
.login form { width: min(440px, 92vw); background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 24px; display: grid; gap: 10px; }
.login input { padding: 8px 10px; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); font-family: var(--mono); }
.login button { padding: 8px; background: var(--accent); color: #fff; border: none; }
.login p { margin: 0; color: var(--muted); }
.login .error { color: var(--bad); }
.jobhead { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 22px; margin-bottom: 14px; }
.jobhead h1 { margin: 0; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; color: var(--muted); }
.facts b { color: var(--text); font-weight: 600; }
.grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 0 16px; }
.grid > .wide { grid-column: 1 / -1; }
@media (max-width: 980px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.chart { width: 100%; height: 260px; display: block; }
.chart text { fill: var(--muted); font-size: 11px; font-family: system-ui, sans-serif; }
.chart .axis { stroke: var(--line); }
.chart .grid-line { stroke: var(--line); stroke-dasharray: 2 3; }
.chart .series { fill: none; stroke: var(--accent); stroke-width: 1.6; vector-effect: non-scaling-stroke; }
.chart .attempt { stroke: var(--warn); stroke-dasharray: 4 3; }
.chart .attempt-label { fill: var(--warn); }
.chart .cursor { stroke: var(--muted); }
.chart .dot { fill: var(--accent); }
.chart .tip { fill: var(--text); font-size: 12px; }
.chart-note { color: var(--muted); font-size: 12px; margin: 6px 0 0; min-height: 1em; }
.tabs { display: inline-flex; gap: 4px; text-transform: none; letter-spacing: 0; }
.tabs button { padding: 1px 8px; font-size: 12px; }
.tabs button[aria-pressed="true"] { background: var(--accent); color: #fff; border-color: var(--accent); }
.spacer { flex: 1; }
.logs { height: 340px; overflow: auto; margin: 0; padding: 8px; background: var(--bg); border-radius: 6px; border: 1px solid var(--line); white-space: pre-wrap; word-break: break-all; }
.ln { display: block; }
.ln .nd { display: inline-block; min-width: 2.6em; color: var(--muted); user-select: none; }
.ln.n1 .nd { color: var(--info); } .ln.n2 .nd { color: var(--ok); } .ln.n3 .nd { color: var(--warn); }
.timeline { list-style: none; margin: 0; padding: 0; max-height: 340px; overflow: auto; }
.timeline li { display: grid; grid-template-columns: 70px 150px 1fr; gap: 8px; padding: 5px 0; border-bottom: 1px solid var(--line); align-items: baseline; }
.timeline time { color: var(--muted); font-variant-numeric: tabular-nums; font-size: 12px; }
.timeline .kind { font-family: var(--mono); font-size: 12px; overflow: hidden; text-overflow: ellipsis; }
.k-bad .kind { color: var(--bad); } .k-warn .kind { color: var(--warn); } .k-ok .kind { color: var(--ok); } .k-info .kind { color: var(--info); }
.nodes { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
.node { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.node header { display: flex; justify-content: space-between; font-weight: 600; margin-bottom: 6px; }
.node header span { color: var(--muted); font-weight: 400; font-size: 12px; }
.metric-row { display: grid; grid-template-columns: 70px 1fr auto; gap: 8px; align-items: center; font-size: 12px; margin: 3px 0; }
.metric-row .bar { width: 100%; }
.gpu { border-top: 1px dashed var(--line); padding-top: 4px; margin-top: 4px; }
.gpu .name { font-size: 12px; color: var(--muted); display: flex; justify-content: space-between; }
.spark { width: 100%; height: 26px; display: block; }
.spark path { fill: none; stroke: var(--accent); stroke-width: 1.2; vector-effect: non-scaling-stroke; }
.filter { margin-left: auto; padding: 3px 8px; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); font-weight: 400; }
"""#
}
