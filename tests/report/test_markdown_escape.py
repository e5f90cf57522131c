"""Markdown escaping: a module name, user string or exception message survives a PR comment."""

from __future__ import annotations

from stabcheck.report import markdown


def test_angle_brackets_become_entities_not_tags() -> None:
    out = markdown.text("Inf first appears in <loss function> at step 15")
    assert out == "Inf first appears in &lt;loss function&gt; at step 15"


def test_formatting_characters_are_literal() -> None:
    out = markdown.text("model.layer_1.*weight* [x](y) `code` a|b ~~s~~ & \\")
    assert out == ("model.layer\\_1.\\*weight\\* \\[x\\](y) \\`code\\` a\\|b \\~\\~s\\~\\~ "
                   "&amp; \\\\")


def test_newlines_do_not_break_a_table_row() -> None:
    out = markdown.cell("Traceback:\n  line 1\r\n  <module>")
    assert "\n" not in out and "\r" not in out
    assert out.endswith("&lt;module&gt;")
