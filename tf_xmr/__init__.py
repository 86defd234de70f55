"""tf_xmr: adversarial cross-modal retrieval in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``from tf_xmr import Retriever`` without importing TensorFlow at ``import tf_xmr`` (PEP 562).
    if name == "Retriever":
        from tf_xmr.retrieval import Retriever

        return Retriever
    raise AttributeError(f"module 'tf_xmr' has no attribute {name!r}")
