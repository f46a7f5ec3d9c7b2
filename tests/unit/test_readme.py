"""The README's settings table is generated from the declarations: keep it so."""

from __future__ import annotations

from pathlib import Path

from gunitune.core.settings import render_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_settings_table_matches_declarations() -> None:
    text = README.read_text()
    start = text.index("<!-- settings:start -->\n") + len("<!-- settings:start -->\n")
    end = text.index("<!-- settings:end -->")
    assert text[start:end] == render_markdown(), (
        "README settings table is stale: paste `gunitune settings --markdown` between the markers"
    )


def test_readme_commands_exist() -> None:
    text = README.read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text
        assert (README.parent / script).is_file()
