"""Raw inputs end to end: demo pictures and captions -> featurize -> ACMR -> exports whose image_bytes / text
signatures answer as the features path does (to 1e-5), retrievers asked with a caption or a picture (Python, CLI,
the REST rules), and an LDA text featurizer that stays outside the graph.

One tiny run on the 30-item demo (vgg16 at 32 px, 2 epochs) trained in this process.
"""

import base64
import json
import os

import numpy as np
import pytest

from tests.conftest import ROOT, run_in_process
from tf_xmr.featurize import load
from tf_xmr.featurize.config import load_featurize_config
from tf_xmr.featurize.demo import write_demo
from tf_xmr.featurize.pipeline import featurize

pytestmark = pytest.mark.slow

FAST = ["image.backbone=vgg16_avg", "image.image_size=32", "chunk_size=16"]
PRESET = os.path.join(ROOT, "configs", "featurize", "demo.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tf_xmr.commands.train import main

    root = tmp_path_factory.mktemp("raw")
    manifest = write_demo(str(root / "raw"), per_class=5, seed=0)
    features = str(root / "features")
    featurize(manifest, load_featurize_config(PRESET, FAST), features, quiet=True)
    run_dir = str(root / "run")
    sets = [f"run_dir={run_dir}", "data.source=records", f"data.root={features}", "train.epochs=2",
            "train.verbose=0", "train.jit_compile=false", "train.batch_size=8",
            "model.hidden_units={image: [32], text: [16]}", "model.common_dim=8", "model.k=2"]
    assert main(["--config", "configs/acmr.yaml", *[a for s in sets for a in ("--set", s)]]) in (0, None)
    return manifest, features, run_dir


def _test_items(manifest, features):
    from tf_xmr.data.records import load_records
    from tf_xmr.featurize.manifest import read_manifest
    from tf_xmr.retrieval.index import split_arrays

    split = load_records(features).splits["test"]
    rows = {row.id: row for row in read_manifest(manifest).rows}
    ids = split.keys("image", "test")
    arrays = {m: split_arrays(split, m, 6)[0] for m in ("image", "text")}
    return [rows[i] for i in ids], arrays


def test_raw_signatures_equal_the_features_path(trained):
    import tensorflow as tf

    manifest, features, run_dir = trained
    rows, arrays = _test_items(manifest, features)
    for modality, signature, raw in (
        ("image", "image_bytes", [open(row.image, "rb").read() for row in rows]),
        ("text", "text", [row.text.encode() for row in rows]),
    ):
        loaded = tf.saved_model.load(os.path.join(run_dir, "export", f"{modality}_encoder", "1"))
        assert set(loaded.signatures) == {"serving_default", signature}
        via_features = loaded.signatures["serving_default"](features=tf.constant(arrays[modality]))["embedding"]
        via_raw = loaded.signatures[signature](**{signature: tf.constant(raw)})["embedding"]
        np.testing.assert_allclose(via_raw.numpy(), via_features.numpy(), atol=1e-5)
        with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
            loaded.signatures[signature](**{signature: tf.constant([], tf.string)})


def test_retrievers_answer_a_caption_and_a_picture(trained, capsys, monkeypatch):
    import tensorflow as tf

    from tf_xmr.export.serving import rest_predict
    from tf_xmr.retrieval import Retriever, build_retriever

    manifest, features, run_dir = trained
    rows, arrays = _test_items(manifest, features)
    paths = {q: build_retriever(run_dir, target=t, k=5) for q, t in (("text", "image"), ("image", "text"))}
    caption, picture = rows[0].text, rows[1].image
    by_text = Retriever.load(paths["text"]).search(load(features).text([caption]), k=5)[0][0]
    by_image = Retriever.load(paths["image"]).search(load(features).image([picture]), k=5)[0][0]
    # The same answers from the retrievers' raw-input signatures, through TF Serving's REST rules.
    text_signature = tf.saved_model.load(paths["text"]).signatures
    answer = rest_predict(text_signature, json.dumps({"signature_name": "text", "instances": [caption]}))
    assert answer["predictions"][0]["keys"] == list(by_text)
    image_signature = tf.saved_model.load(paths["image"]).signatures
    encoded = base64.b64encode(open(picture, "rb").read()).decode()
    answer = rest_predict(image_signature, json.dumps({"signature_name": "image_bytes",
                                                       "instances": [{"b64": encoded}]}))
    assert answer["predictions"][0]["keys"] == list(by_image)
    # And from the command line.
    result = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query-text", caption,
                            "--k", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["key"] for r in json.loads(result.stdout)["queries"][0]["results"]] == list(by_text)
    result = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query-image", picture,
                            "--k", "5")
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.strip()[:1].isdigit()] == list(by_image)
    np.testing.assert_allclose(load(features).text([caption]), arrays["text"][:1], atol=1e-6)


def test_query_text_needs_a_featurized_run(trained, tmp_path, capsys, monkeypatch):
    from tests.conftest import tiny_overrides
    from tf_xmr.commands.train import main

    run_dir = str(tmp_path / "synthetic")
    overrides = tiny_overrides(run_dir, epochs=1, extra=["train.jit_compile=false"])
    main(["--config", "configs/acmr.yaml", *[a for o in overrides for a in ("--set", o)]])
    from tf_xmr.retrieval import build_retriever

    build_retriever(run_dir, target="image")
    result = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query-text", "a caption")
    assert result.returncode == 2 and "was not trained on data written by python -m tf_xmr.featurize" in result.stderr
    assert "signature" not in json.dumps(json.load(open(os.path.join(
        run_dir, "export", "image_encoder", "1", "assets.extra", "tf_xmr.json"))).get("raw_input", {}))


def test_lda_texts_stay_outside_the_graph(trained, tmp_path):
    from types import SimpleNamespace

    from tf_xmr.featurize.raw import raw_inputs

    manifest, _, _ = trained
    out = str(tmp_path / "lda")
    featurize(manifest, load_featurize_config(PRESET, [*FAST, "text.kind=lda", "text.num_topics=4",
                                                       "text.lda_passes=2"]), out, quiet=True)
    raw = raw_inputs(SimpleNamespace(source="records", root=out))
    assert set(raw) == {"image"} and raw["image"].signature == "image_bytes"
