"""The generated config reference (tf_xmr/config/reference/): what it reads from a dataclass, and that the copies in
README.md and docs/config.md are exactly the generated text (so the documented keys cannot drift from the code)."""

import dataclasses
import os
import shutil
from typing import Literal

import pytest

from tests.conftest import ROOT
from tf_xmr.config import cfg_field, reference
from tf_xmr.config.reference.__main__ import main, method_config_classes
from tf_xmr.config.schema import ExperimentConfig
from tf_xmr.errors import ConfigError


def _pairs():
    return {"a": (1, 2)}


@dataclasses.dataclass(frozen=True)
class _Inner:
    """Inner section.

    More text that the section summary leaves out.
    """

    x: int = 1


@dataclasses.dataclass(frozen=True)
class _Example:
    """An example section."""

    # First line of a comment
    # and its second line | with a bar.
    size: int = cfg_field(3, ge=1)
    # -- a divider ------------------------------------------------------------
    mode: Literal["fast", "slow"] = "fast"
    pairs: dict[str, tuple[int, ...]] = cfg_field(default_factory=_pairs)
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    maybe: float | None = cfg_field(None, gt=0.0, doc="from cfg_field")
    required: str = "x"  # a trailing comment is not read


def test_reads_type_default_and_comment_of_every_field():
    rows = {row.key: row for row in reference.describe(_Example, "sec")}
    assert list(rows) == ["sec.size", "sec.mode", "sec.pairs", "sec.inner", "sec.maybe", "sec.required"]
    assert rows["sec.size"] == reference.KeyDoc(
        "sec.size", "int (>= 1)", "3", "First line of a comment and its second line | with a bar.")
    # The divider line is not part of the next field's comment; a Literal reads as the YAML choices.
    assert rows["sec.mode"] == reference.KeyDoc("sec.mode", "fast | slow", "fast", "")
    assert rows["sec.pairs"].default == "{a: [1, 2]}"
    # A nested section points at its own table and borrows the first line of its class docstring.
    assert (rows["sec.inner"].default, rows["sec.inner"].doc) == ("(section)", "Inner section.")
    assert rows["sec.maybe"] == reference.KeyDoc("sec.maybe", "float | None (> 0.0)", "null", "from cfg_field")
    assert rows["sec.required"].doc == ""


@dataclasses.dataclass(frozen=True)
class _Grouped:
    """Fields sharing one comment."""

    # The inclusive bounds.
    low: int = 0
    high: int = 1

    alone: int = 2


def test_one_comment_describes_the_fields_right_below_it():
    rows = {row.key: row.doc for row in reference.describe(_Grouped, "g")}
    assert rows == {"g.low": "The inclusive bounds.", "g.high": "See `g.low` (one comment for the group).",
                    "g.alone": ""}


def test_table_escapes_bars_and_rest_literals():
    lines = reference._section("`sec`", _Example, "sec")
    assert lines[0] == "**`sec`**: An example section."
    size = next(line for line in lines if line.startswith("| `sec.size`"))
    assert size == "| `sec.size` | `int (>= 1)` | `3` | First line of a comment and its second line \\| with a bar. |"


def test_every_key_of_every_section_and_method_is_documented():
    block = reference.readme_block()
    for prefix, cls in reference._README_SECTIONS:
        for field in dataclasses.fields(cls):
            key = f"{prefix}.{field.name}" if prefix else field.name
            assert f"| `{key}` |" in block, key
    # Every top-level key of a config file, and every section the README tables cover.
    assert {f.name for f in dataclasses.fields(ExperimentConfig)} <= {
        row.key for row in reference.describe(ExperimentConfig)}
    methods = method_config_classes()
    page = reference.docs_page(methods)
    assert set(methods) == {"acmr", "da_gan", "jfse", "sdml", "x_gacmn"}
    for name, cls in methods.items():
        assert f"## model ({name})" in page
        for field in dataclasses.fields(cls):
            assert f"| `model.{field.name}` |" in page, (name, field.name)


def test_readme_and_docs_hold_the_generated_reference():
    """Fails when a config dataclass changed and the docs were not regenerated (or the docs were edited by hand)."""
    stale = reference.stale_files(ROOT, method_config_classes())
    assert not stale, f"{stale} differ from the generated text: run python -m tf_xmr.config.reference --write"


def _copy_docs(tmp_path):
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    shutil.copy(os.path.join(ROOT, "docs", "config.md"), tmp_path / "docs" / "config.md")


def test_check_reports_a_stale_copy_and_write_repairs_it(tmp_path, capsys):
    _copy_docs(tmp_path)
    readme = tmp_path / "README.md"
    text = reference.splice(readme.read_text(), reference.readme_block(), "README.md")  # current, whatever the repo has
    readme.write_text(text.replace("| `train.epochs` |", "| `train.epochz` |"))
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "README.md differs" in capsys.readouterr().err
    assert main(["--write", "--root", str(tmp_path)]) == 0
    assert readme.read_text() == text
    assert main(["--check", "--root", str(tmp_path)]) == 0


def test_missing_markers_are_a_one_line_error_and_nothing_is_written(tmp_path):
    _copy_docs(tmp_path)
    readme = tmp_path / "README.md"
    broken = readme.read_text().replace(reference.END, "")
    readme.write_text(broken)
    with pytest.raises(ConfigError, match="lacks the config-reference markers"):
        main(["--write", "--root", str(tmp_path)])
    assert readme.read_text() == broken
