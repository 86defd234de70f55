"""X-GACMN: X-shaped Generative Adversarial Cross-Modal Network with hypersphere embedding (Guo, Liang, Kong, Song,
He).

Two generators cross in a shared common space like an "X": G_I encodes an image feature ``v_o`` into a common vector
``v_c`` and decodes it into a synthetic TEXT feature ``t_r``; G_T encodes ``t_o`` into ``t_c`` and decodes a synthetic
IMAGE feature ``v_r`` (spec A1). Three discriminators judge the three spaces: D_I real vs synthetic image features,
D_T real vs synthetic text features, D_C image vs text common vectors (Eqs. 1-3). The generators minimise (Eqs. 10-11)

    L_G = lambda1 L_l2 + lambda2 (L_Gi + L_Gt) + lambda3 (L_A-softmax,i + L_A-softmax,t)

where L_l2 pulls paired common vectors together and the A-softmax head (angular margin m, class weights W shared by
both modalities, Eqs. 8-9) puts both modalities on one hypersphere. Algorithm 1 alternates one discriminator step with
K generator steps. Retrieval uses the two encoders only.

Every gap the paper leaves is a field of ``XGACMNConfig`` whose comment gives the source: [PAPER] the paper, [REC] the
project's implementation spec (specs/x_gacmn.md, section or ambiguity number), [EXT] public reference code cited there.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
import tensorflow as tf

from tf_xmr.config import cfg_field
from tf_xmr.errors import ConfigError
from tf_xmr.layers import AngularMarginSoftmax, mlp
from tf_xmr.losses import label_cross_entropy
from tf_xmr.losses.adversarial import discriminator_loss, generator_adversarial_loss, pair_consistency_loss
from tf_xmr.methods.base import AdversarialModel, DataSpec, Player
from tf_xmr.methods.registry import register_method


@dataclasses.dataclass(frozen=True)
class XGACMNConfig:
    """X-GACMN hyperparameters (``model:`` section of an X-GACMN config)."""

    # d_c: "the 100 dimensional output is the common subspace representation" [PAPER Sec. 4.2].
    common_dim: int = cfg_field(100, ge=1)
    # Encoder widths before the common layer, V -> 512 -> 100 -> (d_c) [PAPER Sec. 4.2]; the encoder/decoder split
    # after FC3 is the spec's reading of "in the middle" [REC A7].
    encoder_units: tuple[int, ...] = cfg_field((512, 100), ge=1)
    # Decoder widths between the common layer and the output, (d_c) -> 100 -> 512 -> T (or V) [PAPER Sec. 4.2].
    decoder_units: tuple[int, ...] = cfg_field((100, 512), ge=1)
    # "6 fully connected layers with tanh as active function" [PAPER Sec. 4.2]; the common layer keeps tanh too
    # (the 2-d visualisation "removes the last tanh") [REC 3.1].
    activation: Literal["tanh", "relu", "leaky_relu"] = "tanh"
    # Output of the decoders: tanh as the other five layers [PAPER], so the real features they imitate must be scaled
    # into (-1, 1) (data.standardize: l2) [REC A8]; "linear" is the spec's alternative for unbounded (z-scored) inputs.
    decoder_output_activation: Literal["tanh", "linear"] = "tanh"
    # Dropout after each hidden generator layer: not mentioned [REC 3.1: none].
    dropout: float = cfg_field(0.0, ge=0.0, lt=1.0)
    # Hidden width of the synthetic-data discriminators D_I, D_T: "V(T) -> 2000 -> 2" [PAPER Sec. 4.2].
    synthetic_discriminator_hidden: int = cfg_field(2000, ge=1)
    # Hidden width of the modality discriminator D_C: "100 -> 50 -> 2" [PAPER Sec. 4.2].
    common_discriminator_hidden: int = cfg_field(50, ge=1)
    # Hidden activation of all discriminators: not given; LeakyReLU(0.2) [REC 3.2, A5] (Keras' default slope is 0.2).
    discriminator_activation: Literal["leaky_relu", "tanh", "relu", "linear"] = "leaky_relu"
    # Label head shared by both modalities [PAPER Sec. 3.3]: "angular_margin" = A-softmax (Eqs. 8-9);
    # "softmax" = Dense(C) with bias and plain softmax (Eq. 6), the "with L_Softmax" row of Table 3 [REC 8].
    classifier: Literal["angular_margin", "softmax"] = "angular_margin"
    # m, the integer angular margin of psi (Eq. 9): "m = 5" [PAPER Sec. 4.2].
    margin: int = cfg_field(5, ge=1)
    # SphereFace's lambda annealing of the target logit, f_y = ||x||(lambda cos + psi)/(1 + lambda): not in the paper,
    # ON because m = 5 from scratch is unstable [REC 4.3, A6]. False fixes lambda = lambda_min.
    anneal_lambda: bool = True
    # lambda = max(lambda_min, base (1 + gamma iter)^-power), iter = generator steps [REC 4.3; EXT wy1iu/sphereface
    # sphereface_model.prototxt: base 1000, gamma 0.12, power 1, lambda_min 5].
    lambda_base: float = cfg_field(1000.0, ge=0.0)
    lambda_gamma: float = cfg_field(0.12, ge=0.0)
    lambda_power: float = cfg_field(1.0, ge=0.0)
    # Final lambda; 0 = pure A-softmax of Eq. 8 at the end of training (ablation) [REC A6].
    lambda_min: float = cfg_field(5.0, ge=0.0)
    # Scale of the A-softmax logits. null = SphereFace's form, the paper's "the input features are not normalised"
    # [PAPER Sec. 3.3]: the logits scale with ||x||. A number s = the common vectors are normalised inside the head
    # and the logits are s cos / s psi (the normalised form of NormFace and SphereFace-R).
    feature_scale: float | None = cfg_field(None, gt=0.0)
    # lambda1, weight of L_l2 in Eqs. 10-11: "lambda1 = 10" [PAPER Sec. 4.2].
    l2_weight: float = cfg_field(10.0, ge=0.0)
    # lambda2, weight of the generator adversarial losses L_Gi + L_Gt: "lambda2 = 5" [PAPER Sec. 4.2].
    adversarial_weight: float = cfg_field(5.0, ge=0.0)
    # lambda3, weight of the A-softmax losses: "lambda3 = 100" [PAPER Sec. 4.2]; 0 is the "without L_A-Softmax" row of
    # Table 3.
    softmax_weight: float = cfg_field(100.0, ge=0.0)
    # Form of L_l2 (no equation in the paper): Frobenius norm of V_c - T_c over the batch, as ACMR_demo [REC A3, 4.4];
    # mean_norm / mean_squared are the spec's alternatives [REC 4.4]; normalized_mean_squared measures the pairs after
    # L2 normalisation, i.e. the distance a cosine ranking reads (tf_xmr.losses.adversarial.pair_consistency_loss).
    l2_form: Literal["frobenius", "mean_norm", "mean_squared", "normalized_mean_squared"] = "frobenius"
    # Generator adversarial terms. Eqs. 4-5 minimised as printed push 3 of their 4 terms the WRONG way (they help
    # D_I, D_T and, for text, D_C). Default "nonsaturating": the standard fool-the-discriminator loss -log D(G(x)) with
    # flipped labels, counted once [REC A2]. "literal": Eqs. 4-5 exactly as printed (reproduces the paper's sign
    # errors). "minimax": the -L_D terms of Eq. 12 (log(1 - D(G(x)))).
    adversarial_form: Literal["nonsaturating", "minimax", "literal"] = "nonsaturating"
    # Paired cross-modal reconstruction ||G_I(v_o) - t_o||^2 + ||G_T(t_o) - v_o||^2: the paper has none (decoders learn
    # only adversarially) [REC 4.5, A4: extension, default 0].
    reconstruction_weight: float = cfg_field(0.0, ge=0.0)
    # K, generator steps per discriminator step (Algorithm 1 lines 4-7); not given, K = 1 [REC 5].
    generator_steps: int = cfg_field(1, ge=1)
    # Ablations of Table 3 [REC 8]: "without D_C" drops D_C and its generator terms; "without D_I and D_T" drops both
    # synthetic-data discriminators (and, without reconstruction, the decoders, which then get no gradient).
    use_common_discriminator: bool = True
    use_synthetic_discriminators: bool = True


# Class 1 of each 2-way discriminator is what the paper's D(x) denotes (see tf_xmr.losses.adversarial).
_REAL, _SYNTHETIC = 1, 0
_IMAGE, _TEXT = 1, 0  # Eq. 3: image common vectors are labelled "1".


def _discriminator(hidden: int, activation: str, name: str) -> keras.Sequential:
    """``d -> hidden -> 2`` logits (the 2-way softmax lives in the losses)."""
    return keras.Sequential(
        [keras.layers.Dense(hidden, activation=None if activation == "linear" else activation), keras.layers.Dense(2)],
        name=name,
    )


@register_method("x_gacmn", XGACMNConfig, "X-shaped Generative Adversarial Cross-Modal Network (Guo et al.)")
class XGACMN(AdversarialModel):
    """X-GACMN: two crossing encoder-decoder generators, three discriminators, a shared A-softmax head.

    Sub-models (modality names from the data; the first plays "image", the second "text"):

    - ``projectors[m]``: encoder of modality m, standardised (batch, d_m) -> common (batch, common_dim);
      ``encoders[m]`` = standardiser + projector, raw features in (what is evaluated and exported).
    - ``decoders[m]``: common vector of modality m -> synthetic feature of the OTHER modality; ``decoders[image]`` is
      G_I_dec (t_r, (batch, d_text)), ``decoders[text]`` is G_T_dec (v_r, (batch, d_image)).
    - ``synthetic_discriminators[m]``: real vs synthetic features of modality m (D_I for image, D_T for text).
    - ``common_discriminator``: D_C, image vs text common vectors.
    - ``classifier``: the label head shared by both modalities (A-softmax or, for the ablation, softmax).

    Players: ``discriminator`` (D_I, D_T, D_C together: their variables are disjoint, so one summed loss gives each its
    own gradient) updates every ``generator_steps``-th step before the ``generator`` (both encoders, both decoders and
    the shared head, Eq. 12 with one optimiser over G_I u G_T u W [REC A17]) updates on every step.

    Args:
        config: ``XGACMNConfig``.
        spec: ``DataSpec`` with exactly two modalities.
    """

    def __init__(self, config: XGACMNConfig, spec: DataSpec, **kwargs):
        super().__init__(spec, name="x_gacmn", **kwargs)
        if len(spec.modalities) != 2:
            raise ConfigError(
                f"X-GACMN needs exactly two modalities (image, text); the data has {list(spec.modalities)}"
            )
        self.config = config
        self.image_modality, self.text_modality = spec.modalities
        self.other = {self.image_modality: self.text_modality, self.text_modality: self.image_modality}
        # The decoders learn only from D_I / D_T (and the optional reconstruction); without either they would get no
        # gradient at all, so they are not built.
        self.has_decoders = config.use_synthetic_discriminators or config.reconstruction_weight > 0

        self.standardizers, self.projectors, self.encoders = {}, {}, {}
        self.decoders, self.synthetic_discriminators = {}, {}
        for modality in spec.modalities:
            self.standardizers[modality] = spec.standardizer(modality)
            self.projectors[modality] = mlp(
                (*config.encoder_units, config.common_dim), activation=config.activation, dropout=config.dropout,
                name=f"{modality}_projector",
            )
            self.encoders[modality] = keras.Sequential(
                [keras.Input((spec.dims[modality],), name=f"{modality}_features"), self.standardizers[modality],
                 self.projectors[modality]],
                name=f"{modality}_encoder",
            )
            if self.has_decoders:
                target = self.other[modality]
                self.decoders[modality] = mlp(
                    (*config.decoder_units, spec.dims[target]), activation=config.activation,
                    output_activation=None if config.decoder_output_activation == "linear" else "tanh",
                    dropout=config.dropout, name=f"{modality}_to_{target}_decoder",
                )
            if config.use_synthetic_discriminators:
                self.synthetic_discriminators[modality] = _discriminator(
                    config.synthetic_discriminator_hidden, config.discriminator_activation, f"{modality}_discriminator"
                )
        self.common_discriminator = (
            _discriminator(config.common_discriminator_hidden, config.discriminator_activation, "common_discriminator")
            if config.use_common_discriminator else None
        )
        if config.classifier == "angular_margin":
            self.classifier = AngularMarginSoftmax(
                spec.num_classes, config.margin, anneal=config.anneal_lambda, lambda_base=config.lambda_base,
                lambda_gamma=config.lambda_gamma, lambda_power=config.lambda_power, lambda_min=config.lambda_min,
                feature_scale=config.feature_scale,
                name="angular_margin_softmax",
            )
        else:
            self.classifier = keras.layers.Dense(spec.num_classes, name="softmax_classifier")

    # -- players -------------------------------------------------------------------------------------------------
    def _discriminator_terms(self) -> tuple[str, ...]:
        terms = []
        if self.config.use_synthetic_discriminators:
            terms += ["image_loss", "image_accuracy", "text_loss", "text_accuracy"]
        if self.config.use_common_discriminator:
            terms += ["common_loss", "common_accuracy"]
        return ("loss", *terms)

    def _generator_terms(self) -> tuple[str, ...]:
        terms = ["l2", "softmax_image", "softmax_text"]
        if self.config.classifier == "angular_margin":
            terms.append("lambda")
        if self.config.use_synthetic_discriminators or self.config.use_common_discriminator:
            terms.append("adversarial")
        if self.config.use_synthetic_discriminators:
            terms += ["adversarial_image", "adversarial_text"]
        if self.config.use_common_discriminator:
            terms.append("adversarial_common")
        if self.config.reconstruction_weight > 0:
            terms.append("reconstruction")
        return ("loss", *terms)

    def players(self):
        generator_modules = (*self.projectors.values(), *self.decoders.values(), self.classifier)
        players = []
        discriminators = (*self.synthetic_discriminators.values(),
                          *((self.common_discriminator,) if self.common_discriminator is not None else ()))
        if discriminators:
            # Algorithm 1: one discriminator step (lines 1-3), then K generator steps (lines 4-7); listed first so
            # that on its steps the discriminator moves before the generator.
            players.append(Player("discriminator", discriminators, self._discriminator_terms(),
                                  every=self.config.generator_steps))
        players.append(Player("generator", generator_modules, self._generator_terms()))
        return players

    # -- losses --------------------------------------------------------------------------------------------------
    def _forward(self, batch, training):
        """Standardised real features (v_o, t_o), common vectors (v_c, t_c) and synthetic features (v_r, t_r)."""
        real = {m: self.standardizers[m](batch[m]) for m in self.modalities}
        common = {m: self.projectors[m](real[m], training=training) for m in self.modalities}
        # synthetic[m] = a synthetic feature OF modality m, decoded from the other modality's common vector.
        synthetic = {m: self.decoders[self.other[m]](common[self.other[m]], training=training)
                     for m in self.modalities} if self.has_decoders else {}
        return real, common, synthetic

    def player_losses(self, player, batch, training):
        real, common, synthetic = self._forward(batch, training)
        if player == "discriminator":
            return self._discriminator_losses(real, common, synthetic, training)
        return self._generator_losses(real, common, synthetic, batch["labels"], training)

    def _discriminator_losses(self, real, common, synthetic, training):
        """Eqs. 1-3, minimised over theta_D only: the generator outputs are constants here."""
        out, total = {}, 0.0
        for modality, name in ((self.image_modality, "image"), (self.text_modality, "text")):
            if modality not in self.synthetic_discriminators:
                continue
            disc = self.synthetic_discriminators[modality]
            loss, accuracy = discriminator_loss(disc(real[modality], training=training),
                                                disc(tf.stop_gradient(synthetic[modality]), training=training))
            out[f"{name}_loss"], out[f"{name}_accuracy"] = loss, accuracy
            total += loss
        if self.common_discriminator is not None:
            disc = self.common_discriminator
            loss, accuracy = discriminator_loss(disc(tf.stop_gradient(common[self.image_modality]), training=training),
                                                disc(tf.stop_gradient(common[self.text_modality]), training=training))
            out["common_loss"], out["common_accuracy"] = loss, accuracy
            total += loss
        out["loss"] = total
        return out

    def _head_loss(self, features, labels):
        if self.config.classifier == "angular_margin":
            logits = self.classifier(features, labels=labels)
        else:
            logits = self.classifier(features)
        # Multi-hot labels become a normalised target; single-label data gives the usual CE of Eqs. 6 / 8.
        return label_cross_entropy(labels, logits)

    def _generator_losses(self, real, common, synthetic, labels, training):
        """Eqs. 10-11 summed into one generator objective [REC 4.6]."""
        cfg = self.config
        image, text = self.image_modality, self.text_modality
        out = {}
        out["l2"] = pair_consistency_loss(common[image], common[text], cfg.l2_form)
        if cfg.classifier == "angular_margin":
            # The lambda of this step; the schedule advances once per generator update, not per head call.
            out["lambda"] = self.classifier.lambda_value()
        out["softmax_image"] = self._head_loss(common[image], labels)
        out["softmax_text"] = self._head_loss(common[text], labels)
        if training and cfg.classifier == "angular_margin":
            self.classifier.advance()
        loss = cfg.l2_weight * out["l2"] + cfg.softmax_weight * (out["softmax_image"] + out["softmax_text"])

        adversarial = []
        if self.synthetic_discriminators:
            # G_T's synthetic image is judged by D_I, G_I's synthetic text by D_T (Eqs. 4-5; spec A1).
            for modality, name in ((image, "image"), (text, "text")):
                logits = self.synthetic_discriminators[modality](synthetic[modality], training=training)
                out[f"adversarial_{name}"] = generator_adversarial_loss(logits, _SYNTHETIC, cfg.adversarial_form)
                adversarial.append(out[f"adversarial_{name}"])
        if self.common_discriminator is not None:
            disc = self.common_discriminator
            out["adversarial_common"] = (
                generator_adversarial_loss(disc(common[image], training=training), _IMAGE, cfg.adversarial_form)
                + generator_adversarial_loss(disc(common[text], training=training), _TEXT, cfg.adversarial_form)
            )
            adversarial.append(out["adversarial_common"])
        if adversarial:
            out["adversarial"] = tf.add_n(adversarial)
            loss += cfg.adversarial_weight * out["adversarial"]

        if cfg.reconstruction_weight > 0:
            # Paired targets: G_I's synthetic text should be this pair's text, G_T's synthetic image its image.
            out["reconstruction"] = (
                tf.reduce_mean(tf.reduce_sum(tf.square(synthetic[text] - real[text]), axis=-1))
                + tf.reduce_mean(tf.reduce_sum(tf.square(synthetic[image] - real[image]), axis=-1))
            )
            loss += cfg.reconstruction_weight * out["reconstruction"]
        out["loss"] = loss
        return out
