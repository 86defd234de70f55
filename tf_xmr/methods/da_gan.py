"""DA-GAN: Dual Attention Generative Adversarial Network for cross-modal retrieval (Cai, Zhu, Zhang, Zhu; Future
Internet 2022).

Per modality X (image, text): a feature network gives the "convolutional representation" zeta_X (4096-d);
intra-modal attention compares it with zeta_bar_X, the mean representation of alpha same-class training items
(semantic grouping, Eqs. 10-12, drawn in the tf.data pipeline by ``tf_xmr.data.grouping``), and gives
zeta'_X = zeta_X * (1 + A_X) (Eqs. 13-17); an encoder of two FC-1024 layers, the second shared by both modalities,
gives the common representation F_X; inter-modal attention between the paired F_I and F_T gives
F'_X = F_X * (1 + A^_X) (Eqs. 18-20); a decoder reconstructs zeta~_X from F_X. Three discriminator kinds:

- D_S, the semantic discriminator: a label classifier per modality on F' (L_Sem, Eq. 21), minimised WITH the
  generators (theta_S, Eqs. 25, 32);
- D_I, D_T (GAN1): real representation vs reconstruction, per modality (Eqs. 22, 26-27);
- D^_I, D^_T (GAN2): D^_I calls image embeddings real and text fake, D^_T the opposite (Eqs. 23, 28-29).

The generator updates of Eqs. 30-31 descend on log D(fake), which helps the discriminators; here the generators
minimise the non-saturating BCE(D(fake), 1) with the paper's pairings (image generator vs D^_T and D_I, text
generator vs D^_I and D_T) [spec B3]; ``generator_loss: literal`` keeps the printed signs for the record.

Retrieval never sees a label or a paired item. The retrieval-time encoder of modality X runs the same network, with
zeta_bar_X read from learned class prototypes (an EMA of the per-class mean of zeta_X over training batches; the soft
mixture sum_c softmax(cos(zeta, mu_c) / tau) mu_c by default), and F used without inter-attention (A^ = 0), the spec's
A1 / A2 defaults. ``training_form`` gives the paper's training-time form (the true-class group and the true partner),
an upper bound that needs what retrieval does not have.

Every gap the paper leaves is a field of ``DAGANConfig`` whose comment gives the source: [PAPER] the paper, [REC] the
project's implementation spec (specs/da_gan.md, section or ambiguity number), [EXT] public code cited there, [TUNED]
chosen on validation (the config files say what was tried).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
import tensorflow as tf

from tf_xmr.config import cfg_field
from tf_xmr.data.grouping import SemanticGroups, group_key
from tf_xmr.errors import ConfigError
from tf_xmr.layers import AngularMarginSoftmax, FeatureStandardizer
from tf_xmr.layers.attention import ClassPrototypes, CorrelationAttention
from tf_xmr.layers.text_sequence import text_sequence_network
from tf_xmr.losses import binary_cross_entropy_with_logits, label_cross_entropy
from tf_xmr.methods.base import AdversarialModel, DataSpec, Player
from tf_xmr.methods.registry import register_method


@dataclasses.dataclass(frozen=True)
class DAGANConfig:
    """DA-GAN hyperparameters (``model:`` section of a DA-GAN config)."""

    # -- feature networks ------------------------------------------------------------------------------------------
    # gamma, width of the "convolutional representation" zeta: AlexNet fc7 / text FC, 4096 [PAPER Sec. 4.4].
    feature_dim: int = cfg_field(4096, ge=1)
    # Feature-level fallback for precomputed inputs [REC 2.6]: "auto" = identity when the input already has
    # feature_dim columns (frozen fc7), else a linear Dense(feature_dim) with dropout (the text FC of Eq. 9, option 2);
    # "relu" = the optional trainable Dense(feature_dim, ReLU) adapter; "identity" requires d == feature_dim.
    feature_adapter: Literal["auto", "identity", "linear", "relu"] = "auto"
    # Dropout of the adapter / text FC: "dropout 0.5" [PAPER Sec. 4.4].
    adapter_dropout: float = cfg_field(0.5, ge=0.0, lt=1.0)
    # Text input: "mlp" = a precomputed feature vector through the adapter (every dataset here); "sequence" = token ids
    # -> word2vec-initialised Embedding -> BiLSTM -> CNN -> max-over-time -> FC(feature_dim) (TxtCNN, Eqs. 5-9).
    text_encoder: Literal["mlp", "sequence"] = "mlp"
    # Sequence path: a gensim KeyedVectors file (native .save(), or word2vec .txt/.bin); id i >= 1 is its word i - 1
    # (tf_xmr.data.word_vectors). Null: random embeddings of vocabulary_size words.
    word_vectors: str | None = None
    vocabulary_size: int | None = cfg_field(None, ge=1)
    # epsilon = 300 (skip-gram word vectors) [PAPER Sec. 4.2.2]; ignored when word_vectors gives the width.
    embedding_dim: int = cfg_field(300, ge=1)
    # BiLSTM units per direction: lambda_B = 300 so that the "3 x 300" kernel spans it [REC A8].
    lstm_units: int = cfg_field(150, ge=1)
    # kappa, number of text CNN kernels: not given [REC 5.2: 256]; kernel width m = 3 [PAPER "3 x 300"].
    text_filters: int = cfg_field(256, ge=1)
    text_kernel_size: int = cfg_field(3, ge=1)
    # Fine-tune the word vectors (the paper trains TxtCNN end to end at lr 0.01 [PAPER]).
    train_word_vectors: bool = True

    # -- encoders, decoders, discriminators ---------------------------------------------------------------------------
    # lambda_C = 1024, and both encoder FC layers are 1024 wide; the second is shared by the two modalities [PAPER
    # Sec. 4.4].
    common_dim: int = cfg_field(1024, ge=1)
    encoder_hidden: int = cfg_field(1024, ge=1)
    # Activations not given: ReLU first layer, linear shared layer [REC 3.3; EXT DSCMR code].
    encoder_activation: Literal["relu", "tanh", "leaky_relu"] = "relu"
    # Decoder FC-1024 -> FC-feature_dim [PAPER]; ReLU hidden, linear output [REC 3.5].
    decoder_hidden: int = cfg_field(1024, ge=1)
    decoder_output_activation: Literal["linear", "relu"] = "linear"
    # D^_I, D^_T: "two-layer ... the 1st layer has 1024 dimensions", sigmoid score [PAPER]; LeakyReLU(0.2) hidden
    # [REC 3.8]. D_I, D_T: "one FC layer" (logistic regression on zeta) [PAPER, REC 3.7].
    inter_discriminator_hidden: int = cfg_field(1024, ge=1)
    # D_S: one Dense(C) softmax per modality, "two-channel" [PAPER; REC A12]; true = one shared classifier (DSCMR).
    shared_classifier: bool = False
    # D_S logits: null = Dense(C) with bias, a plain softmax layer (the paper gives only "a network with softmax
    # function"); a number s = a cosine classifier, s cos(F', W_j) with unit-length class weights and no bias (NormFace;
    # tf_xmr.layers.AngularMarginSoftmax with m = 1). Retrieval ranks by the cosine of F, so this trains the same
    # geometry the ranking reads; a plain softmax can also lower L_Sem by growing ||F'||, which the cosine ignores.
    classifier_scale: float | None = cfg_field(None, gt=0.0)

    # -- semantic grouping and attention ------------------------------------------------------------------------------
    # alpha, group size: not given (the paper also calls it m) [REC 2.4, C2: 5].
    group_size: int = cfg_field(5, ge=1)
    # Leave the item out of its own group [REC 2.4].
    exclude_anchor: bool = True
    # Seed of the group draws; null = drawn from the run's seed (set once at entry) when training starts.
    group_seed: int | None = cfg_field(None, ge=0)
    # Ablation switches (spec E1-E2): false = A = 0 (zeta' = zeta), resp. A^ = 0 (F' = F).
    use_intra_attention: bool = True
    use_inter_attention: bool = True
    # p positions of zeta (depth feature_dim / p): 64 x 64 [REC A3]; and of F: 16 x 64 [REC 3.4].
    intra_positions: int = cfg_field(64, ge=1)
    inter_positions: int = cfg_field(16, ge=1)
    # r: meta network Dense(p / r, ReLU) -> Dense(p) [REC 3.2: r = 4; EXT CAN uses 36 -> 6 -> 36].
    attention_reduction: int = cfg_field(4, ge=1)
    # Gamma of Eq. 16 in the sum form K^T m^(j): not given [REC A6: 1].
    intra_temperature: float = cfg_field(1.0, gt=0.0)
    inter_temperature: float = cfg_field(1.0, gt=0.0)
    # Mean of M feeding the meta network: "rows" = Eq. 15 as printed; "columns" = the CAN code [REC A5].
    attention_mean_axis: Literal["rows", "columns"] = "rows"

    # -- retrieval-time encoders (the paper is silent: spec A1, A2) ---------------------------------------------------
    # zeta_bar at retrieval, from the query's own features only: "prototype_soft" = sum_c softmax(cos(zeta, mu_c)/tau)
    # mu_c over the learned class prototypes [REC A1 variant]; "prototype_nearest" = mu of the nearest prototype
    # [REC A1 default]; "prototype_mean" = the class-agnostic mean prototype; "self" = zeta attends to itself;
    # "none" = A = 0 at retrieval. Never the test label.
    retrieval_intra_reference: Literal["prototype_soft", "prototype_nearest", "prototype_mean", "self", "none"] = (
        "prototype_soft")
    # Inter-attention at retrieval: "none" = retrieve with F (A^ = 0) [REC A2 default]; "prototype_soft" = attend to
    # the soft-predicted class prototype of the OTHER modality's F [REC A2 variant B]; "self" = F attends to itself.
    retrieval_inter_reference: Literal["none", "prototype_soft", "self"] = "none"
    # EMA factor of the class prototypes (per batch holding the class) [REC]; tau of the soft read-out [REC].
    prototype_momentum: float = cfg_field(0.99, ge=0.0, lt=1.0)
    prototype_temperature: float = cfg_field(0.1, gt=0.0)

    # -- losses and schedule ------------------------------------------------------------------------------------------
    # All weights 1: the paper has no coefficients (Eqs. 24-25) [PAPER; REC B8].
    semantic_weight: float = cfg_field(1.0, ge=0.0)
    intra_adversarial_weight: float = cfg_field(1.0, ge=0.0)
    inter_adversarial_weight: float = cfg_field(1.0, ge=0.0)
    # GAN1 "real" input: "attended" = zeta' (Eqs. 26-27, Sec. 4.3.3) [REC B1]; "features" = zeta (Sec. 4.1).
    intra_real: Literal["attended", "features"] = "attended"
    # Generator adversarial terms: "nonsaturating" = BCE(D(fake), 1) with the paper's pairings [REC B3, 4.7];
    # "literal" = Eqs. 30-31 as printed (descend on log D(fake), which helps the discriminators; not for use).
    generator_loss: Literal["nonsaturating", "literal"] = "nonsaturating"
    # Eq. 23 in full also makes each modality fool its own inter discriminator (BCE(D^_I(F'_I), 0) + BCE(D^_T(F'_T),
    # 0)) [REC 4.7 optional]; off by default.
    own_discriminator_terms: bool = False
    # lambda_rec ||zeta~ - zeta'||^2: the paper has none [REC B7: 0, stability ablation only].
    reconstruction_weight: float = cfg_field(0.0, ge=0.0)
    # k, generator steps per discriminator step (Algorithm 1 lines 5-10): not given [REC B9: 1]. The three generator
    # updates of lines 6-8 are one joint step on L_G^I + L_G^T + L_Sem [REC 5.2].
    generator_steps: int = cfg_field(1, ge=1)
    # Algorithm 1 lines 2-3 pre-train the feature nets and intra-attention before the GANs. Stand-in [REC 5.2, B11]:
    # the first N generator steps optimise L_Sem only (the adversarial terms are switched on after them).
    adversarial_warmup_steps: int = cfg_field(0, ge=0)


def _activation(name: str):
    return keras.layers.LeakyReLU(0.2) if name == "leaky_relu" else keras.layers.Activation(name)


class DAGANRetrievalEncoder(keras.Model):
    """Raw features (b, d_m) -> common representation (b, common_dim), from the query's own features only.

    Built from the DA-GAN's own layers (shared, not copied), so it always reflects the current weights and exports as
    an ordinary SavedModel (the class prototypes are baked-in weights).
    """

    def __init__(self, *, standardizer, feature_net, intra, prototypes, first_layer, shared_layer, inter,
                 other_prototypes, intra_reference: str, inter_reference: str, input_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.standardizer = standardizer
        self.feature_net = feature_net
        self.intra = intra
        self.prototypes = prototypes
        self.first_layer = first_layer
        self.shared_layer = shared_layer
        self.inter = inter
        self.other_prototypes = other_prototypes
        self.intra_reference = intra_reference
        self.inter_reference = inter_reference
        self.input_dim = int(input_dim)

    def call(self, features, training=False):
        zeta = self.feature_net(self.standardizer(features), training=training)
        if self.intra is not None and self.intra_reference != "none":
            if self.intra_reference == "self":
                reference = zeta
            else:
                reference = self.prototypes(zeta, mode=self.intra_reference.removeprefix("prototype_"))
            zeta, _ = self.intra(zeta, reference)
        common = self.shared_layer(self.first_layer(zeta, training=training))
        if self.inter is not None and self.inter_reference != "none":
            reference = common if self.inter_reference == "self" else self.other_prototypes(common, mode="soft")
            common, _ = self.inter(common, reference)
        return common


@register_method("da_gan", DAGANConfig, "Dual Attention GAN for cross-modal retrieval (Cai et al., 2022)")
class DAGAN(AdversarialModel):
    """DA-GAN model (see the module docstring).

    Sub-models (modality names from the data; the first plays "image", the second "text"):

    - ``feature_nets[m]``: standardised input -> zeta_m (b, feature_dim) (adapter, identity, or TxtCNN);
    - ``intra[m]``, ``inter[m]``: correlation attention layers (``tf_xmr.layers.attention``);
    - ``first_layers[m]`` and ``shared_layer``: the encoder (F = shared(first(zeta')));
    - ``decoders[m]``: F_m -> zeta~_m;
    - ``classifiers[m]``: D_S channels (logits over the classes);
    - ``intra_discriminators[m]`` (D_I, D_T) and ``inter_discriminators[m]`` (D^_I, D^_T), logits;
    - ``zeta_prototypes[m]``, ``common_prototypes[m]``: EMA class prototypes of zeta_m and F_m;
    - ``encoders[m]``: the retrieval-time encoders (evaluated and exported).

    Players: ``generator`` (feature nets, attention, encoders, decoders and D_S: theta_G^I u theta_G^T u theta_C, plus
    the decoders [REC B6]) on every step, then ``discriminator`` (the four GAN discriminators; disjoint variables, so
    one summed loss gives each its own gradient) every ``generator_steps``-th step (Algorithm 1).

    Training batches carry ``{modality}_group`` (b, alpha, d_m), attached by ``fit`` (``tf_xmr.data.grouping``).
    """

    def __init__(self, config: DAGANConfig, spec: DataSpec, **kwargs):
        super().__init__(spec, name="da_gan", **kwargs)
        if len(spec.modalities) != 2:
            raise ConfigError(
                f"DA-GAN needs exactly two modalities (image, text); the data has {list(spec.modalities)}")
        cfg = self.config = config
        for key, width, positions in (("intra_positions", cfg.feature_dim, cfg.intra_positions),
                                      ("inter_positions", cfg.common_dim, cfg.inter_positions)):
            if width % positions:
                raise ConfigError(f"config key 'model.{key}' = {positions} does not divide the width {width} "
                                  f"({'feature_dim' if key == 'intra_positions' else 'common_dim'})")
        self.image_modality, self.text_modality = spec.modalities
        self.other = {self.image_modality: self.text_modality, self.text_modality: self.image_modality}

        self.standardizers, self.feature_nets, self.intra, self.inter = {}, {}, {}, {}
        self.first_layers, self.decoders, self.classifiers = {}, {}, {}
        self.intra_discriminators, self.inter_discriminators = {}, {}
        self.zeta_prototypes, self.common_prototypes = {}, {}
        self.shared_layer = keras.layers.Dense(cfg.common_dim, name="shared_encoder_layer")
        shared_classifier = self._semantic_classifier("semantic_classifier") if cfg.shared_classifier else None
        for m in spec.modalities:
            sequence = m == self.text_modality and cfg.text_encoder == "sequence"
            self.standardizers[m] = (FeatureStandardizer("none", name=f"{m}_standardize") if sequence
                                     else spec.standardizer(m))
            self.feature_nets[m] = self._feature_net(m, sequence)
            if cfg.use_intra_attention:
                self.intra[m] = CorrelationAttention(cfg.intra_positions, cfg.attention_reduction,
                                                     cfg.intra_temperature, cfg.attention_mean_axis,
                                                     name=f"{m}_intra_attention")
            if cfg.use_inter_attention:
                self.inter[m] = CorrelationAttention(cfg.inter_positions, cfg.attention_reduction,
                                                     cfg.inter_temperature, cfg.attention_mean_axis,
                                                     name=f"{m}_inter_attention")
            self.first_layers[m] = keras.Sequential(
                [keras.layers.Dense(cfg.encoder_hidden), _activation(cfg.encoder_activation)],
                name=f"{m}_encoder_layer1")
            self.decoders[m] = keras.Sequential(
                [keras.layers.Dense(cfg.decoder_hidden, activation="relu"),
                 keras.layers.Dense(cfg.feature_dim,
                                    activation=None if cfg.decoder_output_activation == "linear" else "relu")],
                name=f"{m}_decoder")
            self.classifiers[m] = shared_classifier or self._semantic_classifier(f"{m}_semantic_classifier")
            self.intra_discriminators[m] = keras.layers.Dense(1, name=f"{m}_intra_discriminator")
            self.inter_discriminators[m] = keras.Sequential(
                [keras.layers.Dense(cfg.inter_discriminator_hidden), keras.layers.LeakyReLU(0.2),
                 keras.layers.Dense(1)], name=f"{m}_inter_discriminator")
            self.zeta_prototypes[m] = ClassPrototypes(spec.num_classes, cfg.prototype_momentum,
                                                      cfg.prototype_temperature, name=f"{m}_zeta_prototypes")
            self.common_prototypes[m] = ClassPrototypes(spec.num_classes, cfg.prototype_momentum,
                                                        cfg.prototype_temperature, name=f"{m}_common_prototypes")
            self.zeta_prototypes[m].build((None, cfg.feature_dim))
            self.common_prototypes[m].build((None, cfg.common_dim))
        self.encoders = {
            m: DAGANRetrievalEncoder(
                standardizer=self.standardizers[m], feature_net=self.feature_nets[m], intra=self.intra.get(m),
                prototypes=self.zeta_prototypes[m], first_layer=self.first_layers[m], shared_layer=self.shared_layer,
                inter=self.inter.get(m), other_prototypes=self.common_prototypes[self.other[m]],
                intra_reference=cfg.retrieval_intra_reference, inter_reference=cfg.retrieval_inter_reference,
                input_dim=spec.dims[m], name=f"{m}_encoder")
            for m in spec.modalities
        }

    def _semantic_classifier(self, name: str):
        """One D_S channel: logits over the classes (see ``DAGANConfig.classifier_scale``)."""
        if self.config.classifier_scale is None:
            return keras.layers.Dense(self.spec.num_classes, name=name)
        # m = 1 and lambda = 0: the target logit is s cos too, i.e. no margin, only normalised features and weights.
        return AngularMarginSoftmax(self.spec.num_classes, 1, anneal=False, lambda_min=0.0,
                                    feature_scale=self.config.classifier_scale, name=name)

    def _feature_net(self, m: str, sequence: bool):
        cfg, dim = self.config, self.spec.dims[m]
        if sequence:
            matrix, vocabulary = None, cfg.vocabulary_size
            width = cfg.embedding_dim
            if cfg.word_vectors:
                # Read by the data layer (tf_xmr.modeling.data_spec): a model never opens files.
                matrix = self.spec.word_embeddings
                if matrix is None:
                    raise ConfigError("model.word_vectors is set but the data spec carries no word embeddings; build "
                                      "the spec with tf_xmr.modeling.data_spec")
                vocabulary, width = matrix.shape[0] - 1, matrix.shape[1]
            if vocabulary is None:
                raise ConfigError("model.text_encoder 'sequence' needs model.word_vectors (a gensim KeyedVectors file) "
                                  "or model.vocabulary_size")
            return text_sequence_network(
                vocabulary_size=vocabulary, embedding_dim=width, lstm_units=cfg.lstm_units,
                filters=cfg.text_filters, kernel_size=cfg.text_kernel_size, output_dim=cfg.feature_dim,
                dropout=cfg.adapter_dropout, embedding_matrix=matrix, trainable_embeddings=cfg.train_word_vectors,
                name=f"{m}_feature_net")
        kind = cfg.feature_adapter
        if kind == "auto":
            kind = "identity" if dim == cfg.feature_dim else "linear"
        if kind == "identity":
            if dim != cfg.feature_dim:
                raise ConfigError(f"config key 'model.feature_adapter' is 'identity' but {m} features have {dim} "
                                  f"columns, not model.feature_dim = {cfg.feature_dim}")
            return keras.Sequential([keras.layers.Identity()], name=f"{m}_feature_net")
        layers = [keras.layers.Dense(cfg.feature_dim, activation="relu" if kind == "relu" else None)]
        if cfg.adapter_dropout > 0:
            layers.append(keras.layers.Dropout(cfg.adapter_dropout))
        return keras.Sequential(layers, name=f"{m}_feature_net")

    # -- building ------------------------------------------------------------------------------------------------------
    def build_for_training(self) -> None:
        super().build_for_training()
        for m in self.modalities:
            self.encoders[m](tf.zeros((2, self.spec.dims[m])))

    # -- players -------------------------------------------------------------------------------------------------------
    def _generator_modules(self):
        modules = [*self.feature_nets.values(), *self.intra.values(), *self.first_layers.values(), self.shared_layer,
                   *self.inter.values(), *self.decoders.values()]
        classifiers = []
        for layer in self.classifiers.values():
            if all(layer is not c for c in classifiers):
                classifiers.append(layer)
        return tuple(modules + classifiers)

    def players(self):
        generator_terms = ("loss", "semantic_image", "semantic_text", "accuracy_image", "accuracy_text",
                           "gan1_image", "gan1_text", "gan2_image", "gan2_text")
        if self.config.reconstruction_weight > 0:
            generator_terms += ("reconstruction",)
        discriminator_terms = ("loss", "intra_image_loss", "intra_image_accuracy", "intra_text_loss",
                               "intra_text_accuracy", "inter_image_loss", "inter_image_accuracy", "inter_text_loss",
                               "inter_text_accuracy")
        return [
            # Algorithm 1: k generator steps (lines 5-9), then one step of every discriminator (lines 10-13).
            Player("generator", self._generator_modules(), generator_terms),
            Player("discriminator", (*self.intra_discriminators.values(), *self.inter_discriminators.values()),
                   discriminator_terms, every=self.config.generator_steps),
        ]

    # -- the training-time form ----------------------------------------------------------------------------------------
    def _zeta(self, m, x, training):
        return self.feature_nets[m](self.standardizers[m](x), training=training)

    def _group_mean(self, m, group):
        """zeta_bar (Eq. 12) of a (b, alpha, d_m) group; a reference, so no gradient flows through it [REC B13]."""
        shape = tf.shape(group)
        flat = tf.reshape(group, (-1, self.spec.dims[m]))
        zeta = self._zeta(m, flat, training=False)
        return tf.stop_gradient(tf.reduce_mean(tf.reshape(zeta, (shape[0], shape[1], -1)), axis=1))

    def training_form(self, batch, training=False):
        """The paper's forward pass: groups from the batch (true class), inter-attention with the paired item.

        Args:
            batch: ``{modality: (b, d_m), "{modality}_group": (b, alpha, d_m) (optional: without it an item is its
                own reference), ...}``, rows paired.

        Returns:
            dict with ``zeta``, ``attended`` (zeta'), ``common`` (F), ``attention_common`` (F') and
            ``reconstruction`` (zeta~), each modality -> tensor.
        """
        zeta, attended = {}, {}
        for m in self.modalities:
            zeta[m] = self._zeta(m, batch[m], training)
            if m in self.intra:
                key = group_key(m)
                reference = self._group_mean(m, batch[key]) if key in batch else tf.stop_gradient(zeta[m])
                attended[m], _ = self.intra[m](zeta[m], reference)
            else:
                attended[m] = zeta[m]
        common = {m: self.shared_layer(self.first_layers[m](attended[m], training=training)) for m in self.modalities}
        if self.inter:
            image, text = self.image_modality, self.text_modality
            # U_I = U (image positions vs text positions), U_T = U^T: each channel attends to its partner (Eq. 20).
            attention_common = {image: self.inter[image](common[image], common[text])[0],
                                text: self.inter[text](common[text], common[image])[0]}
        else:
            attention_common = dict(common)
        reconstruction = {m: self.decoders[m](common[m], training=training) for m in self.modalities}
        return {"zeta": zeta, "attended": attended, "common": common, "attention_common": attention_common,
                "reconstruction": reconstruction}

    # -- losses --------------------------------------------------------------------------------------------------------
    def player_losses(self, player, batch, training):
        forward = self.training_form(batch, training=training)
        if player == "discriminator":
            return self._discriminator_losses(forward, training)
        return self._generator_losses(forward, batch["labels"], training)

    def _names(self):
        return ((self.image_modality, "image"), (self.text_modality, "text"))

    def _discriminator_losses(self, forward, training):
        """Eqs. 26-29 as BCE (ascent on the log-likelihood = descent on BCE), generator outputs held constant."""
        out, total = {}, 0.0
        for m, name in self._names():
            real = forward["attended" if self.config.intra_real == "attended" else "zeta"][m]
            real_logits = self.intra_discriminators[m](tf.stop_gradient(real))
            fake_logits = self.intra_discriminators[m](tf.stop_gradient(forward["reconstruction"][m]))
            out[f"intra_{name}_loss"], out[f"intra_{name}_accuracy"] = _binary_discriminator(real_logits, fake_logits)
            # D^_I calls image embeddings real, text fake; D^_T the opposite (Eqs. 28-29, single input [REC B4]).
            own = self.inter_discriminators[m](tf.stop_gradient(forward["attention_common"][m]), training=training)
            other = self.inter_discriminators[m](tf.stop_gradient(forward["attention_common"][self.other[m]]),
                                                 training=training)
            out[f"inter_{name}_loss"], out[f"inter_{name}_accuracy"] = _binary_discriminator(own, other)
            total += out[f"intra_{name}_loss"] + out[f"inter_{name}_loss"]
        out["loss"] = total
        return out

    def _fool(self, logits):
        """What a generator minimises for a discriminator judging its output as fake (target: "real" = 1)."""
        if self.config.generator_loss == "literal":
            # Eqs. 30-31 as printed: descend on log D(fake) = -BCE(D(fake), 1).
            return -binary_cross_entropy_with_logits(1.0, logits)
        return binary_cross_entropy_with_logits(1.0, logits)

    def _generator_losses(self, forward, labels, training):
        """L_G = L_Sem + L_G^I + L_G^T (Eqs. 21, 30-32 with the signs fixed [REC B3, 4.7])."""
        cfg = self.config
        out = {}
        loss = 0.0
        gate = 1.0
        if cfg.adversarial_warmup_steps:
            gate = tf.cast(self.schedule_step >= cfg.adversarial_warmup_steps, tf.float32)
        for m, name in self._names():
            logits = self.classifiers[m](forward["attention_common"][m])
            out[f"semantic_{name}"] = label_cross_entropy(labels, logits)
            correct = tf.gather(labels, tf.argmax(logits, axis=-1), batch_dims=1) > 0
            out[f"accuracy_{name}"] = tf.reduce_mean(tf.cast(correct, tf.float32))
            # GAN1: the reconstruction should look real to this modality's D_I / D_T.
            out[f"gan1_{name}"] = self._fool(self.intra_discriminators[m](forward["reconstruction"][m]))
            # GAN2: modality m's embedding should look real to the OTHER modality's discriminator (Eqs. 30-31 pairing).
            inter = self._fool(self.inter_discriminators[self.other[m]](forward["attention_common"][m],
                                                                        training=training))
            if cfg.own_discriminator_terms:
                own = self.inter_discriminators[m](forward["attention_common"][m], training=training)
                inter += binary_cross_entropy_with_logits(0.0, own)
            out[f"gan2_{name}"] = inter
            loss += cfg.semantic_weight * out[f"semantic_{name}"] + gate * (
                cfg.intra_adversarial_weight * out[f"gan1_{name}"] + cfg.inter_adversarial_weight * inter)
        if cfg.reconstruction_weight > 0:
            out["reconstruction"] = tf.add_n([
                tf.reduce_mean(tf.reduce_sum(tf.square(forward["reconstruction"][m]
                                                       - tf.stop_gradient(forward["attended"][m])), axis=-1))
                for m in self.modalities])
            loss += cfg.reconstruction_weight * out["reconstruction"]
        if training:
            # The retrieval-time references: class means of zeta and F over the training batches (EMA).
            for m in self.modalities:
                self.zeta_prototypes[m].update(tf.stop_gradient(forward["zeta"][m]), labels)
                self.common_prototypes[m].update(tf.stop_gradient(forward["common"][m]), labels)
        out["loss"] = loss
        return out

    # -- the batch pipeline hook ---------------------------------------------------------------------------------------
    def needs_groups(self) -> bool:
        return bool(self.intra)

    def _group_seed(self, seed: int | None) -> int:
        if seed is None:
            seed = self.config.group_seed
        if seed is None:
            import numpy as np

            seed = int(np.random.randint(0, 2**31 - 1))  # follows the run's seed, set once at entry
        return seed

    def grouped_dataset(self, dataset, seed: int | None = None):
        """Attach the semantic groups to a batched training dataset (pools read from that dataset in one pass)."""
        seed = self._group_seed(seed)
        groups = SemanticGroups.from_dataset(dataset, self.modalities)
        return groups.attach(dataset, self.config.group_size, seed, exclude_anchor=self.config.exclude_anchor)

    def prepare_training_stream(self, stream, *, one_pass, first_step: int):
        """The trainer's path: pools from one unshuffled pass, group draws keyed to the global step (resumable)."""
        if not self.needs_groups():
            return stream
        seed = self._group_seed(None)
        groups = SemanticGroups.from_dataset(one_pass, self.modalities)
        return groups.attach(stream, self.config.group_size, seed, exclude_anchor=self.config.exclude_anchor,
                             first_step=first_step)

    def fit(self, x=None, *args, **kwargs):
        """``keras.Model.fit``, with the semantic groups of Sec. 4.2.3 drawn in the input pipeline when ``x`` is a
        tf.data training set that does not carry them yet."""
        if self.needs_groups() and isinstance(x, tf.data.Dataset) and \
                group_key(self.modalities[0]) not in x.element_spec:
            x = self.grouped_dataset(x)
        return super().fit(x, *args, **kwargs)


def _binary_discriminator(real_logits, fake_logits):
    """BCE(D(real), 1) + BCE(D(fake), 0) and the accuracy over both."""
    loss = binary_cross_entropy_with_logits(1.0, real_logits) + binary_cross_entropy_with_logits(0.0, fake_logits)
    correct = tf.concat([tf.reshape(real_logits > 0, [-1]), tf.reshape(fake_logits <= 0, [-1])], axis=0)
    return loss, tf.reduce_mean(tf.cast(correct, tf.float32))


def upper_bound_embeddings(model: DAGAN, split, pool_split, num_classes: int, *, seed: int = 0,
                           batch_size: int = 256):
    """Embeddings of a split in the paper's TRAINING-time form, which needs what retrieval does not have.

    zeta_bar comes from ``group_size`` items of ``pool_split`` (the training split) of each item's TRUE class, and
    inter-attention uses each item's TRUE partner (F'). Scoring these gives an upper bound for the honest
    retrieval-time encoders (``model.encoders``); it leaks the relevance labels and the pairing and is never a
    retrieval result.

    Args:
        model: a trained ``DAGAN``.
        split: a paired in-memory split to embed (e.g. the test split).
        pool_split: the split the groups are drawn from (the training split).
        num_classes: c.
        seed: seed of the group draws.
        batch_size: rows per forward pass.

    Returns:
        ``(embeddings, labels)``: modality -> (n, common_dim) F', modality -> (n, c) multi-hot labels.
    """
    import numpy as np

    from tf_xmr.data.feature_set import to_multi_hot

    modalities = model.modalities
    labels = to_multi_hot(split.labels[modalities[0]], num_classes).astype(np.float32)
    features = {m: np.asarray(split.features[m], np.float32) for m in modalities}
    groups = {}
    if model.needs_groups():
        pools = SemanticGroups.from_split(pool_split, num_classes, modalities)
        # The items are not in the pool, so there is nothing to exclude.
        groups = pools.sample(features, labels, model.config.group_size, seed, exclude_anchor=False)
    chunks = {m: [] for m in modalities}
    for start in range(0, labels.shape[0], batch_size):
        batch = {m: features[m][start:start + batch_size] for m in modalities}
        batch.update({k: v[start:start + batch_size] for k, v in groups.items()})
        out = model.training_form(batch, training=False)["attention_common"]
        for m in modalities:
            chunks[m].append(np.asarray(out[m]))
    return {m: np.concatenate(c) for m, c in chunks.items()}, {m: labels for m in modalities}
