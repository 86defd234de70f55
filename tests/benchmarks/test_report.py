"""benchmarks/report.py: trains (or reuses) every run, writes the report and its figures, rewrites the README block."""

import json
import os
import re

import numpy as np
import pytest

from benchmarks import report

# Two methods (one jointly trained, one with independent networks), two seeds (a std), two epochs, tiny data.
TINY = ["train.epochs=2", "train.batch_size=32", "data.synthetic.dims={image: 48, text: 24}",
        "data.synthetic.num_train=240", "data.synthetic.num_test=90", "data.synthetic.num_classes=4"]


def _args(tmp_path, *extra):
    argv = ["--data", "synthetic", "--seeds", "0", "1", "--methods", "acmr", "sdml", "--out", str(tmp_path / "runs"),
            "--docs", str(tmp_path / "docs")]
    for override in TINY:
        argv += ["--set", override]
    return [*argv, *extra]


def _table_rows(text: str) -> dict:
    """method -> cells of the report's main table."""
    table = text.split("## Every method", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _mean(cell: str) -> float:
    return float(re.sub(r"[*]", "", cell).split(" ± ")[0])


pytestmark = pytest.mark.slow  # four short trainings and the three references per seed: a minute or two


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:synthetic -->\nold table\n<!-- /report:synthetic -->\nrest\n")
    assert report.main(_args(tmp_path, "--readme", str(readme))) == 0
    return tmp_path


def test_the_report_states_what_the_runs_measured(reported):
    text = (reported / "docs" / "synthetic.md").read_text()
    rows = _table_rows(text)
    assert set(rows) == {"ACMR", "SDML", "random (reference)", "CCA (reference)", "MLP (reference)"}
    for method, name in (("acmr", "ACMR"), ("sdml", "SDML")):
        metrics, traces = [], []
        for seed in (0, 1):
            run_dir = reported / "runs" / method / f"seed{seed}"
            metrics.append(json.loads((run_dir / "metrics.json").read_text()))
            traces.append(json.loads((run_dir / "epoch_trace.json").read_text()))
        honest = [m["test"]["map_avg"] for m in metrics]
        # The honest cell is the mean over seeds of each run's metrics.json (rounded to 3 decimals in the table).
        assert _mean(rows[name][2]) == pytest.approx(np.mean(honest), abs=5e-4)
        # Test-set selection keeps the best test epoch of each run's trace.
        selected = [max(e["test"]["map_avg"] for e in t["epochs"]) for t in traces]
        assert _mean(rows[name][3]) == pytest.approx(np.mean(selected), abs=5e-4)
        if method == "acmr":
            # The chosen epoch is one of the traced epochs, so selecting on test can only claim as much or more.
            assert all(s >= h - 1e-9 for s, h in zip(selected, honest, strict=True))
        for m in metrics:
            assert set(m["presets"]) == {"acmr_demo", "map50_cosine"}
    assert "No published numbers exist for this dataset." in text
    assert "## References on the same split" in text and "## Runtime" in text
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        path = reported / "docs" / figure
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert {"curves_i2t", "curves_t2i", "epochs", "space", "methods"} <= {
        os.path.splitext(os.path.basename(f))[0] for f in re.findall(r"\]\(([^)]+\.png)\)", text)}


def test_the_readme_block_is_the_report_table(reported):
    readme = (reported / "README.md").read_text()
    block = readme.split("<!-- report:synthetic -->\n", 1)[1].split("\n<!-- /report:synthetic -->", 1)[0]
    text = (reported / "docs" / "synthetic.md").read_text()
    assert block in text and block.startswith("| method |")
    assert readme.startswith("intro\n") and readme.endswith("rest\n")


def test_reuse_reads_the_runs_and_refuses_other_configs(reported, capsys):
    metrics = reported / "runs" / "acmr" / "seed0" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    before = _table_rows((reported / "docs" / "synthetic.md").read_text())
    assert report.main(_args(reported, "--reuse")) == 0
    assert metrics.stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().out
    assert _table_rows((reported / "docs" / "synthetic.md").read_text()) == before
    # Without --reuse, finished runs are never silently overwritten; with it, a changed config is refused.
    assert report.main(_args(reported)) == 2
    assert "pass --reuse" in capsys.readouterr().err
    assert report.main(_args(reported, "--reuse", "--set", "train.epochs=3")) == 2
    assert "train.epochs" in capsys.readouterr().err
