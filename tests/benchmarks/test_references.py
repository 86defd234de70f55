"""Tests of benchmarks/references.py: linear CCA against known population correlations, the chance level against its
closed-form expectation, validation-only model selection, and the supervised MLP beating chance."""

import numpy as np
import pytest

import benchmarks.references as references
from benchmarks.references import LinearCCA, cca_reference, mlp_reference, random_reference
from tf_xmr.data import make_synthetic, to_multi_hot
from tf_xmr.metrics import PRESETS
from tf_xmr.metrics.evaluator import score_embeddings

RHO = np.array([0.9, 0.7, 0.4, 0.1])
# Low noise and tight class clouds: at the default difficulty 300 items are too few for either model to learn much.
EASY = {"noise": 0.3, "item_spread": 0.6}


def _canonical_views(n, seed=0, dx=6, dy=4):
    """Paired views whose population canonical correlations are exactly RHO.

    In canonical coordinates, (u_i, v_i) are standard bivariate normal pairs with correlation RHO[i], independent
    across i; x has two more independent unit-variance coordinates. The observed views are x = u A + c, y = v B + e
    for random invertible A, B: canonical correlations are invariant under invertible affine maps of either view,
    so they stay RHO. Returns (x, y, u, v).
    """
    rng = np.random.default_rng(seed)
    k = RHO.size
    u = rng.standard_normal((n, dx))
    v = RHO * u[:, :k] + np.sqrt(1 - RHO**2) * rng.standard_normal((n, k))
    a = rng.standard_normal((dx, dx)) + 3 * np.eye(dx)
    b = rng.standard_normal((dy, dy)) + 3 * np.eye(dy)
    return u @ a + rng.standard_normal(dx), v @ b - 5.0, u, v


def _tiny(**overrides):
    kwargs = dict(num_classes=4, dims={"image": 24, "text": 12}, num_train=300, num_test=120,
                  class_embedding_dim=None, seed=0)
    kwargs.update(overrides)
    return make_synthetic(**kwargs)


# ---- LinearCCA ---------------------------------------------------------------------------------------------------


def test_cca_recovers_population_correlations_and_canonical_variables():
    x, y, u, v = _canonical_views(20000)
    cca = LinearCCA(reg=1e-8).fit(x, y)
    assert cca.correlations_.shape == (4,)  # k = min(d_x, d_y)
    np.testing.assert_allclose(cca.correlations_, RHO, atol=0.02)
    px, py = cca.transform(x, y)
    # The k-th canonical variable is u_k (resp. v_k) up to sign: the correlations are distinct, so each is identified.
    for k in range(RHO.size):
        assert abs(np.corrcoef(px[:, k], u[:, k])[0, 1]) > 0.97
        assert abs(np.corrcoef(py[:, k], v[:, k])[0, 1]) > 0.97


def test_cca_projections_are_whitened_and_diagonally_correlated():
    x, y, _, _ = _canonical_views(3000, seed=1)
    cca = LinearCCA(reg=1e-10).fit(x, y)
    px, py = cca.transform(x, y)
    k = cca.correlations_.size
    cov = np.cov(np.concatenate([px, py], axis=1), rowvar=False)  # sample covariance, n - 1 like the fit
    np.testing.assert_allclose(cov[:k, :k], np.eye(k), atol=1e-6)
    np.testing.assert_allclose(cov[k:, k:], np.eye(k), atol=1e-6)
    np.testing.assert_allclose(cov[:k, k:], np.diag(cca.correlations_), atol=1e-6)
    np.testing.assert_allclose(px.mean(axis=0), 0.0, atol=1e-9)  # centred with the training means
    assert np.all(np.diff(cca.correlations_) <= 0)
    for i in range(k):  # the reported correlation is the plain Pearson correlation of the pair
        assert np.corrcoef(px[:, i], py[:, i])[0, 1] == pytest.approx(cca.correlations_[i], abs=1e-6)


def test_cca_is_affine_invariant_and_its_reg_scale_free():
    x, y, _, _ = _canonical_views(2000, seed=2)
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((x.shape[1], x.shape[1])) + 2 * np.eye(x.shape[1])
    base = LinearCCA(reg=1e-10).fit(x, y).correlations_
    moved = LinearCCA(reg=1e-10).fit(1e3 * x @ mix + 7.0, y).correlations_
    np.testing.assert_allclose(moved, base, atol=1e-6)
    # A pure rescaling multiplies C_xx and its trace alike, so even a strong reg gives identical results.
    strong = LinearCCA(reg=0.5).fit(x, y)
    scaled = LinearCCA(reg=0.5).fit(1e-3 * x, y)
    np.testing.assert_allclose(scaled.correlations_, strong.correlations_, rtol=1e-9)
    np.testing.assert_allclose(scaled.transform(x=1e-3 * x), strong.transform(x=x), rtol=1e-6, atol=1e-9)


def test_cca_ridge_shrinks_the_correlations():
    x, y, _, _ = _canonical_views(2000, seed=4)
    top = [LinearCCA(reg=r).fit(x, y).correlations_[0] for r in (0.0, 1e-2, 1e-1, 1.0, 10.0)]
    # Adding r I to both covariances enlarges every denominator a^T (C + r I) a, so no correlation can grow.
    assert all(later <= earlier + 1e-12 for earlier, later in zip(top, top[1:], strict=False))
    assert top[-1] < 0.5 * top[0]


def test_cca_dim_and_input_errors():
    x, y, _, _ = _canonical_views(500, seed=5)
    two = LinearCCA(dim=2, reg=1e-6).fit(x, y)
    full = LinearCCA(reg=1e-6).fit(x, y)
    np.testing.assert_allclose(two.correlations_, full.correlations_[:2])
    assert two.transform(y=y).shape == (500, 2)
    with pytest.raises(ValueError, match="exceeds"):
        LinearCCA(dim=5).fit(x, y)
    with pytest.raises(ValueError, match="paired"):
        LinearCCA().fit(x, y[:-1])
    with pytest.raises(ValueError, match="fit"):
        LinearCCA().transform(x=x)
    with pytest.raises(ValueError, match="reg"):
        LinearCCA(reg=-1.0)


# ---- random reference ------------------------------------------------------------------------------------------


def _expected_random_map(labels: np.ndarray) -> float:
    """E[mAP] of uniformly random rankings, single-label, query set = database classes (paired data).

    For a query with R relevant items among N, the relevant item at rank r has precision (1 + (r-1)(R-1)/(N-1)) / r
    in expectation, and each relevant item is equally likely at every rank, so
    E[AP] = (R-1)/(N-1) + (N-R)/(N(N-1)) * H_N.
    """
    n = labels.size
    harmonic = np.sum(1.0 / np.arange(1, n + 1))
    r = np.bincount(labels)[labels].astype(np.float64)
    return float(np.mean((r - 1) / (n - 1) + (n - r) / (n * (n - 1)) * harmonic))


def test_random_reference_matches_the_closed_form_chance_level():
    fs = _tiny()
    draws = 40
    result = random_reference(fs, draws=draws, seed=0)
    for split in ("val", "test"):
        expected = _expected_random_map(fs.splits[split].labels["image"])
        assert set(result[split]) == {"map_i2t", "map_t2i", "map_avg"}
        for key in ("map_i2t", "map_t2i"):
            assert result[f"{split}_std"][key] > 0
            standard_error = result[f"{split}_std"][key] / np.sqrt(draws)
            assert abs(result[split][key] - expected) < 5 * standard_error + 1e-3, (split, key, expected)
    # ~ the class prevalence, far below anything learned.
    assert result["test"]["map_avg"] < 0.4


def test_random_reference_is_reproducible_per_seed():
    fs = _tiny()
    first = random_reference(fs, draws=3, seed=7)
    assert random_reference(fs, draws=3, seed=7) == first
    assert random_reference(fs, draws=3, seed=8)["test"] != first["test"]


# ---- CCA reference ---------------------------------------------------------------------------------------------


def test_cca_reference_selects_reg_on_val_and_scores_test_once(monkeypatch):
    fs = _tiny()
    test_split = fs.splits["test"]
    events = []  # (split, reg) per transform, in call order
    # Planted validation scores: the middle reg must win whatever the data say.
    planted = {1e-4: 0.10, 1e-2: 0.30, 1.0: 0.20}

    real_transform = LinearCCA.transform

    def spy_transform(self, x=None, y=None):
        name = next(n for n, s in fs.splits.items() if s.features["image"] is x)
        events.append((name, self.reg))
        return real_transform(self, x, y)

    def fake_score(embeddings, labels, protocol, modalities):
        scores = score_embeddings(embeddings, labels, protocol, modalities)
        name, reg = events[-1]
        if name == "val":
            scores["map_avg"] = planted[reg]
        return scores

    monkeypatch.setattr(LinearCCA, "transform", spy_transform)
    monkeypatch.setattr(references, "score_embeddings", fake_score)
    result = cca_reference(fs, regs=tuple(planted))

    assert result["reg"] == 1e-2
    assert result["val_by_reg"] == planted
    assert [e for e in events if e[0] == "test"] == [("test", 1e-2)]
    assert events[-1] == ("test", 1e-2)  # test comes after every validation score
    assert [e for e in events if e[0] == "val"] == [("val", r) for r in planted]
    assert not any(e[0] == "train" for e in events)
    # The reported test scores are those of the chosen fit, recomputed here directly.
    monkeypatch.undo()
    train = fs.splits["train"]
    cca = LinearCCA(reg=1e-2).fit(train.features["image"], train.features["text"])
    px, py = cca.transform(test_split.features["image"], test_split.features["text"])
    y = to_multi_hot(test_split.labels["image"], fs.num_classes)
    expected = score_embeddings({"image": px, "text": py}, {"image": y, "text": y}, PRESETS["default"],
                                ("image", "text"))
    assert result["test"] == pytest.approx(expected)
    assert result["dim"] == 12  # min(24, 12)


def test_cca_reference_unmocked_choice_is_the_val_argmax_and_beats_chance():
    fs = _tiny(**EASY)
    result = cca_reference(fs, regs=(1e-3, 1e-1, 1.0))
    best = max(result["val_by_reg"], key=result["val_by_reg"].get)
    assert result["reg"] == best
    assert result["val"]["map_avg"] == result["val_by_reg"][best]
    assert result["test"]["map_avg"] > _expected_random_map(fs.splits["test"].labels["image"]) + 0.15


def test_cca_reference_rejects_unpaired_data():
    fs = _tiny(modality_fractions={"text": 0.5})
    with pytest.raises(ValueError, match="paired"):
        cca_reference(fs)


# ---- MLP reference ---------------------------------------------------------------------------------------------


def test_mlp_reference_beats_chance_on_easy_synthetic_data():
    fs = _tiny(**EASY)
    result = mlp_reference(fs, epochs=20, hidden=32)
    assert set(result["epochs"]) == {"image", "text"}
    assert all(1 <= e <= 20 for e in result["epochs"].values())
    chance = _expected_random_map(fs.splits["test"].labels["image"])
    for key in ("map_i2t", "map_t2i"):
        assert result["test"][key] > chance + 0.2, (result, chance)
    assert set(result["val"]) == {"map_i2t", "map_t2i", "map_avg"}
