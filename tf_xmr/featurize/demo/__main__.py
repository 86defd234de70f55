"""python -m tf_xmr.featurize.demo --out DIR [--per-class 50] [--seed 0]: write the demo raw dataset."""

import argparse

from tf_xmr.cli import run
from tf_xmr.featurize.demo import __doc__ as DOC
from tf_xmr.featurize.demo import write_demo


def main(argv=None, prog: str = "python -m tf_xmr.featurize.demo") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=DOC.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the manifest, images and texts into")
    parser.add_argument("--per-class", type=int, default=50, help="items per class (6 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_demo(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {path} ({6 * args.per_class} items, 6 classes)")
    return 0


if __name__ == "__main__":
    run(main)
