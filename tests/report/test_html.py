"""The HTML report: structure, self-containment, golden file, a real headless Chromium, PNGs."""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from stabcheck import __version__
from stabcheck.report import html as html_report
from stabcheck.report import plotdata, render, svg
from stabcheck.result import AuditResult
from tests.report.synthetic_html import LRS, SIZES, synthetic_result

GOLDEN = Path(__file__).parent / "golden" / "report.html"


class Node:
    """One element of a parsed page."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.content: list[str | Node] = []  # text and children, in document order

    def iter(self) -> Any:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag
                and (cls is None or cls in n.attrs.get("class", "").split())]

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.content)

    def add(self, child: Node) -> None:
        self.children.append(child)
        self.content.append(child)


class TreeBuilder(HTMLParser):
    """A small DOM from the stdlib parser (void HTML elements and ``<x/>`` handled)."""

    VOID: ClassVar[set[str]] = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.add(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.add(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"stray </{tag}>"
        self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.content.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.current is builder.root, f"unclosed <{builder.current.tag}>"
    return builder.root


@pytest.fixture(scope="module")
def result() -> AuditResult:
    return synthetic_result()


@pytest.fixture(scope="module")
def page(result: AuditResult) -> str:
    return render(result, "html")


# --- structure ----------------------------------------------------------------------------

def test_sections_and_plots(result: AuditResult, page: str) -> None:
    root = parse(page)
    ids = {n.attrs["id"] for n in root.iter() if "id" in n.attrs}
    assert {"verdict", "grid", "curves", "sharpness", "summary", "findings", "probes", "notes",
            "config"} <= ids
    svgs = root.find_all("svg")
    cells = len(SIZES) * len(LRS)
    # one heatmap, a loss and a gradient-norm plot per cell, one sharpness plot (the only
    # cell whose probes measured curvature)
    assert len(svgs) == 1 + 2 * cells + 1
    assert len(root.find_all("svg", "heatmap")) == 1
    assert len(root.find_all("svg", "plot-loss")) == cells
    assert len(root.find_all("svg", "plot-grad")) == cells
    assert len(root.find_all("svg", "plot-sharpness")) == 1
    # every probe appears once as a heatmap strip, coloured by its status
    strips = root.find_all("rect", "strip")
    assert len(strips) == len(result.diagnosis.probes)
    fills = sorted(s.attrs["fill"] for s in strips)
    assert fills == sorted(html_report.STATUS_FILL[p.status] for p in result.diagnosis.probes)
    # the header shows the verdict, the exit code and the probe counts
    header = root.find_all("header")[0].all_text()
    assert "FAILED" in header and "exit code 1" in header
    assert f"{len(result.diagnosis.probes)}/{result.planned} probes" in header
    for status, count in result.diagnosis.summary.by_status.items():
        if count:
            assert f"{count} {status}" in header


def test_page_is_self_contained(page: str) -> None:
    root = parse(page)
    for node in root.iter():
        assert node.tag not in ("script", "link", "img", "iframe", "object", "embed")
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = node.attrs.get(name, "")
            assert not re.match(r"\s*(https?:)?//", value), (node.tag, name, value)
            if name == "href" and value:
                assert value.startswith("#"), value  # only in-page links
    assert "url(" not in page and "@import" not in page
    meta = [n for n in root.find_all("meta") if n.attrs.get("http-equiv")]
    assert meta and "default-src 'none'" in meta[0].attrs["content"]


def _cell(root: Node, bs: int, lr: float) -> Node:
    cell_id = html_report._cell_id(bs, lr)
    found = [n for n in root.iter() if n.attrs.get("id") == cell_id]
    assert len(found) == 1, cell_id
    return found[0]


def test_spikes_are_marked_where_findings_name_steps(result: AuditResult, page: str) -> None:
    root = parse(page)
    probes = {p.record.index: p for p in result.diagnosis.probes}
    checked = 0
    for finding in result.diagnosis.findings:
        plot = {"SC201": "plot-loss", "SC202": "plot-loss", "SC302": "plot-grad"}.get(
            finding.code)
        if plot is None:
            continue
        record = probes[finding.probes[0]].record
        chart = _cell(root, record.batch_size, record.lr).find_all("svg", plot)[0]
        rings = {c.all_text() for c in chart.find_all("circle", "spike")}
        for step in finding.steps:
            assert f"seed {record.seed}: step {step}" in rings
            checked += 1
    assert checked >= 5
    # cells without spike findings carry no rings
    quiet = _cell(root, 128, 0.01)
    assert quiet.find_all("circle", "spike") == []


def test_nonfinite_probes_are_crossed_and_clip_is_drawn(result: AuditResult,
                                                        page: str) -> None:
    root = parse(page)
    diverged = _cell(root, 32, 1.0)
    loss = diverged.find_all("svg", "plot-loss")[0]
    crosses = {g.all_text() for g in loss.find_all("g", "nonfinite")}
    steps = {p.record.seed: p.record.first_nonfinite_step for p in result.diagnosis.probes
             if p.record.batch_size == 32 and p.record.lr == 1.0}
    assert crosses == {f"seed {s}: non-finite at step {n}" for s, n in steps.items()}
    healthy = _cell(root, 32, 0.01)
    assert healthy.find_all("g", "nonfinite") == []
    grad = healthy.find_all("svg", "plot-grad")[0]
    assert len(grad.find_all("line", "ref")) == 1 and "grad_clip 2" in grad.all_text()


def test_sharpness_plot_draws_two_over_eta(result: AuditResult, page: str) -> None:
    root = parse(page)
    chart = root.find_all("svg", "plot-sharpness")[0]
    assert "2/η = 20" in chart.all_text()
    assert len(chart.find_all("path", "series")) == 2
    # rings only where an SC701 finding names a measurement step, never computed here
    expected = {f"seed {p.record.seed}: step {s}" for p in result.diagnosis.probes
                if p.record.batch_size == 128 and p.record.lr == 0.1
                for f in p.findings if f.code == "SC701" for s in f.steps}
    assert {c.all_text() for c in chart.find_all("circle", "spike")} == expected


def test_every_finding_with_its_explanation(result: AuditResult, page: str) -> None:
    root = parse(page)
    section = next(n for n in root.iter() if n.attrs.get("id") == "findings")
    text = section.all_text()
    for finding in result.diagnosis.findings:
        assert finding.message in text
        assert finding.info.explanation in text and finding.info.source in text
        assert finding.recommendation in text
        if finding.value is not None:
            assert f"value {finding.value:.4g}" in text
    articles = section.find_all("article", "finding")
    assert [a.attrs["id"] for a in articles] == list(dict.fromkeys(
        f.code for f in result.diagnosis.findings))
    summary = next(n for n in root.iter() if n.attrs.get("id") == "summary").all_text()
    for rec in result.diagnosis.summary.recommendations:
        assert rec.text in summary
    notes = next(n for n in root.iter() if n.attrs.get("id") == "notes").all_text()
    assert result.notes[0] in notes


def test_text_is_escaped(result: AuditResult) -> None:
    hostile = copy.copy(result)
    hostile.name = '<script>alert("x")</script>'
    hostile.notes = ["<img src=x onerror=alert(1)>"]
    page = render(hostile, "html")
    assert "<script>" not in page and "<img" not in page
    assert escape(hostile.name) in page and escape(hostile.notes[0]) in page
    parse(page)


def test_without_curvature_the_section_is_left_out(result: AuditResult) -> None:
    plain = copy.deepcopy(result)
    for p in plain.diagnosis.probes:
        p.record.curvature = None
    assert 'id="sharpness"' not in render(plain, "html")
    odd = copy.deepcopy(result)
    for p in odd.diagnosis.probes:
        if p.record.curvature:
            p.record.curvature = {"lipschitz_init": 3.0}  # tracking off: no sharpness keys
    assert 'id="sharpness"' not in render(odd, "html")


def test_empty_audit_renders(result: AuditResult) -> None:
    empty = copy.deepcopy(result)
    empty.diagnosis.probes = []
    empty.diagnosis.findings = []
    page = render(empty, "html")
    root = parse(page)
    assert "No probes ran." in page and "No findings." in page
    assert root.find_all("svg") == []


# --- svg and decimation -------------------------------------------------------------------

def test_decimate_keeps_spikes_ends_and_the_last_finite_point() -> None:
    rng = np.random.default_rng(0)
    values = np.exp(-np.arange(5000) / 800) + 0.01 * rng.random(5000)
    values[3217] = 50.0
    values[4900:] = np.nan
    index = plotdata.decimate(values, keep=[1234], max_points=400)
    assert index.size <= 400 + 4
    assert {0, 1234, 3217, 4899, 4999} <= set(index.tolist())
    assert np.all(np.diff(index) > 0)
    short = np.arange(10.0)
    assert plotdata.decimate(short).tolist() == list(range(10))


def test_long_traces_stay_small(result: AuditResult) -> None:
    big = copy.deepcopy(result)
    for p in big.diagnosis.probes:
        r = p.record
        r.trace = {k: (v * 50) for k, v in r.trace.items()}  # 50x longer traces
        r.steps_run *= 50
        r.steps_planned *= 50
        r.first_nonfinite_step = None
    page = render(big, "html")
    paths = re.findall(r'<path class="series" d="([^"]*)"', page)
    assert paths and max(p.count("L") + p.count("M") for p in paths) <= 410
    assert len(page) < 3 * len(render(result, "html"))


def test_log_axis_ticks_and_fallbacks() -> None:
    assert svg.log_ticks(1e-3, 2.0) == [0.001, 0.01, 0.1, 1.0]
    assert svg.log_ticks(0.3, 4.0) == [0.5, 1.0, 2.0]
    assert len(svg.log_ticks(1e-30, 1e30)) <= 7
    chart = svg.line_chart([svg.Series("a", [0, 1, 2], [1.0, -1.0, 0.5], "#000")],
                           title="t", x_label="x", y_label="y")
    assert "(linear: values &lt;= 0)" in chart and "(log)" not in chart
    off = svg.line_chart([svg.Series("a", [0, 1], [1.0, 2.0], "#000")], title="t",
                         x_label="x", y_label="y", refs=[svg.RefLine(1e9, "clip 1e9")])
    assert "clip 1e9 ↑ (off scale)" in off and 'class="ref"' not in off
    empty = svg.line_chart([svg.Series("a", [0, 1], [math.nan, math.nan], "#000", end=1)],
                           title="t", x_label="x", y_label="y")
    assert "no finite values" in empty and 'class="nonfinite"' in empty
    same = [svg.Series("s", [0, 1, 2], [3.0, 2.0, 1.0], "#000", marks=[1])]
    assert svg.line_chart(same, title="t", x_label="x", y_label="y") == svg.line_chart(
        same, title="t", x_label="x", y_label="y")


# --- golden file --------------------------------------------------------------------------

def normalise(page: str) -> str:
    """Make a page comparable across versions and machines (version string only: the
    synthetic result has fixed timings, environment and paths)."""
    return page.replace(f"stabcheck {__version__}", "stabcheck VERSION")


def test_golden_file(page: str) -> None:
    got = normalise(page)
    if os.environ.get("STABCHECK_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got, encoding="utf-8")
    assert GOLDEN.exists(), "run with STABCHECK_UPDATE_GOLDEN=1 to create the golden file"
    want = GOLDEN.read_text(encoding="utf-8")
    assert got == want, ("the HTML report changed; if intended, regenerate with "
                         "STABCHECK_UPDATE_GOLDEN=1 and review the diff")


def test_cli_report_writes_html(tmp_path: Path, runner_audit: AuditResult) -> None:
    from stabcheck.cli import cli

    results_dir = Path(runner_audit.config_path).parent / "out"
    target = tmp_path / "report.html"
    code = cli.main(["report", str(results_dir), "--format", "html", "-o", str(target)],
                    standalone_mode=False)
    assert code == 1  # the runner audit diverges at lr=10
    root = parse(target.read_text(encoding="utf-8"))
    assert len(root.find_all("svg", "plot-loss")) == 3


# --- a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def console_problems(stderr: str) -> list[str]:
    """Chromium's console log lines (``:CONSOLE`` tags, uncaught exceptions). The report runs
    no script, so any console message — a CSP violation included — is a problem."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def headless(path: Path, tmp_path: Path) -> tuple[int, str, str]:
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs it)")
def test_renders_in_headless_chromium(page: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    code, dom, stderr = headless(report, tmp_path)
    assert code == 0, stderr[-2000:]
    assert console_problems(stderr) == []
    root = parse(dom)
    assert len(root.find_all("svg")) == page.count("<svg ")
    assert len(root.find_all("svg", "plot-loss")) == len(SIZES) * len(LRS)
    assert root.find_all("svg", "heatmap") and root.find_all("svg", "plot-sharpness")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs it)")
def test_the_browser_check_catches_console_errors(page: str, tmp_path: Path) -> None:
    # The same page, broken twice: an external image (blocked by the page's CSP) and an
    # inline script that logs an error and throws (also blocked by the CSP); and a page
    # without CSP where the script runs.
    broken = page.replace("<main>", '<main><img src="https://example.invalid/x.png">'
                                    '<script>console.error("boom"); nope();</script>', 1)
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    (tmp_path / "script.html").write_text(
        '<!DOCTYPE html><html><body><script>console.error("deliberate failure"); '
        "undefinedFunction();</script></body></html>", encoding="utf-8")
    _, _, stderr = headless(tmp_path / "broken.html", tmp_path)
    problems = console_problems(stderr)
    assert any("example.invalid" in p for p in problems)
    assert any("inline script" in p for p in problems)
    _, _, stderr = headless(tmp_path / "script.html", tmp_path)
    problems = console_problems(stderr)
    assert any("deliberate failure" in p for p in problems)
    assert any("Uncaught ReferenceError" in p for p in problems)


# --- PNG ----------------------------------------------------------------------------------

def test_pngs(result: AuditResult, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from stabcheck.report.png import write_pngs

    paths = write_pngs(result, tmp_path / "plots")
    assert [p.name for p in paths] == [f"curves-bs{bs}.png" for bs in SIZES]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import matplotlib`` fail, as on an install without the plots extra."""
    import builtins

    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


@pytest.mark.usefixtures("no_matplotlib")
def test_png_without_matplotlib(result: AuditResult, tmp_path: Path) -> None:
    from stabcheck.errors import ConfigError
    from stabcheck.report.png import MISSING, write_pngs

    with pytest.raises(ConfigError, match=re.escape(MISSING)):
        write_pngs(result, tmp_path)
    assert not list(tmp_path.iterdir())


def test_cli_png_flag(tmp_path: Path, runner_audit: AuditResult) -> None:
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from stabcheck.cli import cli

    results_dir = Path(runner_audit.config_path).parent / "out"
    res = CliRunner().invoke(cli, ["report", str(results_dir), "--png", str(tmp_path / "p")])
    assert res.exit_code == 1, res.output  # the runner audit diverges at lr=10
    assert [p.name for p in sorted((tmp_path / "p").iterdir())] == ["curves-bs16.png"]
    assert f"plots: {tmp_path / 'p' / 'curves-bs16.png'}" in res.output


@pytest.mark.usefixtures("no_matplotlib")
def test_cli_png_without_matplotlib_fails_before_the_audit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stabcheck.cli import cli
    from stabcheck.report.png import MISSING

    res = CliRunner().invoke(cli, ["audit", "no-such-config.yaml", "--out", str(tmp_path / "o"),
                                   "--png", str(tmp_path / "p")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: --png {tmp_path / 'p'}: {MISSING}"]
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
