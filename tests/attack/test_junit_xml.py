"""ANSI colour codes and control characters (in an exception message, in ``name``) still give
valid JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tests.attack.helpers import TWO_PROBES, run
from tests.conftest import deep_update


def test_junit_is_valid_xml_with_ansi_and_control_characters(write_config, write_module,
                                                             tmp_path: Path) -> None:
    write_module("colourful.py", """
        import inspect
        from torch import nn
        class Colourful(nn.Linear):
            def forward(self, x):
                if any(f.function == "step" for f in inspect.stack()):
                    raise ValueError("\\x1b[31mred\\x1b[0m failure \\x00\\x07\\x1b bell")
                return super().forward(x)
        def build():
            return Colourful(4, 3)
    """)
    path = write_config(deep_update(TWO_PROBES, {
        "name": "ctl\x01\x1b[1mbold\x7f\u0085",
        "model": {"builtin": None, "factory": "./colourful.py:build", "kwargs": {}}}))
    junit = tmp_path / "junit.xml"
    result = run("audit", path, "--out", tmp_path / "r", "-o", f"junit={junit}")
    assert result.exit_code == 3, result.output  # every probe errored
    root = ET.parse(junit).getroot()  # raises on invalid XML
    errors = [el.get("message", "") for el in root.iter("error")]
    assert any("red failure" in m for m in errors), errors
    assert not any("\x1b" in m or "\x00" in m for m in errors)
    assert "bold" in root.get("name", "")
