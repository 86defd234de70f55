"""Featurize raw images and texts into the feature records tf_xmr trains on.

    python -m tf_xmr.featurize --manifest data/manifest.csv --config configs/featurize/demo.yaml --out data/features
        [--set image.batch_size=16 ...] [--skip-bad] [--quiet]

Then: ``python train.py --config configs/acmr.yaml --set data.source=records --set data.root=data/features``.
"""

import argparse

from tf_xmr.cli import add_override_argument, quiet_tensorflow, run


def main(argv=None, prog: str = "python -m tf_xmr.featurize") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="CSV or JSON Lines: id, split, label, image, text")
    parser.add_argument("--config", required=True, help="a featurize YAML, e.g. configs/featurize/demo.yaml")
    parser.add_argument("--out", required=True, help="the records folder to write (must not exist, or be empty)")
    add_override_argument(parser)
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out items whose image cannot be read (listed in report.json) instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    from tf_xmr.featurize.config import load_featurize_config

    config = load_featurize_config(args.config, args.overrides)  # a typo fails before TensorFlow loads
    quiet_tensorflow()
    from tf_xmr.featurize.pipeline import featurize

    report = featurize(args.manifest, config, args.out, skip_bad=args.skip_bad, quiet=args.quiet)
    for split, counts in report["counts"].items():
        print(f"{split}: " + ", ".join(f"{n} {m}" for m, n in counts.items()))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} unreadable images (listed in {args.out}/report.json)")
    print(f"features written to {args.out}")
    print(f"train on them: python train.py --config configs/acmr.yaml --set data.source=records "
          f"--set data.root={args.out}")
    return 0


if __name__ == "__main__":
    run(main)
