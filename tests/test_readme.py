"""Every command in README.md is run here (or, for install/test, is exactly what .ci/run runs).

The README is parsed, not copied: a new command added to the README without being exercised fails
``test_every_readme_command_is_exercised``. Placeholders are substituted with real paths: ``saved_models/acmr-<timestamp>``
with the run directory the main command printed, ``/tmp/acmr-records`` and ``curves.png`` with temporary paths.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, run_cli, wikipedia_root_or_skip

README = os.path.join(ROOT, "README.md")
RUN_PLACEHOLDER = "saved_models/acmr-<timestamp>"


def readme_commands() -> list[str]:
    """Lines of the README's ```bash blocks."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _ci_script() -> str:
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        return handle.read()


# Commands run by CI itself rather than by this file.
CI_COMMANDS = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt",
    "pip install -r requirements-extra.txt",
    "python -m pytest -q -n 3 tests",
}


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
    result = run_cli(*shlex.split(command)[1:], timeout=1800)
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
    "python -m tf_xmr.data convert --config configs/acmr.yaml --out /tmp/acmr-records": "test_records_commands",
    "python train.py --config configs/acmr.yaml --set data.source=records --set data.root=/tmp/acmr-records "
    "--set train.epochs=3": "test_records_commands",
    "python benchmarks/map_speed.py --quick": "test_benchmark_commands",
    "python benchmarks/seeds.py --config configs/wikipedia/acmr.yaml --seeds 0 1 2 "
    "--set data.root=../shared/data/wikipedia": "test_wikipedia_result_commands",
    "python benchmarks/synthetic_baseline.py --wikipedia ../shared/data/wikipedia": "test_wikipedia_result_commands",
    "python benchmarks/synthetic_baseline.py": "test_benchmark_commands",
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


def _run_readme(command: str, substitutions: dict, timeout=1800, env=None) -> subprocess.CompletedProcess:
    """Run a README command (optionally with extra ``--set`` arguments appended) after substitutions."""
    assert any(command.startswith(c) for c in readme_commands()), f"not in the README: {command}"
    for old, new in substitutions.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[0] == "python":
        return run_cli(*argv[1:], timeout=timeout, env=env)
    executable = os.path.join(os.path.dirname(sys.executable), argv[0])
    return subprocess.run([executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_main_command_trains_a_useful_model(main_run):
    run_dir, stdout = main_run
    with open(os.path.join(ROOT, run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    # Random ranking on this benchmark is about 0.11; the README promises a model, not a smoke test.
    assert metrics["test"]["map_avg"] > 0.3, metrics["test"]
    assert "test" in stdout and "protocol: distance=cosine" in stdout


def test_evaluate_export_and_serving_commands(main_run, tmp_path):
    run_dir, _ = main_run
    subs = {RUN_PLACEHOLDER: run_dir, "curves.png": str(tmp_path / "curves.png")}
    for command in [c for c, test in COVERED.items() if test == "test_evaluate_export_and_serving_commands"]:
        if command.startswith(("python evaluate.py", "python -m tf_xmr.export")):
            result = _run_readme(command, subs)
            assert result.returncode == 0, (command, result.stderr[-2000:])
            if "--json" in command:
                assert 0.0 <= json.loads(result.stdout)["test"]["map_avg"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    command = f"saved_model_cli show --dir {RUN_PLACEHOLDER}/export/image_encoder/1 --all"
    result = _run_readme(command, subs)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']" in result.stdout and "outputs['embedding']" in result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tensorboard_command_serves_the_run(main_run):
    command = "tensorboard --logdir saved_models --host 127.0.0.1"
    assert command in readme_commands()
    port = _free_port()
    executable = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    # The README command plus an explicit free port, so the test never collides with a TensorBoard already running.
    process = subprocess.Popen([executable, "--logdir", "saved_models", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as response:
                    runs = json.loads(response.read())
                if runs:
                    break
            except OSError:
                pass
            time.sleep(1)
        run_name = os.path.basename(main_run[0])
        assert runs and any(r.startswith(run_name) for r in runs), runs
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_records_commands(tmp_path):
    out = str(tmp_path / "records")
    subs = {"/tmp/acmr-records": out}
    convert, train = [c for c in readme_commands() if "acmr-records" in c]
    result = _run_readme(convert, subs)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = str(tmp_path / "run")
    result = _run_readme(train + f" --set run_dir={run_dir}", subs)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        assert json.load(handle)["data"]["loader"] == "records"


def test_wikipedia_command(tmp_path):
    root = wikipedia_root_or_skip()
    command = "python train.py --config configs/wikipedia/acmr.yaml --set data.root=../shared/data/wikipedia"
    run_dir = str(tmp_path / "wiki")
    # 25 of the config's 200 epochs (validation peaks at epochs 13-24 for seeds 0-2; the full runs are the README's
    # results table, from benchmarks/seeds.py), to keep the suite inside its time budget.
    result = _run_readme(command + f" --set train.epochs=25 --set run_dir={run_dir}", {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    # Well above random ranking (~0.11) on the real features; the quality target itself is reported in benchmarks.
    assert metrics["test"]["map_avg"] > 0.2, metrics["test"]


def test_benchmark_commands():
    for command in ("python benchmarks/map_speed.py --quick", "python benchmarks/synthetic_baseline.py"):
        result = _run_readme(command, {})
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "mAP" in result.stdout or "map" in result.stdout.lower()


def test_wikipedia_result_commands(tmp_path):
    root = wikipedia_root_or_skip()
    seeds, baseline = [c for c, t in COVERED.items() if t == "test_wikipedia_result_commands"]
    # The full 200-epoch runs take minutes each; CI runs the same script with 2 epochs per seed.
    result = _run_readme(seeds + f" --set train.epochs=2 --out {tmp_path / 'seeds'}",
                         {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| mean |" in result.stdout and "| std |" in result.stdout and "acmr_demo" in result.stdout
    result = _run_readme(baseline, {"../shared/data/wikipedia": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "i2t" in result.stdout


def test_x_gacmn_headline_command(tmp_path):
    """The X-GACMN synthetic command verbatim (about 2-4 minutes on 2 cores): a useful model, logs, exports."""
    command = "python train.py --config configs/x_gacmn.yaml"
    run_dir = str(tmp_path / "x_gacmn")
    result = _run_readme(command + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    # Random ranking is about 0.11 on this benchmark.
    assert metrics["test"]["map_avg"] > 0.3, metrics["test"]
    for modality in ("image", "text"):
        assert os.path.exists(os.path.join(run_dir, "export", f"{modality}_encoder", "1", "saved_model.pb"))
    assert os.listdir(os.path.join(run_dir, "logs", "train"))


def _method_commands(prefix: str, test_name: str) -> list[str]:
    return [c for c, t in COVERED.items() if t == test_name and c.startswith(prefix)]


# Shrinks a synthetic-benchmark run to seconds while keeping the method's own model and data dimensions.
_SHORT_SYNTHETIC = " --set train.epochs=1 --set data.synthetic.num_train=300 --set data.synthetic.num_test=100"
# The 5-modality SDML set gives audio a fifth of the items: 600 keeps one full batch of 100 per modality.
_SHORT_5MODAL = " --set train.epochs=1 --set data.synthetic.num_train=600 --set data.synthetic.num_test=200"


def test_method_synthetic_commands(tmp_path):
    """Each method's synthetic command, shortened to one epoch on fewer items (full runs: see the README tables)."""
    commands = _method_commands("python train.py --config configs/", "test_method_synthetic_commands")
    assert commands
    for i, command in enumerate(commands):
        run_dir = str(tmp_path / f"run{i}")
        result = _run_readme(command + _SHORT_SYNTHETIC + f" --set run_dir={run_dir}", {})
        assert result.returncode == 0, (command, result.stderr[-2000:])
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            assert 0.0 < json.load(handle)["test"]["map_avg"] <= 1.0
        assert os.path.isdir(os.path.join(run_dir, "export"))


def test_method_wikipedia_commands(tmp_path):
    """Each method's Wikipedia command, shortened to 3 epochs (the full runs are reported by benchmarks/seeds.py)."""
    root = wikipedia_root_or_skip()
    commands = _method_commands("python train.py --config configs/wikipedia/", "test_method_wikipedia_commands")
    assert commands
    for i, command in enumerate(commands):
        run_dir = str(tmp_path / f"run{i}")
        result = _run_readme(command + f" --set train.epochs=3 --set run_dir={run_dir}",
                             {"../shared/data/wikipedia": root})
        assert result.returncode == 0, (command, result.stderr[-2000:])
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            assert 0.0 < json.load(handle)["test"]["map_avg"] <= 1.0


# One case per benchmark script, so that a parallel run (pytest -n) spreads them over its workers.
_METHOD_BENCHMARKS = ("x_gacmn_ablation", "jfse_alignment", "da_gan_seeds", "da_gan_ablation", "sdml_scaling")


@pytest.mark.parametrize("benchmark", _METHOD_BENCHMARKS)
def test_method_benchmark_commands(tmp_path, benchmark):
    """The methods' benchmark scripts, on one seed and one epoch (their real tables are in the README)."""
    root = wikipedia_root_or_skip()
    subs = {"../shared/data/wikipedia": root}
    if benchmark == "x_gacmn_ablation":
        ablation = _method_commands("python benchmarks/x_gacmn_ablation.py", "test_method_benchmark_commands")[0]
        # A later --seeds wins (argparse), so the README command stays a prefix of what runs.
        result = _run_readme(ablation + f" --seeds 0 --epochs 1 --variants full --out-dir {tmp_path / 'xg'}", subs)
        expected = "| Whole X-GACMN |"
    elif benchmark == "jfse_alignment":
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
        result = _run_readme(ablation + f" --datasets wikipedia --variants both --epochs 1 --data-root {root} "
                             f"--out-dir {tmp_path / 'dagan_ablation'}", {})
        expected = "Retrieval-time references"
    else:
        scaling = _method_commands("python benchmarks/sdml_scaling.py", "test_method_benchmark_commands")[0]
        # Small feature dims for the five stored modalities (the added sixth keeps its 4096): the run's cost is
        # mostly process start-up and data generation.
        result = _run_readme(scaling + " --epochs 1 --skip time memory --set data.synthetic.num_train=600 "
                             "--set data.synthetic.num_test=200 "
                             "--set 'data.synthetic.dims={image: 64, text: 64, audio: 32, 3d: 64, video: 32}' "
                             f"--out {tmp_path / 'sdml'}", {})
        expected = "Table C"
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout or expected in result.stdout.lower(), result.stdout[-2000:]


def test_zero_shot_commands(tmp_path):
    """The zero-shot commands: JFSE synthetic (one epoch, fewer items) and Wikipedia (one epoch), ACMR under the same
    split, and the side-by-side benchmark on one seed (its real table is in the README)."""
    root = wikipedia_root_or_skip()
    subs = {"../shared/data/wikipedia": root}
    runs = _method_commands("python train.py --config configs/", "test_zero_shot_commands")
    assert len(runs) == 3
    unseen = set()
    for i, command in enumerate(runs):
        run_dir = str(tmp_path / f"run{i}")
        short = _SHORT_SYNTHETIC if "wikipedia" not in command else " --set train.epochs=1"
        result = _run_readme(command + short + f" --set run_dir={run_dir}", subs)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "zero-shot (unseen)" in result.stdout, result.stdout[-2000:]
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            report = json.load(handle)["zero_shot"]
        assert len(report["unseen_classes"]) == 5 and 0.0 < report["zero_shot"]["map_avg"] <= 1.0
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


def test_tune_commands(tmp_path):
    """The search commands: the synthetic one as written (its own tuner directory moved into tmp), the Wikipedia
    ones cut to one one-epoch trial (their full tables are in the README); tests/tuning checks the results."""
    root = wikipedia_root_or_skip()
    commands = _method_commands("python tune.py", "test_tune_commands")
    assert len(commands) == 3
    for i, command in enumerate(commands):
        directory = tmp_path / f"tune{i}"
        short = "" if "wikipedia" not in command else \
            " --set tune.max_trials=1 --set tune.epochs=1"
        result = _run_readme(command + short + f" --set tune.directory={directory}",
                             {"../shared/data/wikipedia": root})
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert (directory / "trials.csv").exists() and (directory / "best_config.yaml").exists()
        with open(directory / "trials.csv") as handle:
            rows = handle.read().strip().splitlines()[1:]
        expected = 4 if "wikipedia" not in command else 1
        assert len(rows) == expected and all("COMPLETED" in row for row in rows), rows


def test_distribution_commands(tmp_path):
    """Both distribution commands on this one machine, shortened: mirrored (one CPU device = one replica here; the
    two-replica and two-worker equivalence is tests/training/test_distribution.py), and multi_worker as a one-worker
    cluster on a free local port."""
    import socket

    mirrored, multi = sorted(_method_commands("python train.py --config configs/acmr.yaml --set train.distribution",
                                              "test_distribution_commands"), key=lambda c: "multi_worker" in c)
    run_dir = tmp_path / "mirrored"
    result = _run_readme(mirrored + _SHORT_SYNTHETIC + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run_dir / "metrics.json") as handle:
        assert json.load(handle)["distribution"]["kind"] == "mirrored"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    result = _run_readme(multi + _SHORT_SYNTHETIC, {"runs/acmr-2machines": str(tmp_path / "multi")},
                         env={"TF_CONFIG": json.dumps(tf_config)})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "multi" / "metrics.json") as handle:
        recorded = json.load(handle)["distribution"]
    assert recorded["kind"] == "multi_worker" and recorded["task"] == "worker:0", recorded


def test_sdml_add_a_modality_commands(tmp_path):
    """The 5-modality SDML run, then the README's add-a-modality command on it (both shortened as above)."""
    first, add = sorted(_method_commands("python train.py --config configs/sdml_5modal.yaml",
                                         "test_sdml_add_a_modality_commands"), key=len)
    run_dir = str(tmp_path / "five")
    result = _run_readme(first + _SHORT_5MODAL + f" --set run_dir={run_dir}", {})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        assert len([k for k in json.load(handle)["test"] if k.startswith("map_") and k != "map_avg"]) == 20
    result = _run_readme(add + _SHORT_5MODAL, {"RUN_DIR": run_dir})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        test = json.load(handle)["test"]
    assert len([k for k in test if k.startswith("map_") and k != "map_avg"]) == 30 and "map_sketch2image" in test


def test_every_readme_command_is_exercised():
    missing = [c for c in readme_commands() if c not in COVERED]
    assert not missing, f"README commands no test runs (add them to COVERED and run them): {missing}"
    stale = [c for c in COVERED if c not in readme_commands()]
    assert not stale, f"COVERED lists commands the README no longer has: {stale}"
    assert all(callable(globals().get(name)) for name in COVERED.values())
