"""Reference rows for the results report: chance level, linear CCA and a plain supervised MLP.

Each reference is scored on the same splits and under the same retrieval protocol as the trained methods, through
the one evaluator :func:`tf_xmr.metrics.evaluator.score_embeddings` (multi-hot labels, every ordered modality pair,
``map_avg`` = mean over the directions). The default protocol is ``PRESETS["default"]``: cosine similarity, mAP over
the whole ranking, AP normalised by all relevant items. Model choices (the CCA regulariser, the MLP epoch) are made
on "val" only; "test" is scored once with the chosen model.

* :func:`random_reference`: random Gaussian embeddings, the chance level (mean and std over draws).
* :class:`LinearCCA` / :func:`cca_reference`: closed-form regularised linear CCA on the first two modalities of a
  paired feature set, the classic unsupervised baseline (Hotelling 1936; on Wikipedia, Rasiwasia et al. 2010).
* :func:`mlp_reference`: one supervised MLP classifier per modality (the one of ``benchmarks/synthetic_baseline.py``),
  items embedded as their softmax class posteriors.

Usage (from the repository root)::

    from benchmarks.references import cca_reference, mlp_reference, random_reference
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from benchmarks.synthetic_baseline import train_classifier
from tf_xmr.data import Split, feature_stats, to_multi_hot
from tf_xmr.metrics import PRESETS, RetrievalProtocol
from tf_xmr.metrics.evaluator import score_embeddings

__all__ = ["LinearCCA", "cca_reference", "mlp_reference", "random_reference"]


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _protocol(protocol) -> RetrievalProtocol:
    """None -> the project default; a preset name -> that preset; a RetrievalProtocol as is."""
    if protocol is None:
        return PRESETS["default"]
    if isinstance(protocol, str):
        if protocol not in PRESETS:
            raise ValueError(f"unknown protocol preset {protocol!r} (known: {', '.join(PRESETS)})")
        return PRESETS[protocol]
    if not isinstance(protocol, RetrievalProtocol):
        raise ValueError(f"protocol must be None, a preset name or a RetrievalProtocol, got {type(protocol).__name__}")
    return protocol


def _split(feature_set, name: str) -> Split:
    """The in-memory split ``name``; references need the arrays, so streamed (TFRecord) splits are refused."""
    split = feature_set.splits.get(name)
    if split is None:
        raise ValueError(
            f"feature set {feature_set.name!r} has no {name!r} split (has: {', '.join(feature_set.splits)})"
        )
    if not isinstance(split, Split):
        raise ValueError(
            f"feature set {feature_set.name!r}: split {name!r} is {type(split).__name__}; the references need an "
            "in-memory Split (load the arrays, not the TFRecord shards)"
        )
    return split


def _labels(feature_set, split: Split, modalities) -> dict[str, np.ndarray]:
    return {m: to_multi_hot(split.labels[m], feature_set.num_classes) for m in modalities}


def _mean_std(runs: list[dict]) -> tuple[dict, dict]:
    """Per-key mean and sample std (ddof=1; 0 for a single run) of a list of score dicts with the same keys."""
    keys = list(runs[0])
    values = {k: np.array([r[k] for r in runs], dtype=np.float64) for k in keys}
    mean = {k: float(v.mean()) for k, v in values.items()}
    std = {k: float(v.std(ddof=1)) if v.size > 1 else 0.0 for k, v in values.items()}
    return mean, std


# ----------------------------------------------------------------------------------------------------------------
# Chance level
# ----------------------------------------------------------------------------------------------------------------


def random_reference(feature_set, *, protocol=None, draws: int = 20, dim: int = 16, seed: int = 0) -> dict:
    """Chance level: every item of every modality gets an independent ``N(0, I_dim)`` embedding.

    With i.i.d. continuous embeddings every ranking of the database is equally likely, so for a query with R relevant
    items among N the expected AP (all-relevant normalisation, whole ranking) is
    ``(R - 1) / (N - 1) + (N - R) / (N (N - 1)) * H_N`` (H_N the N-th harmonic number), about R / N: the class
    prevalence for single-label data. The reference averages ``draws`` draws; "val" and "test" (when present) draw
    from separate seeded streams, so the test numbers do not depend on whether a "val" split exists.

    Args:
        feature_set: a FeatureSet with in-memory splits; every modality is scored (all ordered pairs).
        protocol: a RetrievalProtocol, a preset name, or None for ``PRESETS["default"]``.
        draws: number of independent draws (>= 1).
        dim: embedding dimension (>= 1); irrelevant in expectation, kept small for speed.
        seed: seed of the numpy Generator.

    Returns:
        ``{"val": {"map_<dir>": mean, ..., "map_avg": mean}, "val_std": {...}, "test": {...}, "test_std": {...},
        "draws": draws}`` (std over draws, ddof=1); the "val" entries only when the feature set has a "val" split.
    """
    protocol = _protocol(protocol)
    if int(draws) < 1 or int(dim) < 1:
        raise ValueError(f"random_reference: draws and dim must be >= 1, got draws={draws}, dim={dim}")
    modalities = feature_set.modalities
    streams = dict(zip(("val", "test"), np.random.SeedSequence(int(seed)).spawn(2), strict=True))
    out: dict = {"draws": int(draws)}
    for name, stream in streams.items():
        if name == "val" and "val" not in feature_set.splits:
            continue
        split = _split(feature_set, name)
        labels = _labels(feature_set, split, modalities)
        rng = np.random.default_rng(stream)
        runs = []
        for _ in range(int(draws)):
            embeddings = {m: rng.standard_normal((split.num_examples(m), int(dim))) for m in modalities}
            runs.append(score_embeddings(embeddings, labels, protocol, modalities))
        out[name], out[f"{name}_std"] = _mean_std(runs)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Linear CCA
# ----------------------------------------------------------------------------------------------------------------


def _as_matrix(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} of shape {a.shape} contains NaN or Inf")
    return a


def _regularised_inverse_sqrt(cov: np.ndarray, reg: float, name: str) -> np.ndarray:
    """``(C + r I)^(-1/2)`` with ``r = reg * trace(C) / d``, by a symmetric eigendecomposition.

    Eigenvalues at round-off level (only possible with ``reg = 0`` on rank-deficient data) are treated as null
    directions (pseudo-inverse): whitening them would blow noise up by ~1e8.
    """
    d = cov.shape[0]
    mean_eigenvalue = float(np.trace(cov)) / d
    if not mean_eigenvalue > 0.0:
        raise ValueError(f"LinearCCA: {name} has zero variance in every dimension; nothing to correlate")
    values, vectors = np.linalg.eigh(cov + reg * mean_eigenvalue * np.eye(d))
    keep = values > values.max() * d * np.finfo(np.float64).eps
    inv_sqrt = np.where(keep, 1.0 / np.sqrt(np.where(keep, values, 1.0)), 0.0)
    return (vectors * inv_sqrt) @ vectors.T


class LinearCCA:
    """Closed-form regularised linear canonical correlation analysis of two paired views.

    With centred views ``x`` (n, d_x) and ``y`` (n, d_y) and sample covariances ``C_xx``, ``C_yy``, ``C_xy``
    (denominator n - 1), the k-th pair of canonical directions ``(a_k, b_k)`` maximises::

        rho_k = a_k^T C_xy b_k
        subject to  a_k^T (C_xx + r_x I) a_j = delta_kj,   b_k^T (C_yy + r_y I) b_j = delta_kj   (j <= k)

    i.e. the correlation of the projections ``a^T x`` and ``b^T y``, uncorrelated with the earlier pairs. The ridge
    ``r_x = reg * trace(C_xx) / d_x`` (``reg`` times the mean eigenvalue, likewise for y) makes ``reg`` scale-free:
    rescaling a view does not change the result at any ``reg``; with ``reg -> 0`` the correlations are invariant
    under any invertible affine map of either view. Solution: whiten, ``W_x = (C_xx + r_x I)^(-1/2)`` (symmetric,
    by an eigendecomposition), SVD ``W_x C_xy W_y = U S V^T``; then ``a_k = W_x u_k``, ``b_k = W_y v_k`` and
    ``rho_k = S_kk`` (descending). Signs are fixed so that the largest-magnitude entry of each ``a_k`` is positive.

    Args:
        dim: number k of canonical pairs kept; None keeps ``min(d_x, d_y)``.
        reg: ridge strength >= 0 relative to the mean eigenvalue of each view's covariance.

    Attributes (after :meth:`fit`):
        correlations_: float64 (k,), the canonical correlations, descending.
        x_weights_, y_weights_: float64 (d_x, k) / (d_y, k), the canonical directions as columns.
        x_mean_, y_mean_: float64 training means, subtracted before projecting.
    """

    def __init__(self, dim: int | None = None, reg: float = 1e-3):
        if dim is not None and (isinstance(dim, bool) or int(dim) != dim or dim < 1):
            raise ValueError(f"LinearCCA: dim must be a positive integer or None, got {dim!r}")
        if not (np.isfinite(reg) and reg >= 0):
            raise ValueError(f"LinearCCA: reg must be a finite number >= 0, got {reg!r}")
        self.dim = None if dim is None else int(dim)
        self.reg = float(reg)

    def fit(self, x, y) -> LinearCCA:
        """Fit on paired training views ``x`` (n, d_x) and ``y`` (n, d_y), row i of both the same item; returns self."""
        x, y = _as_matrix("x", x), _as_matrix("y", y)
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"LinearCCA: x has {n} rows but y has {y.shape[0]}; the views must be paired")
        if n < 2:
            raise ValueError("LinearCCA: need at least 2 paired rows to estimate covariances")
        k_max = min(x.shape[1], y.shape[1])
        k = k_max if self.dim is None else self.dim
        if k > k_max:
            raise ValueError(f"LinearCCA: dim={k} exceeds min(d_x, d_y) = min({x.shape[1]}, {y.shape[1]})")
        self.x_mean_, self.y_mean_ = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - self.x_mean_, y - self.y_mean_
        wx = _regularised_inverse_sqrt(xc.T @ xc / (n - 1), self.reg, "x")
        wy = _regularised_inverse_sqrt(yc.T @ yc / (n - 1), self.reg, "y")
        u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / (n - 1)) @ wy, full_matrices=False)
        a, b = wx @ u[:, :k], wy @ vt[:k].T
        # An SVD pair (u_k, v_k) is defined up to a joint sign flip; fixing it makes fits reproducible across
        # LAPACK builds. Flipping both directions together keeps rho_k = a_k^T C_xy b_k positive.
        signs = np.sign(a[np.argmax(np.abs(a), axis=0), np.arange(k)])
        signs[signs == 0] = 1.0
        self.x_weights_, self.y_weights_ = a * signs, b * signs
        self.correlations_ = s[:k].copy()
        return self

    def transform(self, x=None, y=None):
        """Project either view (or both) onto the canonical directions, after centring with the training means.

        Returns:
            ``(x - x_mean_) @ x_weights_`` (n, k) when only ``x`` is given, the y projection when only ``y`` is,
            and the tuple ``(x_proj, y_proj)`` when both are.
        """
        if not hasattr(self, "correlations_"):
            raise ValueError("LinearCCA: call fit() before transform()")
        if x is None and y is None:
            raise ValueError("LinearCCA.transform: pass x, y or both")
        out = []
        views = (("x", x, self.x_mean_, self.x_weights_), ("y", y, self.y_mean_, self.y_weights_))
        for name, view, mean, weights in views:
            if view is None:
                continue
            view = _as_matrix(name, view)
            if view.shape[1] != mean.shape[0]:
                raise ValueError(
                    f"LinearCCA.transform: {name} has dimension {view.shape[1]}, fitted on {mean.shape[0]}"
                )
            out.append((view - mean) @ weights)
        return out[0] if len(out) == 1 else tuple(out)


def _paired_modalities(feature_set) -> tuple[str, str]:
    """The first two modalities, after checking that CCA applies: paired in-memory train/val/test splits."""
    if len(feature_set.modalities) < 2:
        raise ValueError(f"cca_reference needs two modalities; feature set {feature_set.name!r} has "
                         f"{list(feature_set.modalities)}")
    for name in ("train", "val", "test"):
        if not _split(feature_set, name).paired:
            raise ValueError(
                f"cca_reference needs paired data (row i the same item in both modalities), but split {name!r} of "
                f"feature set {feature_set.name!r} is unpaired"
            )
    first, second = feature_set.modalities[:2]
    return first, second


def cca_reference(feature_set, *, protocol=None, regs: Iterable[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                  dim: int | None = None) -> dict:
    """Linear CCA fitted on "train", the regulariser picked on "val" mAP, "test" scored once.

    For each ``reg`` in ``regs`` a :class:`LinearCCA` is fitted on the training pairs of the first two modalities
    and "val" is scored with both views projected into the k-dimensional canonical space (no further scaling of the
    coordinates). The reg with the highest validation ``map_avg`` wins (ties go to the earlier one in ``regs``);
    only then is "test" projected and scored, once, with that fit.

    Args:
        feature_set: a FeatureSet with paired in-memory "train", "val" and "test" splits.
        protocol: a RetrievalProtocol, a preset name, or None for ``PRESETS["default"]``.
        regs: candidate ridge strengths (see :class:`LinearCCA`), each >= 0.
        dim: canonical dimensions k; None for ``min(d_x, d_y)``.

    Returns:
        ``{"val": scores, "test": scores, "reg": chosen reg, "dim": k, "val_by_reg": {reg: val map_avg},
        "test_embeddings": (modality -> projected test rows, modality -> multi-hot labels)}``, scores as returned by
        ``score_embeddings`` for the two modalities (the embeddings are for curves and pictures).

    Raises:
        ValueError: fewer than two modalities, an unpaired or missing split, or an empty/invalid ``regs``.
    """
    protocol = _protocol(protocol)
    first, second = _paired_modalities(feature_set)
    regs = [float(r) for r in regs]
    if not regs or not all(np.isfinite(r) and r >= 0 for r in regs):
        raise ValueError(f"cca_reference: regs must be a non-empty list of numbers >= 0, got {regs}")
    pair = (first, second)
    train = _split(feature_set, "train")

    def embed(model: LinearCCA, name: str) -> tuple[dict, dict]:
        split = _split(feature_set, name)
        px, py = model.transform(split.features[first], split.features[second])
        return {first: px, second: py}, _labels(feature_set, split, pair)

    def score(model: LinearCCA, name: str) -> dict:
        return score_embeddings(*embed(model, name), protocol, pair)

    val_by_reg, best = {}, None
    for reg in regs:
        model = LinearCCA(dim=dim, reg=reg).fit(train.features[first], train.features[second])
        val_scores = score(model, "val")
        val_by_reg[reg] = val_scores["map_avg"]
        if best is None or val_scores["map_avg"] > best[1]["map_avg"]:
            best = (model, val_scores)
    model, val_scores = best
    test_embeddings = embed(model, "test")
    return {
        "val": val_scores,
        "test": score_embeddings(*test_embeddings, protocol, pair),
        "reg": model.reg,
        "dim": int(model.correlations_.shape[0]),
        "val_by_reg": val_by_reg,
        "test_embeddings": test_embeddings,
    }


# ----------------------------------------------------------------------------------------------------------------
# Supervised MLP
# ----------------------------------------------------------------------------------------------------------------


def mlp_reference(feature_set, *, seed: int = 0, hidden: int = 256, dropout: float = 0.5, l2: float = 1e-4,
                  epochs: int = 200, protocol=None) -> dict:
    """One supervised MLP classifier per modality; items embedded as their softmax class posteriors.

    The model of ``benchmarks/synthetic_baseline.py`` (its ``train_classifier``): features standardised with the
    training split's per-dimension mean and std (std floored at 1e-6), one hidden ReLU layer with dropout and L2,
    Adam, categorical cross-entropy on the (multi-hot) labels; training stops 8 epochs after the lowest validation
    loss and the weights of that epoch are restored. No cross-modal term at all: the two classifiers only share the
    label space, which is what retrieval in posterior space exploits.

    Args:
        feature_set: a FeatureSet with in-memory "train", "val" and "test" splits; every modality gets a classifier
            and every ordered modality pair is scored (paired or unpaired).
        seed: Keras seed (weights, dropout, shuffling).
        hidden, dropout, l2: classifier width, dropout rate (half of it on the input), L2 weight penalty.
        epochs: maximum epochs.
        protocol: a RetrievalProtocol, a preset name, or None for ``PRESETS["default"]``.

    Returns:
        ``{"val": scores, "test": scores, "epochs": {modality: epoch picked on val}, "test_embeddings":
        (modality -> test posteriors, modality -> multi-hot labels)}``.
    """
    protocol = _protocol(protocol)
    modalities = feature_set.modalities
    splits = {name: _split(feature_set, name) for name in ("train", "val", "test")}
    labels = {name: _labels(feature_set, split, modalities) for name, split in splits.items()}
    posteriors = {"val": {}, "test": {}}
    picked = {}
    for m in modalities:
        mean, std = feature_stats(splits["train"], m)
        scale = np.maximum(std, 1e-6)
        x = {name: (split.features[m] - mean) / scale for name, split in splits.items()}
        model, picked[m] = train_classifier(
            x["train"], labels["train"][m], x["val"], labels["val"][m],
            hidden=hidden, dropout=dropout, l2=l2, epochs=epochs, seed=seed,
        )
        for name in posteriors:
            posteriors[name][m] = model.predict(x[name], batch_size=1024, verbose=0)
    return {
        "val": score_embeddings(posteriors["val"], labels["val"], protocol, modalities),
        "test": score_embeddings(posteriors["test"], labels["test"], protocol, modalities),
        "epochs": picked,
        "test_embeddings": (posteriors["test"], labels["test"]),
    }
