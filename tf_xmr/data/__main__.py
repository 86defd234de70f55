"""Data utilities.

    python -m tf_xmr.data convert --config FILE --out DIR [--shards N] [--set KEY=VALUE ...]

``convert`` loads the feature set a config's ``data:`` section describes (with its train/val/test split) and writes
sharded TFRecords plus a ``dataset.json`` sidecar; train on them with ``--set data.source=records --set data.root=DIR``.
"""

import argparse

from tf_xmr.cli import add_override_argument, quiet_tensorflow, run


def main(argv=None, prog: str = "python -m tf_xmr.data") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write a config's feature set as sharded TFRecords")
    convert.add_argument("--config", required=True)
    convert.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    convert.add_argument("--shards", type=int, default=4, help="shards per split")
    add_override_argument(convert)
    args = parser.parse_args(argv)

    quiet_tensorflow()
    from tf_xmr.data.from_config import load_feature_set
    from tf_xmr.data.records import write_records
    from tf_xmr.experiment import load_experiment

    config = load_experiment(args.config, args.overrides)
    feature_set = load_feature_set(config.data, seed=config.seed)
    write_records(feature_set, args.out, num_shards=args.shards)
    def count(split) -> str:
        # An unpaired split has one count per modality (SDML's unpaired data); a paired one a single count.
        if split.paired:
            return str(split.num_examples())
        return "/".join(f"{m} {split.num_examples(m)}" for m in feature_set.modalities)

    counts = ", ".join(f"{name}={count(split)}" for name, split in feature_set.splits.items())
    print(f"wrote {feature_set.name} ({counts}) to {args.out}")
    return 0


if __name__ == "__main__":
    run(main)
