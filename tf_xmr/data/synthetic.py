"""A seeded synthetic cross-modal benchmark: class-structured, nonlinear, noisy, any number of modalities.

Generative story (all draws from one seed, so the same seed gives byte-identical arrays):

1. Class semantics. Each class k gets a latent vector ``mu_k ~ N(0, I_L)`` (L = ``latent_dim``). Class sizes are
   unequal (log-normal proportions, roughly the 2.5x spread of Wikipedia's categories).
2. Items. An item with classes S (one class, or 1-3 for ``multi_label``) has the shared latent
   ``z = mean_{k in S} mu_k + item_spread * eps``, ``eps ~ N(0, I_L)``: items of a class are a cloud, not a point, and
   clouds of different classes overlap.
3. Modalities. Modality m sees the item through its OWN random two-layer network with its own private nuisance
   ``u_m ~ N(0, I_{L/2})`` (what the image shows that the text does not say, and vice versa):
   ``x_m = W2_m act_m(W1_m [z; u_m] + b1_m) + noise * n``, with ``act`` alternating tanh / ReLU across modalities and
   the output at the modality's own dimensionality. No modality is a linear function of another.
4. Class embeddings. ``class_embeddings = normalise(mu @ A)`` for a fixed random ``A`` (L x e): they carry the same
   class semantics, so zero-shot methods have something real to align to.

Validation is a stratified, seeded ``val_fraction`` of the training items, as for Wikipedia.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tf_xmr.data.feature_set import FeatureSet, Split, split_validation
from tf_xmr.errors import DataError

#: Default modality dimensions: VGG fc7-sized images and word2vec-sized texts, like the deep Wikipedia features.
DEFAULT_DIMS = {"image": 4096, "text": 300}


def _class_sizes(total: int, proportions: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``total`` items over classes by largest remainder, each class getting at least ``minimum``."""
    k = proportions.shape[0]
    minimum = min(minimum, total // k)
    spare = total - minimum * k
    raw = proportions * spare
    sizes = np.floor(raw).astype(np.int64)
    # Largest remainder keeps the total exact; ties broken by class index for determinism.
    order = np.lexsort((np.arange(k), -(raw - sizes)))
    sizes[order[: spare - int(sizes.sum())]] += 1
    return sizes + minimum


def _draw_labels(rng: np.random.Generator, sizes: np.ndarray, multi_label: bool, num_classes: int):
    """Primary class per item in shuffled order; for multi-label also 0-2 extra classes per item.

    Returns:
        (labels, member_lists): labels int64 (n,) or float32 multi-hot (n, c); member_lists[i] = classes of item i.
    """
    primary = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    if not multi_label:
        return primary.astype(np.int64), [[int(k)] for k in primary]
    n = primary.shape[0]
    # About half the items carry one class, the rest two or three, like the multi-label benchmarks' 1-3 tags.
    extra = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
    members, multi_hot = [], np.zeros((n, num_classes), dtype=np.float32)
    for i in range(n):
        others = np.delete(np.arange(num_classes), primary[i])
        chosen = [int(primary[i])] + [int(k) for k in rng.choice(others, size=min(extra[i], others.size),
                                                                 replace=False)]
        members.append(chosen)
        multi_hot[i, chosen] = 1.0
    return multi_hot, members


class _ModalityMap:
    """A fixed random two-layer network from [shared latent; private nuisance] to one modality's features."""

    def __init__(self, rng: np.random.Generator, latent_dim: int, private_dim: int, dim: int, activation: str):
        in_dim = latent_dim + private_dim
        self.hidden = max(64, 2 * in_dim)
        self.private_dim = private_dim
        # Weight scales keep pre-activations and outputs at unit variance, so `noise` is a signal-to-noise knob
        # independent of the dimensions; the gain of 1.5 puts tanh/ReLU well into their nonlinear range.
        self.w1 = rng.standard_normal((in_dim, self.hidden)) * (1.5 / np.sqrt(in_dim))
        self.b1 = rng.standard_normal(self.hidden) * 0.5
        self.w2 = rng.standard_normal((self.hidden, dim))
        self.activation = activation

    def __call__(self, rng: np.random.Generator, z: np.ndarray, noise: float) -> np.ndarray:
        n = z.shape[0]
        u = rng.standard_normal((n, self.private_dim))
        pre = np.concatenate([z, u], axis=1) @ self.w1 + self.b1
        h = np.tanh(pre) if self.activation == "tanh" else np.maximum(pre, 0.0)
        h = (h - h.mean(axis=1, keepdims=True)) / (h.std(axis=1, keepdims=True) + 1e-6)
        x = (h @ self.w2) / np.sqrt(self.hidden)
        x += noise * rng.standard_normal(x.shape)
        return x.astype(np.float32)


def make_synthetic(
    *,
    num_classes: int = 10,
    dims: Mapping[str, int] | None = None,
    num_train: int = 2173,
    num_test: int = 693,
    val_fraction: float = 0.1,
    latent_dim: int = 32,
    noise: float = 1.5,
    item_spread: float = 1.8,
    multi_label: bool = False,
    class_embedding_dim: int | None = 50,
    modality_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> FeatureSet:
    """Build the synthetic cross-modal benchmark (see the module docstring for the generative story).

    Sizes default to Wikipedia's (2173 train incl. validation / 693 test, 10 unequal classes) with deep-feature
    dimensions (image 4096, text 300). Generation takes about a second at the defaults.

    Difficulty at the defaults: a one-hidden-layer MLP baseline (one classifier per modality, epochs picked on val,
    retrieval by cosine in softmax space, mAP over the whole ranking) gets test mAP i2t 0.506 / t2i 0.494 (seed 0;
    seeds 1 and 2: 0.516 / 0.499 and 0.558 / 0.537), measured with
    ``TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/synthetic_baseline.py [--seed N]``. That is far from perfect, well
    above random ranking (~0.11), and above the same script on the real Wikipedia features (0.279 / 0.237,
    ``--wikipedia ../shared/data/wikipedia``), leaving room for cross-modal methods to show gains. With
    ``multi_label=True`` the same baseline gets 0.392 / 0.404 (``--multi-label``).

    Args:
        num_classes: number of classes c (>= 2).
        dims: modality name -> feature dimension, two or more entries; default ``{"image": 4096, "text": 300}``.
        num_train: training items before the validation split is carved out.
        num_test: test items.
        val_fraction: stratified share of the training items moved to "val"; 0 gives no "val" split.
        latent_dim: dimension L of the shared semantic latent.
        noise: std of the per-feature observation noise, relative to unit-variance signal.
        item_spread: std of the item-level latent variation around its class vector (class vectors have unit
            variance per dimension): larger means more overlap between classes.
        multi_label: items carry 1-3 classes (labels become float32 multi-hot (n, c)).
        class_embedding_dim: e, the dimension of the per-class semantic vectors; None or 0 for none.
        modality_fractions: modality -> share in (0, 1] of each split's items that modality keeps (a seeded,
            stratified subset drawn per modality and split), e.g. ``{"audio": 0.2}``; given at all, every split is
            UNPAIRED (different item counts per modality, as in PKU XMedia). Modalities not listed keep all items.
            Each modality's subset comes from its own seed stream, so adding a modality never changes the others.
        seed: everything is a deterministic function of the arguments.

    Returns:
        A validated FeatureSet named "synthetic" with splits "train", "val" (if ``val_fraction > 0``) and "test";
        features float32 (n, d_m); ``class_embeddings`` float32 (c, e) with unit-norm rows.
    """
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    if len(dims) < 2:
        raise DataError(f"make_synthetic needs at least two modalities in dims, got {dims}")
    for m, d in dims.items():
        if int(d) < 1:
            raise DataError(f"make_synthetic: dimension of modality {m!r} must be >= 1, got {d}")
    if num_classes < 2:
        raise DataError(f"make_synthetic: num_classes must be >= 2, got {num_classes}")
    if num_train < 2 * num_classes or num_test < num_classes:
        raise DataError(
            f"make_synthetic: need num_train >= 2*num_classes and num_test >= num_classes, "
            f"got {num_train}/{num_test} for {num_classes} classes"
        )
    fractions = dict(modality_fractions or {})
    for m, f in fractions.items():
        if m not in dims:
            raise DataError(f"make_synthetic: modality_fractions names {m!r}, "
                            f"which is not among the modalities {list(dims)}")
        if not 0.0 < float(f) <= 1.0:
            raise DataError(f"make_synthetic: modality_fractions[{m!r}] must be in (0, 1], got {f}")
    if latent_dim < 1 or noise < 0 or item_spread < 0:
        raise DataError("make_synthetic: latent_dim >= 1, noise >= 0, item_spread >= 0 required")

    # Independent streams per component, so that e.g. changing num_test does not change the class vectors,
    # the modality maps or the training items.
    s_classes, s_maps, s_train, s_test = np.random.SeedSequence(int(seed)).spawn(4)
    rng = np.random.default_rng(s_classes)
    centres = rng.standard_normal((num_classes, latent_dim))
    proportions = np.exp(0.35 * rng.standard_normal(num_classes))
    proportions /= proportions.sum()
    embed_map = rng.standard_normal((latent_dim, class_embedding_dim)) if class_embedding_dim else None

    private_dim = max(1, latent_dim // 2)
    maps = {
        m: _ModalityMap(np.random.default_rng(s), latent_dim, private_dim, int(d), ("tanh", "relu")[i % 2])
        for i, ((m, d), s) in enumerate(zip(dims.items(), s_maps.spawn(len(dims)), strict=True))
    }
    # Normalising the latent to unit variance per dimension keeps the maps' nonlinearity in the same regime
    # whatever item_spread is.
    scale = 1.0 / np.sqrt(1.0 + item_spread**2)

    def make_split(seed_seq: np.random.SeedSequence, total: int, minimum: int) -> Split:
        rng = np.random.default_rng(seed_seq)
        labels, members = _draw_labels(rng, _class_sizes(total, proportions, minimum), multi_label, num_classes)
        mix = np.stack([centres[k].mean(axis=0) for k in members]) if multi_label else centres[labels]
        z = (mix + item_spread * rng.standard_normal((total, latent_dim))) * scale
        features = {m: f(rng, z, noise) for m, f in maps.items()}
        return Split(features=features, labels={m: labels for m in dims}, paired=True)

    train = make_split(s_train, num_train, 2)
    splits = {}
    if val_fraction and val_fraction > 0:
        train, val = split_validation(train, val_fraction, seed)
        splits = {"train": train, "val": val}
    else:
        splits = {"train": train}
    splits["test"] = make_split(s_test, num_test, 1)
    if modality_fractions is not None:
        splits = _unpair(splits, fractions, dims, seed)

    class_embeddings = None
    if embed_map is not None:
        emb = centres @ embed_map
        class_embeddings = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    return FeatureSet(
        name="synthetic",
        modalities=tuple(dims),
        class_names=tuple(f"class_{k}" for k in range(num_classes)),
        splits=splits,
        multi_label=multi_label,
        class_embeddings=class_embeddings,
        source=f"make_synthetic(seed={seed})",
    ).validate()


def _unpair(splits: dict, fractions: Mapping[str, float], dims: Mapping[str, int], seed: int) -> dict:
    """Each modality keeps its own stratified subset of every split's items; the splits become unpaired."""
    from tf_xmr.data.feature_set import stratified_split

    out = {}
    for s_index, (name, split) in enumerate(splits.items()):
        features, labels = {}, {}
        for m_index, m in enumerate(dims):
            x, y = split.features[m], split.labels[m]
            fraction = float(fractions.get(m, 1.0))
            if fraction < 1.0:
                # Seeded by (seed, split, modality position): independent of the other modalities' fractions.
                keep_seed = int(np.random.SeedSequence([int(seed), s_index, m_index]).generate_state(1)[0])
                _, held = stratified_split(y, fraction, keep_seed)
                x, y = x[held], y[held]
            features[m], labels[m] = x, y
        out[name] = Split(features=features, labels=labels, paired=False)
    return out


__all__ = ["make_synthetic", "DEFAULT_DIMS"]
