"""catdog.steps: the distributed steps train what they should and agree across input sources."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import distribute
from catdog.config import Config
from catdog.inputs import Source
from catdog.steps import Trainer, learning_rate_schedule, mixup


@pytest.fixture
def trainer():
    keras.utils.set_random_seed(0)
    config = Config(data_dir="unused", weights="none", image_size=32, batch_size=4,
                    flip="none", zoom=0.0, strategy="default", fine_tune_from="block5_conv1")
    return Trainer(config, 2, distribute.setup_distribution(config))


def batches(trainer: Trainer, inputs: np.ndarray, labels: np.ndarray):
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(4)
    return trainer.strategy.experimental_distribute_dataset(dataset)


def sample(trainer: Trainer):
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    labels = np.array([0, 1] * 4)
    return pixels, trainer.feature_extractor(pixels, training=False).numpy(), labels


def weights_of(layer: keras.layers.Layer) -> list[np.ndarray]:
    return [w.numpy().copy() for w in layer.weights]


def changed(before: list[np.ndarray], layer: keras.layers.Layer) -> bool:
    return any(not np.array_equal(a, b.numpy()) for a, b in zip(before, layer.weights))


def test_validating_on_features_equals_validating_on_images(trainer):
    pixels, features, labels = sample(trainer)
    on_images, image_answers = trainer.evaluate(batches(trainer, pixels, labels),
                                                Source.IMAGES)
    on_features, feature_answers = trainer.evaluate(batches(trainer, features, labels),
                                                    Source.FEATURES)
    assert on_features == pytest.approx(on_images, abs=1e-5)
    assert set(on_images) == {"val_loss", "val_accuracy"}
    # The answers come back in the batches' order (the publish gate reuses them).
    expected = trainer.model(pixels, training=False).numpy()
    np.testing.assert_allclose(image_answers, expected, atol=1e-5)
    np.testing.assert_allclose(feature_answers, expected, atol=1e-5)


@pytest.mark.parametrize("source", [Source.IMAGES, Source.FEATURES])
def test_a_frozen_base_epoch_trains_the_head_only(trainer, source):
    pixels, features, labels = sample(trainer)
    base, head = trainer.model.get_layer("vgg16"), trainer.model.get_layer("dense")
    base_before, head_before = weights_of(base), weights_of(head)
    inputs = features if source is Source.FEATURES else pixels
    metrics = trainer.train_epoch(batches(trainer, inputs, labels), source, 2,
                                  keras.utils.Progbar(2, verbose=0))
    assert set(metrics) == {"loss", "accuracy"} and np.isfinite(metrics["loss"])
    assert changed(head_before, head)
    assert not changed(base_before, base)


def test_fine_tuning_trains_the_base_from_its_layer_up(trainer):
    pixels, _, labels = sample(trainer)
    base = trainer.model.get_layer("vgg16")
    below, above = base.get_layer("block4_conv3"), base.get_layer("block5_conv1")
    below_before, above_before = weights_of(below), weights_of(above)
    trainer.start_fine_tuning()
    trainer.train_epoch(batches(trainer, pixels, labels), Source.IMAGES, 2,
                        keras.utils.Progbar(2, verbose=0))
    assert changed(above_before, above)
    assert not changed(below_before, below)


def test_label_smoothing_trains_against_smoothed_targets_and_validates_plainly():
    config = Config(data_dir="unused", weights="none", image_size=32, flip="none", zoom=0.0,
                    strategy="default", label_smoothing=0.2)
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    labels, probabilities = tf.constant([0]), tf.constant([[0.9, 0.1]])
    # Targets (1 - 0.2) × [1, 0] + 0.2 / 2 = [0.9, 0.1].
    smoothed = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert float(trainer.train_loss_fn(labels, probabilities)[0]) == pytest.approx(smoothed,
                                                                                  rel=1e-5)
    assert float(trainer.loss_fn(labels, probabilities)[0]) == pytest.approx(-np.log(0.9),
                                                                            rel=1e-5)


def test_a_cosine_schedule_decays_the_fine_tuning_rate_to_zero_over_the_phase():
    config = Config(data_dir="unused", weights="none", image_size=32, flip="none", zoom=0.0,
                    strategy="default", fine_tune_from="block5_conv1", fine_tune_epochs=2,
                    fine_tune_learning_rate=1e-4, fine_tune_schedule="cosine")
    trainer = Trainer(config, 2, distribute.setup_distribution(config), steps_per_epoch=3)
    optimizer = trainer.fine_tune_optimizer
    rates = []
    for step in (0, 3, 6):  # start, half-way (one epoch of two), end
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    assert rates == pytest.approx([1e-4, 0.5e-4, 0.0], abs=1e-9)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(1e-3)  # the head's: constant


def test_a_cosine_schedule_decays_the_head_rate_to_zero_over_the_head_epochs():
    config = Config(data_dir="unused", weights="none", image_size=32, flip="none", zoom=0.0,
                    strategy="default", epochs=4, schedule="cosine")
    trainer = Trainer(config, 2, distribute.setup_distribution(config), steps_per_epoch=3)
    rates = []
    for step in (0, 6, 12):  # start, half-way (two epochs of four), end
        trainer.optimizer.iterations.assign(step)
        rates.append(float(trainer.optimizer.learning_rate))
    assert rates == pytest.approx([1e-3, 0.5e-3, 0.0], abs=1e-9)


def test_weight_decay_shrinks_the_trained_weights_by_rate_times_decay_each_step():
    """Decoupled (AdamW): with a zero gradient Adam's own step is 0, so a step leaves each
    trained weight × (1 - learning rate × decay), and the frozen base untouched."""
    config = Config(data_dir="unused", weights="none", image_size=32, flip="none", zoom=0.0,
                    strategy="default", learning_rate=0.1, weight_decay=0.5)
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    head = trainer.model.get_layer("dense")
    before = weights_of(head)
    variables = trainer.model.trainable_variables
    trainer.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for old, new in zip(before, head.weights):
        np.testing.assert_allclose(new.numpy(), old * 0.95, rtol=1e-6)


def _epoch_moves(ema: float) -> tuple[float, float]:
    """How far one head epoch of 8 steps moves the head's first Dense kernel, and one
    fine-tuning epoch after it block5_conv3's kernel (mean |change|), with --ema and
    --fine_tune_ema both `ema`."""
    keras.utils.set_random_seed(0)
    config = Config(data_dir="unused", weights="none", image_size=32, batch_size=4,
                    flip="none", zoom=0.0, strategy="default", fine_tune_from="block5_conv1",
                    learning_rate=1e-3, fine_tune_learning_rate=1e-3, ema=ema,
                    fine_tune_ema=ema)
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    pixels, _, labels = sample(trainer)
    data = batches(trainer, np.concatenate([pixels] * 4), np.concatenate([labels] * 4))
    moves = []
    for kernel in (trainer.model.get_layer("dense").kernel,
                   trainer.model.get_layer("vgg16").get_layer("block5_conv3").kernel):
        if moves:
            trainer.start_fine_tuning()
        start = kernel.numpy().copy()
        trainer.train_epoch(data, Source.IMAGES, 8, keras.utils.Progbar(8, verbose=0))
        moves.append(float(np.abs(kernel.numpy() - start).mean()))
    return moves[0], moves[1]


def test_an_epoch_with_ema_ends_on_the_average_of_its_weights():
    """With --ema (head) and --fine_tune_ema near 1 the average of a short epoch stays near its
    first step's weights, so the epoch ends far closer to where it started than plain Adam's
    last step (measured: 0.2 of the distance when fine-tuning)."""
    (head, fine_tuning), (plain_head, plain_fine_tuning) = _epoch_moves(0.999), _epoch_moves(0.0)
    assert head < 0.5 * plain_head
    assert fine_tuning < 0.5 * plain_fine_tuning


def test_mixup_blends_each_example_with_a_partner_of_its_batch():
    inputs = tf.constant(np.arange(8 * 3, dtype=np.float32).reshape(8, 3) ** 2)
    labels = tf.constant([0, 1, 0, 1, 1, 0, 1, 0])
    seed = tf.constant([7, 3])
    blended, partners, weights = (t.numpy() for t in mixup(inputs, labels, 0.4, seed))
    x, y = inputs.numpy(), labels.numpy()
    assert ((weights >= 0) & (weights <= 1)).all() and not np.allclose(weights, weights[0])
    used = []
    for i in range(8):  # each row is w_i x_i + (1 - w_i) x_j for exactly one row j
        fits = [j for j in range(8)
                if np.allclose(blended[i], weights[i] * x[i] + (1 - weights[i]) * x[j])]
        assert len(fits) == 1 and partners[i] == y[fits[0]]
        used.append(fits[0])
    assert sorted(used) == list(range(8))  # the partners are a reordering of the batch
    again = [t.numpy() for t in mixup(inputs, labels, 0.4, seed)]
    np.testing.assert_array_equal(again[0], blended)  # the same seed blends the same way
    other = mixup(inputs, labels, 0.4, tf.constant([7, 4]))[2].numpy()
    assert not np.allclose(other, weights)


def test_mixup_weights_follow_beta_alpha_alpha():
    """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)): near 0 or 1 for a small a."""
    for alpha in (0.2, 4.0):
        weights = mixup(tf.zeros([20000, 1]), tf.zeros([20000], tf.int32), alpha,
                        tf.constant([1, 2]))[2].numpy()
        assert weights.mean() == pytest.approx(0.5, abs=0.01)
        assert weights.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_a_mixup_step_trains_on_blended_inputs_against_both_labels():
    keras.utils.set_random_seed(0)
    config = Config(data_dir="unused", weights="none", image_size=32, batch_size=4,
                    flip="none", zoom=0.0, strategy="default", mixup=0.4, seed=5)
    trainer = Trainer(config, 2, distribute.setup_distribution(config))
    features = np.random.default_rng(1).uniform(0, 4, (4, 512)).astype(np.float32)
    labels = np.array([0, 1, 1, 0])
    head_before = keras.models.clone_model(trainer.head)
    head_before.set_weights(trainer.head.get_weights())
    metrics = trainer.train_epoch(batches(trainer, features, labels), Source.FEATURES, 1,
                                  keras.utils.Progbar(1, verbose=0))
    # The first step blends with seed (5, 0); its loss is computed before the step.
    blended, partners, weights = mixup(tf.constant(features), tf.constant(labels), 0.4,
                                       tf.constant([5, 0]))
    answers = head_before(blended, training=False)
    log_loss = keras.losses.sparse_categorical_crossentropy
    expected = np.mean(weights * log_loss(labels, answers)
                       + (1 - weights) * log_loss(partners, answers))
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("schedule, after", [("cosine", [1e-4, 0.5e-4, 0.0]),
                                             ("constant", [1e-4, 1e-4, 1e-4])])
def test_a_warm_up_rises_from_zero_then_follows_the_schedule(schedule, after):
    # Warm-up: 2 steps (--fine_tune_warmup_epochs=0.5 of 4); the schedule over the other 10.
    rates = learning_rate_schedule(1e-4, schedule, phase_steps=12, warmup_steps=2)
    assert [float(rates(step)) for step in (0, 1, 2, 7, 12)] == pytest.approx(
        [0.0, 0.5e-4, *after], abs=1e-9)


def test_the_fine_tuning_optimizer_warms_up_over_its_fraction_of_an_epoch():
    config = Config(data_dir="unused", weights="none", image_size=32, flip="none", zoom=0.0,
                    strategy="default", fine_tune_from="block5_conv1", fine_tune_epochs=3,
                    fine_tune_learning_rate=1e-4, fine_tune_warmup_epochs=0.5)
    trainer = Trainer(config, 2, distribute.setup_distribution(config), steps_per_epoch=4)
    trainer.fine_tune_optimizer.iterations.assign(1)  # half-way through 2 warm-up steps
    assert float(trainer.fine_tune_optimizer.learning_rate) == pytest.approx(0.5e-4)
