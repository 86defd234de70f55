"""Export a run's best checkpoint as TF Serving SavedModels (a new integer version per call).

    python -m tf_xmr.export --run-dir DIR
"""

import argparse
import os

from tf_xmr.cli import quiet_tensorflow, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_xmr.export", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    quiet_tensorflow()
    from tf_xmr.errors import ModelInputError
    from tf_xmr.evaluation import load_run_config
    from tf_xmr.export import export_model
    from tf_xmr.training.trainer import build_model, data_spec, load_data

    config = load_run_config(args.run_dir)
    from tf_xmr.training.independent import run_modalities

    if run_modalities(args.run_dir) is not None:
        # Independent modality networks (e.g. SDML): each modality's own best checkpoint.
        from tf_xmr.export import encoder_dir, export_encoder
        from tf_xmr.training.independent import load_networks, load_shared_state

        feature_set = load_data(config).select_modalities(run_modalities(args.run_dir))
        nets = load_networks(config, data_spec(config, feature_set), load_shared_state(args.run_dir), args.run_dir,
                             feature_set.modalities)
        for modality, net in nets.items():
            path = export_encoder(net.encoder, encoder_dir(args.run_dir, modality),
                                  input_dim=int(feature_set.dims[modality]), l2_normalize=config.export.l2_normalize)
            print(f"{modality}: {path}")
        return 0
    best = os.path.join(args.run_dir, "checkpoints", "best.weights.h5")
    if not os.path.exists(best):
        raise ModelInputError(f"{args.run_dir} has no checkpoints/best.weights.h5 to export")
    feature_set = load_data(config)
    model = build_model(config, data_spec(config, feature_set))
    model.load_weights(best)
    for modality, path in export_model(model, args.run_dir, l2_normalize=config.export.l2_normalize).items():
        print(f"{modality}: {path}")
    return 0


if __name__ == "__main__":
    run(main)
