"""Ask a run's retriever for the top k items of the other modality and print them.

    python retrieve.py --run-dir DIR --query text (--features Q.npy | --query-key ID) [--target image] [--k 10]
                       [--json] [--exact]
    python retrieve.py --run-dir DIR --query-text "a caption" | --query-image photo.jpg    (featurized runs)

``--features`` takes a .npy (or single-array .npz) of query feature rows (n, d_query) or one row (d_query,);
``--query-key`` takes an item of the run's own data ("the images for this article"); ``--query-text`` and
``--query-image`` take raw inputs when the run trained on data written by ``python -m tf_xmr.featurize``, featurized
with the featurizers saved there. The retriever is the latest
version of ``<run_dir>/export/<query>2<target>_retriever`` (``python -m tf_xmr.retrieval build`` writes it).
"""

import argparse
import json
import os

from tf_xmr.cli import quiet_tensorflow


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a run directory with a built retriever")
    parser.add_argument("--query", help="the modality asked with, e.g. text (implied by --query-text/--query-image)")
    parser.add_argument("--target", help="the modality ranked (default: the run's other modality)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--features", metavar="Q.npy", help="query feature rows (.npy, or an .npz with one array)")
    given.add_argument("--query-key", metavar="ID", help="an item of the run's data, by its key")
    given.add_argument("--query-text", metavar="TEXT", action="append",
                       help="a raw text (repeatable), featurized as the run's training data was (featurized runs)")
    given.add_argument("--query-image", metavar="PATH", action="append",
                       help="an image file (repeatable), featurized as the run's training data was (featurized runs)")
    parser.add_argument("--k", type=int, help="results per query (default: the retriever's k)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--exact", action="store_true", help="ignore an approximate index; rank by brute force")
    args = parser.parse_args(argv)
    quiet_tensorflow()
    from tf_xmr.errors import ConfigError
    from tf_xmr.retrieval.index import retriever_dir, retriever_name
    from tf_xmr.retrieval.queries import featurize_query, query_by_key, read_query_features, run_direction
    from tf_xmr.retrieval.retriever import Retriever

    raw_modality = "text" if args.query_text else "image" if args.query_image else None
    if raw_modality and args.query not in (None, raw_modality):
        raise ConfigError(f"--query-{raw_modality} asks with a {raw_modality}; drop --query {args.query} or use it")
    if raw_modality is None and args.query is None:
        raise ConfigError("say which modality asks with --query (or give --query-text / --query-image)")
    query, target = run_direction(args.run_dir, args.query or raw_modality, args.target)
    model_dir = retriever_dir(args.run_dir, query, target)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{args.run_dir} has no {retriever_name(query, target)}; build one with "
                          f"python -m tf_xmr.retrieval build --run-dir {args.run_dir} --target {target}")
    retriever = Retriever.load(model_dir, exact=args.exact)
    if args.features:
        features = read_query_features(args.features, query)
        names = [f"row {i}" for i in range(features.shape[0])]
        classes = [""] * len(names)
    elif raw_modality:
        raw = args.query_text or args.query_image
        features = featurize_query(args.run_dir, raw_modality, raw)
        names, classes = [repr(item) if raw_modality == "text" else item for item in raw], [""] * len(raw)
    else:
        features, class_name = query_by_key(args.run_dir, query, args.query_key)
        names, classes = [args.query_key], [class_name]
    indices, scores = retriever.search_indices(features, args.k)
    answers = [
        {"query": name, "query_class": cls,
         "results": [{"rank": r + 1, "key": str(retriever.keys[i]), "class": str(retriever.classes[i]),
                      "score": float(s), "index": int(i)} for r, (i, s) in enumerate(zip(row, row_scores,
                                                                                       strict=True))]}
        for name, cls, row, row_scores in zip(names, classes, indices, scores, strict=True)
    ]
    if args.json:
        print(json.dumps({"retriever": retriever.path, "query": query, "target": target,
                          "distance": retriever.distance, "backend": retriever.backend, "queries": answers},
                         indent=2))
        return 0
    print(f"retriever: {retriever.path} ({retriever.size} {target} items, {retriever.distance}, {retriever.backend})")
    width = max([len(str(k)) for k in retriever.keys[indices.ravel()]] + [3])
    for answer in answers:
        label = f" ({answer['query_class']})" if answer["query_class"] else ""
        print(f"\n{query} {answer['query']}{label}:")
        print(f"{'rank':>4}  {'key':<{width}}  {'class':<14}  score")
        for result in answer["results"]:
            print(f"{result['rank']:>4}  {result['key']:<{width}}  {result['class'] or '-':<14}  "
                  f"{result['score']:.4f}")
    return 0
