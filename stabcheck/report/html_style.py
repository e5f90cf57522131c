"""The HTML report's inline stylesheet and Content-Security-Policy (see
:mod:`stabcheck.report.html`)."""

from __future__ import annotations

CSS = """
:root { --ok:#2e9d4a; --warn:#d99a00; --bad:#d64045; --other:#a347b5; --muted:#666;
        --line:#e3e3e3; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:#222;
       font:14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }
main { max-width:1400px; margin:0 auto; padding:20px 24px 40px; }
header.top { background:#fff; border:1px solid var(--line); border-radius:8px;
             padding:16px 20px; margin-bottom:16px; }
h1 { font-size:22px; margin:0 0 6px; }
h2 { font-size:18px; margin:28px 0 10px; padding-bottom:4px; border-bottom:2px solid #ddd; }
h3 { font-size:15px; margin:18px 0 8px; }
.verdict { display:inline-block; padding:3px 10px; border-radius:4px; color:#fff;
           font-weight:700; letter-spacing:.03em; background:var(--other); }
.verdict.ok { background:var(--ok); } .verdict.bad { background:var(--bad); }
.muted { color:var(--muted); }
.counts span { margin-right:12px; white-space:nowrap; }
.sym { font-weight:700; }
.s-healthy { color:var(--ok); } .s-unstable { color:var(--warn); }
.s-diverged { color:var(--bad); } .s-error, .s-timeout, .s-oom { color:var(--other); }
dl.env { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; margin:10px 0 0; }
dl.env dt { color:var(--muted); } dl.env dd { margin:0; font-family:ui-monospace, monospace; }
nav { margin:10px 0 0; font-size:13px; } nav a { margin-right:12px; }
a { color:#1f5fa8; text-decoration:none; } a:hover { text-decoration:underline; }
section { margin-bottom:8px; }
.panel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
.cells { display:grid; grid-template-columns:repeat(auto-fill, minmax(320px, 1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        scroll-margin-top:10px; }
.card h4 { margin:0 0 4px; font-size:14px; }
.card .sub { font-size:12px; color:var(--muted); margin-bottom:4px; min-height:2.9em; }
svg.plot { display:block; max-width:100%; height:auto; }
.card svg.plot { width:100%; }
table { border-collapse:collapse; background:#fff; font-size:13px; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:#f0f2f5; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
ul.recs { margin:6px 0; padding-left:20px; }
.finding { background:#fff; border:1px solid var(--line); border-left:5px solid var(--other);
           border-radius:6px; padding:10px 14px; margin:10px 0; }
.finding.sev-error { border-left-color:var(--bad); }
.finding.sev-warning { border-left-color:var(--warn); }
.finding.sev-info { border-left-color:#3a8fc7; }
.finding h3 { margin:0 0 6px; }
.sev { display:inline-block; min-width:64px; text-align:center; font-size:11px;
       font-weight:700; color:#fff; border-radius:3px; padding:1px 6px; margin-right:6px;
       background:#3a8fc7; vertical-align:2px; }
.sev.error { background:var(--bad); } .sev.warning { background:var(--warn); }
.finding ol { margin:4px 0 8px; padding-left:22px; }
.finding li { margin:2px 0; }
.evidence { color:var(--muted); font-size:12px; }
.explain { margin:6px 0; } .source { font-size:12px; color:var(--muted); }
.todo { margin:6px 0 0; } .todo b { color:#1b5e20; }
pre { background:#fff; border:1px solid var(--line); border-radius:6px; padding:10px;
      overflow:auto; font-size:12px; }
details summary { cursor:pointer; font-weight:600; margin:6px 0; }
footer { margin-top:30px; font-size:12px; color:var(--muted); }
"""

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")
