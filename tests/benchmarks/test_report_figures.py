"""The report figures: complete images of the requested size, PCA checked against an independent eigendecomposition,
inputs refused (naming the culprit) before anything is written, and no partial file left behind on failure."""

import os
import stat

import numpy as np
import pytest

from benchmarks import report_figures as rf
from tf_xmr.metrics import precision_recall_curve, precision_scope_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return matplotlib.image.imread(path)


def _assert_png(path, width_in, height_in, dpi=rf.DPI):
    image = _read_png(path)
    assert image.shape[:2] == (round(height_in * dpi), round(width_in * dpi))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    # Only the image in its folder: the temporary file was renamed, not copied.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _curves():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=24)
    centres = rng.normal(size=(3, 8))
    image = centres[labels] + 0.8 * rng.normal(size=(24, 8))
    text = centres[labels] + 0.8 * rng.normal(size=(24, 8))
    out = {}
    for name, query in (("ACMR", image), ("random", rng.normal(size=(24, 8)))):
        out[name] = {"pr": precision_recall_curve(query, text, labels, labels),
                     "pk": precision_scope_curve(query, text, labels, labels, [1, 5, 10, 20])}
    out["CCA"] = {"pr": ([0.0, 0.5, 1.0], [0.8, 0.5, 0.3])}  # a method with one curve only
    return out


def _traces():
    epochs = list(range(1, 11))
    test = [0.30, 0.35, 0.40, 0.44, 0.47, 0.46, 0.48, 0.45, 0.44, 0.43]
    return {
        # Validation every other epoch: None in between. Chosen epoch 5, best test at epoch 7.
        "ACMR": {"epochs": epochs, "val": [None, 0.36, None, 0.42, 0.45, None, 0.44, None, 0.43, None], "test": test,
                 "chosen_epoch": 5, "best_test_epoch": 7},
        # The chosen epoch is also the best on test: no dotted line.
        "SDML": {"epochs": epochs, "val": [0.2 + 0.02 * e for e in epochs], "test": test, "chosen_epoch": 7,
                 "best_test_epoch": 7, "note": "selected on validation loss"},
        # best_test_epoch omitted: taken as the epoch of highest test mAP.
        "JFSE": {"epochs": epochs, "val": [0.3] * 10, "test": test, "chosen_epoch": 3},
        "DA-GAN": {"epochs": [1, 2], "val": [None, None], "test": [0.1, 0.2], "chosen_epoch": 2},
    }


def _space(n=(30, 25), d=6, classes=10):
    rng = np.random.default_rng(1)
    embeddings = {"image": rng.normal(size=(n[0], d)), "text": 3.0 * rng.normal(size=(n[1], d))}
    labels = {"image": rng.integers(0, classes, n[0]), "text": rng.integers(0, classes, n[1])}
    return embeddings, labels, [f"class {i}" for i in range(classes)]


# ---------------------------------------------------------------------------------------------------------- images
def test_curves_figure_writes_png_of_the_requested_size(tmp_path):
    path = tmp_path / "fig" / "i2t.png"
    assert rf.curves_figure(_curves(), "image → text (i2t), Wikipedia test split", path) == path
    _assert_png(path, rf.WIDTH, 4.2)
    small = tmp_path / "small" / "i2t.png"
    rf.curves_figure(_curves(), "i2t", small, figsize=(6, 3), dpi=50)
    _assert_png(small, 6, 3, dpi=50)


def test_epoch_figure_copes_with_missing_validation_and_chosen_equal_best(tmp_path):
    path = tmp_path / "epochs.png"
    assert rf.epoch_figure(_traces(), path, title="Wikipedia") == path
    # 4 methods in rows of 3: two rows.
    _assert_png(path, rf.WIDTH, 2.8 * 2 + 0.7)
    one = tmp_path / "one" / "epochs.png"
    rf.epoch_figure({"ACMR": _traces()["ACMR"]}, one, figsize=(5, 3), dpi=40)
    _assert_png(one, 5, 3, dpi=40)


def test_epoch_figure_draws_an_honest_level_when_no_single_epoch_was_chosen(tmp_path):
    # SDML: each network at its own epoch, so the reported number is given, not read off the curve.
    trace = {**_traces()["SDML"], "chosen_epoch": None, "honest_test": 0.41}
    path = tmp_path / "epochs.png"
    assert rf.epoch_figure({"SDML": trace}, path, figsize=(5, 3), dpi=40) == path
    _assert_png(path, 5, 3, dpi=40)
    with pytest.raises(ValueError, match="honest_test"):
        rf.epoch_figure({"SDML": {**trace, "honest_test": None}}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_space_figure_and_method_bars_write_pngs(tmp_path):
    embeddings, labels, names = _space()
    space = tmp_path / "space" / "space.png"
    assert rf.space_figure(embeddings, labels, names, space) == space
    _assert_png(space, rf.WIDTH, 7.0)
    raw = tmp_path / "raw" / "space.png"
    rf.space_figure(embeddings, labels, names, raw, normalize=False, title="raw", figsize=(4, 4), dpi=60)
    _assert_png(raw, 4, 4, dpi=60)

    rows = {"ACMR": {"honest": (0.48, 0.01), "test_selected": (0.50, 0.012)},
            "SDML": {"honest": (0.45, None), "test_selected": (0.46, 0.0)},
            "MLP": {"honest": (0.40, 0.005), "test_selected": None},
            "random": {"honest": (0.12, 0.0)}}
    bars = tmp_path / "bars" / "bars.png"
    assert rf.method_bar_figure(rows, bars, title="Wikipedia") == bars
    _assert_png(bars, rf.WIDTH, 0.55 * 4 + 1.3)


def test_space_figure_fits_pca_on_stacked_normalised_rows(tmp_path, monkeypatch):
    seen = []
    real = rf.pca_2d
    monkeypatch.setattr(rf, "pca_2d", lambda x: seen.append(np.array(x)) or real(x))
    embeddings, labels, names = _space()
    rf.space_figure(embeddings, labels, names, tmp_path / "a.png")
    rf.space_figure(embeddings, labels, names, tmp_path / "b.png", normalize=False)
    normalised, raw = seen
    stacked = np.concatenate([embeddings["image"], embeddings["text"]])
    np.testing.assert_allclose(raw, stacked)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0)
    np.testing.assert_allclose(normalised * np.linalg.norm(stacked, axis=1, keepdims=True), stacked)


def test_no_figure_is_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rf.curves_figure(_curves(), "i2t", tmp_path / "c.png")
    rf.epoch_figure(_traces(), tmp_path / "e.png")
    assert plt.get_fignums() == before


# ------------------------------------------------------------------------------------------------------------- PCA
def test_pca_2d_recovers_two_known_orthogonal_directions():
    rng = np.random.default_rng(2)
    n, d = 200, 7
    u, _ = np.linalg.qr(rng.normal(size=(d, 2)))  # two orthonormal directions in R^7
    a, b = rng.normal(size=n), rng.normal(size=n)
    a -= a.mean()
    b -= b.mean()
    b -= (a @ b) / (a @ a) * a  # exactly uncorrelated with a
    a *= 3.0 / a.std()
    b *= 1.0 / b.std()  # variances exactly 9 and 1
    x = 5.0 + np.outer(a, u[:, 0]) + np.outer(b, u[:, 1])
    coords, ratio = rf.pca_2d(x)
    np.testing.assert_allclose(ratio, [0.9, 0.1], atol=1e-12)
    # Coordinates are the known scores up to the sign of each axis.
    for j, score in enumerate((a, b)):
        sign = np.sign(coords[:, j] @ score)
        np.testing.assert_allclose(sign * coords[:, j], score, atol=1e-9)


def test_pca_2d_matches_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) @ np.diag([4.0, 2.5, 1.0, 0.5, 0.2]) + rng.normal(size=5)
    coords, ratio = rf.pca_2d(x)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))  # ascending
    top = vectors[:, ::-1][:, :2]
    expected = centred @ top
    for j in range(2):
        sign = np.sign(coords[:, j] @ expected[:, j])
        np.testing.assert_allclose(sign * coords[:, j], expected[:, j], atol=1e-9)
    np.testing.assert_allclose(ratio, values[::-1][:2] / values.sum(), rtol=1e-10)
    # Centred, orthogonal columns, variance along each = its eigenvalue.
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-12)
    gram = coords.T @ coords / (len(x) - 1)
    np.testing.assert_allclose(gram, np.diag(values[::-1][:2]), atol=1e-9)
    # Deterministic signs: a translated copy gives the same picture, a mirrored copy the mirrored one.
    np.testing.assert_allclose(rf.pca_2d(x + 10.0)[0], coords, atol=1e-9)
    np.testing.assert_allclose(rf.pca_2d(-x)[0], -coords, atol=1e-9)


@pytest.mark.parametrize("x", [np.ones((1, 3)), np.ones((4, 1)), np.ones((4, 3)), np.full((3, 3), np.nan),
                               np.zeros(5)])
def test_pca_2d_refuses_degenerate_input(x):
    with pytest.raises(ValueError, match="pca_2d"):
        rf.pca_2d(x)


# ---------------------------------------------------------------------------------------------------------- errors
def test_empty_inputs_are_refused_by_name(tmp_path):
    embeddings, labels, names = _space()
    cases = [
        (lambda p: rf.curves_figure({}, "i2t", p), "curves"),
        (lambda p: rf.epoch_figure({}, p), "traces"),
        (lambda p: rf.space_figure({}, {}, names, p), "embeddings"),
        (lambda p: rf.space_figure(embeddings, labels, [], p), "class_names"),
        (lambda p: rf.method_bar_figure({}, p), "rows"),
    ]
    for draw, name in cases:
        with pytest.raises(ValueError, match=f"^{name} is empty"):
            draw(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def _bad_curves():
    curves = _curves()
    curves["ACMR"]["pk"] = ([1, 5, 10], [0.9, 0.8])
    return curves


def _bad_traces(**change):
    traces = _traces()
    traces["JFSE"] = {**traces["JFSE"], **change}
    return traces


def _bad_space(kind):
    embeddings, labels, names = _space()
    if kind == "length":
        labels["text"] = labels["text"][:-1]
    elif kind == "modalities":
        labels = {"image": labels["image"], "audio": labels["text"]}
    elif kind == "range":
        labels["image"] = labels["image"].copy()
        labels["image"][0] = len(names)
    elif kind == "dim":
        embeddings["text"] = embeddings["text"][:, :3]
    return embeddings, labels, names


@pytest.mark.parametrize("draw, message", [
    (lambda p: rf.curves_figure(_bad_curves(), "i2t", p), r"curves\['ACMR'\]\['pk'\] has 3 x values but 2 y"),
    (lambda p: rf.curves_figure({"ACMR": {"scope": ([1], [1])}}, "i2t", p), r"curves\['ACMR'\]"),
    (lambda p: rf.curves_figure({"ACMR": {"pr": ([0, 1], [1, np.nan])}}, "i2t", p), "NaN"),
    (lambda p: rf.epoch_figure(_bad_traces(test=[0.1] * 9), p), r"traces\['JFSE'\]\['test'\] has 9 values"),
    (lambda p: rf.epoch_figure(_bad_traces(val=[0.1] * 11), p), r"traces\['JFSE'\]\['val'\] has 11 values"),
    (lambda p: rf.epoch_figure(_bad_traces(chosen_epoch=42), p), r"traces\['JFSE'\]\['chosen_epoch'\] = 42"),
    (lambda p: rf.epoch_figure(_bad_traces(best_test_epoch=0), p), r"traces\['JFSE'\]\['best_test_epoch'\] = 0"),
    (lambda p: rf.epoch_figure({"JFSE": {"epochs": [1], "val": [1]}}, p), r"traces\['JFSE'\] lacks test"),
    (lambda p: rf.space_figure(*_bad_space("length"), p), r"labels\['text'\]"),
    (lambda p: rf.space_figure(*_bad_space("modalities"), p), "audio"),
    (lambda p: rf.space_figure(*_bad_space("range"), p), r"labels\['image'\] must be integer class ids in \[0, 10\)"),
    (lambda p: rf.space_figure(*_bad_space("dim"), p), "dimension"),
    (lambda p: rf.method_bar_figure({"ACMR": {"honest": (0.5, -1.0)}}, p), r"rows\['ACMR'\]\['honest'\]"),
    (lambda p: rf.method_bar_figure({"ACMR": {"test_selected": (0.5, 0.1)}}, p), r"rows\['ACMR'\]"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, draw, message):
    path = tmp_path / "figure.png"
    path.write_bytes(b"previous figure")
    with pytest.raises(ValueError, match=message):
        draw(path)
    # The previous image is untouched and nothing else appeared.
    assert path.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_unknown_image_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown image format \.xyz"):
        rf.curves_figure(_curves(), "i2t", tmp_path / "curves.xyz")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, f, **kwargs):
        f.write(b"\x89PNG partial")
        raise OSError("disk full")

    path = tmp_path / "curves.png"
    path.write_bytes(b"previous figure")
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        rf.curves_figure(_curves(), "i2t", path)
    assert path.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
