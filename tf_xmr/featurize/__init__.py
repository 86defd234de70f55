"""Raw images and texts in, the project's feature records out (filled by the featurize issue)."""
