"""Figures of the results report (``docs/results/<dataset>.md``), drawn by ``benchmarks/report.py``.

Four pictures, each written as one image file (PNG by default, the format follows the path's suffix):

* :func:`curves_figure`: precision-recall and precision@k curves of every method for one retrieval direction;
* :func:`epoch_figure`: validation and test mAP per epoch, one panel per method, marking the checkpoint chosen on
  validation and the (unused) best-on-test epoch, so the optimism of test-set selection is visible;
* :func:`space_figure`: a 2-D PCA (:func:`pca_2d`) of the common space of the test split, coloured by class and
  shaped by modality;
* :func:`method_bar_figure`: honest test mAP (mean ± std over seeds) of each method beside its test-selected mean.

Conventions (shared with :mod:`tf_xmr.metrics.plots`): matplotlib is imported inside the functions; figures are
built with the object API (``matplotlib.figure.Figure`` on an explicit Agg canvas), so nothing is registered with
pyplot or a GUI backend, no global backend is switched and no figure outlives its call; every input is checked
before anything is drawn (a ``ValueError`` names the culprit), and the file is written beside its target and renamed
into place, so a failure never leaves a partial image (nor a temporary file) behind. Every function returns the
path written. Default size: 10 inches wide at :data:`DPI` dots per inch (PNGs of tens to a few hundred KB).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tf_xmr.metrics.plots import save_figure, unsupported_image_format

#: Default resolution of every figure (dots per inch); a 10-inch-wide figure is 1100 pixels wide.
DPI = 110
#: Default width of every figure, in inches.
WIDTH = 10.0
#: Rows drawn as references (baselines without training epochs) unless the caller names others.
REFERENCES = ("random", "CCA", "MLP")

# Reference rows are drawn in greys with non-solid line styles so the trained methods (solid, coloured) stand out.
_REFERENCE_GREYS = ("0.35", "0.55", "0.7", "0.45", "0.62")
_REFERENCE_STYLES = ("--", ":", "-.", (0, (5, 2, 1, 2)), (0, (1, 3)))
_MODALITY_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


# --------------------------------------------------------------------------------------------------------- helpers
def _check_path(path) -> Path:
    """The output path as a Path, refused (ValueError) when matplotlib cannot write its suffix."""
    problem = unsupported_image_format(path)
    if problem:
        raise ValueError(f"path {str(path)!r}: {problem}")
    return Path(path)


def _new_figure(figsize, *, layout: str | None = "constrained"):
    """A Figure attached to an Agg canvas (headless, independent of pyplot's registry and the global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, dpi: float) -> Path:
    """Write ``fig`` atomically, readable by all (``tf_xmr.metrics.plots.save_figure``). No bbox_inches="tight":
    the image is exactly figsize * dpi pixels (constrained layout keeps it tidy)."""
    return save_figure(fig, path, dpi=dpi)


def _finish(fig, path: Path, dpi: float) -> Path:
    """Save, then drop every reference the figure holds (the object API needs no pyplot.close)."""
    try:
        return _save(fig, path, dpi)
    finally:
        fig.clear()


def _check_nonempty(name: str, value) -> None:
    if value is None or len(value) == 0:
        raise ValueError(f"{name} is empty: nothing to plot")


def _xy(where: str, pair) -> tuple[np.ndarray, np.ndarray]:
    """A curve ``(x, y)`` as two finite float 1-D arrays of equal, non-zero length."""
    try:
        x, y = pair
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a pair (x, y) of 1-D sequences") from None
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{where} must hold 1-D sequences, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{where} has {len(x)} x values but {len(y)} y values")
    if len(x) == 0:
        raise ValueError(f"{where} is empty")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{where} holds NaN or infinite values")
    return x, y


def _styles(names, references) -> dict[str, dict]:
    """Line colour/style per name: trained methods take tab10 colours (its grey skipped) with solid lines; reference
    rows take greys with dashed/dotted styles. Assignment follows the order of ``names``."""
    from matplotlib import colormaps

    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]  # index 7 is tab10's grey
    refs = set(references or ())
    styles, n_method, n_ref = {}, 0, 0
    for name in names:
        if name in refs:
            styles[name] = {"color": _REFERENCE_GREYS[n_ref % len(_REFERENCE_GREYS)],
                            "linestyle": _REFERENCE_STYLES[n_ref % len(_REFERENCE_STYLES)], "linewidth": 1.4}
            n_ref += 1
        else:
            styles[name] = {"color": palette[n_method % len(palette)], "linestyle": "-", "linewidth": 2.0}
            n_method += 1
    return styles


# ---------------------------------------------------------------------------------------------------------- curves
def curves_figure(curves: Mapping[str, Mapping], direction_label: str, path, *, references=REFERENCES,
                  figsize=None, dpi: float = DPI) -> Path:
    """Precision-recall (left) and precision@k (right) of every method for ONE retrieval direction.

    Args:
        curves: Maps a method name to ``{"pr": (recall, precision), "pk": (ks, precision_at_k)}``, each a pair of
            equal-length 1-D sequences, e.g. from :func:`tf_xmr.metrics.precision_recall_curve` (recall levels in
            [0, 1] and the interpolated precision ``P_interp(L) = max {P(r) : R(r) >= L}`` averaged over queries)
            and :func:`tf_xmr.metrics.precision_scope_curve` (mean precision over the top k). Either key may be
            absent for a method (it is then missing from that panel), not both. One line per method, legend in
            dict order.
        direction_label: The figure title, e.g. ``"image → text (i2t), Wikipedia test split"``.
        path: Output file; the format follows its suffix.
        references: Names drawn as reference rows (grey, non-solid lines), so the trained methods stand out.
        figsize: ``(width, height)`` in inches; default ``(10, 4.2)``.
        dpi: Resolution of the image.

    Returns:
        The path written.

    Raises:
        ValueError: If ``curves`` is empty, a method has neither curve, or a curve's x and y differ in length (the
            message names the method and the curve), or hold NaN/inf; or the path's format is unknown.
    """
    _check_nonempty("curves", curves)
    path = _check_path(path)
    checked: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, curve in curves.items():
        if not isinstance(curve, Mapping) or not ({"pr", "pk"} & set(curve)):
            raise ValueError(f"curves[{name!r}] must be a mapping with 'pr' and/or 'pk'")
        checked[name] = {key: _xy(f"curves[{name!r}][{key!r}]", curve[key]) for key in ("pr", "pk") if key in curve}

    styles = _styles(checked, references)
    fig = _new_figure(figsize or (WIDTH, 4.2))
    ax_pr, ax_pk = fig.subplots(1, 2)
    for name, curve in checked.items():
        for key, ax in (("pr", ax_pr), ("pk", ax_pk)):
            if key in curve:
                x, y = curve[key]
                # Markers only where points are sparse enough to read (the 11-point PR curve, a few k values).
                marker = "o" if len(x) <= 25 else None
                ax.plot(x, y, marker=marker, markersize=3, label=name, **styles[name])
    ax_pr.set(title="Precision-recall", xlabel="Recall", ylabel="Interpolated precision", xlim=(0, 1),
              ylim=(0, 1.05))
    ax_pk.set(title="Precision at k", xlabel="k (top-k retrieved)", ylabel="Precision@k", ylim=(0, 1.05))
    for ax in (ax_pr, ax_pk):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(direction_label)
    return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------------------------- epochs
def _optional_series(where: str, values, n: int) -> np.ndarray:
    """A per-epoch series of length ``n`` as float64 with NaN where the value is None (not measured that epoch)."""
    if len(values) != n:
        raise ValueError(f"{where} has {len(values)} values but there are {n} epochs")
    out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if np.any(np.isinf(out)) or np.any(np.isnan(out) & np.array([v is not None for v in values])):
        raise ValueError(f"{where} holds NaN or infinite values (use None for an epoch that was not measured)")
    return out


def _check_trace(name: str, trace) -> dict:
    if not isinstance(trace, Mapping):
        raise ValueError(f"traces[{name!r}] must be a mapping")
    missing = [k for k in ("epochs", "val", "test", "chosen_epoch") if k not in trace]
    if missing:
        raise ValueError(f"traces[{name!r}] lacks {', '.join(missing)}")
    epochs = np.asarray(trace["epochs"], dtype=np.float64)
    if epochs.ndim != 1 or len(epochs) == 0:
        raise ValueError(f"traces[{name!r}]['epochs'] must be a non-empty 1-D sequence")
    val = _optional_series(f"traces[{name!r}]['val']", trace["val"], len(epochs))
    test = _optional_series(f"traces[{name!r}]['test']", trace["test"], len(epochs))
    if np.all(np.isnan(test)):
        raise ValueError(f"traces[{name!r}]['test'] has no value")

    def test_at(key: str, epoch) -> float:
        hits = np.flatnonzero(epochs == epoch)
        if len(hits) == 0 or np.isnan(test[hits[0]]):
            raise ValueError(f"traces[{name!r}][{key!r}] = {epoch} is not an epoch with a test value")
        return float(test[hits[0]])

    chosen = trace["chosen_epoch"]
    if chosen is None:
        # The reported checkpoint is not one epoch of this curve (SDML: each network at its own epoch); its test
        # value comes with the trace.
        if trace.get("honest_test") is None or not np.isfinite(float(trace["honest_test"])):
            raise ValueError(f"traces[{name!r}] has chosen_epoch None but no finite honest_test")
        chosen_test = float(trace["honest_test"])
    else:
        chosen_test = test_at("chosen_epoch", chosen)
    # Default best-on-test: the first epoch of highest test mAP (nanargmax skips unmeasured epochs).
    best = trace.get("best_test_epoch")
    if best is None:
        best = epochs[int(np.nanargmax(test))]
    return {"epochs": epochs, "val": val, "test": test, "chosen": chosen,
            "chosen_test": chosen_test, "best": best,
            "best_test": test_at("best_test_epoch", best), "note": trace.get("note")}


def epoch_figure(traces: Mapping[str, Mapping], path, *, title: str | None = None, ncols: int = 3, figsize=None,
                 dpi: float = DPI) -> Path:
    """Validation and test mAP per epoch, one panel per method (shared y axis).

    Each panel draws the validation mAP avg and the test mAP avg (mean over retrieval directions) against the epoch,
    a solid vertical line at the checkpoint chosen on validation ("chosen on val": the number the project reports)
    and, when the epoch of highest test mAP differs, a dotted line there ("best on test (not used)") with both test
    values annotated: their difference is what selecting the checkpoint on the test split would wrongly add.

    Args:
        traces: Maps a method name to ``{"epochs": [...], "val": [...], "test": [...], "chosen_epoch": int,
            "best_test_epoch": int, "note": str}``; ``chosen_epoch`` None with ``"honest_test": float`` when the
            reported checkpoint is no single epoch of the curve (SDML's networks each at their own epoch): a dashed
            horizontal line then marks that honest value. ``val``/``test`` are aligned with ``epochs``; an entry may be
            None for an epoch that was not measured (validation every n epochs) and is skipped. ``best_test_epoch``
            defaults to the first epoch of highest test mAP. ``note`` (optional) is shown under the panel title,
            e.g. for a method selected on validation loss rather than validation mAP (SDML).
        path: Output file; the format follows its suffix.
        title: Figure title; default "Validation and test mAP per epoch".
        ncols: Panels per row (fewer when there are fewer methods).
        figsize: ``(width, height)`` in inches; default 10 wide and 2.8 per row of panels plus 0.7 for the legend.
        dpi: Resolution of the image.

    Returns:
        The path written.

    Raises:
        ValueError: If ``traces`` is empty, a trace lacks a key, its series differ in length from its epochs, or the
            chosen/best epoch has no test value; or the path's format is unknown.
    """
    _check_nonempty("traces", traces)
    path = _check_path(path)
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    checked = {name: _check_trace(name, trace) for name, trace in traces.items()}

    ncols = min(int(ncols), len(checked))
    nrows = math.ceil(len(checked) / ncols)
    fig = _new_figure(figsize or (WIDTH, 2.8 * nrows + 0.7))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for ax, (name, t) in zip(axes, checked.items(), strict=False):  # axes may outnumber methods: extras hidden below
        seen = ~np.isnan(t["val"])
        ax.plot(t["epochs"][seen], t["val"][seen], color="tab:blue", marker="o" if seen.sum() <= 30 else None,
                markersize=2.5, linewidth=1.4, label="val mAP avg")
        has_test = ~np.isnan(t["test"])
        ax.plot(t["epochs"][has_test], t["test"][has_test], color="tab:orange", linewidth=1.4, label="test mAP avg")
        if t["chosen"] is None:
            ax.axhline(t["chosen_test"], color="black", linestyle="--", linewidth=1.1,
                       label="honest test (no single epoch)")
            lines = [f"honest test: {t['chosen_test']:.3f}"]
        else:
            ax.axvline(t["chosen"], color="black", linestyle="-", linewidth=1.1, label="chosen on val")
            ax.plot([t["chosen"]], [t["chosen_test"]], "o", color="black", markersize=4)
            # The values go in a corner box rather than beside the points: the two epochs are often a few apart,
            # where labels next to the points would collide with each other and with the curves.
            lines = [f"test at chosen (ep {t['chosen']:g}): {t['chosen_test']:.3f}"]
        if t["best"] != t["chosen"]:
            ax.axvline(t["best"], color="tab:red", linestyle=":", linewidth=1.4, label="best on test (not used)")
            ax.plot([t["best"]], [t["best_test"]], "o", color="tab:red", markersize=4)
            lines.append(f"best on test (ep {t['best']:g}): {t['best_test']:.3f} "
                         f"({t['best_test'] - t['chosen_test']:+.3f})")
        ax.text(0.98, 0.03, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small",
                bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.85})
        ax.set_title(name if not t["note"] else f"{name}\n{t['note']}", fontsize="medium" if not t["note"] else "small")
        ax.grid(True, alpha=0.3)
    for i, ax in enumerate(axes):
        if i >= len(checked):
            ax.set_visible(False)
            continue
        if i % ncols == 0:
            ax.set_ylabel("mAP (avg of directions)")
        if i + ncols >= len(checked):  # the last visible panel of its column
            ax.set_xlabel("epoch")

    # One legend for the figure, each label once (the "best on test" line exists only in some panels).
    handles: dict[str, object] = {}
    for ax in axes[: len(checked)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), fontsize="small")
    fig.suptitle(title or "Validation and test mAP per epoch")
    return _finish(fig, path, dpi)


# ----------------------------------------------------------------------------------------------------------- space
def pca_2d(x) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of ``x`` on their first two principal components, by SVD of the centred data.

    With ``Xc = X - mean(X, axis=0) = U S V^T`` (singular values descending), the coordinates are
    ``Xc V[:, :2] = U[:, :2] S[:2]`` and the explained-variance ratio of component j is ``S_j^2 / sum_i S_i^2``
    (its share of the total variance ``trace(cov(X))``). Each axis's sign is fixed so that its loading of largest
    magnitude is positive, which makes the picture deterministic.

    Args:
        x: ``(n, d)`` array with ``n >= 2`` rows, ``d >= 2`` columns, finite values, not all rows equal.

    Returns:
        ``(coords, explained_ratio)``: float64 ``(n, 2)`` (centred, columns orthogonal) and float64 ``(2,)``.

    Raises:
        ValueError: On a wrong shape, NaN/inf, or zero total variance.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"pca_2d needs an (n, d) array with n >= 2 and d >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("pca_2d: x holds NaN or infinite values")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float(np.sum(s**2))
    if total <= 0.0:
        raise ValueError("pca_2d: all rows are equal (zero variance), there is no principal axis")
    axes = vt[:2]
    signs = np.sign(axes[np.arange(2), np.argmax(np.abs(axes), axis=1)])
    axes = axes * signs[:, None]
    return centred @ axes.T, s[:2] ** 2 / total


def _class_colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo beyond (not repeating)."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [colormaps["turbo"](v) for v in np.linspace(0.0, 1.0, n)]


def space_figure(embeddings: Mapping[str, object], labels: Mapping[str, object], class_names: Sequence[str], path, *,
                 normalize: bool = True, title: str | None = None, figsize=None, dpi: float = DPI) -> Path:
    """A 2-D picture of the common space: PCA of every modality's test embeddings, colour = class, marker = modality.

    The PCA (:func:`pca_2d`) is fitted once on all modalities' rows stacked, so the modalities share the same axes
    and their overlap is what cross-modal retrieval exploits. With ``normalize`` each row is first divided by its
    L2 norm (a zero row stays zero), i.e. the points are on the unit sphere as cosine retrieval sees them. The axis
    labels give the share of the total variance each axis explains.

    Args:
        embeddings: Maps a modality name to its ``(n_m, d)`` embeddings (the same ``d`` for every modality).
        labels: Maps the same modality names to ``(n_m,)`` integer class ids in ``[0, len(class_names))``.
        class_names: Name of each class, for the legend.
        path: Output file; the format follows its suffix.
        normalize: L2-normalise rows before the PCA.
        title: Figure title; default "Common space of the test split (PCA ...)".
        figsize: ``(width, height)`` in inches; default ``(10, 7)``.
        dpi: Resolution of the image.

    Returns:
        The path written.

    Raises:
        ValueError: If ``embeddings`` or ``class_names`` is empty, the modalities of ``embeddings`` and ``labels``
            differ, shapes disagree, a label is out of range, or the path's format is unknown.
    """
    _check_nonempty("embeddings", embeddings)
    _check_nonempty("class_names", class_names)
    path = _check_path(path)
    if set(embeddings) != set(labels):
        raise ValueError(f"embeddings has modalities {sorted(embeddings)} but labels has {sorted(labels)}")
    if len(embeddings) > len(_MODALITY_MARKERS):
        raise ValueError(f"embeddings has {len(embeddings)} modalities; at most {len(_MODALITY_MARKERS)} are drawn")
    arrays, ids, dims = {}, {}, set()
    for modality, emb in embeddings.items():
        e = np.asarray(emb, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] == 0:
            raise ValueError(f"embeddings[{modality!r}] must be a non-empty (n, d) array, got shape {e.shape}")
        lab = np.asarray(labels[modality])
        if lab.ndim != 1 or len(lab) != e.shape[0]:
            raise ValueError(f"labels[{modality!r}] must be ({e.shape[0]},) class ids, got shape {lab.shape}")
        if lab.dtype.kind not in "iu" or lab.min() < 0 or lab.max() >= len(class_names):
            raise ValueError(f"labels[{modality!r}] must be integer class ids in [0, {len(class_names)})")
        arrays[modality], ids[modality] = e, lab
        dims.add(e.shape[1])
    if len(dims) != 1:
        raise ValueError(f"embeddings differ in dimension across modalities: {sorted(dims)}")

    stacked = np.concatenate(list(arrays.values()), axis=0)
    if normalize:
        norms = np.linalg.norm(stacked, axis=1, keepdims=True)
        stacked = stacked / np.where(norms > 0, norms, 1.0)
    coords, ratio = pca_2d(stacked)

    from matplotlib.lines import Line2D

    colours = _class_colours(len(class_names))
    fig = _new_figure(figsize or (WIDTH, 7.0))
    ax = fig.subplots()
    start = 0
    for marker, lab in zip(_MODALITY_MARKERS, ids.values(), strict=False):  # at most len(markers) modalities: checked
        xy = coords[start:start + len(lab)]
        start += len(lab)
        ax.scatter(xy[:, 0], xy[:, 1], c=[colours[i] for i in lab], marker=marker, s=14, alpha=0.7, linewidths=0)
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)")
    ax.grid(True, alpha=0.3)
    present = sorted(set(np.concatenate(list(ids.values())).tolist()))
    class_handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colours[i], label=class_names[i])
                     for i in present]
    modality_handles = [Line2D([], [], linestyle="", marker=m, markersize=6, color="0.3", label=name)
                        for m, name in zip(_MODALITY_MARKERS, ids, strict=False)]
    fig.legend(handles=class_handles, title="class", loc="outside right upper", fontsize="small")
    fig.legend(handles=modality_handles, title="modality", loc="outside right lower", fontsize="small")
    space = "L2-normalised embeddings" if normalize else "embeddings"
    fig.suptitle(title or f"Common space of the test split (PCA of the {space}, all modalities)")
    return _finish(fig, path, dpi)


# ------------------------------------------------------------------------------------------------------------ bars
def _mean_std(where: str, value) -> tuple[float, float | None]:
    try:
        mean, std = value
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a pair (mean, std)") from None
    mean = float(mean)
    std = None if std is None else float(std)
    if not math.isfinite(mean) or (std is not None and not (math.isfinite(std) and std >= 0)):
        raise ValueError(f"{where} = ({mean}, {std}): the mean must be finite and the std finite and >= 0 (or None)")
    return mean, std


def _bar_label(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def method_bar_figure(rows: Mapping[str, Mapping], path, *, title: str | None = None, references=REFERENCES,
                      figsize=None, dpi: float = DPI) -> Path:
    """Horizontal bars per method: honest test mAP beside the test-selected mAP, mean ± std over seeds.

    "Honest" is the test mAP avg of the checkpoint chosen on validation; "test-selected" is the mean over seeds of
    the best test mAP avg over epochs, which selecting on the test split would report (optimistic by construction).
    Methods are listed top to bottom in dict order; reference rows (``references``, or any row without a
    test-selected value) are drawn in grey.

    Args:
        rows: Maps a method name to ``{"honest": (mean, std), "test_selected": (mean, std) or None}``; a std may be
            None (one seed), drawn without an error bar.
        path: Output file; the format follows its suffix.
        title: Figure title; default "Test mAP avg (mean ± std over seeds)".
        references: Names drawn as reference rows.
        figsize: ``(width, height)`` in inches; default 10 wide and 0.55 per method plus 1.3.
        dpi: Resolution of the image.

    Returns:
        The path written.

    Raises:
        ValueError: If ``rows`` is empty, a row lacks "honest", or a value is not a finite ``(mean, std)`` pair; or
            the path's format is unknown.
    """
    _check_nonempty("rows", rows)
    path = _check_path(path)
    checked = {}
    for name, row in rows.items():
        if not isinstance(row, Mapping) or "honest" not in row:
            raise ValueError(f"rows[{name!r}] must be a mapping with 'honest'")
        selected = row.get("test_selected")
        checked[name] = (_mean_std(f"rows[{name!r}]['honest']", row["honest"]),
                         None if selected is None else _mean_std(f"rows[{name!r}]['test_selected']", selected))

    refs = set(references or ())
    n = len(checked)
    fig = _new_figure(figsize or (WIDTH, 0.55 * n + 1.3))
    ax = fig.subplots()
    y = np.arange(n)[::-1].astype(np.float64)  # first method at the top
    height = 0.38
    highest = 0.0
    labelled = set()
    for yi, (name, (honest, selected)) in zip(y, checked.items(), strict=True):
        is_ref = name in refs or selected is None
        colour = "0.6" if is_ref else "tab:blue"
        offset = height / 2 if selected is not None else 0.0
        label = "reference (no epochs)" if is_ref else "honest: chosen on val"
        bars = [(yi + offset, honest, {"color": colour}, label)]
        if selected is not None:
            bars.append((yi - offset, selected, {"color": "tab:orange", "alpha": 0.55, "hatch": "//"},
                         "best test epoch (test-selected, not used)"))
        for y_bar, (mean, std), style, label in bars:
            # A std of 0 or None (one seed) draws no error bar; the legend names each kind of bar once.
            ax.barh(y_bar, mean, height, xerr=std or None, capsize=3, label=None if label in labelled else label,
                    **style)
            labelled.add(label)
            end = mean + (std or 0.0)
            ax.annotate(_bar_label(mean, std), (end, y_bar), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize="x-small")
            highest = max(highest, end)
    ax.set_yticks(y, list(checked))
    # Room on the right for the value labels.
    ax.set_xlim(0, max(highest, 1e-3) * 1.18)
    ax.set_xlabel("test mAP (avg of directions)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize="small")
    fig.suptitle(title or "Test mAP avg (mean ± std over seeds)")
    return _finish(fig, path, dpi)
