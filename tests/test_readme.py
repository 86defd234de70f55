"""Every command in README.md is run here (or, for install/test, is exactly what .ci/run runs).

The README is parsed, not copied: a new command added to the README without being exercised fails
``test_every_readme_command_is_exercised``, and so does a ```python block no test runs. Placeholders are substituted
with real paths: ``saved_models/acmr-<timestamp>`` with the run directory the main command printed,
``/tmp/acmr-records``, ``my-records`` and ``curves.png`` with temporary paths.

Each test asserts what its command promises (files written, keys present, and for training commands a test score
above the random-ranking level of the same data, computed here from random embeddings), not just the exit status.
Except the main command, which runs as written, long commands run with ``--set`` overrides (or a script's own options)
appended: fewer epochs, items or seeds, smaller networks, and XLA off where another README command keeps it on for the
same method. Each says what it was measured to give, and the README's own numbers come from the full runs.
Commands run in subprocesses as a user would run them (marked ``e2e``); those that train or take minutes are ``slow``
and stay out of the daily tier. No test has a wall-clock timeout: a busy machine makes them slower, never red.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.conftest import ROOT, glove_or_skip, run_cli, wikipedia_root_or_skip

README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
RUN_PLACEHOLDER = "saved_models/acmr-<timestamp>"

e2e_slow = [pytest.mark.e2e, pytest.mark.slow]


def _readme_text() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def readme_commands() -> list[str]:
    """Lines of the README's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", _readme_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def readme_python(marker: str) -> str:
    """The README's one ```python block that contains ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", _readme_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"expected one README python block containing {marker!r}, found {len(blocks)}"
    return blocks[0]


# Which test runs each ```python block of the README (found by a line only that block has).
PYTHON_BLOCKS = {
    "tf.saved_model.load": "test_python_api_snippet_searches_like_the_run_scored",
    "Retriever.load": "test_retrieval_and_tf_serving_commands",
    "write_records(FeatureSet(": "test_unpaired_records_snippet_and_sdml_command",
}


def random_ranking_map(config_path: str, overrides=(), draws: int = 5) -> float:
    """mAP avg of random embeddings on the test split a config loads: the chance level a trained model must beat.

    Random Gaussian embeddings rank the database in a random order for every query, so their mAP is the score of
    no learning on exactly these labels (class balance, split sizes, directions). The best of ``draws`` draws is
    returned, so a model that only matches chance cannot pass by luck.
    """
    from tf_xmr.data.from_config import load_feature_set
    from tf_xmr.experiment import load_experiment
    from tf_xmr.metrics import mean_average_precision

    config = load_experiment(config_path, list(overrides))
    feature_set = load_feature_set(config.data, seed=config.seed)
    from tf_xmr.retrieval.index import split_arrays

    test, modalities = feature_set.splits["test"], feature_set.modalities
    labels = {m: split_arrays(test, m, feature_set.num_classes)[1] for m in modalities}  # records are streamed
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(draws):
        embeddings = {m: rng.normal(size=(test.num_examples(m), 32)) for m in modalities}
        maps = [mean_average_precision(embeddings[q], embeddings[t], labels[q], labels[t])
                for q in modalities for t in modalities if q != t]
        best = max(best, float(np.mean(maps)))
    return best


def assert_beats_random(run_dir: str, config_path: str | None = None, overrides=()) -> dict:
    """The run's test ``map_avg`` is above the random-ranking level of its own test split; returns its metrics.

    Args:
        run_dir: a finished run directory.
        config_path: the config that loads the same data, when the run's own ``config.yaml`` cannot hold the labels
            in memory (records); default the run's ``config.yaml``.
        overrides: ``--set`` overrides for ``config_path``.
    """
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    chance = random_ranking_map(config_path or os.path.join(run_dir, "config.yaml"), overrides)
    assert metrics["test"]["map_avg"] > chance, (metrics["test"], f"random ranking {chance:.4f}")
    return metrics


def _ci_script() -> str:
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        return handle.read()


# Commands run by CI itself rather than by this file: the README's install line and its full test command.
INSTALL = ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt -r requirements-extra.txt "
           "&& pip install --no-deps -e .")
FULL_SUITE = "python -m pytest -q -n 3 --dist worksteal tests"
DAILY_TIER = 'python -m pytest -q -m "not slow" -n 3 --dist worksteal tests'
CI_COMMANDS = {INSTALL, FULL_SUITE}


def test_install_and_test_commands_are_what_ci_runs():
    script = _ci_script()
    for command in CI_COMMANDS:
        assert command in readme_commands(), command
        assert command in script, f".ci/run does not run the README command {command!r}"


@pytest.fixture(scope="module")
def main_run():
    """The README's main command, verbatim, on the built-in synthetic benchmark."""
    command = "python train.py --config configs/acmr.yaml"
    assert command in readme_commands()
    result = run_cli(*shlex.split(command)[1:], timeout=None)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^run directory: (.+)$", result.stdout, flags=re.M)
    assert match, result.stdout[-2000:]
    run_dir = match.group(1).strip()
    yield run_dir, result.stdout
    import shutil

    shutil.rmtree(os.path.join(ROOT, run_dir), ignore_errors=True)


# Which test runs each README command (a command claimed here must be run by that test).
COVERED = {
    **{c: "test_install_and_test_commands_are_what_ci_runs" for c in CI_COMMANDS},
    DAILY_TIER: "test_daily_tier_command_leaves_out_exactly_the_slow_tests",
    "python -m tf_xmr.config.reference --write": "test_config_reference_command_rewrites_the_readme_block",
    "python train.py --config configs/sdml.yaml --set data.source=records --set data.root=my-records":
        "test_unpaired_records_snippet_and_sdml_command",
    "python train.py --config configs/acmr.yaml": "test_main_command_trains_a_useful_model",
    "python train.py --config configs/wikipedia/acmr.yaml --set data.root=../shared/data/wikipedia":
        "test_wikipedia_command",
    "python evaluate.py --run-dir saved_models/acmr-<timestamp>": "test_evaluate_export_and_serving_commands",
    "python evaluate.py --run-dir saved_models/acmr-<timestamp> --preset acmr_demo --json":
        "test_evaluate_export_and_serving_commands",
    "python evaluate.py --run-dir saved_models/acmr-<timestamp> --set eval.k=50 --plot curves.png":
        "test_evaluate_export_and_serving_commands",
    "python -m tf_xmr.export --run-dir saved_models/acmr-<timestamp>": "test_evaluate_export_and_serving_commands",
    "saved_model_cli show --dir saved_models/acmr-<timestamp>/export/image_encoder/1 --all":
        "test_evaluate_export_and_serving_commands",
    "tensorboard --logdir saved_models --host 127.0.0.1": "test_tensorboard_command_serves_the_run",
    **{c: "test_featurize_demo_commands" for c in (
        "python -m tf_xmr.featurize.demo --out demo-data",
        "python -m tf_xmr.featurize --manifest demo-data/manifest.csv --config configs/featurize/demo.yaml "
        "--out demo-data/features",
        "python train.py --config configs/acmr.yaml --set data.source=records --set data.root=demo-data/features "
        "--set run_dir=saved_models/demo-acmr",
        "python -m tf_xmr.retrieval build --run-dir saved_models/demo-acmr --target image",
        'python retrieve.py --run-dir saved_models/demo-acmr --query-text "The bowler and the batsman joined the '
        'cricket squad"',
        "curl -s -d '{\"signature_name\": \"text\", \"instances\": [\"The bowler and the batsman joined the "
        "cricket squad\"]}' http://localhost:8501/v1/models/text2image_retriever:predict",
    )},
    **{c: "test_retrieval_and_tf_serving_commands" for c in (
        "python -m tf_xmr.retrieval build --run-dir saved_models/acmr-<timestamp> --target image",
        "python -m tf_xmr.retrieval build --run-dir saved_models/acmr-<timestamp> --target text --gallery all --k 20",
        "python retrieve.py --run-dir saved_models/acmr-<timestamp> --query text --query-key test/0",
        "python retrieve.py --run-dir saved_models/acmr-<timestamp> --query image --features queries.npy --k 5 --json",
        "python -m tf_xmr.retrieval build --run-dir saved_models/acmr-<timestamp> --target image "
        "--gallery-features my_images.npz --keys my_images.txt",
        "python -m tf_xmr.retrieval build --run-dir saved_models/acmr-<timestamp> --target image "
        "--append new_images.npz --keys new_images.txt",
        "tensorflow_model_server --port=8500 --rest_api_port=8501 "
        "--model_config_file=saved_models/acmr-<timestamp>/export/models.config",
        "curl -s -d @request.json http://localhost:8501/v1/models/text2image_retriever:predict",
    )},
    "python -m tf_xmr.data convert --config configs/acmr.yaml --out /tmp/acmr-records": "test_records_commands",
    "python train.py --config configs/acmr.yaml --set data.source=records --set data.root=/tmp/acmr-records "
    "--set train.epochs=3": "test_records_commands",
    "python benchmarks/map_speed.py --quick": "test_benchmark_commands",
    "python benchmarks/seeds.py --config configs/wikipedia/acmr.yaml --seeds 0 1 2 "
    "--set data.root=../shared/data/wikipedia": "test_wikipedia_result_commands",
    "python benchmarks/synthetic_baseline.py --wikipedia ../shared/data/wikipedia": "test_wikipedia_result_commands",
    "python benchmarks/synthetic_baseline.py": "test_benchmark_commands",
    "python benchmarks/report.py --data-root ../shared/data/wikipedia --seeds 0 1 2 --readme README.md":
        "test_report_commands",
    "python benchmarks/report.py --data synthetic --seeds 0 1 2 --readme README.md": "test_report_commands",
    "python train.py --config configs/x_gacmn.yaml": "test_x_gacmn_headline_command",
    "python train.py --config configs/wikipedia/x_gacmn.yaml --set data.root=../shared/data/wikipedia":
        "test_method_wikipedia_commands",
    "python benchmarks/x_gacmn_ablation.py --seeds 0 1 2 --data-root ../shared/data/wikipedia":
        "test_method_benchmark_commands",
    "python train.py --config configs/jfse.yaml": "test_method_synthetic_commands",
    "python train.py --config configs/wikipedia/jfse.yaml --set data.root=../shared/data/wikipedia":
        "test_method_wikipedia_commands",
    "python benchmarks/jfse_alignment.py --config configs/wikipedia/jfse.yaml --seeds 0 "
    "--set data.root=../shared/data/wikipedia": "test_method_benchmark_commands",
    "python train.py --config configs/jfse_zero_shot.yaml": "test_zero_shot_commands",
    "python train.py --config configs/wikipedia/jfse_zero_shot.yaml --set data.root=../shared/data/wikipedia":
        "test_zero_shot_commands",
    "python train.py --config configs/wikipedia/acmr.yaml --set data.root=../shared/data/wikipedia "
    "--set data.unseen_classes=0.5": "test_zero_shot_commands",
    "python benchmarks/zero_shot.py --data wikipedia --seeds 0 1 2 --set data.root=../shared/data/wikipedia":
        "test_zero_shot_commands",
    "python benchmarks/jfse_unseen_synthesis.py --run-dir saved_models/zero-shot-wikipedia-<stamp>/jfse-seed0":
        "test_zero_shot_commands",
    "python tune.py --config configs/tune/acmr.yaml": "test_tune_commands",
    "python tune.py --config configs/tune/wikipedia_acmr.yaml --set data.root=../shared/data/wikipedia":
        "test_tune_commands",
    "python tune.py --config configs/tune/wikipedia_x_gacmn.yaml --set data.root=../shared/data/wikipedia":
        "test_tune_commands",
    "python train.py --config configs/acmr.yaml --set train.distribution=mirrored": "test_distribution_commands",
    "python train.py --config configs/acmr.yaml --set train.distribution=multi_worker "
    "--set run_dir=runs/acmr-2machines": "test_distribution_commands",
    "python train.py --config configs/da_gan.yaml": "test_method_synthetic_commands",
    "python benchmarks/seeds.py --config configs/wikipedia/da_gan.yaml --seeds 0 1 2 "
    "--set data.root=../shared/data/wikipedia": "test_method_benchmark_commands",
    "python benchmarks/da_gan_ablation.py --datasets wikipedia synthetic": "test_method_benchmark_commands",
    "python train.py --config configs/sdml.yaml": "test_method_synthetic_commands",
    "python train.py --config configs/sdml_5modal.yaml": "test_sdml_add_a_modality_commands",
    "python train.py --config configs/wikipedia/sdml.yaml --set data.root=../shared/data/wikipedia":
        "test_method_wikipedia_commands",
    "python train.py --config configs/sdml_5modal.yaml --set resume_from=RUN_DIR --set \"data.synthetic.dims={image: "
    "4096, text: 3000, audio: 128, 3d: 4096, video: 1000, sketch: 512}\" --set model.train_modalities=[sketch]":
        "test_sdml_add_a_modality_commands",
    "python benchmarks/sdml_scaling.py --epochs 3": "test_method_benchmark_commands",
}


def _run_readme(command: str, substitutions: dict, env=None) -> subprocess.CompletedProcess:
    """Run a README command (optionally with extra ``--set`` arguments appended) after substitutions.

    No timeout: a slow or busy machine makes a command slower, which is not a failure of the command.
    """
    assert any(command.startswith(c) for c in readme_commands()), f"not in the README: {command}"
    for old, new in substitutions.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[0] == "python":
        return run_cli(*argv[1:], timeout=None, env=env)
    executable = os.path.join(os.path.dirname(sys.executable), argv[0])
    return subprocess.run([executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def _run_in_process(command: str, substitutions: dict, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """A README ``python <script or -m module> ...`` command run in this process (``run_in_process``)."""
    from tests.conftest import run_in_process

    assert any(command.startswith(c) for c in readme_commands()), f"not in the README: {command}"
    for old, new in substitutions.items():
        command = command.replace(old, new)
    argv = shlex.split(command)[1:]
    script = {"-m": {"tf_xmr.retrieval": "retrieval", "tf_xmr.featurize": "featurize"}.get(argv[1])}.get(argv[0],
                                                                                                          argv[0])
    args = argv[2:] if argv[0] == "-m" else argv[1:]
    return run_in_process(capsys, monkeypatch, script, *args)


@pytest.mark.e2e
@pytest.mark.slow
def test_main_command_trains_a_useful_model(main_run):
    run_dir, stdout = main_run
    metrics = assert_beats_random(os.path.join(ROOT, run_dir))
    assert {"val", "test", "protocol", "presets"} <= set(metrics), sorted(metrics)
    assert {"map_i2t", "map_t2i", "map_avg"} <= set(metrics["test"])
    for name in ("config.yaml", "data.json", "checkpoints/best.weights.h5", "checkpoints/best.json"):
        assert os.path.isfile(os.path.join(ROOT, run_dir, name)), name
    assert not os.path.exists(os.path.join(ROOT, run_dir, "checkpoints", "backup"))  # removed when the run finishes
    assert "test" in stdout and "protocol: distance=cosine" in stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_evaluate_export_and_serving_commands(main_run, tmp_path):
    run_dir, _ = main_run
    with open(os.path.join(ROOT, run_dir, "metrics.json")) as handle:
        trained = json.load(handle)
    subs = {RUN_PLACEHOLDER: run_dir, "curves.png": str(tmp_path / "curves.png")}
    for command in [c for c, test in COVERED.items() if test == "test_evaluate_export_and_serving_commands"]:
        if command.startswith(("python evaluate.py", "python -m tf_xmr.export")):
            result = _run_readme(command, subs)
            assert result.returncode == 0, (command, result.stderr[-2000:])
            if "--json" in command:
                # The acmr_demo preset of the exported encoders is the one training recorded for the same model.
                report = json.loads(result.stdout)["test"]
                # (To float rounding: exports match the Keras encoders to 1e-5, which can swap near-tied items.)
                preset = trained["presets"]["acmr_demo"]["test"]
                assert report["map_avg"] == pytest.approx(preset["map_avg"], abs=1e-3), (report, preset)
            elif command.startswith("python evaluate.py --run-dir") and "--set" not in command:
                assert "test" in result.stdout and "i2t" in result.stdout
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # `python -m tf_xmr.export` wrote the next version beside the one training exported.
    for modality in ("image", "text"):
        assert os.path.isfile(os.path.join(ROOT, run_dir, "export", f"{modality}_encoder", "2", "saved_model.pb"))
    command = f"saved_model_cli show --dir {RUN_PLACEHOLDER}/export/image_encoder/1 --all"
    result = _run_readme(command, subs)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']" in result.stdout and "outputs['embedding']" in result.stdout


@pytest.mark.slow
def test_python_api_snippet_searches_like_the_run_scored(main_run, monkeypatch):
    """The README's Python snippet, run as written on the main run: its embed() and cosine search give the run's own
    test i2t mAP (so the snippet searches exactly as training scored), and its printed top 10 are database rows."""
    run_dir, _ = main_run
    code = readme_python("tf.saved_model.load").replace(RUN_PLACEHOLDER, run_dir)
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, "README.md (python snippet)", "exec"), namespace)  # noqa: S102 - the README's own code
    test, top10 = namespace["test"], namespace["top10"]
    assert top10.shape == (5, 10) and top10.max() < test.num_examples("text")
    from tf_xmr.metrics import mean_average_precision

    images = namespace["embed"]("image", test.features["image"])
    searched = mean_average_precision(images, namespace["texts"], test.labels["image"], test.labels["text"])
    with open(os.path.join(ROOT, run_dir, "metrics.json")) as handle:
        assert searched == pytest.approx(json.load(handle)["test"]["map_i2t"], abs=1e-3)


@pytest.mark.e2e
@pytest.mark.slow
def test_retrieval_and_tf_serving_commands(main_run, tmp_path, capsys, monkeypatch):
    """The README's serving walk on the main run: build both retrievers, ask them from the command line and from
    Python, grow a gallery, and the TF Serving part without a server (none installs here): the model server command's
    models.config is parsed and every model it names loads and replays its warmup request, and the curl command's
    body (written by the README's Python block) is answered by the REST emulation as the Python API answers."""
    import tensorflow as tf

    from tf_xmr.data.from_config import load_feature_set
    from tf_xmr.experiment import load_experiment
    from tf_xmr.export.serving import predict, read_models_config, rest_predict
    from tf_xmr.retrieval import Retriever

    run_dir, _ = main_run
    export = os.path.join(ROOT, run_dir, "export")
    config = load_experiment(os.path.join(ROOT, run_dir, "config.yaml"))
    splits = load_feature_set(config.data, seed=config.seed).splits
    test, val = splits["test"], splits["val"]
    np.save(tmp_path / "queries.npy", test.features["image"][:2])
    np.savez(tmp_path / "my_images.npz", image=val.features["image"])
    (tmp_path / "my_images.txt").write_text("".join(f"photo-{i}\n" for i in range(val.num_examples())))
    np.savez(tmp_path / "new_images.npz", image=test.features["image"][:3])
    (tmp_path / "new_images.txt").write_text("new-0\nnew-1\nnew-2\n")
    subs = {RUN_PLACEHOLDER: run_dir, **{name: str(tmp_path / name) for name in (
        "queries.npy", "my_images.npz", "my_images.txt", "new_images.npz", "new_images.txt")}}
    commands = [c for c, t in COVERED.items() if t == "test_retrieval_and_tf_serving_commands"]
    outputs, fresh = {}, {"python -m tf_xmr.retrieval build", "python retrieve.py"}
    for command in [c for c in commands if c.startswith("python")]:
        # The first build and the first retrieve run in fresh processes, as a user runs them; the others run the same
        # main() in this process (a new interpreter would add only its TensorFlow import).
        first = next((p for p in fresh if command.startswith(p)), None)
        if first is not None:
            fresh.discard(first)
            result = _run_readme(command, subs)
        else:
            result = _run_in_process(command, subs, capsys, monkeypatch)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        outputs[command] = result.stdout

    # build (test split, k 10), then build over every split with k 20; then the user's gallery and its growth.
    text2image = os.path.join(export, "text2image_retriever")
    first, own, grown = (Retriever.load(text2image, version=v) for v in (1, 2, 3))
    assert first.size == test.num_examples() and first.k == 10 and first.keys[0] == "test/0"
    everything = Retriever.load(os.path.join(export, "image2text_retriever"))
    assert everything.k == 20 and everything.size == sum(s.num_examples() for s in splits.values())
    assert own.size == val.num_examples() and own.keys[0] == "photo-0"
    assert grown.size == own.size + 3 and list(grown.keys[-3:]) == ["new-0", "new-1", "new-2"]
    np.testing.assert_array_equal(grown.keys[: own.size], own.keys)
    keys, _ = grown.search(test.features["text"][:3], k=10)
    assert set(keys.ravel()) <= set(grown.keys)

    # retrieve.py (run in README order, right after the two builds): the table of --query-key and the JSON of
    # --features.
    table = outputs["python retrieve.py --run-dir saved_models/acmr-<timestamp> --query text --query-key test/0"]
    latest_keys = first.search(test.features["text"][:1])[0][0]  # run before the gallery commands below
    assert [line.split()[1] for line in table.splitlines() if line.strip()[:1].isdigit()] == list(latest_keys)
    answer = json.loads(next(v for c, v in outputs.items() if "--json" in c))
    assert answer["target"] == "text" and len(answer["queries"]) == 2
    expected, _ = everything.search(test.features["image"][:2], k=5)
    assert [[r["key"] for r in q["results"]] for q in answer["queries"]] == expected.tolist()

    # The README's Python block, as written (run_dir replaced), in a scratch folder: it writes request.json.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code = readme_python("Retriever.load").replace(RUN_PLACEHOLDER, os.path.join(ROOT, run_dir))
    exec(compile(code, "README.md (retriever snippet)", "exec"), namespace)  # noqa: S102 - the README's own code
    np.testing.assert_array_equal(namespace["keys"], grown.search(test.features["text"][:3])[0])

    # The model server command: its models.config names every model, and each one's latest version loads and
    # answers its own warmup request, as the server does before it serves.
    server = next(c for c in commands if c.startswith("tensorflow_model_server"))
    config_path = os.path.join(ROOT, re.search(r"--model_config_file=(\S+)", server).group(1).replace(
        RUN_PLACEHOLDER, run_dir))
    served = {c.name: c.base_path for c in read_models_config(config_path).model_config_list.config}
    assert set(served) == {"image_encoder", "text_encoder", "text2image_retriever", "image2text_retriever"}
    from tensorflow_serving.apis import prediction_log_pb2

    for name, base in served.items():
        latest = os.path.join(base, str(max(int(v) for v in os.listdir(base) if v.isdigit())))
        signature = tf.saved_model.load(latest).signatures["serving_default"]
        for record in tf.data.TFRecordDataset(os.path.join(latest, "assets.extra", "tf_serving_warmup_requests")):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            assert request.model_spec.name == name
            predict(signature, request)

    # The curl command: its body file (request.json above) and its model name, answered by the REST rules.
    curl = next(c for c in commands if c.startswith("curl"))
    model = re.search(r"/v1/models/([\w.-]+):predict", curl).group(1)
    body = (tmp_path / re.search(r"-d @(\S+)", curl).group(1)).read_text()
    latest = os.path.join(served[model], str(max(int(v) for v in os.listdir(served[model]) if v.isdigit())))
    reply = rest_predict(tf.saved_model.load(latest).signatures["serving_default"], body)
    assert [row["keys"] for row in reply["predictions"]] == namespace["keys"].tolist()
    np.testing.assert_allclose([row["scores"] for row in reply["predictions"]], namespace["scores"], atol=1e-6)


@pytest.mark.e2e
@pytest.mark.slow
def test_featurize_demo_commands(tmp_path, capsys, monkeypatch):
    """The README's raw-data walk, as written except: the demo has 20 items per class instead of 50 and training
    runs 5 epochs without XLA (the README's numbers are the full commands'). The demo, featurize and train commands
    run in fresh processes; the curl command's body is answered by the REST rules against the retriever the walk
    built."""
    import tensorflow as tf

    from tf_xmr.export.serving import rest_predict
    from tf_xmr.featurize import load

    commands = [c for c, t in COVERED.items() if t == "test_featurize_demo_commands"]
    subs = {"demo-data": str(tmp_path / "demo-data"), "saved_models/demo-acmr": str(tmp_path / "demo-acmr")}
    extra = {"python -m tf_xmr.featurize.demo": " --per-class 20",
             "python train.py": " --set train.epochs=5 --set train.jit_compile=false"}
    outputs = {}
    for command in [c for c in commands if c.startswith("python")]:
        command_line = command + next((v for k, v in extra.items() if command.startswith(k)), "")
        if command.startswith(("python -m tf_xmr.retrieval", "python retrieve.py")):
            # Built and asked in this process (the command's main() under the CLI's error contract): both commands
            # also run in fresh processes in test_retrieval_and_tf_serving_commands.
            result = _run_in_process(command_line, subs, capsys, monkeypatch)
        else:
            result = _run_readme(command_line, subs)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        outputs[command] = result.stdout
    run_dir = str(tmp_path / "demo-acmr")
    # Measured 2026-12-07 (120 items, 5 epochs, seed 0): test mAP 0.980 against random rankings' 0.313 (best of 5);
    # 60 items and 3 epochs were too few for the caption check below (1 cricket picture in the top 5).
    assert_beats_random(run_dir, os.path.join(ROOT, "configs", "acmr.yaml"),
                        ["data.source=records", f"data.root={tmp_path / 'demo-data' / 'features'}"])
    caption = "The bowler and the batsman joined the cricket squad"
    table = next(v for c, v in outputs.items() if "--query-text" in c)
    keys = [line.split()[1] for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert len(keys) == 10 and all(k.split("-")[0] in {"afghanistan", "courts", "cricket", "economy",
                                                          "middle_east", "police"} for k in keys)
    # The caption's words are cricket words of the corpus: its best answers are cricket pictures.
    assert sum(k.startswith("cricket-") for k in keys[:5]) >= 3, keys
    from tf_xmr.retrieval import Retriever

    retriever = Retriever.load(os.path.join(run_dir, "export", "text2image_retriever"))
    features = load(str(tmp_path / "demo-data" / "features")).text([caption])
    assert keys == list(retriever.search(features)[0][0])
    curl = next(c for c in commands if c.startswith("curl"))
    body = re.search(r"-d '(.+?)' http", curl).group(1)
    signatures = tf.saved_model.load(retriever.path).signatures
    assert rest_predict(signatures, body)["predictions"][0]["keys"] == keys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_tensorboard_command_serves_the_run(main_run):
    command = "tensorboard --logdir saved_models --host 127.0.0.1"
    assert command in readme_commands()
    port = _free_port()
    executable = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    # The README command plus an explicit free port, so the test never collides with a TensorBoard already running.
    process = subprocess.Popen([executable, "--logdir", "saved_models", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_name = os.path.basename(main_run[0])
    try:
        # Poll until the server lists the run; it starts at the machine's pace, so there is no deadline here (a
        # server that died is the failure to catch, and pytest shows a hang if it never answers).
        runs = None
        while not (runs and any(r.startswith(run_name) for r in runs)):
            assert process.poll() is None, f"tensorboard exited with status {process.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=10) as response:
                    runs = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert any(r.startswith(run_name) for r in runs), runs
        # The Projector tab lists the run's test embeddings (its logs/test run) and serves them: one row per test
        # item of both modalities. The plugin activates in a background thread; the generous deadline only keeps a
        # broken plugin from hanging CI.
        projector_run, listed, deadline = f"{run_name}/logs/test", [], time.monotonic() + 600
        while projector_run not in listed:
            assert process.poll() is None and time.monotonic() < deadline, listed
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/projector/runs", timeout=10) as r:
                    listed = json.loads(r.read())
            except OSError:
                pass
            if projector_run not in listed:
                time.sleep(1)
        query = urllib.parse.urlencode({"run": projector_run, "name": "test embeddings"})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/projector/metadata?{query}",
                                    timeout=60) as response:
            rows = response.read().decode().splitlines()
        with open(os.path.join(ROOT, main_run[0], "data.json"), encoding="utf-8") as handle:
            data = json.load(handle)
        assert rows[0].split("\t") == ["modality", "class", "key"]
        assert len(rows) - 1 == sum(data["splits"]["test"]["counts"].values())
    finally:
        process.terminate()
        process.wait()


@pytest.mark.e2e
@pytest.mark.slow
def test_records_commands(tmp_path):
    out = str(tmp_path / "records")
    subs = {"/tmp/acmr-records": out}
    convert, train = [c for c in readme_commands() if "acmr-records" in c]
    # A smaller synthetic set (600 items instead of 2173 train; the record format is the same) and training without
    # XLA (the main command keeps it): training took 14 CPU s instead of 32, test mAP 0.353 against random rankings'
    # 0.131 (measured 2026-12-07, seed 0).
    smaller = ["data.synthetic.num_train=600", "data.synthetic.num_test=200"]
    result = _run_readme(convert + "".join(f" --set {s}" for s in smaller), subs)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out, "dataset.json")) as handle:
        sidecar = json.load(handle)
    # The sidecar fields the README lists, and one shard family per paired split.
    for key in ("format", "format_version", "name", "source", "modalities", "dims", "class_names", "num_classes",
                "multi_label", "num_shards", "splits", "feature_stats", "class_embeddings"):
        assert key in sidecar, key
    assert sidecar["format"] == "tf_xmr.records" and sidecar["splits"]["train"]["paired"] is True
    assert os.path.isfile(os.path.join(out, f"train-00000-of-{sidecar['num_shards']:05d}.tfrecord"))
    run_dir = str(tmp_path / "run")
    result = _run_readme(train + f" --set train.jit_compile=false --set run_dir={run_dir}", subs)
    assert result.returncode == 0, result.stderr[-2000:]
    # The records hold the data configs/acmr.yaml generates (with the same overrides), so its test labels give the
    # chance level.
    metrics = assert_beats_random(run_dir, os.path.join(ROOT, "configs", "acmr.yaml"), smaller)
    assert metrics["data"]["loader"] == "records"


@pytest.mark.e2e
@pytest.mark.slow
def test_unpaired_records_snippet_and_sdml_command(tmp_path, monkeypatch):
    """The README's unpaired example: the Python snippet writes records (one file family per modality), and the SDML
    command trains on them (one epoch) and scores both directions."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python("write_records(FeatureSet("), "README.md (python snippet)", "exec"), namespace)  # noqa: S102
    records = tmp_path / "my-records"
    with open(records / "dataset.json") as handle:
        sidecar = json.load(handle)
    assert sidecar["splits"]["train"]["paired"] is False
    assert sidecar["splits"]["train"]["counts"] == {"image": 800, "audio": 200}
    assert (records / "train.audio-00000-of-00004.tfrecord").is_file()
    command = "python train.py --config configs/sdml.yaml --set data.source=records --set data.root=my-records"
    run_dir = tmp_path / "run"
    result = _run_readme(command + f" --set train.epochs=1 --set run_dir={run_dir}", {"my-records": str(records)})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run_dir / "metrics.json") as handle:
        test = json.load(handle)["test"]
    # The snippet's labels are random stand-ins, so no score beyond chance is promised here: the keys are.
    assert {"map_image2audio", "map_audio2image", "map_avg"} <= set(test), sorted(test)
    assert (run_dir / "export" / "audio_encoder" / "1" / "saved_model.pb").is_file()


@pytest.mark.e2e
@pytest.mark.slow
def test_wikipedia_command(tmp_path):
    root = wikipedia_root_or_skip()
    command = "python train.py --config configs/wikipedia/acmr.yaml --set data.root=../shared/data/wikipedia"
    run_dir = str(tmp_path / "wiki")
    # 3 of the config's 200 epochs (the full runs are the README's results table, from benchmarks/seeds.py): test mAP
    # 0.254 against random rankings' 0.119 in 10 s; 25 epochs gave 0.258 in 26 s (measured 2026-12-07, seed 0).
    result = _run_readme(command + f" --set train.epochs=3 --set run_dir={run_dir}",
                         {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert_beats_random(run_dir)


@pytest.mark.e2e
@pytest.mark.slow
def test_benchmark_commands():
    result = _run_readme("python benchmarks/map_speed.py --quick", {})
    assert result.returncode == 0, result.stderr[-2000:]
    # The vectorised mAP must equal the loop reference it is timed against.
    difference = re.search(r"\|vectorised - loop\| mAP difference: (\S+?)\.?\s", result.stdout)
    assert difference and float(difference.group(1)) < 1e-9, result.stdout[-2000:]
    # 5 of the script's 200 epochs (it stops early, patience 8): 13 s instead of 28 (measured 2026-12-07).
    result = _run_readme("python benchmarks/synthetic_baseline.py --epochs 5", {})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "i2t" in result.stdout and "t2i" in result.stdout, result.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_wikipedia_result_commands(tmp_path):
    root = wikipedia_root_or_skip()
    seeds, baseline = [c for c, t in COVERED.items() if t == "test_wikipedia_result_commands"]
    # The full 200-epoch runs take minutes each; CI runs the same script on two seeds (the fewest a std needs; a later
    # --seeds wins) with one epoch each: 12 s instead of 19 for three seeds of two epochs (measured 2026-12-07).
    result = _run_readme(seeds + f" --seeds 0 1 --set train.epochs=1 --out {tmp_path / 'seeds'}",
                         {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| mean |" in result.stdout and "| std |" in result.stdout and "acmr_demo" in result.stdout
    assert re.findall(r"^\| (\d+) \| ", result.stdout, flags=re.M) == ["0", "1"], result.stdout[-2000:]  # seed rows
    # 5 of the script's 200 epochs (it stops early, patience 8): 13 s instead of 28 (measured 2026-12-07).
    result = _run_readme(baseline + " --epochs 5", {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "i2t" in result.stdout


def _report_table_rows(text: str) -> dict:
    """method -> cells of a results report's main table (docs/results/<dataset>.md, "## Every method")."""
    table = text.split("## Every method", 1)[1].split("\n\n", 2)[1]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in table.splitlines()[2:])}


def _readme_block(text: str, dataset: str) -> str:
    return text.split(f"<!-- report:{dataset} -->\n", 1)[1].split(f"\n<!-- /report:{dataset} -->", 1)[0]


def _mean_of_cell(cell: str) -> float:
    return float(cell.replace("*", "").split(" ± ")[0])


# The synthetic report shortened: one jointly trained method and SDML (independent networks), two seeds (a std), two
# epochs on 240 items of 48/24-d.
_SHORT_REPORT = ["--methods", "acmr", "sdml", "--seeds", "0", "1", "--set", "train.epochs=2", "--set",
                 "train.batch_size=32", "--set", "data.synthetic.dims={image: 48, text: 24}", "--set",
                 "data.synthetic.num_train=240", "--set", "data.synthetic.num_test=90", "--set",
                 "data.synthetic.num_classes=4"]


@pytest.mark.slow
def test_report_commands(tmp_path, capsys, monkeypatch):
    """The results report: the synthetic command (in this process, shortened) with what its tables must say and
    --reuse; the Wikipedia command (fresh process, ACMR only, one seed, one epoch)."""
    from benchmarks import report

    wikipedia, synthetic = [c for c, t in COVERED.items() if t == "test_report_commands"]
    monkeypatch.chdir(ROOT)
    readme = tmp_path / "README.md"
    shutil.copy(os.path.join(ROOT, "README.md"), readme)
    argv = shlex.split(synthetic)
    assert argv[:2] == ["python", "benchmarks/report.py"]
    where = ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--readme", str(readme)]
    # A README without the block is refused before anything is trained or written.
    (tmp_path / "plain.md").write_text("no block here\n")
    assert report.main([*argv[2:], *_SHORT_REPORT, *where[:4], "--readme", str(tmp_path / "plain.md")]) == 2
    assert "<!-- report:synthetic -->" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "docs").exists()
    assert report.main([*argv[2:], *_SHORT_REPORT, *where]) == 0
    text = (tmp_path / "docs" / "synthetic.md").read_text()
    rows = _report_table_rows(text)
    assert set(rows) == {"ACMR", "SDML", "random (reference)", "CCA (reference)", "MLP (reference)"}
    for method, name in (("acmr", "ACMR"), ("sdml", "SDML")):
        runs = [tmp_path / "runs" / method / f"seed{seed}" for seed in (0, 1)]
        honest = [json.loads((r / "metrics.json").read_text())["test"]["map_avg"] for r in runs]
        traces = [json.loads((r / "epoch_trace.json").read_text()) for r in runs]
        selected = [max(e["test"]["map_avg"] for e in t["epochs"]) for t in traces]
        # The honest cell is the mean of the runs' metrics.json; best-on-test the mean of their traces' maxima.
        assert _mean_of_cell(rows[name][2]) == pytest.approx(np.mean(honest), abs=5e-4)
        assert _mean_of_cell(rows[name][3]) == pytest.approx(np.mean(selected), abs=5e-4)
        if method == "acmr":  # the chosen epoch is a traced epoch: choosing on test can only claim as much or more
            assert all(s >= h - 1e-9 for s, h in zip(selected, honest, strict=True))
    assert "No published numbers exist for this dataset." in text and "## Runtime" in text
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"curves_i2t", "curves_t2i", "epochs", "space", "methods"} == {
        os.path.splitext(os.path.basename(f))[0] for f in figures}
    for figure in figures:
        assert (tmp_path / "docs" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    # --readme rewrote exactly the synthetic block, with the report's table.
    rewritten = readme.read_text()
    assert _readme_block(rewritten, "synthetic") in text
    assert rewritten.replace(_readme_block(rewritten, "synthetic"), "") == \
        _readme_text().replace(_readme_block(_readme_text(), "synthetic"), "")

    # --reuse reads the finished runs (nothing retrained, the same table); without it they are never overwritten;
    # a run trained with another config is refused.
    stamp = (tmp_path / "runs" / "acmr" / "seed0" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert report.main([*argv[2:], *_SHORT_REPORT, *where, "--reuse"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (tmp_path / "runs" / "acmr" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    assert _report_table_rows((tmp_path / "docs" / "synthetic.md").read_text()) == rows
    assert report.main([*argv[2:], *_SHORT_REPORT, *where]) == 2
    assert "pass --reuse" in capsys.readouterr().err
    assert report.main([*argv[2:], *_SHORT_REPORT, *where, "--reuse", "--set", "train.epochs=3"]) == 2
    assert "train.epochs" in capsys.readouterr().err

    root = wikipedia_root_or_skip()
    result = _run_readme(wikipedia + f" --methods acmr --seeds 0 --set train.epochs=1 --out {tmp_path / 'wiki'} "
                         f"--docs {tmp_path / 'docs'} --readme {readme}", {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / "docs" / "wikipedia.md").read_text()
    assert "| ACMR |" in text and "0.322" in text  # the published number beside the run under its convention
    assert _readme_block(readme.read_text(), "wikipedia") in text


def test_readme_results_tables_are_the_reports():
    """The README's results tables are the committed reports' tables, and the README's figure is there."""
    for dataset in ("wikipedia", "synthetic"):
        with open(os.path.join(DOCS, "results", f"{dataset}.md"), encoding="utf-8") as handle:
            report_text = handle.read()
        block = _readme_block(_readme_text(), dataset)
        assert block.startswith("| method |") and block in report_text, dataset
    figures = re.findall(r"!\[[^]]*\]\((docs/results/[^)]+)\)", _readme_text())
    assert figures and all(os.path.exists(os.path.join(ROOT, f)) for f in figures)


@pytest.mark.e2e
@pytest.mark.slow
def test_x_gacmn_headline_command(tmp_path):
    """The X-GACMN synthetic command, shortened to 8 epochs on 300 items (with XLA, as configured): a model above
    chance, logs, exports. The command as written (15 epochs, 2173 items) made this test take 195 s alone on 2 cores;
    the shortened run takes 36 s, test mAP 0.221 against random rankings' 0.154 (measured 2026-12-07, seed 0)."""
    command = "python train.py --config configs/x_gacmn.yaml"
    run_dir = str(tmp_path / "x_gacmn")
    result = _run_readme(command + _SHORT_SYNTHETIC + f" --set train.epochs=8 --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    assert_beats_random(run_dir)
    for modality in ("image", "text"):
        assert os.path.exists(os.path.join(run_dir, "export", f"{modality}_encoder", "1", "saved_model.pb"))
    assert os.listdir(os.path.join(run_dir, "logs", "train"))


def _method_commands(prefix: str, test_name: str) -> list[str]:
    return [c for c, t in COVERED.items() if t == test_name and c.startswith(prefix)]


def _config_id(command: str) -> str:
    """``... --config configs/wikipedia/jfse.yaml ...`` -> ``jfse`` (a readable test id)."""
    return os.path.splitext(os.path.basename(shlex.split(command)[3]))[0]


# Shrinks a synthetic-benchmark run to seconds while keeping the method's own model and data dimensions.
_SHORT_SYNTHETIC = " --set train.epochs=1 --set data.synthetic.num_train=300 --set data.synthetic.num_test=100"
# The 5-modality SDML set gives audio a fifth of the items: 600 keeps one full batch of 100 per modality. One epoch
# (1-5 steps per network) left the 20 directions at chance (test mAP 0.104 against random rankings' 0.103, best of 5
# draws 0.106); 12 epochs gave 0.133 (measured 2026-12-03, seed 0). The README's feature dims stay (so the
# add-a-modality command runs with its own dims, sketch 512); the networks shrink to 256-256-64 and XLA is off (it
# compiles each of the five networks for 12 short epochs; test_method_synthetic_commands[sdml] keeps it). The
# smaller networks stayed at chance at the config's learning rates (0.108 against 0.106) and learn at 1e-3: 0.131,
# 35 CPU s instead of 81 for the first run (measured 2026-12-07, seed 0).
_SHORT_5MODAL = (" --set train.epochs=12 --set data.synthetic.num_train=600 --set data.synthetic.num_test=200"
                 " --set 'model.encoder_units=[256, 256]' --set 'model.decoder_units=[256, 256]'"
                 " --set model.common_dim=64 --set train.jit_compile=false"
                 " --set train.optimizers.image.learning_rate=1e-3 --set train.optimizers.default.learning_rate=1e-3")

# What each shortened synthetic run adds to _SHORT_SYNTHETIC: enough steps to beat chance and, for JFSE and DA-GAN,
# 256-wide networks (see test_method_synthetic_commands).
_SYNTHETIC_SHRINK = {
    "jfse": " --set train.epochs=6 --set model.generator_hidden=256 --set model.critic_hidden=256"
            " --set 'model.regressor_hidden=[256, 256]' --set train.optimizers.regressor.learning_rate=1e-3",
    "da_gan": " --set train.epochs=6 --set 'data.synthetic.dims={image: 256, text: 300}' --set model.feature_dim=256"
              " --set model.common_dim=256 --set model.encoder_hidden=256 --set model.decoder_hidden=256"
              " --set model.inter_discriminator_hidden=256 --set model.intra_positions=16"
              " --set model.inter_positions=16 --set train.jit_compile=false"
              " --set train.optimizers.generator.learning_rate=1e-3",
    "sdml": " --set train.epochs=12",
}

# What each shortened Wikipedia method run appends (see test_method_wikipedia_commands).
_WIKIPEDIA_SHRINK = {"x_gacmn": " --set train.epochs=3 --set train.jit_compile=false", "jfse": " --set train.epochs=1",
                     "sdml": " --set train.epochs=3"}

_SYNTHETIC_METHOD_COMMANDS = _method_commands("python train.py --config configs/", "test_method_synthetic_commands")
_WIKIPEDIA_METHOD_COMMANDS = _method_commands("python train.py --config configs/wikipedia/",
                                              "test_method_wikipedia_commands")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("command", _SYNTHETIC_METHOD_COMMANDS, ids=_config_id)
def test_method_synthetic_commands(tmp_path, command):
    """Each method's synthetic command, shortened to a few epochs on 300 items (full runs: see the README tables).

    One epoch on 300 items is a handful of steps, which left JFSE, DA-GAN and SDML at chance (test mAP 0.148, 0.154
    and 0.140 against random rankings' 0.145 ± 0.005, best of 5 draws 0.154; SDML drops its last partial batch of
    100, so 2 steps). About 24 steps each beat it clearly: JFSE 6 epochs 0.192, DA-GAN 6 epochs 0.240, SDML 12 epochs
    0.276 (measured 2026-12-03, seed 0).

    At the configs' widths those JFSE and DA-GAN runs took 65 and 57 CPU s (DA-GAN's XLA compile alone 29 s), so they
    train 256-wide networks. At the configs' learning rates these stayed at chance (JFSE 0.144 after 6 epochs, 0.159
    after 16; DA-GAN 0.138 after 6); JFSE with regressor learning rate 1e-3 gave 0.241 in 28 CPU s, DA-GAN with
    generator learning rate 1e-3, XLA off and a 256-d image (= model.feature_dim, so the image keeps the identity
    feature net of the 4096-d config) 0.212 in 16 CPU s (measured 2026-12-07, seed 0, against 0.154). DA-GAN with
    XLA is the Wikipedia benchmark commands' (test_method_benchmark_commands); SDML's run (24 CPU s) is as above.
    """
    run_dir = str(tmp_path / "run")
    shrink = _SYNTHETIC_SHRINK[_config_id(command)]
    result = _run_readme(command + _SHORT_SYNTHETIC + shrink + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert_beats_random(run_dir)
    assert os.path.isdir(os.path.join(run_dir, "export"))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("command", _WIKIPEDIA_METHOD_COMMANDS, ids=_config_id)
def test_method_wikipedia_commands(tmp_path, command):
    """Each method's Wikipedia command, shortened to a few epochs (the full runs are reported by benchmarks/seeds.py).

    X-GACMN (3 epochs: test mAP 0.180 against random rankings' 0.119) runs without XLA, whose compile took 14 of its
    28 CPU s (the synthetic X-GACMN command keeps XLA); JFSE's first epoch already gives 0.196 (23 CPU s; 3 epochs
    ~33); SDML keeps 3 epochs (0.155; one epoch gave 0.140, 3 s less). Measured 2026-12-07, seed 0.
    """
    root = wikipedia_root_or_skip()
    if "wikipedia/jfse" in command:
        glove_or_skip()  # configs/wikipedia/jfse.yaml names its classes with GloVe vectors
    run_dir = str(tmp_path / "run")
    result = _run_readme(command + _WIKIPEDIA_SHRINK[_config_id(command)] + f" --set run_dir={run_dir}",
                         {"../shared/data/wikipedia": root})
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert_beats_random(run_dir)


# One case per benchmark script, so that a parallel run (pytest -n) spreads them over its workers.
_METHOD_BENCHMARKS = ("x_gacmn_ablation", "jfse_alignment", "da_gan_seeds", "da_gan_ablation", "sdml_scaling")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("benchmark", _METHOD_BENCHMARKS)
def test_method_benchmark_commands(tmp_path, benchmark):
    """The methods' benchmark scripts, on one seed and one epoch (their real tables are in the README and docs/)."""
    root = wikipedia_root_or_skip()
    subs = {"../shared/data/wikipedia": root}
    if benchmark == "x_gacmn_ablation":
        ablation = _method_commands("python benchmarks/x_gacmn_ablation.py", "test_method_benchmark_commands")[0]
        # A later --seeds wins (argparse), so the README command stays a prefix of what runs.
        result = _run_readme(ablation + f" --seeds 0 --epochs 1 --variants full --out-dir {tmp_path / 'xg'}", subs)
        expected = "| Whole X-GACMN |"
    elif benchmark == "jfse_alignment":
        glove_or_skip()  # it trains configs/wikipedia/jfse.yaml
        alignment = _method_commands("python benchmarks/jfse_alignment.py", "test_method_benchmark_commands")[0]
        result = _run_readme(alignment + f" --schemes cmmd --set train.epochs=1 --out {tmp_path / 'jfse'}", subs)
        expected = "cmmd"
    elif benchmark == "da_gan_seeds":
        seeds = _method_commands("python benchmarks/seeds.py --config configs/wikipedia/da_gan",
                                 "test_method_benchmark_commands")[0]
        result = _run_readme(seeds + f" --seeds 0 --set train.epochs=1 --out {tmp_path / 'dagan'}", subs)
        expected = "| mean |"
    elif benchmark == "da_gan_ablation":
        ablation = _method_commands("python benchmarks/da_gan_ablation.py", "test_method_benchmark_commands")[0]
        # Without XLA, whose compile took 16 of the 30 CPU s of a one-epoch run (measured 2026-12-07); da_gan_seeds
        # keeps it, as configured.
        result = _run_readme(ablation + f" --datasets wikipedia --variants both --epochs 1 --data-root {root} "
                             f"--set train.jit_compile=false --out-dir {tmp_path / 'dagan_ablation'}", {})
        expected = "Retrieval-time references"
    else:
        scaling = _method_commands("python benchmarks/sdml_scaling.py", "test_method_benchmark_commands")[0]
        # Table C only (it trains 5, then 1, then 6 networks in this one process), small feature dims for the five
        # stored modalities (the added sixth keeps its 4096), 64-wide networks and no XLA: 36 s instead of 75 with
        # the config's networks, XLA compiling each of the 12 (measured 2026-12-07). No score is promised here.
        result = _run_readme(scaling + " --epochs 1 --skip time memory --set data.synthetic.num_train=600 "
                             "--set data.synthetic.num_test=200 "
                             "--set 'data.synthetic.dims={image: 64, text: 64, audio: 32, 3d: 64, video: 32}' "
                             "--set 'model.encoder_units=[64]' --set 'model.decoder_units=[64]' "
                             "--set model.common_dim=32 --set train.jit_compile=false "
                             f"--out {tmp_path / 'sdml'}", {})
        expected = "Table C"
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout or expected in result.stdout.lower(), result.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_zero_shot_commands(tmp_path):
    """The zero-shot commands: JFSE synthetic (one epoch, fewer items) and Wikipedia (one epoch), ACMR under the same
    split, and the side-by-side benchmark on one seed (its real table is in docs/methods/jfse.md)."""
    root = wikipedia_root_or_skip()
    glove_or_skip()  # configs/wikipedia/jfse_zero_shot.yaml names its classes with GloVe vectors
    subs = {"../shared/data/wikipedia": root}
    runs = _method_commands("python train.py --config configs/", "test_zero_shot_commands")
    assert len(runs) == 3
    unseen = set()
    for i, command in enumerate(runs):
        run_dir = str(tmp_path / f"run{i}")
        # Synthetic JFSE trains on the seen half of 300 items: 1 epoch stayed at chance (test mAP 0.153 against
        # 0.154), 10 epochs gave 0.177. One Wikipedia epoch already beats chance (JFSE 0.186, ACMR 0.221 against
        # 0.119; measured 2026-12-03, seed 0). The synthetic run takes the smaller networks of the synthetic JFSE
        # command (6 epochs): 0.180, 26 CPU s instead of 64 (measured 2026-12-07, seed 0). On Wikipedia the
        # networks' size hardly matters (one epoch, mostly tracing: 26 CPU s at 1024 wide and at 256).
        short = " --set train.epochs=1" if "wikipedia" in command else _SHORT_SYNTHETIC + _SYNTHETIC_SHRINK["jfse"]
        result = _run_readme(command + short + f" --set run_dir={run_dir}", subs)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "zero-shot (unseen)" in result.stdout, result.stdout[-2000:]
        metrics = assert_beats_random(run_dir)
        report = metrics["zero_shot"]
        assert len(report["unseen_classes"]) == 5 and 0.0 < report["zero_shot"]["map_avg"] <= 1.0
        assert {"standard", "zero_shot", "generalized"} <= set(report), sorted(report)
        if "wikipedia" in command:
            unseen.add(tuple(report["unseen_class_names"]))
        if "wikipedia/jfse_zero_shot" in command:
            jfse_wikipedia_run = run_dir
    assert len(unseen) == 1  # JFSE and ACMR on Wikipedia, same seed: the same unseen categories
    benchmark = _method_commands("python benchmarks/zero_shot.py", "test_zero_shot_commands")[0]
    # One method (the cheapest) and one epoch; the JFSE runs it would add are the train command's above.
    result = _run_readme(benchmark + f" --seeds 0 --methods acmr --set train.epochs=1 --out {tmp_path / 'zs'}",
                         subs)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| acmr |" in result.stdout, result.stdout[-2000:]
    diagnostic = _method_commands("python benchmarks/jfse_unseen_synthesis.py", "test_zero_shot_commands")[0]
    result = _run_readme(diagnostic + " --per-class 20",
                         {"saved_models/zero-shot-wikipedia-<stamp>/jfse-seed0": jfse_wikipedia_run})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| image | features |" in result.stdout and "| text | common |" in result.stdout, result.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_tune_commands(tmp_path):
    """The search commands: the synthetic one as written (its own tuner directory moved into tmp), the Wikipedia
    ones cut to one one-epoch trial (their full tables are in docs/methods); tests/tuning checks the results."""
    root = wikipedia_root_or_skip()
    commands = _method_commands("python tune.py", "test_tune_commands")
    assert len(commands) == 3
    for i, command in enumerate(commands):
        directory = tmp_path / f"tune{i}"
        short = "" if "wikipedia" not in command else " --set tune.max_trials=1 --set tune.epochs=1"
        if "x_gacmn" in command:  # XLA's compile took 12 of the trial's 21 CPU s (measured 2026-12-07)
            short += " --set train.jit_compile=false"
        result = _run_readme(command + short + f" --set tune.directory={directory}",
                             {"../shared/data/wikipedia": root})
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert (directory / "trials.csv").exists() and (directory / "best_config.yaml").exists()
        with open(directory / "trials.csv") as handle:
            rows = handle.read().strip().splitlines()[1:]
        expected = 4 if "wikipedia" not in command else 1
        assert len(rows) == expected and all("COMPLETED" in row for row in rows), rows


@pytest.mark.e2e
@pytest.mark.slow
def test_distribution_commands(tmp_path):
    """Both distribution commands on this one machine, shortened: mirrored (one CPU device = one replica here; the
    two-replica and two-worker equivalence is tests/training/test_distribution.py), and multi_worker as a one-worker
    cluster on a free local port."""
    mirrored, multi = sorted(_method_commands("python train.py --config configs/acmr.yaml --set train.distribution",
                                              "test_distribution_commands"), key=lambda c: "multi_worker" in c)
    run_dir = tmp_path / "mirrored"
    result = _run_readme(mirrored + _SHORT_SYNTHETIC + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    assert assert_beats_random(str(run_dir))["distribution"]["kind"] == "mirrored"
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    result = _run_readme(multi + _SHORT_SYNTHETIC, {"runs/acmr-2machines": str(tmp_path / "multi")},
                         env={"TF_CONFIG": json.dumps(tf_config)})
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = assert_beats_random(str(tmp_path / "multi"))["distribution"]
    assert recorded["kind"] == "multi_worker" and recorded["task"] == "worker:0", recorded


@pytest.mark.e2e
@pytest.mark.slow
def test_sdml_add_a_modality_commands(tmp_path):
    """The 5-modality SDML run, then the README's add-a-modality command on it (both shortened as above)."""
    first, add = sorted(_method_commands("python train.py --config configs/sdml_5modal.yaml",
                                         "test_sdml_add_a_modality_commands"), key=len)
    run_dir = str(tmp_path / "five")
    result = _run_readme(first + _SHORT_5MODAL + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = assert_beats_random(run_dir)
    assert len([k for k in metrics["test"] if k.startswith("map_") and k != "map_avg"]) == 20
    result = _run_readme(add + _SHORT_5MODAL, {"RUN_DIR": run_dir})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = assert_beats_random(run_dir)  # config.yaml now describes all six modalities
    test = metrics["test"]
    assert len([k for k in test if k.startswith("map_") and k != "map_avg"]) == 30 and "map_sketch2image" in test
    assert os.path.isdir(os.path.join(run_dir, "history"))


@pytest.mark.e2e
def test_config_reference_command_rewrites_the_readme_block(tmp_path):
    """`python -m tf_xmr.config.reference --write` (on a copy, with --root) restores a hand-edited README block to
    exactly the generated text (tests/config/test_reference.py checks that the repository's README holds it)."""
    from tf_xmr.config import reference

    shutil.copy(README, tmp_path / "README.md")
    shutil.copytree(DOCS, tmp_path / "docs")
    original = reference.splice(_readme_text(), reference.readme_block(), README)
    (tmp_path / "README.md").write_text(original.replace("| `train.epochs` |", "| `train.epochz` |"))
    result = _run_readme(f"python -m tf_xmr.config.reference --write --root {tmp_path}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "README.md").read_text() == original


def _collected(command: str) -> set[str]:
    """Test ids a README pytest command selects, collected (not run) in a subprocess without xdist (under -n the
    workers collect and --collect-only lists no test ids)."""
    argv = shlex.split(command)[1:]
    for option in ("-n", "--dist"):  # xdist's options (unknown once xdist is off)
        if option in argv:
            at = argv.index(option)
            del argv[at:at + 2]
    argv += ["--collect-only", "-p", "no:xdist"]  # the command's own -q lists one id per line (-qq only counts)
    result = run_cli(*argv, timeout=None)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    return {line for line in result.stdout.splitlines() if "::" in line}


def _session_is_the_full_suite(config: pytest.Config) -> bool:
    """This pytest session collected every test of ``tests`` with nothing deselected (CI's command)."""
    paths = [os.path.normpath(os.path.join(str(config.invocation_params.dir), a)) for a in config.args]
    narrowed = (config.option.markexpr, config.option.keyword, config.getoption("deselect", None),
                config.getoption("ignore", None), config.getoption("ignore_glob", None),
                config.getoption("lf", False), config.getoption("stepwise", False))
    return paths == [os.path.join(ROOT, "tests")] and not any(narrowed)


@pytest.mark.e2e
@pytest.mark.slow
def test_daily_tier_command_leaves_out_exactly_the_slow_tests(request):
    """The daily command selects every test except the `slow` ones (collected, not run: running them is CI's job).

    Under the full suite this session has already collected every test (under xdist each worker collects all of them,
    pytest-xdist 3.8), so only the daily command is collected in a subprocess (about 10 s) and the session's own items
    say which tests are slow. Run on its own, the test collects the full suite and the slow tier too.
    """
    daily = _collected(DAILY_TIER)
    if _session_is_the_full_suite(request.config):
        items = request.session.items
        everything = {item.nodeid for item in items}
        slow = {item.nodeid for item in items if item.get_closest_marker("slow")}
    else:
        everything = _collected(FULL_SUITE)
        slow = _collected('python -m pytest -q -m "slow" tests')
    assert daily and slow and daily | slow == everything and not daily & slow, (
        sorted(daily & slow)[:5], sorted(everything - daily - slow)[:5], sorted((daily | slow) - everything)[:5])
    assert "tests/test_readme.py::test_every_readme_command_is_exercised" in daily


def test_install_line_is_the_only_install_the_tests_need():
    """The README's one install line installs both requirement files and the package itself, and the optional GloVe
    extra is described as optional (its tests skip without it)."""
    assert INSTALL in readme_commands()
    assert not [c for c in readme_commands() if c.startswith("pip install") and c != INSTALL], readme_commands()
    text = _readme_text()
    assert "requirements-extra.txt` is optional" in text


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve():
    """Every #anchor link of the README (the table of contents among them) names a heading, and every relative link
    names a file of the repository."""
    text = _readme_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", prose, flags=re.M)}
    links = re.findall(r"\]\(([^)]+)\)", prose)
    assert links
    for link in links:
        if link.startswith("#"):
            assert link[1:] in anchors, f"README link {link} names no heading"
        elif not link.startswith("http"):
            assert os.path.exists(os.path.join(ROOT, link.split("#")[0])), f"README link {link} names no file"
    for page in os.listdir(os.path.join(DOCS, "methods")):
        assert f"(docs/methods/{page})" in text, f"docs/methods/{page} is not linked from the README"


def test_every_readme_command_is_exercised():
    missing = [c for c in readme_commands() if c not in COVERED]
    assert not missing, f"README commands no test runs (add them to COVERED and run them): {missing}"
    stale = [c for c in COVERED if c not in readme_commands()]
    assert not stale, f"COVERED lists commands the README no longer has: {stale}"
    assert all(callable(globals().get(name)) for name in COVERED.values())
    blocks = re.findall(r"```python\n(.*?)```", _readme_text(), flags=re.S)
    assert len(blocks) == len(PYTHON_BLOCKS), "a README python block no test runs (add it to PYTHON_BLOCKS)"
    for marker, test in PYTHON_BLOCKS.items():
        readme_python(marker)
        assert callable(globals().get(test)), test
    # docs/ keeps results and narratives; its commands would go untested, so they live in the README.
    for folder, _, files in os.walk(DOCS):
        for name in (f for f in files if f.endswith(".md")):  # docs/results/ also holds the reports' PNGs
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                assert "```bash" not in handle.read(), f"{name}: put commands in the README, where a test runs them"
