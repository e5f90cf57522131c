"""The HTML report: one self-contained file that works offline.

Inline CSS and inline SVG only: no script, no font, no stylesheet or image is fetched, and a
Content-Security-Policy in the page forbids the browser to try. Sections: the verdict and the
environment, the status heatmap over learning rate × batch size, loss and gradient-norm curves
per cell (every seed overlaid, log scale, spikes ringed, the clip threshold drawn), sharpness
against 2/η where it was measured, the sweep summary, every finding with its explanation, the
probes, notes and the config. Like every renderer it only formats: the numbers, spike steps
and statuses come from the diagnosis.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import TYPE_CHECKING, Any

from stabcheck import __version__
from stabcheck.report import plotdata
from stabcheck.report.html_style import CSP, CSS
from stabcheck.report.svg import PALETTE, Cell, RefLine, Series, heatmap, line_chart
from stabcheck.report.terminal import SYMBOLS

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis
    from stabcheck.findings import Finding
    from stabcheck.result import AuditResult

STATUS_FILL = {"healthy": "#2e9d4a", "unstable": "#d99a00", "diverged": "#d64045",
               "error": "#a347b5", "timeout": "#a347b5", "oom": "#a347b5"}
VERDICT_CLASS = {"passed": "ok", "failed": "bad"}
CLIP_COLOUR = "#b22222"
LIMIT_COLOUR = "#b22222"

def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _g(value: float | None, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _cell_id(bs: int, lr: float) -> str:
    return f"cell-bs{bs}-lr{lr:g}".replace("+", "").replace(".", "_")


def _symbols(members: list[ProbeDiagnosis]) -> str:
    out = []
    for m in members:
        symbol, _ = SYMBOLS.get(m.status, ("?", ""))
        out.append(f'<span class="sym s-{_e(m.status)}" title="seed {m.record.seed}: '
                   f'{_e(m.status)}">{_e(symbol)}</span>')
    return "".join(out)


def _seed_colours(result: AuditResult) -> dict[int, str]:
    return {seed: PALETTE[i % len(PALETTE)] for i, seed in enumerate(plotdata.seeds(result))}


# --- sections -----------------------------------------------------------------------------

def _header(result: AuditResult, has_curvature: bool) -> str:
    v = result.verdict
    label = v.verdict.upper().replace("_", " ")
    counts = result.diagnosis.summary.by_status
    count_html = "".join(
        f'<span><span class="sym s-{_e(s)}">{_e(SYMBOLS.get(s, ("?", ""))[0])}</span> '
        f"{n} {_e(s)}</span>" for s, n in counts.items() if n)
    env = dict(result.environment)
    rows = [("config", result.config_path or "–"), ("fail_on", result.fail_on)]
    rows += [(k, env[k]) for k in sorted(env) if env[k] is not None]
    if "wall_time_s" in result.timings:
        rows.append(("wall time", f"{result.timings['wall_time_s']:.1f} s"))
    env_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(val)}</dd>" for k, val in rows)
    links = [("grid", "Status grid"), ("curves", "Loss and gradient norms")]
    if has_curvature:
        links.append(("sharpness", "Sharpness"))
    links += [("summary", "Sweep summary"), ("findings", "Findings"), ("probes", "Probes")]
    if result.notes:
        links.append(("notes", "Notes"))
    links.append(("config", "Config"))
    nav = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in links)
    return (
        '<header class="top" id="top">'
        f"<h1>stabcheck report · {_e(result.name)}</h1>"
        f'<p><span class="verdict {VERDICT_CLASS.get(v.verdict, "")}" id="verdict">{_e(label)}'
        f"</span> {_e(v.reason)} · exit code <b>{v.exit_code}</b></p>"
        f'<p class="counts"><b>{len(result.diagnosis.probes)}/{result.planned} probes</b> '
        f"{count_html}</p>"
        f'<dl class="env">{env_html}</dl><nav>{nav}</nav></header>')


def _grid(result: AuditResult) -> str:
    sizes, lrs, cells = plotdata.grid(result)
    if not cells:
        return '<section id="grid"><h2>Status grid</h2><p class="muted">No probes ran.</p>' \
               "</section>"
    svg_cells: dict[tuple[int, int], Cell] = {}
    for i, bs in enumerate(sizes):
        for j, lr in enumerate(lrs):
            members = cells.get((bs, lr), [])
            if not members:
                continue
            strips = []
            for m in members:
                symbol, _ = SYMBOLS.get(m.status, ("?", ""))
                tip = f"{m.record.label}: {m.status}"
                final = m.stats.final_loss
                if final is not None:
                    tip += f", final loss {final:.4g}"
                strips.append((STATUS_FILL.get(m.status, "#888"), symbol, tip))
            median = plotdata.median_final_loss(members)
            svg_cells[(i, j)] = Cell(strips=strips, caption=_g(median, ".3g"),
                                     href=f"#{_cell_id(bs, lr)}")
    legend = [(STATUS_FILL[s], SYMBOLS[s][0], s) for s in ("healthy", "unstable", "diverged",
                                                             "error", "timeout", "oom")]
    svg = heatmap([str(bs) for bs in sizes], [f"{lr:g}" for lr in lrs], svg_cells,
                  title="Probe status per seed (caption: median final loss)",
                  row_title="batch size", col_title="learning rate", legend=legend,
                  css_class="plot heatmap")
    return ('<section id="grid"><h2>Status over learning rate × batch size</h2>'
            f'<div class="panel">{svg}<p class="muted">One strip per seed; click a cell for its '
            "curves.</p></div></section>")


def _cell_card(result: AuditResult, bs: int, lr: float, members: list[ProbeDiagnosis],
               colours: dict[int, str], clip: float | None) -> str:
    x_max = plotdata.steps_planned(members)
    loss_series: list[Series] = []
    grad_series: list[Series] = []
    for m in members:
        colour = colours[m.record.seed]
        label = f"seed {m.record.seed}"
        for column, out in (("loss", loss_series), ("grad_norm", grad_series)):
            t = plotdata.trace(m, column)
            out.append(Series(label=label, x=t.steps.tolist(), y=t.values.tolist(),
                              color=colour, marks=t.marks, end=t.end))
    title = f"lr={lr:g} bs={bs}"
    loss_svg = line_chart(loss_series, title="loss", label=f"loss · {title}", x_label="step",
                          y_label="loss", x_max=x_max, css_class="plot plot-loss")
    refs = [RefLine(clip, f"grad_clip {clip:g}", CLIP_COLOUR)] if clip is not None else []
    grad_svg = line_chart(grad_series, title="gradient norm (before clipping)",
                          label=f"gradient norm (before clipping) · {title}", x_label="step",
                          y_label="grad norm", refs=refs, x_max=x_max, legend=False,
                          css_class="plot plot-grad")
    spikes = sum(len(plotdata.marked_steps(m, "loss")) for m in members)
    sub = [f"{len(members)} seed(s)"]
    median = plotdata.median_final_loss(members)
    if median is not None:
        sub.append(f"median final loss {median:.4g}")
    if spikes:
        sub.append(f"{spikes} loss spike(s) ringed")
    ends = [m for m in members if plotdata.nonfinite_step(m) is not None]
    if ends:
        sub.append(f"{len(ends)} went non-finite (×)")
    return (f'<article class="card" id="{_cell_id(bs, lr)}">'
            f"<h4>lr={lr:g} · bs={bs} {_symbols(members)}</h4>"
            f'<div class="sub">{_e(" · ".join(sub))}</div>{loss_svg}{grad_svg}</article>')


def _curves(result: AuditResult) -> str:
    sizes, lrs, cells = plotdata.grid(result)
    colours = _seed_colours(result)
    clip = plotdata.grad_clip(result)
    parts = ['<section id="curves"><h2>Loss and gradient norms per cell</h2>',
             '<p class="muted">All seeds overlaid, log scale. Rings mark the loss spikes and '
             "gradient-norm spikes named by findings "
             + "/".join(plotdata.MARK_CODES["loss"] + plotdata.MARK_CODES["grad_norm"])
             + "; × marks the step where a probe went non-finite"
             + (f"; the dashed red line is grad_clip = {clip:g}" if clip is not None else "")
             + ". Long traces are thinned for display (spikes and the last finite point are "
             "kept).</p>"]
    for bs in sizes:
        cards = [_cell_card(result, bs, lr, cells[(bs, lr)], colours, clip)
                 for lr in lrs if (bs, lr) in cells]
        parts.append(f"<h3>batch size {bs}</h3><div class=\"cells\">{''.join(cards)}</div>")
    parts.append("</section>")
    return "".join(parts)


def _sharpness(result: AuditResult) -> str:
    sizes, lrs, cells = plotdata.grid(result)
    colours = _seed_colours(result)
    cards = []
    for bs in sizes:
        for lr in lrs:
            members = cells.get((bs, lr), [])
            traces = [(m, t) for m in members if (t := plotdata.curvature_trace(m)) is not None]
            if not traces:
                continue
            series = []
            for m, t in traces:
                series.append(Series(label=f"seed {m.record.seed}", x=t.steps.tolist(),
                                     y=t.values.tolist(), color=colours[m.record.seed],
                                     marks=t.marks))
            first = traces[0][1]
            two_over_eta = 2.0 / lr
            if first.limit is not None and not _matches(first.limit.tolist(), two_over_eta):
                series.append(Series(label="optimizer stability limit", x=first.steps.tolist(),
                                     y=first.limit.tolist(), color=LIMIT_COLOUR, dashed=True))
            svg = line_chart(series, title=first.what, label=f"{first.what} · lr={lr:g} bs={bs}",
                             x_label="step", y_label=first.what,
                             refs=[RefLine(two_over_eta, f"2/η = {two_over_eta:.3g}",
                                           LIMIT_COLOUR)],
                             x_max=plotdata.steps_planned(members),
                             css_class="plot plot-sharpness")
            cards.append(f'<article class="card"><h4>lr={lr:g} · bs={bs} '
                         f"{_symbols(members)}</h4>{svg}</article>")
    if not cards:
        return ""
    return ('<section id="sharpness"><h2>Sharpness against 2/η</h2>'
            '<p class="muted">Top Hessian eigenvalue where the probe measured it. Plain gradient '
            "descent is stable while sharpness stays below 2/η (Cohen et al. 2021); rings mark "
            "measurements past the optimizer's limit ("
            + "/".join(plotdata.MARK_CODES["sharpness"]) + ").</p>"
            f'<div class="cells">{"".join(cards)}</div></section>')


def _matches(limits: list[float], value: float) -> bool:
    finite = [v for v in limits if math.isfinite(v)]
    return bool(finite) and all(abs(v - value) <= 1e-6 * abs(value) for v in finite)


def _summary(result: AuditResult) -> str:
    s = result.diagnosis.summary
    msl = s.max_stable_lr
    found = s.boundary_found
    sens = s.lr_sensitivity
    margin = s.stability_margin
    by_bs_margin = margin.by_batch_size if margin else {}
    advice = {str(r.batch_size): r.value for r in s.recommendations
              if r.what == "learning_rate"}
    rows = []
    for bs in sorted(msl, key=lambda b: int(b)):
        lr = msl[bs]
        boundary = found.get(bs)
        edge = "–" if lr is None else (f"{lr:g}" if boundary else f"≥ {lr:g}")
        sv = sens.get(bs)
        rows.append(
            f"<tr><td class=\"num\">{_e(bs)}</td><td class=\"num\">{_e(edge)}</td>"
            f"<td class=\"num\">{_e(_g(advice.get(bs), '.3g'))}</td>"
            f"<td class=\"num\">{_e(_g(sv.lr_sensitivity if sv else None, '.3g'))}</td>"
            f"<td class=\"num\">{_e(_g(sv.normalised if sv else None, '.0%'))}</td>"
            f"<td class=\"num\">{_e(_g(by_bs_margin.get(bs), '.2f'))}</td></tr>")
    table = ("<table><tr><th>batch size</th><th>max stable LR</th><th>recommended LR</th>"
             "<th>LR sensitivity</th><th>of init-to-best gap</th><th>margin to target_lr</th>"
             f"</tr>{''.join(rows)}</table>") if rows else ""
    recs = [f"<li>{_e(r.text)}</li>" for r in s.recommendations]
    missing = s.no_stable_lr
    if missing:
        recs.append(f"<li>no stable LR in the grid at bs={_e(', '.join(missing))}: sweep lower "
                    "learning rates</li>")
    facts = []
    if margin and margin.margin is not None:
        facts.append(f"stability margin {margin.margin:.2f}x at bs={margin.batch_size} "
                     f"(target_lr {margin.target_lr:g})")
    if s.max_seed_spread is not None:
        facts.append(f"largest seed spread of final loss: {s.max_seed_spread:.0%} of the "
                     "decrease")
    if s.fragile_cells:
        facts.append("cells where only some seeds diverged: " + ", ".join(
            f"lr={c.lr:g} bs={c.batch_size}" for c in s.fragile_cells))
    if s.batch_size_exponent is not None:
        facts.append(f"max stable LR ∝ bs^{s.batch_size_exponent:.2g} (1 = linear scaling "
                     "rule, 0.5 = square-root rule)")
    if s.clipping is not None and s.clipping.max_clip_fraction is not None:
        facts.append(f"largest fraction of clipped steps in a probe: "
                     f"{s.clipping.max_clip_fraction:.0%}")
    raw = json.dumps(s.to_json(), indent=2, sort_keys=True, default=str, allow_nan=True)
    return ('<section id="summary"><h2>Sweep summary</h2><div class="panel">'
            + table
            + "<h3>Recommendations</h3>"
            + (f'<ul class="recs">{"".join(recs)}</ul>' if recs
               else '<p class="muted">No recommendations.</p>')
            + (f'<h3>Sweep</h3><ul class="recs">{"".join(f"<li>{_e(f)}</li>" for f in facts)}'
               "</ul>" if facts else "")
            + f"<details><summary>Every summary value (JSON)</summary><pre>{_e(raw)}</pre>"
            "</details></div></section>")


def _findings(result: AuditResult) -> str:
    findings = result.diagnosis.findings
    if not findings:
        return ('<section id="findings"><h2>Findings</h2><p class="panel">No findings.</p>'
                "</section>")
    probes = {p.record.index: p for p in result.diagnosis.probes}
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.code, []).append(f)
    parts = [f'<section id="findings"><h2>Findings ({len(findings)})</h2>']
    for code, group in groups.items():
        first = group[0]
        info = first.info
        sev = first.severity.value
        items = []
        shared = all(f.recommendation == first.recommendation for f in group)
        for f in group:
            evidence = []
            if f.value is not None:
                evidence.append(f"value {f.value:.4g}")
            if f.threshold is not None:
                evidence.append(f"threshold {f.threshold:.4g}")
            if f.steps:
                shown = ", ".join(str(s) for s in f.steps[:12])
                evidence.append(f"step{'s' if len(f.steps) > 1 else ''} {shown}"
                                + (" …" if len(f.steps) > 12 else ""))
            links = []
            for index in f.probes[:12]:
                p = probes.get(index)
                if p is not None:
                    r = p.record
                    links.append(f'<a href="#{_cell_id(r.batch_size, r.lr)}">'
                                 f"{_e(r.label)}</a>")
            if len(f.probes) > 12:
                links.append(f"… {len(f.probes) - 12} more")
            line = _e(f.message)
            if f.severity != first.severity:
                line = f'<span class="sev {_e(f.severity.value)}">{_e(f.severity.value)}</span>' \
                       + line
            if evidence:
                line += f' <span class="evidence">[{_e("; ".join(evidence))}]</span>'
            if links and len(f.probes) > 1:
                line += f' <span class="evidence">probes: {", ".join(links)}</span>'
            elif links:
                line += f' <span class="evidence">→ {links[0]}</span>'
            if not shared:
                line += f'<div class="todo"><b>What to do:</b> {_e(f.recommendation)}</div>'
            items.append(f"<li>{line}</li>")
        todo = (f'<p class="todo"><b>What to do:</b> {_e(first.recommendation)}</p>'
                if shared and first.recommendation else "")
        key = (f' <span class="muted">config: <code>{_e(first.config_key)}</code></span>'
               if first.config_key else "")
        parts.append(
            f'<article class="finding sev-{_e(sev)}" id="{_e(code)}">'
            f'<h3><span class="sev {_e(sev)}">{_e(sev.upper())}</span>{_e(code)} '
            f"{_e(info.title)} <span class=\"muted\">({len(group)})</span></h3>"
            f"<ol>{''.join(items)}</ol>{todo}"
            f'<p class="explain"><b>Why:</b> {_e(info.explanation)}</p>'
            f'<p class="source"><b>Source:</b> {_e(info.source)}{key}</p></article>')
    parts.append("</section>")
    return "".join(parts)


def _probes(result: AuditResult) -> str:
    rows = []
    for p in result.diagnosis.probes:
        r, st = p.record, p.stats
        symbol, _ = SYMBOLS.get(p.status, ("?", ""))
        codes = ", ".join(f'<a href="#{_e(c)}">{_e(c)}</a>'
                          for c in sorted({f.code for f in p.findings}))
        where = ""
        if r.first_nonfinite_step is not None:
            where = f"step {r.first_nonfinite_step}"
            if r.nonfinite_module:
                where += f" in {r.nonfinite_module}"
        elif r.error:
            message = str(r.error.get("message", ""))
            where = f"{r.error.get('type', 'error')}: " + (
                message if len(message) <= 80 else message[:77] + "…")
        rows.append(
            f'<tr><td class="num">{r.index}</td><td class="num">{r.lr:g}</td>'
            f'<td class="num">{r.seed}</td><td class="num">{r.batch_size}</td>'
            f'<td><span class="sym s-{_e(p.status)}">{_e(symbol)}</span> {_e(p.status)}</td>'
            f'<td class="num">{r.steps_run}/{r.steps_planned}</td>'
            f'<td class="num">{_e(_g(st.initial_loss))}</td>'
            f'<td class="num">{_e(_g(st.final_loss))}</td>'
            f'<td class="num">{_e(_g(st.max_grad_norm))}</td>'
            f'<td class="num">{_e(_g(st.clip_fraction, ".0%"))}</td>'
            f"<td>{_e(where)}</td><td>{codes}</td></tr>")
    return ('<section id="probes"><h2>Probes</h2><details open><summary>'
            f"{len(rows)} probe(s)</summary><table><tr><th>#</th><th>lr</th><th>seed</th>"
            "<th>bs</th><th>status</th><th>steps</th><th>initial loss</th><th>final loss</th>"
            "<th>max grad norm</th><th>clipped</th><th>non-finite / error</th><th>findings</th>"
            "</tr>"
            f"{''.join(rows)}</table></details></section>")


def _notes(result: AuditResult) -> str:
    if not result.notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="panel">{items}</ul></section>'


def _config(result: AuditResult) -> str:
    text = json.dumps(result.config, indent=2, sort_keys=True, default=str)
    return ('<section id="config"><h2>Config</h2><details><summary>The config as resolved'
            f"</summary><pre>{_e(text)}</pre></details></section>")


def render(result: AuditResult) -> str:
    """The whole report as one HTML document."""
    has_curvature = any(plotdata.curvature_trace(p) is not None
                        for p in result.diagnosis.probes)
    body = [_header(result, has_curvature), _grid(result), _curves(result)]
    if has_curvature:
        body.append(_sharpness(result))
    body += [_summary(result), _findings(result), _probes(result), _notes(result),
             _config(result)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="stabcheck {_e(__version__)}">\n'
        f"<title>stabcheck · {_e(result.name)} · {_e(result.verdict.verdict)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(b for b in body if b)
        + f'\n<footer>Generated by stabcheck {_e(__version__)}. Self-contained: this file '
        "loads nothing from the network.</footer>\n</main>\n</body>\n</html>\n")
