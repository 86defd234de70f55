"""Retrieval over a gallery: exact top-k retriever SavedModels, approximate backends and the ``Retriever`` API.

    python -m tf_xmr.retrieval build --run-dir DIR --target image        # the run's test split as the gallery
    python retrieve.py --run-dir DIR --query text --features Q.npy       # the top 10 images per text row

The modules import TensorFlow only when a model is built or loaded.
"""

from tf_xmr.retrieval.index import DEFAULT_K, Gallery, build_retriever, retriever_dir, retriever_name
from tf_xmr.retrieval.retriever import Retriever

__all__ = ["DEFAULT_K", "Gallery", "Retriever", "build_retriever", "retriever_dir", "retriever_name"]
