"""What the multi-run benchmark scripts share (seeds.py, jfse_alignment.py, zero_shot.py): where their runs go, one
ordinary training run per (config, overrides, seed), and the mean ± std cell of their tables."""

from __future__ import annotations

import datetime
import os

import numpy as np


def run_parent(out: str | None, name: str) -> str:
    """``out``, or ``saved_models/<name>-<timestamp>`` when no --out was given."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return out or os.path.join("saved_models", f"{name}-{stamp}")


def train_run(config_path: str, overrides, *, seed: int, run_dir: str) -> dict:
    """One full ``train.py``-equivalent run (checkpoint chosen on validation, test scored once); its metrics.json."""
    from tf_xmr.experiment import load_experiment
    from tf_xmr.training.pipeline import train

    overrides = [*overrides, f"seed={seed}", f"run_dir={run_dir}", "train.verbose=0"]
    return train(load_experiment(config_path, overrides), config_path=config_path).metrics


def mean_std(values) -> str:
    """``mean ± std`` over runs with the population std (np.std), the convention of seeds.py; the value alone for one
    run. (The ablation scripts, x_gacmn_ablation.py and da_gan_ablation.py, print the sample std.)"""
    return f"{np.mean(values):.4f}" + (f" ± {np.std(values):.4f}" if len(values) > 1 else "")
