"""Retrieval over a gallery: exact top-k retriever SavedModels, approximate backends and the ``Retriever`` API."""
