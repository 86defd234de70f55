"""JFSE: Joint Feature Synthesis and Embedding (Xu, Lin, Yang, Hanjalic, Shen; TPAMI 44(6), 2022).

Two coupled conditional WGAN-GP modules synthesise image and text features from the SAME class embedding ``c`` plus
independent Gaussian noise: ``v~ = G_v([c, z_v])``, ``t~ = G_t([c, z_t])`` (Eqs. 1-3; critics ``D_v([v, c])``,
``D_t([t, c])``). Two regressors ``R_v``, ``R_t`` map true and synthetic features into the class-embedding space,
which is the common space. They are trained with (i) a distribution-alignment loss between image and text embeddings
(CMPM, CMMD or CMCA, Eqs. 4-13) on true and on synthetic pairs, (ii) a modality discriminator ``D_m`` behind a
gradient reversal layer (Eq. 14), (iii) cycle consistency ``c -> G(c, z) -> R(.) ~ c`` plus the regression of true
features onto their class embedding (Eq. 15). Retrieval uses ``R_v`` and ``R_t`` on true features only (cosine).

Algorithm 1 through the shared train_step template: per batch, ``n_critic`` critic updates (``repeats``), then one
generator, one regressor and one modality-discriminator update, each player with its own optimiser and its own loss.
The default loss weights are the effective weights of the authors' code (spec 4.6, the only fully specified
setting); Eq. 16's scalar beta / gamma / lambda ("paper mode") is the same set of fields with other values.

Every setting is a field of ``JFSEConfig`` whose comment gives its source: [PAPER] the paper, [CODE] the authors'
TF1 code (CFM-MSG/Code_JFSE), [REC] the project's implementation spec (specs/jfse.md, section or ambiguity number).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from tf_xmr.config import cfg_field
from tf_xmr.errors import ConfigError
from tf_xmr.layers import GradientReversal
from tf_xmr.losses import binary_cross_entropy_with_logits
from tf_xmr.losses.alignment import cmpm_loss, coral_loss, mmd_loss
from tf_xmr.losses.wgan import critic_loss, generator_loss, gradient_penalty, interpolate
from tf_xmr.methods.base import AdversarialModel, DataSpec, Player
from tf_xmr.methods.registry import register_method


@dataclasses.dataclass(frozen=True)
class JFSEConfig:
    """JFSE hyperparameters (``model:`` section of a JFSE config). The common-space dimension is the class-embedding
    dimension s (``data.class_embeddings``) [PAPER Sec. 3.1]."""

    # m, the noise dimension; z ~ N(0, I_m) per sample and per modality [CODE m = 300; PAPER Fig. 10d best ~300].
    noise_dim: int = cfg_field(300, ge=1)
    # Hidden width of G_v and G_t: FC(4096) -> act -> FC(d_m) [PAPER Sec. 4.1 / spec 3].
    generator_hidden: int = cfg_field(4096, ge=1)
    # First generator activation: LeakyReLU [PAPER]; the code uses ReLU [CODE] (spec ambiguity 6).
    generator_activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    # Output activation of the generators: ReLU [PAPER, CODE], which needs non-negative (min-max) features; "linear"
    # for z-scored features, whose negative values a ReLU cannot produce [REC ambiguity 8].
    generator_output_activation: Literal["relu", "linear"] = "relu"
    # Hidden width of the critics D_v, D_t: "two FC layers [4096, 1]" with a real-valued score [PAPER].
    critic_hidden: int = cfg_field(4096, ge=1)
    # Hidden widths of the regressors R_v, R_t before the s-d output: [4096, 4096, s] [PAPER]; the code has [4096, s]
    # [CODE] (spec ambiguity 7).
    regressor_hidden: tuple[int, ...] = cfg_field((4096, 4096), ge=1)
    # "each followed by ReLU" [PAPER]; "linear" drops only the final ReLU (for targets with negative values).
    regressor_output_activation: Literal["relu", "linear"] = "relu"
    # Dropout after each hidden regressor layer: not in the paper or code [REC: 0]; a regulariser for small data.
    regressor_dropout: float = cfg_field(0.0, ge=0.0, lt=1.0)
    # Hidden widths of the modality discriminator D_m: GRL -> [300, 150] -> 1, sigmoid [PAPER]; the code has
    # [150, 75] -> 2 linear [CODE] (spec ambiguity 10).
    discriminator_hidden: tuple[int, ...] = cfg_field((300, 150), ge=1)
    # Hidden activation of D_m: unstated; ReLU [REC ambiguity 10] ("linear" = the code's variant).
    discriminator_activation: Literal["relu", "linear"] = "relu"
    # Slope of every LeakyReLU (generator, critics): 0.2, TF's default and the code's [REC 3; CODE].
    leaky_relu_slope: float = cfg_field(0.2, ge=0.0, lt=1.0)
    # Class-embedding preprocessing: one global per-dimension min-max to [0, 1] over all classes [REC 2.5] (the code
    # min-max scales per batch); "l2" unit rows; "none" as loaded.
    class_embedding_scaling: Literal["minmax", "l2", "none"] = "minmax"
    # L_DA scheme (Sec. 3.2.2): cmpm (Eqs. 11-13, default and best in Table 2), cmmd (Eqs. 4-5), cmca (Eqs. 6-10).
    alignment: Literal["cmpm", "cmmd", "cmca"] = "cmpm"
    # eps of Eq. 12 [CODE 1e-8].
    cmpm_epsilon: float = cfg_field(1e-8, gt=0.0)
    # Gradient-penalty weight (alpha in Eq. 1, "lambda" in the text, no value) [CODE 10; REC ambiguity 3].
    gp_weight: float = cfg_field(10.0, ge=0.0)
    # Critic steps per generator step on the same batch (Algorithm 1's overloaded T) [CODE 5; REC ambiguity 4].
    n_critic: int = cfg_field(5, ge=1)
    # Synthetic pairs per true pair (N~ / N_S) [CODE 1; PAPER Fig. 11a best 2 on Wikipedia]; only the first B enter
    # the WGAN terms [REC 4.7].
    synthetic_ratio: int = cfg_field(1, ge=1)
    # Cycle/regression loss (Eq. 15): "mse" = mean over batch and dimensions [CODE; REC 4.4] (pairs with the code
    # weights below); "sum" = the per-sample squared L2 norm of Eq. 15, batch-averaged.
    cycle_reduction: Literal["mse", "sum"] = "mse"
    # -- regressor objective (loss_R, spec 4.6; code weights relative to the true cycle = 1) --------------------------
    # Weight of the true-feature regression E||c - R(x)||^2 (Eq. 15, last two terms) [CODE 1; lambda in Eq. 16].
    cycle_weight: float = cfg_field(1.0, ge=0.0)
    # Weight of L_DA on true pairs [CODE 1e-4; beta in Eq. 16].
    alignment_weight: float = cfg_field(1e-4, ge=0.0)
    # Weight of L_ADV on true embeddings (through the GRL) [CODE 1e-2; gamma in Eq. 16].
    adversarial_weight: float = cfg_field(1e-2, ge=0.0)
    # Weight of the synthetic cycle E||c - R(G(c, z))||^2 in loss_R [CODE 1e-2].
    synthetic_cycle_weight: float = cfg_field(1e-2, ge=0.0)
    # Weight of L_DA on synthetic pairs in loss_R [CODE 1e-6].
    synthetic_alignment_weight: float = cfg_field(1e-6, ge=0.0)
    # Weight of L_ADV on synthetic embeddings in loss_R [CODE 1e-4].
    synthetic_adversarial_weight: float = cfg_field(1e-4, ge=0.0)
    # -- generator objective (loss_G = -E D(G(c, z), c) + ...) --------------------------------------------------------
    # Weight of the synthetic cycle in loss_G [CODE 0.1].
    generator_cycle_weight: float = cfg_field(0.1, ge=0.0)
    # Weight of L_ADV on synthetic embeddings in loss_G (reversed by the GRL) [CODE 1e-3].
    generator_adversarial_weight: float = cfg_field(1e-3, ge=0.0)
    # Weight of synthetic L_DA in loss_G: 0 in the code [CODE]; beta in Algorithm 1 line 6 [PAPER] (ambiguity 14).
    generator_alignment_weight: float = cfg_field(0.0, ge=0.0)
    # Gradient reversal: the DANN ramp 2/(1+exp(-10p))-1, p = training progress [CODE; REC 4.3], or constant.
    grl_schedule: Literal["dann", "constant"] = "dann"
    # Maximum GRL strength (the ramp's limit) [CODE 1].
    grl_strength: float = cfg_field(1.0, ge=0.0)
    # -- zero-shot (Sec. 3.4, Eqs. 17-19; only when the data declares unseen classes) --------------------------------
    # Unseen-class synthetic pairs per step, classes drawn uniformly among the unseen ones [REC 6.1: B_u = B = 64, the
    # paper's batch size]. They get the alignment, adversarial and cycle terms with the synthetic-pair weights.
    unseen_per_step: int = cfg_field(64, ge=2)
    # Whether the unseen-class terms also train the generators (Eq. 17 lists theta_G, Eq. 19 only theta_R); off, as
    # G has no real-data anchor for unseen classes [REC 6.1, ambiguity 21].
    unseen_gradient_to_generator: bool = False
    # Synthesise unseen-class pairs at all (Eqs. 17-19). Off = the ablation "JFSE without unseen-class synthesis":
    # the same run trained on seen classes only, which isolates what the synthesis adds on unseen classes.
    synthesize_unseen: bool = True


# Modality labels of Eq. 14: image = 1, text = 0 [REC 4.3, ambiguity 24].
_IMAGE_TARGET, _TEXT_TARGET = 1.0, 0.0


def scale_class_embeddings(embeddings: np.ndarray, mode: str) -> np.ndarray:
    """(c, s) class embeddings -> the targets JFSE regresses onto.

    ``minmax``: ``(E - min_k E_k) / (max_k E_k - min_k E_k)`` per dimension over all classes (constant dimensions
    become 0); ``l2``: unit rows; ``none``: unchanged.
    """
    e = np.asarray(embeddings, np.float64)
    if mode == "minmax":
        low, span = e.min(axis=0), e.max(axis=0) - e.min(axis=0)
        e = np.where(span > 0, (e - low) / np.where(span > 0, span, 1.0), 0.0)
    elif mode == "l2":
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e.astype(np.float32)


def _dense_stack(units, activation, slope, output_activation, dropout=0.0, name=None) -> keras.Sequential:
    """Dense layers with ``activation`` after the hidden ones (LeakyReLU with an explicit slope; Keras' default is
    0.3) and ``output_activation`` (None = linear) after the last."""
    layers = []
    for i, width in enumerate(units):
        last = i == len(units) - 1
        act = output_activation if last else activation
        layers.append(keras.layers.Dense(int(width)))
        if act == "leaky_relu":
            layers.append(keras.layers.LeakyReLU(negative_slope=slope))
        elif act is not None and act != "linear":
            layers.append(keras.layers.Activation(act))
        if not last and dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers, name=name)


@register_method("jfse", JFSEConfig, "Joint Feature Synthesis and Embedding (Xu et al., TPAMI 2022)")
class JFSE(AdversarialModel):
    """JFSE: conditional WGAN-GP generators and critics per modality, regressors into the class-embedding space, and a
    modality discriminator behind a gradient reversal layer.

    Sub-models (the first modality plays "image", the second "text"):

    - ``generators[m]``: ``[c, z] (b, s + noise_dim) -> synthetic standardised feature (b, d_m)``.
    - ``critics[m]``: ``[x, c] (b, d_m + s) -> score (b, 1)``.
    - ``regressors[m]``: standardised feature (b, d_m) -> embedding (b, s); ``encoders[m]`` = standardiser +
      regressor (raw features in; what is evaluated and exported).
    - ``modality_discriminator``: embedding (b, s) -> image-vs-text logit (b, 1), behind ``gradient_reversal``.

    Players, in update order: ``critic`` (both critics, ``n_critic`` repeats), ``generator`` (both generators),
    ``regressor`` (both regressors), ``discriminator`` (D_m).

    Args:
        config: ``JFSEConfig``.
        spec: ``DataSpec`` with exactly two modalities and a (num_classes, s) ``class_embeddings`` matrix.
    """

    def __init__(self, config: JFSEConfig, spec: DataSpec, **kwargs):
        super().__init__(spec, name="jfse", **kwargs)
        if len(spec.modalities) != 2:
            raise ConfigError(f"JFSE needs exactly two modalities (image, text); the data has {list(spec.modalities)}")
        if spec.class_embeddings is None:
            raise ConfigError(
                "JFSE needs class embeddings and the data has none; set data.class_embeddings.source "
                "(word_vectors with data.class_embeddings.path, glove_6b_50d, or one_hot)"
            )
        if spec.class_embeddings.shape[0] != spec.num_classes:
            raise ConfigError(
                f"class embeddings have {spec.class_embeddings.shape[0]} rows "
                f"but the data has {spec.num_classes} classes"
            )
        self.config = config
        self.image_modality, self.text_modality = spec.modalities
        targets = scale_class_embeddings(spec.class_embeddings, config.class_embedding_scaling)
        self.embedding_dim = int(targets.shape[1])
        # Fixed side information, not a parameter: a constant of the graph (it is rebuilt from the data on reload).
        self.class_targets = tf.constant(targets)
        self.noise = keras.random.SeedGenerator(seed=None, name="jfse_noise")
        unseen = tuple(int(k) for k in spec.unseen_classes)
        bad = [k for k in unseen if not 0 <= k < spec.num_classes]
        if bad:
            raise ConfigError(f"unseen class ids {bad} are outside [0, {spec.num_classes})")
        # The classes whose pairs are synthesised (none when the ablation switch is off).
        self.unseen_classes = unseen if config.synthesize_unseen else ()

        slope = config.leaky_relu_slope
        self.standardizers, self.generators, self.critics, self.regressors, self.encoders = {}, {}, {}, {}, {}
        for m in spec.modalities:
            self.standardizers[m] = spec.standardizer(m)
            self.generators[m] = _dense_stack(
                (config.generator_hidden, spec.dims[m]), config.generator_activation, slope,
                None if config.generator_output_activation == "linear" else "relu", name=f"{m}_generator",
            )
            self.critics[m] = _dense_stack((config.critic_hidden, 1), "leaky_relu", slope, None, name=f"{m}_critic")
            self.regressors[m] = _dense_stack(
                (*config.regressor_hidden, self.embedding_dim), "relu", slope,
                None if config.regressor_output_activation == "linear" else "relu",
                dropout=config.regressor_dropout, name=f"{m}_regressor",
            )
            self.encoders[m] = keras.Sequential(
                [keras.Input((spec.dims[m],), name=f"{m}_features"), self.standardizers[m], self.regressors[m]],
                name=f"{m}_encoder",
            )
        self.gradient_reversal = GradientReversal(config.grl_strength, name="gradient_reversal")
        self.modality_discriminator = _dense_stack(
            (*config.discriminator_hidden, 1), config.discriminator_activation, slope, None,
            name="modality_discriminator",
        )

    # -- schedule ------------------------------------------------------------------------------------------------
    def gradient_reversal_layers(self):
        return [self.gradient_reversal]

    def gradient_reversal_schedule(self):
        return self.config.grl_schedule, self.config.grl_strength

    def players(self):
        names = ("image", "text")
        unseen_terms = ("unseen_cycle", "unseen_alignment", "unseen_adversarial") if self.unseen_classes else ()
        generator_unseen = unseen_terms if self.config.unseen_gradient_to_generator else ()
        return [
            Player("critic", tuple(self.critics[m] for m in self.modalities),
                   ("loss", *(f"{n}_{t}" for n in names for t in ("wasserstein", "gradient_penalty"))),
                   repeats=self.config.n_critic),
            Player("generator", tuple(self.generators[m] for m in self.modalities),
                   ("loss", "wasserstein", "cycle", "adversarial", "alignment", *generator_unseen)),
            Player("regressor", tuple(self.regressors[m] for m in self.modalities),
                   ("loss", "cycle", "alignment", "adversarial", "synthetic_cycle", "synthetic_alignment",
                    "synthetic_adversarial", *unseen_terms)),
            Player("discriminator", (self.modality_discriminator,), ("loss", "accuracy")),
        ]

    # -- pieces --------------------------------------------------------------------------------------------------
    def class_condition(self, labels):
        """(b, c) multi-hot labels -> (b, s) class embeddings (multi-label items: the mean of their classes)."""
        labels = tf.cast(labels, tf.float32)
        weights = labels / tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1.0)
        return tf.matmul(weights, self.class_targets)

    def synthesize(self, modality, condition, training):
        """``G_m([c, z])`` with fresh ``z ~ N(0, I)``: (b, s) -> (b, d_m) synthetic standardised features."""
        z = keras.random.normal((tf.shape(condition)[0], self.config.noise_dim), seed=self.noise)
        return self.generators[modality](tf.concat([condition, z], axis=1), training=training)

    def critic_score(self, modality, features, condition, training):
        return self.critics[modality](tf.concat([features, condition], axis=1), training=training)

    def _cycle(self, targets, embeddings):
        squared = tf.square(targets - embeddings)
        if self.config.cycle_reduction == "mse":
            return tf.reduce_mean(squared)
        return tf.reduce_mean(tf.reduce_sum(squared, axis=1))

    def _alignment(self, image, text, labels):
        scheme = self.config.alignment
        if scheme == "cmpm":
            return cmpm_loss(image, text, labels, epsilon=self.config.cmpm_epsilon)
        if scheme == "cmmd":
            return mmd_loss(image, text)
        return coral_loss(image, text)

    def _modality_logits(self, image, text, training, reverse):
        if reverse:
            image, text = self.gradient_reversal(image), self.gradient_reversal(text)
        return (self.modality_discriminator(image, training=training),
                self.modality_discriminator(text, training=training))

    @staticmethod
    def _modality_loss(image_logits, text_logits):
        """Eq. 14: sigmoid cross-entropy, image = 1, text = 0, each averaged over its batch."""
        return (binary_cross_entropy_with_logits(_IMAGE_TARGET, image_logits)
                + binary_cross_entropy_with_logits(_TEXT_TARGET, text_logits))

    def _synthetic_batch(self, condition, labels, training):
        """``synthetic_ratio`` synthetic pairs per true pair: repeated conditions and labels, one noise draw each."""
        ratio = self.config.synthetic_ratio
        condition = tf.tile(condition, (ratio, 1)) if ratio > 1 else condition
        labels = tf.tile(labels, (ratio, 1)) if ratio > 1 else labels
        fakes = {m: self.synthesize(m, condition, training) for m in self.modalities}
        return fakes, condition, labels

    def _unseen_terms(self, training, to_generator):
        """Eqs. 17-19's unseen parts: alignment, adversarial (through the GRL) and cycle terms of synthetic pairs of
        unseen classes (no WGAN term: there are no real unseen features)."""
        n = self.config.unseen_per_step
        unseen = tf.constant(self.unseen_classes, tf.int32)
        classes = tf.gather(unseen, keras.random.randint((n,), 0, len(self.unseen_classes), seed=self.noise))
        condition = tf.gather(self.class_targets, classes)
        labels = tf.one_hot(classes, self.spec.num_classes)
        fakes = {m: self.synthesize(m, condition, training) for m in self.modalities}
        if not to_generator:
            fakes = {m: tf.stop_gradient(f) for m, f in fakes.items()}
        embedded = {m: self.regressors[m](fakes[m], training=training) for m in self.modalities}
        image, text = embedded[self.image_modality], embedded[self.text_modality]
        return {
            "unseen_cycle": self._cycle(condition, image) + self._cycle(condition, text),
            "unseen_alignment": self._alignment(image, text, labels),
            "unseen_adversarial": self._modality_loss(*self._modality_logits(image, text, training, reverse=True)),
        }, embedded

    # -- losses per player ---------------------------------------------------------------------------------------
    def player_losses(self, player, batch, training):
        labels = tf.cast(batch["labels"], tf.float32)
        condition = self.class_condition(labels)
        real = {m: self.standardizers[m](batch[m]) for m in self.modalities}
        if player == "critic":
            return self._critic_losses(real, condition, training)
        if player == "generator":
            return self._generator_losses(condition, labels, training)
        if player == "regressor":
            return self._regressor_losses(real, condition, labels, training)
        if player == "discriminator":
            return self._discriminator_losses(real, condition, labels, training)
        raise KeyError(f"JFSE has no player {player!r}")

    def _critic_losses(self, real, condition, training):
        """-(Eq. 3) per modality: E D(x~, c) - E D(x, c) + gp_weight * E (||grad_x^ D(x^, c)|| - 1)^2.

        The synthetic features are constants (stop-gradient), and the penalty's gradient is taken w.r.t. the feature
        part of the critic input only, per sample, at ``x^ = a x + (1 - a) x~`` with ``a ~ U(0, 1)`` per sample.
        """
        out, total = {}, 0.0
        for m, name in ((self.image_modality, "image"), (self.text_modality, "text")):
            fake = tf.stop_gradient(self.synthesize(m, condition, training))
            coefficients = keras.random.uniform((tf.shape(fake)[0], 1), seed=self.noise)
            mixed = interpolate(real[m], fake, coefficients)
            with tf.GradientTape() as tape:
                tape.watch(mixed)
                mixed_scores = tf.reduce_sum(self.critic_score(m, mixed, condition, training))
            penalty = gradient_penalty(tape.gradient(mixed_scores, mixed))
            loss = critic_loss(self.critic_score(m, real[m], condition, training),
                               self.critic_score(m, fake, condition, training))
            out[f"{name}_wasserstein"] = -loss  # the critic's estimate of the Wasserstein distance
            out[f"{name}_gradient_penalty"] = penalty
            total += loss + self.config.gp_weight * penalty
        out["loss"] = total
        return out

    def _generator_losses(self, condition, labels, training):
        """loss_G = -E D_v(v~, c) - E D_t(t~, c) + w_cyc CYC_syn + w_adv ADV_syn + w_da DA_syn (spec 4.6)."""
        cfg = self.config
        b = tf.shape(condition)[0]
        fakes, syn_condition, syn_labels = self._synthetic_batch(condition, labels, training)
        wasserstein = tf.add_n([
            generator_loss(self.critic_score(m, fakes[m][:b], condition, training)) for m in self.modalities
        ])
        embedded = {m: self.regressors[m](fakes[m], training=training) for m in self.modalities}
        image, text = embedded[self.image_modality], embedded[self.text_modality]
        cycle = self._cycle(syn_condition, image) + self._cycle(syn_condition, text)
        adversarial = self._modality_loss(*self._modality_logits(image, text, training, reverse=True))
        alignment = self._alignment(image, text, syn_labels)
        loss = (wasserstein + cfg.generator_cycle_weight * cycle + cfg.generator_adversarial_weight * adversarial
                + cfg.generator_alignment_weight * alignment)
        out = {"wasserstein": wasserstein, "cycle": cycle, "adversarial": adversarial, "alignment": alignment}
        if self.unseen_classes and cfg.unseen_gradient_to_generator:
            unseen, _ = self._unseen_terms(training, to_generator=True)
            out.update(unseen)
            loss += (cfg.generator_cycle_weight * unseen["unseen_cycle"]
                     + cfg.generator_adversarial_weight * unseen["unseen_adversarial"]
                     + cfg.generator_alignment_weight * unseen["unseen_alignment"])
        out["loss"] = loss
        return out

    def _embed_true_and_synthetic(self, real, condition, labels, training):
        true = {m: self.regressors[m](real[m], training=training) for m in self.modalities}
        fakes, syn_condition, syn_labels = self._synthetic_batch(condition, labels, training)
        synthetic = {m: self.regressors[m](tf.stop_gradient(fakes[m]), training=training) for m in self.modalities}
        return true, synthetic, syn_condition, syn_labels

    def _regressor_losses(self, real, condition, labels, training):
        """loss_R (spec 4.6 / Eq. 16 over theta_R): cycle, alignment and GRL-reversed modality terms, true and
        synthetic."""
        cfg = self.config
        true, synthetic, syn_condition, syn_labels = self._embed_true_and_synthetic(real, condition, labels, training)
        i, t = self.image_modality, self.text_modality
        out = {
            "cycle": self._cycle(condition, true[i]) + self._cycle(condition, true[t]),
            "alignment": self._alignment(true[i], true[t], labels),
            "adversarial": self._modality_loss(*self._modality_logits(true[i], true[t], training, reverse=True)),
            "synthetic_cycle": self._cycle(syn_condition, synthetic[i]) + self._cycle(syn_condition, synthetic[t]),
            "synthetic_alignment": self._alignment(synthetic[i], synthetic[t], syn_labels),
            "synthetic_adversarial": self._modality_loss(
                *self._modality_logits(synthetic[i], synthetic[t], training, reverse=True)),
        }
        out["loss"] = (
            cfg.cycle_weight * out["cycle"] + cfg.alignment_weight * out["alignment"]
            + cfg.adversarial_weight * out["adversarial"] + cfg.synthetic_cycle_weight * out["synthetic_cycle"]
            + cfg.synthetic_alignment_weight * out["synthetic_alignment"]
            + cfg.synthetic_adversarial_weight * out["synthetic_adversarial"]
        )
        if self.unseen_classes:
            # Eqs. 17-19: the unseen-class terms, weighted like their seen synthetic counterparts [REC 6.1].
            unseen, _ = self._unseen_terms(training, to_generator=False)
            out.update(unseen)
            out["loss"] += (cfg.synthetic_cycle_weight * unseen["unseen_cycle"]
                            + cfg.synthetic_alignment_weight * unseen["unseen_alignment"]
                            + cfg.synthetic_adversarial_weight * unseen["unseen_adversarial"])
        return out

    def _discriminator_losses(self, real, condition, labels, training):
        """loss_M = ADV_true + ADV_syn (Eq. 14), minimised over theta_M only (the embeddings are constants)."""
        true, synthetic, _, _ = self._embed_true_and_synthetic(real, condition, labels, training)
        i, t = self.image_modality, self.text_modality
        logits_true = self._modality_logits(tf.stop_gradient(true[i]), tf.stop_gradient(true[t]), training, False)
        logits_syn = self._modality_logits(tf.stop_gradient(synthetic[i]), tf.stop_gradient(synthetic[t]), training,
                                           False)
        loss = self._modality_loss(*logits_true) + self._modality_loss(*logits_syn)
        if self.unseen_classes:
            # Eq. 18: the modality discriminator also sees the unseen-class synthetic embeddings.
            _, unseen = self._unseen_terms(training, to_generator=False)
            loss += self._modality_loss(*self._modality_logits(tf.stop_gradient(unseen[i]),
                                                               tf.stop_gradient(unseen[t]), training, False))
        correct = tf.concat([tf.cast(logits_true[0] > 0, tf.float32), tf.cast(logits_true[1] <= 0, tf.float32)], 0)
        return {"loss": loss, "accuracy": tf.reduce_mean(correct)}
