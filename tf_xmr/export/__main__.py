"""Export a run's best checkpoint as TF Serving SavedModels (a new integer version per call).

    python -m tf_xmr.export --run-dir DIR
"""

import argparse

from tf_xmr.cli import quiet_tensorflow, run


def main(argv=None, prog: str = "python -m tf_xmr.export") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    quiet_tensorflow()
    from tf_xmr.export import export_run_encoders
    from tf_xmr.modeling import prepare_data, trained_encoders
    from tf_xmr.run_dir import RunDirLock, load_run_config, run_modalities

    config, feature_set = prepare_data(load_run_config(args.run_dir))
    scored = run_modalities(args.run_dir)
    if scored is not None:
        # Independent modality networks (e.g. SDML): each modality's own best checkpoint.
        feature_set = feature_set.select_modalities(scored)
    encoders = trained_encoders(args.run_dir, config, feature_set)
    with RunDirLock(args.run_dir):  # one writer per run directory (a training run or another export)
        for modality, path in export_run_encoders(args.run_dir, config, feature_set.dims, encoders).items():
            print(f"{modality}: {path}")
    return 0


if __name__ == "__main__":
    run(main)
