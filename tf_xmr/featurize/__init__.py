"""Raw images and texts in, the project's feature records out; the fitted featurizers for later queries.

    python -m tf_xmr.featurize --manifest M --config configs/featurize/<preset>.yaml --out DIR

    from tf_xmr import featurize
    featurizers = featurize.load(DIR)            # what DIR was made with
    featurizers.text(["a caption"]), featurizers.image(["photo.jpg"])
"""

from tf_xmr.featurize.pipeline import Featurizers, featurize, has_featurizers, load

__all__ = ["Featurizers", "featurize", "has_featurizers", "load"]
