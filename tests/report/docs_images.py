"""Draw the pictures of docs/reports.md from real runs of ``sample_configs/diverging.yaml``.

    python -m tests.report.docs_images

writes ``docs/img/terminal-report.svg`` (the report at 100 columns, in colour),
``docs/img/terminal-80-columns.svg`` (nine learning rates at 80 columns: the grid wraps) and,
when ``chromium`` is installed, ``docs/img/html-report.png`` (a headless screenshot of the
HTML report, reduced to a 256-colour palette to stay small).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.report import render
from stabcheck.report.terminal import print_report
from stabcheck.result import AuditResult
from tests.report.test_readme_sample import CONFIG, ROOT

IMG = ROOT / "docs" / "img"
NINE_LRS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0]
TITLE = "stabcheck audit sample_configs/diverging.yaml"


def audited(out_dir: Path, **overrides: object) -> AuditResult:
    """A real audit of the diverging sample (with ``overrides``), wall time left out."""
    # loaded by its path relative to the repository, as the report then shows it
    with contextlib.chdir(ROOT):
        result, _ = run_audit(load_config(CONFIG.relative_to(ROOT), overrides=dict(overrides)),
                              AuditOptions(out_dir=out_dir))
    result.timings.pop("wall_time_s", None)
    return result


def terminal_svg(result: AuditResult, path: Path, width: int, title: str) -> None:
    """The terminal report as rich draws it in colour, saved as SVG."""
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=True,
                      color_system="truecolor")
    print_report(result, console)
    console.save_svg(str(path), title=title)


def html_png(result: AuditResult, path: Path, work: Path) -> bool:
    """A screenshot of the HTML report (False when chromium is not installed)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return False
    page = work / "report.html"
    page.write_text(render(result, "html"), encoding="utf-8")
    raw = work / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={raw}", "--window-size=1100,1500", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    Image.open(raw).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return True


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = audited(work / "r")
        terminal_svg(result, IMG / "terminal-report.svg", 100, TITLE)
        wide = audited(work / "nine", **{"sweep.learning_rates": NINE_LRS})
        terminal_svg(wide, IMG / "terminal-80-columns.svg", 80, f"{TITLE} --lr (9 values)")
        drawn = html_png(result, IMG / "html-report.png", work)
    for path in sorted(IMG.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")
    if not drawn:
        print("chromium is not installed: docs/img/html-report.png was not drawn")


if __name__ == "__main__":
    main()
