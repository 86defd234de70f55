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
    "python -m pytest -q tests",
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
}


def _run_readme(command: str, substitutions: dict, timeout=1800) -> subprocess.CompletedProcess:
    """Run a README command (optionally with extra ``--set`` arguments appended) after substitutions."""
    assert any(command.startswith(c) for c in readme_commands()), f"not in the README: {command}"
    for old, new in substitutions.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[0] == "python":
        return run_cli(*argv[1:], timeout=timeout)
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
    result = _run_readme(command + f" --set run_dir={run_dir}", {"../shared/data/wikipedia": root})
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


def test_every_readme_command_is_exercised():
    missing = [c for c in readme_commands() if c not in COVERED]
    assert not missing, f"README commands no test runs (add them to COVERED and run them): {missing}"
    stale = [c for c in COVERED if c not in readme_commands()]
    assert not stale, f"COVERED lists commands the README no longer has: {stale}"
    assert all(callable(globals().get(name)) for name in COVERED.values())
