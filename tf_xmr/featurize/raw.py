"""Raw-input signatures: the fitted featurizers that can run as TensorFlow graphs, for exports that take raw inputs.

A run trained on featurized data (``data.source: records`` with ``data.root`` written by ``python -m tf_xmr.featurize``)
exports a second signature per modality whose featurizer is a graph:

- ``image_bytes``: input ``image_bytes`` string[None] (encoded JPEG/PNG/BMP/GIF files) -> decode, resize,
  ``preprocess_input``, the backbone, then the encoder;
- ``text``: input ``text`` string[None] -> the text featurizer's tokenizer, fitted vocabulary and idf weights
  (``bow``/``tfidf``), then the encoder.

LDA and Doc2Vec inference are iterative (an optimisation per document) and stay outside the graph: their runs export
only the features signature, and queries go through ``tf_xmr.featurize.load(DIR).text(...)`` in Python.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np

IMAGE_SIGNATURE = "image_bytes"
TEXT_SIGNATURE = "text"


@dataclasses.dataclass
class RawInput:
    """What an export needs to add a raw-input signature for one modality.

    Attributes:
        signature: the signature name, also the name of its one input (``image_bytes`` or ``text``).
        trackable: the Keras object holding the featurizer's weights or tables; the SavedModel must hold it.
        fn: string tensor (b,) -> float32 features (b, d), TensorFlow ops only.
        example: one raw input (object array of bytes) for TF Serving's warmup request.
    """

    signature: str
    trackable: object
    fn: Callable
    example: np.ndarray


def _example_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_inputs(data_config) -> dict[str, RawInput]:
    """modality -> RawInput for a run's data config: empty unless the run trained on featurized records."""
    from tf_xmr.featurize.pipeline import has_featurizers, load

    if getattr(data_config, "source", None) != "records" or not has_featurizers(data_config.root):
        return {}
    featurizers = load(data_config.root)
    out = {}
    if featurizers.image_featurizer is not None:
        image = featurizers.image_featurizer
        out["image"] = RawInput(IMAGE_SIGNATURE, image.model, image.serving_fn(),
                                np.asarray([_example_png()], dtype=object))
    text = featurizers.text_featurizer
    if text is not None and text.graph_expressible:
        layer = text.keras_layer()
        out["text"] = RawInput(TEXT_SIGNATURE, layer, layer, np.asarray([b"a short caption"], dtype=object))
    return out
