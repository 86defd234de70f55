"""Re-score a finished run and print a table.

    python evaluate.py --run-dir saved_models/acmr-20261123-120000 [--set eval.k=50 ...] [--preset acmr_demo]
                       [--split test] [--json] [--plot curves.png]

Uses the run's exported SavedModels (or, without exports, its best checkpoint) and the run's config, with any
``--set`` overrides (typically ``eval.*``, or ``data.root`` when the data moved).
"""

import argparse
import json

from tf_xmr.cli import add_override_argument, quiet_tensorflow
from tf_xmr.metrics.retrieval import PRESETS


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a run directory written by train.py")
    add_override_argument(parser)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--preset", choices=tuple(PRESETS), help="a named protocol instead of eval.*")
    parser.add_argument("--source", default="auto", choices=("auto", "export", "checkpoint"),
                        help="score the exported SavedModels or the best checkpoint (auto: exports if present)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="write precision-recall and precision-scope curves")
    args = parser.parse_args(argv)

    if args.plot:
        from tf_xmr.metrics.plots import check_plot_path

        check_plot_path(args.plot)  # before the model is loaded and the split embedded
    quiet_tensorflow()
    from tf_xmr.errors import ConfigError
    from tf_xmr.evaluation import evaluate_run
    from tf_xmr.reporting import format_table

    result = evaluate_run(args.run_dir, args.overrides, split=args.split, preset=args.preset, source=args.source,
                          curves=bool(args.plot))
    if args.plot:
        from tf_xmr.metrics.plots import plot_curves

        try:
            plot_curves(result["curves"], args.plot)
        except OSError as exc:  # a read-only or full file system, a folder where the file should go
            raise ConfigError(f"--plot {args.plot}: cannot write it ({exc.strerror or exc})") from None
    if args.json:
        printable = {k: v for k, v in result.items() if k != "curves"}
        print(json.dumps(printable, indent=2))
    else:
        print(f"model: {result['model']}")
        print(format_table(result, splits=(args.split,)))
        if args.plot:
            print(f"curves written to {args.plot}")
    return 0

