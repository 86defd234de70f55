"""Plots of retrieval curves (precision-recall and precision-scope), one line per retrieval direction.

matplotlib is imported inside the function, so importing :mod:`tf_xmr.metrics` never needs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tf_xmr.errors import ConfigError


def unsupported_image_format(path) -> str | None:
    """None when matplotlib can write an image in the format of ``path``'s suffix, else why not (one line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix in formats:
        return None
    return (f"unknown image format {('.' + suffix) if suffix else '(no suffix)'}; "
            f"use one of {', '.join('.' + f for f in sorted(formats))}")


def check_plot_path(path) -> None:
    """Refuse, before any work is done, a plot path whose suffix matplotlib cannot write (one line naming it)."""
    problem = unsupported_image_format(path)
    if problem:
        raise ConfigError(f"--plot {path}: {problem}")


def plot_curves(curves: dict[str, dict], path) -> Path:
    """Draws precision-recall and precision-scope curves side by side and saves them as an image.

    Args:
        curves: Maps a direction name (``"i2t"``, ``"t2i"``, ...) to ``{"pr": (recall, precision), "scope":
            (scopes, precision)}``, each a pair of equal-length 1-D sequences, e.g. from
            :func:`tf_xmr.metrics.precision_recall_curve` and :func:`tf_xmr.metrics.precision_scope_curve`. Either
            key may be missing for a direction; that direction is then absent from that panel.
        path: Output file; the format follows its suffix (``.png``, ``.pdf``, ``.svg``).

    Returns:
        The path written.

    Raises:
        ValueError: If ``curves`` is empty or a curve's two sequences differ in length.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    import matplotlib

    # A headless backend: evaluation runs on servers and in CI without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_pr, ax_scope) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for name, curve in curves.items():
            for key, ax in (("pr", ax_pr), ("scope", ax_scope)):
                if key not in curve:
                    continue
                x, y = curve[key]
                if len(x) != len(y):
                    raise ValueError(f"curves[{name!r}][{key!r}] has {len(x)} x values but {len(y)} y values")
                ax.plot(x, y, marker="o", markersize=3, label=name)
        ax_pr.set(
            title="Precision-recall", xlabel="Recall", ylabel="Interpolated precision", xlim=(0, 1), ylim=(0, 1.05)
        )
        ax_scope.set(title="Precision-scope", xlabel="Scope K (top-K retrieved)", ylabel="Precision@K", ylim=(0, 1.05))
        for ax in (ax_pr, ax_scope):
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def save_figure(fig, path, *, dpi: float) -> Path:
    """Write a matplotlib figure to ``path`` (format from its suffix, png without one) atomically, readable by all.

    Written beside the target and renamed, so a crash never leaves a truncated image under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
        # mkstemp creates the file owner-only; a figure is meant to be shared like any other output.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
