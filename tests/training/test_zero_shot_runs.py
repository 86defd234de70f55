"""Zero-shot runs end to end (data.unseen_classes): the split is seeded and recorded, training and validation never
see an unseen class, and the test split's three zero-shot protocols (with their random-ranking reference) land in
metrics.json and are reproduced by evaluate.py from the exported encoders."""

import json

import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_overrides
from tf_xmr import modeling
from tf_xmr.data.class_split import resolve_unseen_classes
from tf_xmr.experiment import load_experiment
from tf_xmr.metrics import RetrievalProtocol
from tf_xmr.metrics.zero_shot import seen_unseen_masks, zero_shot_report
from tf_xmr.scoring import embed_split
from tf_xmr.training.pipeline import train

# A JFSE run at the size of tests/methods/test_jfse.py's end-to-end test, without its export (the metrics compared
# here are scored before the export; exporting JFSE's encoders is checked there and in test_contract.py).
JFSE_TINY = [
    "export.enabled=false",
    "train.epochs=1", "train.verbose=0", "train.batch_size=32", "train.jit_compile=false", "train.backup=false",
    "eval.extra_presets=[]", "data.synthetic.dims={image: 24, text: 12}", "data.synthetic.num_train=200",
    "data.synthetic.num_test=80", "data.synthetic.num_classes=4", "data.synthetic.class_embedding_dim=6",
    "model.noise_dim=4", "model.generator_hidden=16", "model.critic_hidden=16", "model.regressor_hidden=[16]",
    "model.discriminator_hidden=[8]", "model.n_critic=2", "model.unseen_per_step=8",
]


@pytest.fixture(scope="module")
def acmr_zero_shot_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("zs") / "acmr"
    config = load_experiment("configs/acmr.yaml", tiny_overrides(
        run_dir, epochs=2, extra=["data.unseen_classes=0.5", "seed=3", "train.jit_compile=false"]))
    # The feature set train() loads for this config (load_data is deterministic in the config and seed).
    seen_by_training = []
    feature_set = modeling.load_data(config)
    for split in ("train", "val"):
        seen_by_training.append(np.asarray(feature_set.splits[split].labels["image"]))
    result = train(config)
    return config, feature_set, seen_by_training, result


def test_the_seeded_split_is_recorded_and_training_sees_seen_classes_only(acmr_zero_shot_run):
    config, feature_set, seen_by_training, result = acmr_zero_shot_run
    unseen = resolve_unseen_classes(feature_set.class_names, 0.5, seed=3)
    with open(f"{result.run_dir}/metrics.json", encoding="utf-8") as handle:
        report = json.load(handle)["zero_shot"]
    assert report["unseen_classes"] == list(unseen) and len(unseen) == 2
    assert report["unseen_class_names"] == [feature_set.class_names[k] for k in unseen]
    for labels in seen_by_training:  # train and validation: no item of an unseen class
        hot = labels if labels.ndim == 2 else np.eye(feature_set.num_classes)[labels]
        assert not hot[:, list(unseen)].any()
    test_labels = np.asarray(feature_set.splits["test"].labels["image"])
    test_hot = test_labels if test_labels.ndim == 2 else np.eye(feature_set.num_classes)[test_labels]
    assert test_hot[:, list(unseen)].any()  # the test split stays whole


def test_metrics_hold_the_three_protocols_computed_from_the_chosen_checkpoint(acmr_zero_shot_run):
    config, feature_set, _, result = acmr_zero_shot_run
    report = result.metrics["zero_shot"]
    # Recompute from the exported encoders (which are the chosen checkpoint) with the metric functions directly.
    from tf_xmr.export import load_exported

    encoders = {m: load_exported(result.run_dir, m) for m in feature_set.modalities}
    embeddings, labels = embed_split(feature_set.splits["test"], encoders, batch_size=64,
                                     num_classes=feature_set.num_classes)
    expected = zero_shot_report(embeddings, labels, report["unseen_classes"], RetrievalProtocol("cosine"),
                                feature_set.modalities)
    for block in ("standard", "zero_shot"):
        for key, value in expected[block].items():
            assert report[block][key] == pytest.approx(value, abs=1e-5)
    assert report["generalized"]["harmonic"]["map_avg"] == pytest.approx(
        expected["generalized"]["harmonic"]["map_avg"], abs=1e-5)
    # The random reference is a chance level of the same items: near the share of relevant targets, and not the
    # model's number.
    chance = report["random_ranking"]["zero_shot"]["map_avg"]
    _, unseen_mask = seen_unseen_masks(labels["text"], report["unseen_classes"], feature_set.num_classes)
    assert 0.3 < chance < 0.8  # 2 unseen classes of similar size: a random ranking's AP is about 1/2
    assert unseen_mask.sum() > 0 and report["random_ranking"]["standard"]["map_avg"] != report["standard"]["map_avg"]


def test_evaluate_reproduces_the_zero_shot_block(acmr_zero_shot_run, capsys, monkeypatch):
    # evaluate.py's main() in this process; its run in a fresh process is tests/training/test_train_cli.py's.
    _, _, _, result = acmr_zero_shot_run
    done = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", result.run_dir, "--json")
    assert done.returncode == 0, done.stderr
    rescored = json.loads(done.stdout)["zero_shot"]
    for block in ("standard", "zero_shot"):
        assert rescored[block]["map_avg"] == pytest.approx(result.metrics["zero_shot"][block]["map_avg"], abs=1e-5)
    assert rescored["random_ranking"] == result.metrics["zero_shot"]["random_ranking"]
    table = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", result.run_dir)
    assert table.returncode == 0 and "zero-shot (unseen)" in table.stdout and "GZS harmonic mean" in table.stdout


@pytest.mark.slow
def test_jfse_zero_shot_config_trains_with_and_without_synthesis(tmp_path):
    with_synthesis = train(load_experiment("configs/jfse_zero_shot.yaml",
                                                   [*JFSE_TINY, f"run_dir={tmp_path / 'with'}"]))
    without = train(load_experiment("configs/jfse_zero_shot.yaml",
                                            [*JFSE_TINY, f"run_dir={tmp_path / 'without'}",
                                             "model.synthesize_unseen=false"]))
    # Same seed -> same split for both; only the synthesis differs, and it changes what the regressors learn.
    assert with_synthesis.metrics["zero_shot"]["unseen_classes"] == without.metrics["zero_shot"]["unseen_classes"]
    assert with_synthesis.metrics["zero_shot"]["random_ranking"] == without.metrics["zero_shot"]["random_ranking"]
    assert with_synthesis.metrics["zero_shot"]["zero_shot"] != without.metrics["zero_shot"]["zero_shot"]
    with open(f"{with_synthesis.run_dir}/config.yaml", encoding="utf-8") as handle:
        assert "unseen_classes: 0.5" in handle.read()
