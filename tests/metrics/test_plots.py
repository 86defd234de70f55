"""plot_curves writes a complete image and nothing else."""

import numpy as np

from tf_xmr.metrics.plots import plot_curves


def test_plot_curves_writes_png(tmp_path):
    recall = np.linspace(0, 1, 11)
    curves = {
        "i2t": {"pr": (recall, 1 - 0.5 * recall), "scope": ([1, 50, 100], [0.9, 0.6, 0.5])},
        "t2i": {"pr": (recall, 1 - 0.4 * recall), "scope": ([1, 50, 100], [0.8, 0.7, 0.6])},
    }
    path = tmp_path / "plots" / "curves.png"
    assert plot_curves(curves, path) == path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left behind
