"""Checkpoints: backups restored by name (not by position), the best checkpoint after a resume, TensorBoard's tags.

Fast unit tests on tiny Keras models (no training run): the slow kill-and-resume runs are in test_resume.py.
"""

import json
import os

import keras
import numpy as np
import pytest

from tf_xmr.files import file_sha256
from tf_xmr.training import callbacks as cb
from tf_xmr.training import resume


def tiny():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return model, {"only": optimizer}


def validation_for(model, checkpoint_dir, scores):
    validation = cb.RetrievalValidation(lambda: {"map_avg": next(scores)}, str(checkpoint_dir), every=1, patience=3,
                                        min_delta=0.0, total_epochs=5)
    validation.set_model(model)
    return validation


def test_a_new_best_after_a_resume_leaves_the_backup_unchanged_and_no_temporary_file(tmp_path):
    """Issue 17 #3: restoring the best checkpoint hard-linked the backup's copy onto best.weights.h5 through a
    temporary name; the rename of two links of one inode is a no-op, so the temporary stayed, and the next best save
    (same temporary name) rewrote that inode in place: the backup's copy changed after the fact."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    backup_dir = str(checkpoints / "backup")
    scores = iter([0.5, 0.7])
    model, optimizers = tiny()
    validation = validation_for(model, checkpoints, scores)
    saver = resume.training_checkpoint(backup_dir, optimizers=optimizers, validation=validation)
    saver.set_model(model)
    validation.on_epoch_end(0)  # epoch 1: best so far
    saver.on_epoch_end(0)
    # ... killed mid-epoch 2; the same command resumes from the epoch-1 backup.
    backup_copy = os.path.join(resume.latest_backup(backup_dir)["path"], resume.BEST_WEIGHTS)
    saved_bytes = file_sha256(backup_copy)

    resumed_model, resumed_optimizers = tiny()
    resumed_validation = validation_for(resumed_model, checkpoints, scores)
    state, _ = resume.resume_state(True, backup_dir, str(checkpoints), resumed_model, resumed_optimizers,
                                   resumed_validation, 5, "the test run")
    assert state["epoch"] == 1
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp-")]
    resumed_model.weights[0].assign(resumed_model.weights[0] + 1.0)  # epoch 2 trains ...
    resumed_validation.on_epoch_end(1)  # ... and is a new best: best.weights.h5 is written again
    assert json.loads((checkpoints / "best.json").read_text())["epoch"] == 2

    assert file_sha256(backup_copy) == saved_bytes
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".tmp-")]
    check, _ = tiny()
    check.load_weights(backup_copy)  # still epoch 1's weights
    np.testing.assert_array_equal(check.weights[0].numpy(), resumed_model.weights[0].numpy() - 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Backups by name


class Pair(keras.Model):
    """Two same-shaped towers and a dropout (its SeedGenerator state), created in either order."""

    def __init__(self, text_first: bool, width: int = 3):
        super().__init__()
        for name in (("text", "image") if text_first else ("image", "text")):
            setattr(self, name, keras.layers.Dense(4))
        self.dropout = keras.layers.Dropout(0.5, seed=None)
        self.towers = [keras.layers.Dense(3), keras.layers.Dense(width)]  # in a list: not tracked by tf.train itself

    def call(self, inputs, training=False):
        x = self.image(inputs["image"]) - self.text(inputs["text"])
        x = self.dropout(x, training=training)
        for tower in self.towers:
            x = tower(x)
        return x


def pair(text_first: bool):
    model = Pair(text_first)
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    # Eager: a traced train step per tiny model would cost more than all the rest of these tests.
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    return model, {"model": optimizer}


def batch(seed: int):
    rng = np.random.default_rng(seed)
    x = {"image": rng.normal(size=(8, 5)).astype("float32"), "text": rng.normal(size=(8, 5)).astype("float32")}
    return x, rng.normal(size=(8, 3)).astype("float32")


def test_a_backup_restores_by_name_into_a_model_whose_variables_were_created_in_another_order(tmp_path):
    """Saved from a model that created its image tower first, restored into one that created its text tower first:
    every weight, optimiser slot and seed generator state lands where it belongs, and the next training step is
    exactly the one the saved model takes (restoring by position in ``model.variables`` swaps the towers)."""
    original, optimizers = pair(text_first=False)
    for step in range(3):
        original.train_on_batch(*batch(step))
    validation = validation_for(original, tmp_path, iter([0.5]))
    saver = resume.training_checkpoint(str(tmp_path / "backup"), optimizers=optimizers, validation=validation)
    saver.set_model(original)
    saver.on_epoch_end(0)

    restored, restored_optimizers = pair(text_first=True)
    restored.train_on_batch(*batch(99))  # builds it (and its optimiser) with other values
    order = [v.path.split("/")[1] for v in original.variables if v.path.endswith("kernel")][:2]
    assert order != [v.path.split("/")[1] for v in restored.variables if v.path.endswith("kernel")][:2]
    state = resume.latest_backup(str(tmp_path / "backup"))
    resume.restore(state, restored, restored_optimizers)

    for name in ("image", "text"):
        np.testing.assert_array_equal(getattr(restored, name).kernel.numpy(), getattr(original, name).kernel.numpy())
    np.testing.assert_array_equal(restored.dropout.seed_generator.state.numpy(),
                                  original.dropout.seed_generator.state.numpy())
    assert int(restored_optimizers["model"].iterations.numpy()) == 3
    original.train_on_batch(*batch(3))
    restored.train_on_batch(*batch(3))
    for a, b in zip(resume.named_state(original, optimizers).items(),
                    resume.named_state(restored, restored_optimizers).items(), strict=True):
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy(), err_msg=a[0])

    # The by-position scheme this replaces: the n-th variable of one model into the n-th of the other.
    by_position, _ = pair(text_first=True)
    by_position.train_on_batch(*batch(99))
    for source, target in zip(original.variables, by_position.variables, strict=True):
        target.assign(source)
    assert not np.array_equal(by_position.image.kernel.numpy(), original.image.kernel.numpy())
    np.testing.assert_array_equal(by_position.image.kernel.numpy(), original.text.kernel.numpy())  # swapped


def test_names_are_object_paths_that_keras_and_tf_train_miss(tmp_path):
    model, optimizers = pair(text_first=False)
    model.train_on_batch(*batch(0))
    named = resume.named_state(model, optimizers)
    assert named["model/image/_kernel"] is model.image.kernel
    assert named["model/towers/1/bias"] is model.towers[1].bias
    assert named["model/dropout/seed_generator/state"] is model.dropout.seed_generator.state
    assert named["optimizers/model/_iterations"] is optimizers["model"].iterations
    image_slots = [n for n in named if n.startswith("optimizers/model/") and n.endswith("/model/image/_kernel")]
    assert sorted(image_slots) == ["optimizers/model/_momentums/model/image/_kernel",
                                   "optimizers/model/_velocities/model/image/_kernel"]
    every = {id(v) for v in model.variables} | {id(v) for v in optimizers["model"].variables}
    assert {id(v) for v in named.values()} == every and len(named) == len(every)

    # What attaching the objects to tf.train.Checkpoint would have saved: no list-held layer, no seed generator.
    import tensorflow as tf

    keys = [key for key, _ in tf.train.list_variables(
        tf.train.Checkpoint(model=model, optimizer=optimizers["model"]).write(str(tmp_path / "plain")))]
    assert not [k for k in keys if k.startswith("model/towers")]
    assert not [k for k in keys if "seed_generator" in k]


def test_a_backup_that_does_not_fit_the_model_is_one_line_naming_the_variable(tmp_path):
    model, optimizers = pair(text_first=False)
    model.train_on_batch(*batch(0))
    saver = resume.training_checkpoint(str(tmp_path / "backup"), optimizers=optimizers,
                                       validation=validation_for(model, tmp_path, iter([0.5])))
    saver.set_model(model)
    saver.on_epoch_end(0)
    state = resume.latest_backup(str(tmp_path / "backup"))

    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    other_optimizers = {"model": keras.optimizers.Adam()}
    with pytest.raises(resume.ResumeError, match=r"has no model/_layers/1/_kernel .*remove .*backup to start over"):
        resume.restore(state, other, other_optimizers)

    wider = Pair(text_first=False, width=6)
    wider.compile(optimizer=keras.optimizers.Adam(), loss="mse", run_eagerly=True)
    wider.train_on_batch(batch(0)[0], np.zeros((8, 6), "float32"))
    with pytest.raises(resume.ResumeError, match=r"model/towers/1/_kernel of shape \(3, 3\), the model's is \(3, 6\)"):
        resume.restore(state, wider, {"model": wider.optimizer})

    # A truncated variables file: one line, not a TensorFlow traceback.
    data = [n for n in os.listdir(state["path"]) if n.startswith(resume.STATE_PREFIX + ".data")][0]
    with open(os.path.join(state["path"], data), "r+b") as handle:
        handle.truncate(os.path.getsize(os.path.join(state["path"], data)) // 2)
    fresh, fresh_optimizers = pair(text_first=False)
    fresh.train_on_batch(*batch(0))
    with pytest.raises(resume.ResumeError, match=r"cannot be restored \(.*\); remove .*backup to start over") as raised:
        resume.restore(state, fresh, fresh_optimizers)
    assert "\n" not in str(raised.value)


def test_a_backup_of_the_by_position_format_is_refused_with_one_line(tmp_path):
    old = tmp_path / "backup" / "epoch-000001"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"format": 1, "epoch": 1, "variables": []}))
    model, optimizers = pair(text_first=False)
    model.train_on_batch(*batch(0))
    with pytest.raises(resume.ResumeError, match="format 1 .*remove .*backup to start over"):
        resume.restore(resume.latest_backup(str(tmp_path / "backup")), model, optimizers)


def _tiny_config(method, tmp_path):
    from tests.training.test_resume import config

    return config(method, str(tmp_path / method))


@pytest.mark.parametrize("method", ["acmr", "x_gacmn", "jfse", "da_gan", "sdml"])
def test_every_variable_of_every_method_has_one_name(method, tmp_path):
    """The backup holds exactly the model's variables and its optimisers', each under one object path."""
    from tf_xmr import modeling
    from tf_xmr.methods.registry import registered_methods

    assert method in registered_methods()
    cfg = _tiny_config(method, tmp_path)
    feature_set = modeling.load_data(cfg)
    spec = modeling.data_spec(cfg, feature_set)
    if modeling.is_independent(method):
        # One network per modality (training/independent.py); each is backed up on its own.
        model_class = modeling.method_class(cfg)
        shared = model_class.create_shared_state(cfg.model, spec, cfg.seed)
        pairs = []
        for modality in spec.modalities:
            net = model_class.modality_model(cfg.model, spec, modality, shared)
            optimizer = modeling.build_optimizer(modeling.modality_optimizer_config(cfg, modality),
                                                 name=f"{modality}_optimizer")
            net.compile(optimizer=optimizer, jit_compile=False)
            optimizer.build(net.trainable_variables)
            pairs.append((net, {modality: optimizer}))
    else:
        model = modeling.build_model(cfg, spec)
        optimizers = modeling.compile_model(model, cfg, jit_compile=False)
        for optimizer in optimizers.values():
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
        pairs = [(model, optimizers)]
    for model, optimizers in pairs:
        named = resume.named_state(model, optimizers)
        every = {id(v) for v in model.variables} | {id(v) for o in optimizers.values() for v in o.variables}
        assert {id(v) for v in named.values()} == every and len(named) == len(every)
        assert all(name.startswith(("model/", "optimizers/")) for name in named)
        assert resume.named_state(model, optimizers).keys() == named.keys()  # deterministic


def test_the_best_checkpoint_stays_keras_weights_because_a_plain_tf_train_checkpoint_loses_state(tmp_path):
    """Why best.weights.h5 is not a ``tf.train.Checkpoint(model=model)`` (resume.py's docstring): Keras 3 does not
    track layers held in lists or dicts for tf.train, so such a checkpoint silently skips state the encoders use
    (here the standardisation statistics; DA-GAN's class prototypes too) and the restored encoders embed differently,
    although ``assert_existing_objects_matched`` passes. ``model.load_weights`` of Keras' own file restores them."""
    import tensorflow as tf

    from tf_xmr import modeling

    cfg = _tiny_config("acmr", tmp_path)
    feature_set = modeling.load_data(cfg)
    spec = modeling.data_spec(cfg, feature_set)

    def build():
        model = modeling.build_model(cfg, spec)
        modeling.compile_model(model, cfg, jit_compile=False)
        return model

    trained = build()
    rng = np.random.default_rng(0)
    for variable in trained.variables:  # stands for trained values of every float variable
        if "float" in str(variable.dtype):
            variable.assign(rng.normal(size=variable.shape).astype(variable.dtype))
    features = feature_set.splits["test"].features["image"][:5].astype("float32")
    expected = trained.encoder("image")(features).numpy()

    prefix = tf.train.Checkpoint(model=trained).write(str(tmp_path / "plain" / "ckpt"))
    trained.save_weights(str(tmp_path / "best.weights.h5"))
    plain = build()
    tf.train.Checkpoint(model=plain).read(prefix).assert_existing_objects_matched()
    keras_file = build()
    keras_file.load_weights(str(tmp_path / "best.weights.h5"))

    np.testing.assert_array_equal(keras_file.encoder("image")(features).numpy(), expected)
    assert not np.allclose(plain.encoder("image")(features).numpy(), expected)
    lost = [v.path for v, w in zip(plain.variables, trained.variables, strict=True)
            if not np.array_equal(v.numpy(), w.numpy())]
    assert any("standardize" in path for path in lost), lost


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard


def read_scalars(log_dir):
    """{(subfolder, tag): [(step, value), ...]} of every event file under ``log_dir``."""
    import tensorflow as tf

    scalars = {}
    for sub in sorted(os.listdir(log_dir)):
        for name in sorted(os.listdir(os.path.join(log_dir, sub))):
            for record in tf.data.TFRecordDataset(os.path.join(log_dir, sub, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    scalars.setdefault((sub, value.tag), []).append((event.step, number))
    return scalars


def test_tensorboard_tags_are_the_log_names_and_steps_are_epoch_numbers(tmp_path):
    """README "TensorBoard": every loss term under its own name per epoch, validation mAP under ``validation``;
    epoch 1 is step 1 (Keras' callback wrote ``epoch_<name>`` at step 0)."""
    model, optimizers = pair(text_first=False)
    x, y = batch(0)
    validation = cb.RetrievalValidation(lambda: {"map_i2t": 0.25, "map_avg": 0.5}, str(tmp_path), every=1,
                                        patience=0, min_delta=0.0, total_epochs=2)
    logger = cb.TrainingStateLogger(optimizers, [])
    model.fit(x, y, epochs=2, verbose=0, callbacks=[logger, validation, cb.TensorBoard(str(tmp_path / "logs"))])
    scalars = read_scalars(str(tmp_path / "logs"))
    assert ("train", "loss") in scalars and ("train", "learning_rate_model") in scalars
    assert scalars[("validation", "map_i2t")] == [(1, 0.25), (2, 0.25)]
    assert [step for step, _ in scalars[("train", "loss")]] == [1, 2]
    assert not [tag for _, tag in scalars if tag.startswith(("epoch_", "val_"))]
    with pytest.raises(ValueError, match="epoch scalars only"):
        cb.TensorBoard(str(tmp_path / "logs"), update_freq="batch")
