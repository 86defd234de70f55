"""The featurize command: manifest -> records with ids and fitted featurizers; resuming after an interruption; bad
images; the featurizers for queries. The demo dataset (30 items, 32 x 32 pictures with a small random backbone, so
each featurization takes seconds) is the raw input throughout."""

import json
import os

import numpy as np
import pytest

from tests.conftest import ROOT, run_in_process
from tf_xmr.errors import DataError
from tf_xmr.featurize import load
from tf_xmr.featurize.config import load_featurize_config
from tf_xmr.featurize.demo import write_demo
from tf_xmr.featurize.pipeline import featurize

# The demo preset with a backbone small enough for tests (vgg16 at 32 px: 512-d features of 0.1-1 that differ between
# pictures; random mobilenets give features near 1e-11, which would make every comparison pass).
FAST = ["image.backbone=vgg16_avg", "image.image_size=32", "chunk_size=8"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return write_demo(str(root / "raw"), per_class=5, seed=0)


def _config(*extra):
    return load_featurize_config(os.path.join(ROOT, "configs", "featurize", "demo.yaml"), [*FAST, *extra])


@pytest.fixture(scope="module")
def featurized(demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("features") / "out")
    return out, featurize(demo, _config(), out, quiet=True)


def _arrays(root):
    from tf_xmr.data.records import load_records
    from tf_xmr.retrieval.index import split_arrays

    feature_set = load_records(root)
    return feature_set, {(name, m): split_arrays(split, m, feature_set.num_classes)[0]
                         for name, split in feature_set.splits.items() for m in feature_set.modalities}


def test_records_hold_every_item_with_its_id_and_label(demo, featurized):
    out, report = featurized
    feature_set, arrays = _arrays(out)
    assert feature_set.modalities == ("image", "text") and feature_set.num_classes == 6
    assert report["paired"] and sum(c["image"] for c in report["counts"].values()) == 30
    ids = {name: split.keys("image", name) for name, split in feature_set.splits.items()}
    assert sorted(np.concatenate(list(ids.values()))) == sorted(f"{c}-{i:03d}" for c in (
        "afghanistan", "courts", "cricket", "economy", "middle_east", "police") for i in range(5))
    for name, split in feature_set.splits.items():
        np.testing.assert_array_equal(split.keys("text", name), ids[name])  # paired: one id per item
        assert np.isfinite(arrays[name, "image"]).all() and arrays[name, "image"].shape[1] == 512
    assert set(os.listdir(os.path.join(out, "featurizers"))) == {"featurize.yaml", "image.json", "text"}
    assert not os.path.exists(out + ".partial")


def test_text_featurizer_is_fitted_on_train_captions_only(demo, featurized):
    from tf_xmr.featurize.manifest import read_manifest
    from tf_xmr.featurize.text import TextFeaturizer

    out, _ = featurized
    feature_set, arrays = _arrays(out)
    rows = {row.id: row for row in read_manifest(demo).rows}
    train_texts = [rows[i].text for i in feature_set.splits["train"].keys("text", "train")]
    refit = TextFeaturizer.fit(_config().text, train_texts)
    saved = load(out).text_featurizer
    assert saved.describe() == refit.describe()
    test_texts = [rows[i].text for i in feature_set.splits["test"].keys("text", "test")]
    np.testing.assert_allclose(refit.transform(test_texts), arrays["test", "text"], atol=1e-6)
    # featurize.load(DIR) featurizes new queries exactly as the dataset's items were.
    np.testing.assert_allclose(load(out).text(test_texts), arrays["test", "text"], atol=1e-6)
    images = [rows[i].image for i in feature_set.splits["test"].keys("image", "test")]
    np.testing.assert_allclose(load(out).image(images), arrays["test", "image"], atol=1e-5)


def test_an_interrupted_run_continues_where_it_stopped(demo, featurized, tmp_path, monkeypatch):
    from tf_xmr.featurize.image import ImageFeaturizer

    out = str(tmp_path / "out")
    real, calls = ImageFeaturizer.features_from_paths, []

    def interrupted(self, paths, **kwargs):
        calls.append(len(paths))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C during the third chunk
        return real(self, paths, **kwargs)

    monkeypatch.setattr(ImageFeaturizer, "features_from_paths", interrupted)
    with pytest.raises(KeyboardInterrupt):
        featurize(demo, _config(), out, quiet=True)
    assert not os.path.exists(out)
    assert sorted(n for n in os.listdir(out + ".partial") if n.startswith("image-")) == ["image-000000.npz",
                                                                                        "image-000001.npz"]
    calls.clear()
    featurize(demo, _config(), out, quiet=True)
    assert calls == [8, 6]  # only chunks 3 and 4 of 30 items by 8 were computed again
    _, resumed = _arrays(out)
    _, whole = _arrays(featurized[0])
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key])
    # A partial run of another config is not mixed into this one.
    monkeypatch.setattr(ImageFeaturizer, "features_from_paths", real)
    os.makedirs(str(tmp_path / "other.partial"))
    with open(str(tmp_path / "other.partial" / "fingerprint"), "w") as handle:
        handle.write("0" * 64 + "\n")
    with pytest.raises(DataError, match="partial run of another manifest or config"):
        featurize(demo, _config(), str(tmp_path / "other"), quiet=True)


def test_an_unreadable_image_names_file_and_line_or_is_skipped(demo, tmp_path, capsys, monkeypatch):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(os.path.dirname(demo), raw)
    (raw / "images" / "cricket-002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_in_process(capsys, monkeypatch, "featurize", "--manifest", str(raw / "manifest.csv"), "--config",
                            "configs/featurize/demo.yaml", "--out", str(tmp_path / "out"), "--quiet",
                            *[a for s in FAST for a in ("--set", s)])
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and "manifest.csv line 9 (id 'cricket-002')" in line[0] and "cricket-002.png" in line[0]
    assert "--skip-bad" in line[0] and not os.path.exists(tmp_path / "out")
    report = featurize(str(raw / "manifest.csv"), _config(), str(tmp_path / "out"), skip_bad=True, quiet=True)
    assert [(s["id"], s["line"]) for s in report["skipped"]] == [("cricket-002", 9)]
    feature_set, _ = _arrays(str(tmp_path / "out"))
    kept = np.concatenate([s.keys("text", n) for n, s in feature_set.splits.items()])
    assert len(kept) == 29 and "cricket-002" not in kept  # paired: its caption goes too
    with open(tmp_path / "out" / "report.json") as handle:
        assert json.load(handle)["skipped"][0]["reason"]


def test_config_mistakes_fail_before_any_work(demo, tmp_path, capsys, monkeypatch):
    args = ["--manifest", demo, "--config", "configs/featurize/demo.yaml", "--out", str(tmp_path / "o")]
    typo = run_in_process(capsys, monkeypatch, "featurize", *args, "--set", "text.kind=tfidff")
    assert typo.returncode == 2 and "text.kind" in typo.stderr and "tfidf" in typo.stderr
    os.makedirs(tmp_path / "o")
    (tmp_path / "o" / "x").write_text("taken")
    taken = run_in_process(capsys, monkeypatch, "featurize", *args)
    assert taken.returncode == 2 and "exists and is not an empty folder" in taken.stderr


def test_every_preset_loads_strictly():
    names = sorted(os.listdir(os.path.join(ROOT, "configs", "featurize")))
    assert {"demo.yaml", "vgg19_tfidf.yaml", "vgg19_lda.yaml", "resnet50_doc2vec.yaml"} <= set(names)
    for name in names:
        config = load_featurize_config(os.path.join(ROOT, "configs", "featurize", name))
        assert config.image is not None and config.text is not None, name
