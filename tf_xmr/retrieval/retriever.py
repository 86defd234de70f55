"""The Python API over a retriever SavedModel: ``Retriever.load(path).search(features, k)``.

    from tf_xmr import Retriever

    retriever = Retriever.load("saved_models/acmr-<timestamp>/export/text2image_retriever")
    keys, scores = retriever.search(text_features, k=10)      # str (b, 10), float32 (b, 10), best first

The exact backend runs the SavedModel's own ``serving_default`` (the graph TF Serving runs), so Python and TF Serving
answer alike. A retriever built with an approximate backend embeds the query with the SavedModel's ``embed_query``
and searches the stored index (``assets.extra/ann``); ``exact=True`` ignores that index.
"""

from __future__ import annotations

import os

import numpy as np

from tf_xmr.errors import ModelInputError
from tf_xmr.retrieval.index import ANN_FOLDER, EMBED_SIGNATURE, INPUT_NAME, RETRIEVER_SIGNATURE


class Retriever:
    """A loaded retriever: query features in, the top k gallery items out.

    Attributes:
        path: the version folder loaded.
        query, target: the modality asked with and the modality ranked.
        distance: the run's distance (``cosine``, ``inner`` or ``euclidean``); ``scores`` are higher-is-better.
        k: results per query built into the exact graph.
        keys: str (n,) the gallery's keys, in index order; ``classes`` str (n,) their class names ("" if unknown).
        backend: ``exact`` or the approximate backend in use.
        metadata: the version's ``assets.extra/tf_xmr.json``.
    """

    def __init__(self, path: str, *, exact: bool = False):
        import tensorflow as tf

        from tf_xmr.export.saved_model import read_metadata

        self.path = path
        self.metadata = read_metadata(path)
        if self.metadata.get("kind") != "retriever":
            raise ModelInputError(f"{path} is not a tf_xmr retriever (its assets.extra/tf_xmr.json says "
                                  f"{self.metadata.get('kind', 'nothing')!r})")
        try:
            self._loaded = tf.saved_model.load(path)
            self._serve = self._loaded.signatures[RETRIEVER_SIGNATURE]
            self._embed = self._loaded.signatures[EMBED_SIGNATURE]
            self.keys = np.char.decode(self._loaded.gallery_keys.numpy().astype(bytes), "utf-8")
            self.classes = np.char.decode(self._loaded.gallery_classes.numpy().astype(bytes), "utf-8")
        except (OSError, ValueError, KeyError, AttributeError, tf.errors.OpError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelInputError(f"{path} is not a readable tf_xmr retriever SavedModel ({reason})") from None
        self.query = self.metadata["query"]
        self.target = self.metadata["target"]
        self.distance = self.metadata["distance"]
        self.k = int(self.metadata["k"])
        self.input_dim = int(self.metadata["inputs"][INPUT_NAME]["shape"][-1])
        self._ann = None
        ann_dir = os.path.join(path, "assets.extra", ANN_FOLDER)
        if not exact and os.path.isdir(ann_dir):
            from tf_xmr.retrieval.ann import ApproximateIndex

            self._ann = ApproximateIndex.load(ann_dir)
        self.backend = self._ann.backend if self._ann is not None else "exact"

    @classmethod
    def load(cls, path: str, *, version: int | None = None, exact: bool = False) -> Retriever:
        """Load a retriever from its version folder, or from its model folder (``version``, default the latest).

        Raises:
            ModelInputError: no such folder or version, or not a retriever SavedModel.
        """
        from tf_xmr.export.saved_model import versions

        if os.path.exists(os.path.join(path, "saved_model.pb")):
            if version is not None:
                raise ModelInputError(f"{path} is already a version folder; pass its model folder with version=")
            return cls(path, exact=exact)
        found = versions(path)
        if not found:
            raise ModelInputError(f"{path} holds no retriever version (no <integer>/saved_model.pb)")
        chosen = found[-1] if version is None else int(version)
        if chosen not in found:
            raise ModelInputError(f"retriever version {chosen} not found under {path}; available: {found}")
        return cls(os.path.join(path, str(chosen)), exact=exact)

    @property
    def size(self) -> int:
        """Number of gallery items."""
        return int(self.keys.shape[0])

    def search(self, features, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` gallery keys and scores for each query row.

        Args:
            features: query features (b, d_query) (or one row (d_query,)), as the query encoder was trained on.
            k: results per query (default: the built k; the exact graph answers at most the built k).

        Returns:
            ``(keys, scores)``: str (b, k) and float32 (b, k), best first, ties to the lower gallery index.
        """
        indices, scores = self.search_indices(features, k)
        return self.keys[indices], scores

    def search_indices(self, features, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with gallery row indices int64 (b, k) instead of keys."""
        from tf_xmr.export.saved_model import as_features, run_signature

        k = self._check_k(k)
        features = np.asarray(features) if not hasattr(features, "shape") else features
        if getattr(features, "ndim", None) == 1:
            features = features[None, :]
        tensor = as_features(features, self.path, self.input_dim)
        if self._ann is not None:
            query = run_signature(self._embed, self.path, **{INPUT_NAME: tensor})["embedding"].numpy()
            return self._ann.search(query, k)
        out = run_signature(self._serve, self.path, **{INPUT_NAME: tensor})
        return out["indices"].numpy()[:, :k], out["scores"].numpy()[:, :k]

    def _check_k(self, k: int | None) -> int:
        if k is None:
            return min(self.k, self.size)
        if int(k) < 1:
            raise ModelInputError(f"k must be at least 1, got {k}")
        if self._ann is None and int(k) > self.k:
            raise ModelInputError(f"{self.path} was built with k={self.k}; rebuild it with --k {int(k)} to ask for "
                                  f"{int(k)} results")
        return min(int(k), self.size)

    def __repr__(self) -> str:
        return (f"Retriever({self.query} -> {self.target}, {self.size} items, k={self.k}, {self.distance}, "
                f"{self.backend}, {self.path!r})")
