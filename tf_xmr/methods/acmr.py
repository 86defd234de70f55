"""ACMR: Adversarial Cross-Modal Retrieval (Wang, Yang, Xu, Hanjalic, Shen; ACM MM 2017).

Two tanh projectors map image and text features into a common space. The projectors (with a shared label classifier)
minimise the embedding loss (Eq. 8: alpha * L_imi + beta * L_imd + L_reg) while a modality classifier behind a gradient
reversal layer tries to tell image vectors from text vectors (L_adv, Eq. 1); the reversal makes the projectors
maximise L_adv (Eq. 9). Algorithm 1 alternates k projector steps with one modality-classifier step.

Every gap the paper leaves is a field of ``ACMRConfig`` whose comment gives the source: [PAPER] the paper,
[CODE] the authors' demo code, [REC] the project's implementation spec (specs/acmr.md) where the paper is silent.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
import tensorflow as tf

from tf_xmr.config import cfg_field
from tf_xmr.errors import ConfigError
from tf_xmr.layers import GradientReversal, mlp
from tf_xmr.losses import acmr_structure_loss, frobenius_norm_sum, label_cross_entropy
from tf_xmr.losses.adversarial import discriminator_loss
from tf_xmr.methods.base import AdversarialModel, DataSpec, Player, gather_replicas
from tf_xmr.methods.registry import register_method


def _default_hidden_units():
    # [PAPER Sec. 4.1.2] "V -> 2000 -> 200 for image modality and T -> 500 -> 200 for text modality".
    return {"image": (2000,), "text": (500,)}


@dataclasses.dataclass(frozen=True)
class ACMRConfig:
    """ACMR hyperparameters (``model:`` section of an ACMR config)."""

    # [PAPER Sec. 4.1.2] common-space dimension m = 200 (the demo code uses 40).
    common_dim: int = cfg_field(200, ge=1)
    # Hidden widths of each modality's projector f_V / f_T, keyed by modality name [PAPER Sec. 4.1.2].
    hidden_units: dict[str, tuple[int, ...]] = cfg_field(default_factory=_default_hidden_units)
    # [PAPER] "activated by tanh"; tanh on the output layer too [REC A1/3.1, CODE].
    activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
    # Dropout after each hidden projector layer; the paper mentions dropout only for Pascal, without a rate [REC A18].
    dropout: float = cfg_field(0.0, ge=0.0, lt=1.0)
    # [PAPER Sec. 4.1.2] modality classifier "f -> 50 -> 2".
    discriminator_hidden: int = cfg_field(50, ge=1)
    # Hidden activation of the modality classifier: not given; tanh for consistency with the projectors [REC A2].
    discriminator_activation: Literal["tanh", "relu", "linear"] = "tanh"
    # One label classifier shared by both modalities: Eq. 2 has a single theta_imd [REC A1].
    shared_classifier: bool = True
    # alpha: weight of L_imi in Eq. 8 (Eq. 8, not the swapped roles of Sec. 4.3.4 [REC A9]); the paper tunes
    # alpha and beta over {0.01, 0.1, 1, 10, 100} and reports no values, so start at 0.1 and tune on validation.
    alpha: float = cfg_field(0.1, ge=0.0)
    # beta: weight of L_imd in Eq. 8 (see alpha).
    beta: float = cfg_field(0.1, ge=0.0)
    # Weight of L_reg (Eq. 7, unsquared Frobenius norms of the projector kernels); 1 in Eq. 8 [PAPER], lower it if
    # the embeddings collapse [REC A8].
    reg_weight: float = cfg_field(1.0, ge=0.0)
    # mu: margin of Eqs. 4-5, not given by the paper; tanh embeddings keep distances <= 2*sqrt(200) [REC A5].
    margin: float = cfg_field(1.0, gt=0.0)
    # lambda in Eqs. 4-5, the weight of the negative hinge: "fixing the value of lambda at 0.05" [PAPER Sec. 4.1.2].
    lambda_neg: float = cfg_field(0.05, ge=0.0)
    # lambda in Algorithm 1 line 8, the modality classifier's step multiplier (lr_D = lambda_D * lr) [PAPER; REC A3
    # splits the overloaded lambda into lambda_neg and lambda_d].
    lambda_d: float = cfg_field(0.05, gt=0.0)
    # Gradient reversal strength: the GRL "multiplies ... by -1" [PAPER Sec. 3.5], so the Eq. 9 weight on L_adv is 1.
    adv_weight: float = cfg_field(1.0, ge=0.0)
    # constant strength [PAPER], or the DANN ramp 2/(1+exp(-10p))-1 of the demo code [CODE] (p = training progress).
    grl_schedule: Literal["constant", "dann"] = "constant"
    # k: projector steps per modality-classifier step in Algorithm 1 [PAPER: k = 5].
    k: int = cfg_field(5, ge=1)
    # "alternating" = Algorithm 1 (k projector steps, then one classifier step on the last batch); "joint" = one
    # optimiser over all parameters through the GRL, the "performed simultaneously" reading of Sec. 3.5 [REC A4].
    schedule: Literal["alternating", "joint"] = "alternating"
    # Triplet mining inside the batch: every valid triplet ("all") or farthest positive / closest negative ("hard",
    # the likely use of the paper's "sorted" distances) [REC A6].
    mining: Literal["all", "hard"] = "all"
    # Positives: every other-modality item sharing a label ("label") or only the paired item ("paired") [REC A6].
    positives: Literal["label", "paired"] = "label"
    # Reduction of Eqs. 4-5: per-anchor means ("mean", scale independent of batch composition) or the literal triple
    # sum ("sum") [REC A7].
    reduction: Literal["mean", "sum"] = "mean"
    # Ablation switches (named by the active loss, never by "alpha = 0") [REC A9; Table 5].
    use_imi: bool = True
    use_imd: bool = True
    use_adv: bool = True


@register_method("acmr", ACMRConfig, "Adversarial Cross-Modal Retrieval (Wang et al., MM 2017)")
class ACMR(AdversarialModel):
    """ACMR model: projectors (generator side), shared label classifier, modality classifier behind a GRL.

    Args:
        config: ``ACMRConfig``.
        spec: ``DataSpec`` with exactly two modalities (the first is treated as the image side, the second as the
            text side, which only matters for the modality classifier's targets).
    """

    def __init__(self, config: ACMRConfig, spec: DataSpec, **kwargs):
        super().__init__(spec, name="acmr", **kwargs)
        if len(spec.modalities) != 2:
            raise ConfigError(f"ACMR needs exactly two modalities, the data has {list(spec.modalities)}")
        missing = [m for m in spec.modalities if m not in config.hidden_units]
        if missing:
            raise ConfigError(
                f"config key 'model.hidden_units' has no entry for modality {missing[0]!r}; "
                f"the data's modalities are {list(spec.modalities)}"
            )
        self.config = config
        self.image_modality, self.text_modality = spec.modalities
        self.projectors = {}
        self.encoders = {}
        for modality in spec.modalities:
            tower = mlp(
                (*config.hidden_units[modality], config.common_dim),
                activation=config.activation,
                dropout=config.dropout,
                name=f"{modality}_projector",
            )
            self.projectors[modality] = tower
            encoder = keras.Sequential(
                [keras.Input((spec.dims[modality],), name=f"{modality}_features"), spec.standardizer(modality), tower],
                name=f"{modality}_encoder",
            )
            self.encoders[modality] = encoder
        if config.shared_classifier:
            shared = keras.layers.Dense(spec.num_classes, name="label_classifier")
            self.label_classifiers = {m: shared for m in spec.modalities}
        else:
            self.label_classifiers = {
                m: keras.layers.Dense(spec.num_classes, name=f"{m}_label_classifier") for m in spec.modalities
            }
        self.gradient_reversal = GradientReversal(config.adv_weight, name="gradient_reversal")
        self.modality_classifier = keras.Sequential(
            [
                keras.layers.Dense(
                    config.discriminator_hidden,
                    activation=None if config.discriminator_activation == "linear" else config.discriminator_activation,
                ),
                keras.layers.Dense(2),
            ],
            name="modality_classifier",
        )

    def gradient_reversal_layers(self):
        return [self.gradient_reversal]

    def gradient_reversal_schedule(self):
        return self.config.grl_schedule, self.config.adv_weight

    def _classifier_modules(self):
        # The shared classifier appears once, so its variables are not updated twice.
        return tuple({id(c): c for c in self.label_classifiers.values()}.values())

    def players(self):
        embedding_terms = ("loss", "imi", "imd", "reg", "adv", "modality_accuracy")
        generator_modules = (*self.projectors.values(), *self._classifier_modules())
        if self.config.schedule == "joint":
            # One optimiser over everything: the GRL alone turns min L_adv (classifier) into max L_adv (projectors).
            return [Player("embedding", (*generator_modules, self.modality_classifier), embedding_terms)]
        return [
            Player("embedding", generator_modules, embedding_terms),
            Player(
                "discriminator",
                (self.modality_classifier,),
                ("loss", "accuracy"),
                every=self.config.k,
                learning_rate_scale=self.config.lambda_d,
            ),
        ]

    def _modality_loss(self, image_embeddings, text_embeddings, training):
        """L_adv (Eq. 1): the modality classifier's two-way cross-entropy, each side averaged over the batch; plus the
        classifier's accuracy.

        "The projected features from an image are assigned the label 01, while the projected features from a text are
        assigned the label 10" [PAPER Sec. 3.3]: image embeddings are class 1, text embeddings class 0.
        """
        return discriminator_loss(self.modality_classifier(image_embeddings, training=training),
                                  self.modality_classifier(text_embeddings, training=training))

    def player_losses(self, player, batch, training):
        cfg = self.config
        image = self.encoders[self.image_modality](batch[self.image_modality], training=training)
        text = self.encoders[self.text_modality](batch[self.text_modality], training=training)
        labels = batch["labels"]
        if player == "discriminator":
            # Algorithm 1 line 8: only theta_D moves, on the projections of the last batch.
            loss, accuracy = self._modality_loss(tf.stop_gradient(image), tf.stop_gradient(text), training)
            return {"loss": loss, "accuracy": accuracy}

        zero = tf.constant(0.0)
        imi = zero
        if cfg.use_imi:
            # Triplets are mined over the whole batch: under tf.distribute, over the batch gathered from every
            # replica, so the term (and its gradient) equals the single-device one (gather_replicas).
            all_image, all_text, all_labels = gather_replicas((image, text, labels))
            imi = acmr_structure_loss(
                all_image, all_text, all_labels, margin=cfg.margin, negative_weight=cfg.lambda_neg,
                mining=cfg.mining, positives=cfg.positives, reduction=cfg.reduction,
            )
        imd = (
            label_cross_entropy(labels, self.label_classifiers[self.image_modality](image, training=training))
            + label_cross_entropy(labels, self.label_classifiers[self.text_modality](text, training=training))
            if cfg.use_imd else zero
        )
        # Eq. 7 covers the projectors' weight matrices only (not biases, classifier or discriminator).
        kernels = [layer.kernel for tower in self.projectors.values() for layer in tower.layers
                   if hasattr(layer, "kernel")]
        reg = frobenius_norm_sum(kernels)
        adv, accuracy = self._modality_loss(self.gradient_reversal(image), self.gradient_reversal(text), training)
        loss = cfg.alpha * imi + cfg.beta * imd + cfg.reg_weight * reg
        if cfg.use_adv:
            # Through the GRL: the projectors receive -grad(L_adv), i.e. they maximise it (Eq. 9).
            loss = loss + adv
        return {"loss": loss, "imi": imi, "imd": imd, "reg": reg, "adv": adv, "modality_accuracy": accuracy}
