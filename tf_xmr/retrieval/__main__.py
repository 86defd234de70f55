"""Build or extend a run's retriever: a SavedModel that answers query features with the top k gallery items.

    python -m tf_xmr.retrieval build --run-dir DIR --target image [--query text] [--k 10]
        [--gallery test|val|train|all | --gallery-features F.npz --keys K.txt | --append F.npz --keys K.txt]
        [--backend exact|faiss-hnsw|...]

Writes the next version of ``<run_dir>/export/<query>2<target>_retriever/`` and the run's ``export/models.config``.
"""

import argparse

from tf_xmr.cli import quiet_tensorflow, run


def main(argv=None, prog: str = "python -m tf_xmr.retrieval") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="embed a gallery and write the next retriever version")
    build.add_argument("--run-dir", required=True, help="a finished run directory written by train.py")
    build.add_argument("--target", required=True, help="the modality ranked (the gallery's), e.g. image")
    build.add_argument("--query", help="the modality asked with (default: the run's other modality)")
    source = build.add_mutually_exclusive_group()
    source.add_argument("--gallery", default="test", choices=("test", "val", "train", "all"),
                        help="a split of the run's own data as the gallery (default: test)")
    source.add_argument("--gallery-features", metavar="F.npz", help="your own target features (.npz or .npy)")
    source.add_argument("--append", metavar="F.npz", help="add these target features to the latest version")
    build.add_argument("--keys", metavar="K.txt", help="one key per feature row (with --gallery-features/--append)")
    build.add_argument("--k", type=int, help="results per query (default 10, or the extended version's)")
    build.add_argument("--backend", default="exact",
                       help="exact (brute force in the graph, the default) or an approximate backend: faiss-hnsw, "
                            "faiss-ivf (needs faiss-cpu from requirements-extra.txt)")
    args = parser.parse_args(argv)
    quiet_tensorflow()
    from tf_xmr.retrieval.index import build_retriever

    path = build_retriever(args.run_dir, target=args.target, query=args.query, gallery=args.gallery,
                           gallery_features=args.gallery_features, keys=args.keys, append=args.append, k=args.k,
                           backend=args.backend)
    from tf_xmr.export.saved_model import read_metadata

    meta = read_metadata(path)
    print(f"{meta['query']}2{meta['target']} retriever: {path} ({meta['gallery']['size']} items, k={meta['k']}, "
          f"{meta['distance']}, {meta['backend']})")
    return 0


if __name__ == "__main__":
    run(main)
