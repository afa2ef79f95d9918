"""The model, optimizers and metrics of a run, and its distributed train and eval steps.

One step function serves every `tf.distribute` strategy: a `tf.function` that calls
`strategy.run`, with the loss averaged over the global batch. (Not `model.fit`: Keras 3.15's fit
fails under MultiWorkerMirroredStrategy, keras-team/keras#20585.) Each step exists for every
input source (inputs.Source): images through the whole model, cached pooled features through the
head alone, or cached frozen-block activations through the blocks above them and the head.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from catdog import distribute
from catdog import model as model_lib
from catdog.config import Config
from catdog.inputs import Source
from catdog.terminal import ProgressLine


def mixup(inputs: tf.Tensor, labels: tf.Tensor, alpha: float,
          seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al., 2018) of one batch: example i becomes w_i · x_i + (1 - w_i) · x_j
    for a partner j drawn from the same batch, w_i ~ Beta(alpha, alpha). Returns the blended
    inputs, the partners' labels and the weights w [B]; the loss weighs label and partner
    label by w and 1 - w. Stateless in `seed` (the run's seed and the optimizer's step), so a
    resumed run blends as an uninterrupted one would."""
    count = tf.shape(labels)[0]
    first, second, order = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    draws = [tf.random.stateless_gamma([count], s, alpha) for s in (first, second)]
    weights = tf.math.divide_no_nan(draws[0], draws[0] + draws[1])
    partner = tf.argsort(tf.random.stateless_uniform([count], order))
    shape = tf.concat([[count], tf.ones([tf.rank(inputs) - 1], tf.int32)], axis=0)
    blend = tf.cast(tf.reshape(weights, shape), inputs.dtype)
    blended = blend * inputs + (1 - blend) * tf.gather(inputs, partner)
    return blended, tf.gather(labels, partner), weights


def learning_rate_schedule(rate: float, schedule: str, phase_steps: int,
                           warmup_steps: int = 0) -> float | keras.optimizers.schedules.CosineDecay:
    """A phase's learning rate: `rate`, constant or, with schedule cosine, decayed to 0 by the
    phase's end; after `warmup_steps` rising linearly from 0 to it, when given. The optimizer's
    own step count drives it, so a resumed run continues the curve where it stopped."""
    if schedule == "constant" and not warmup_steps:
        return rate
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else rate, decay_steps=max(phase_steps - warmup_steps, 1),
        alpha=0.0 if schedule == "cosine" else 1.0,  # alpha 1: constant after the warm-up
        warmup_target=rate if warmup_steps else None, warmup_steps=warmup_steps)


class Trainer:
    """Builds the model under the strategy's scope and runs epochs of distributed steps."""

    def __init__(self, config: Config, num_classes: int,
                 distribution: distribute.Distribution, base: keras.Model | None = None,
                 steps_per_epoch: int = 1):
        """`base`: the VGG16 base built under the strategy's scope already (`build_base`), so
        that a run checks --weights before any data work; None builds it here.
        `steps_per_epoch` sets the length of a cosine decay (--schedule, --fine_tune_schedule)."""
        self.config = config
        self.strategy = distribution.strategy
        self.jit_compile = distribution.jit_compile
        self.fine_tuning = False
        with self.strategy.scope():
            self.model = model_lib.build_classifier(num_classes, config.image_size,
                                                    config.weights, base)
            self.head = model_lib.head(self.model)
            # What the feature pass runs; `upper`: the blocks above the frozen ones, and the head
            if config.frozen_blocks_cached:
                self.feature_extractor, self.upper = model_lib.split_at(
                    self.model, config.fine_tune_from)
            else:
                self.feature_extractor, self.upper = model_lib.feature_extractor(self.model), None
            self.augmenter = model_lib.build_augmenter(config)
            self.optimizer = self._adam(self._learning_rate(
                config.learning_rate, config.schedule, config.epochs * steps_per_epoch,
                distribution), distribution, ema=config.ema)
            self.optimizer.build(self.model.trainable_variables)
            self.fine_tune_optimizer = None
            if config.fine_tune_from:
                self.fine_tune_optimizer = self._adam(self._learning_rate(
                    config.fine_tune_learning_rate, config.fine_tune_schedule,
                    config.fine_tune_epochs * steps_per_epoch, distribution,
                    warmup_steps=round(config.fine_tune_warmup_epochs * steps_per_epoch)),
                    distribution, ema=config.fine_tune_ema)
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
                self.fine_tune_optimizer.build(self.model.trainable_variables)
                model_lib.frozen_base(self.model).trainable = False
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
            self.train_loss_fn = self._training_loss(num_classes)
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_accuracy = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")
        self._train_steps: dict[Source, Any] = {}  # traced on first use, per phase
        self._eval_steps: dict[Source, Any] = {}

    def _learning_rate(self, rate: float, schedule: str, phase_steps: int,
                       distribution: distribute.Distribution, warmup_steps: int = 0):
        """A phase's `learning_rate_schedule`, its rate scaled as --scale_learning_rate says."""
        rate = distribute.learning_rate_for(rate, distribution, self.config.scale_learning_rate)
        return learning_rate_schedule(rate, schedule, phase_steps, warmup_steps)

    def _training_loss(self, num_classes: int):
        """Per-example training loss: the log loss, against --label_smoothing targets."""
        if not self.config.label_smoothing:
            return self.loss_fn
        smoothed = keras.losses.CategoricalCrossentropy(
            label_smoothing=self.config.label_smoothing, reduction=None)
        return lambda labels, probabilities: smoothed(
            tf.one_hot(labels, num_classes), probabilities)

    def _adam(self, learning_rate, distribution: distribute.Distribution, ema: float = 0.0):
        """Adam with --weight_decay (decoupled, as AdamW) and, when `ema`, a moving average of
        the weights it trains (`_end_epoch` writes it over them)."""
        optimizer = keras.optimizers.Adam(learning_rate,
                                          weight_decay=self.config.weight_decay or None,
                                          use_ema=bool(ema), ema_momentum=ema or 0.99)
        if distribution.precision == "mixed_float16":
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def base_frozen(self) -> bool:
        return not self.fine_tuning

    def start_fine_tuning(self) -> None:
        """Unfreezes the base from --fine_tune_from; later steps use the fine-tuning optimizer."""
        model_lib.unfreeze_from(self.model, self.config.fine_tune_from)
        self.fine_tuning = True
        self._train_steps.clear()

    def network(self, source: Source) -> keras.Model:
        """What batches from `source` go through (all three share the classifier's weights)."""
        networks = {Source.IMAGES: self.model, Source.FEATURES: self.head,
                    Source.ACTIVATIONS: self.upper}
        return networks[source]

    @property
    def _phase_optimizer(self):
        """The optimizer of the phase under way: the head's, or the fine-tuning one."""
        return self.fine_tune_optimizer if self.fine_tuning else self.optimizer

    def _train_step_for(self, source: Source):
        if source not in self._train_steps:
            optimizer = self._phase_optimizer
            # Only images are augmented here; features and activations come from views
            # augmented once, in the feature pass.
            self._train_steps[source] = self._train_step(
                self.network(source), optimizer, augment=source is Source.IMAGES)
        return self._train_steps[source]

    def _eval_step_for(self, source: Source):
        if source not in self._eval_steps:
            self._eval_steps[source] = self._eval_step(self.network(source))
        return self._eval_steps[source]

    def _train_step(self, network: keras.Model, optimizer, augment: bool):
        def gradients(inputs, labels, partners, weights):
            with tf.GradientTape() as tape:
                probabilities = network(inputs, training=True)
                per_example_loss = self.train_loss_fn(labels, probabilities)
                if self.config.mixup:
                    per_example_loss = weights * per_example_loss + (
                        1 - weights) * self.train_loss_fn(partners, probabilities)
                loss = optimizer.scale_loss(tf.nn.compute_average_loss(per_example_loss))
            return per_example_loss, probabilities, tape.gradient(
                loss, network.trainable_variables)

        # XLA compiles the forward and backward pass only: the augmentation layers' image ops
        # stay outside it, since XLA with them has failed in reports.
        compiled = tf.function(gradients, jit_compile=True) if self.jit_compile else gradients

        def replica_step(inputs, labels):
            if augment and self.augmenter.layers:
                inputs = self.augmenter(inputs, training=True)
            partners = weights = None  # mixup's partner labels and blend weights
            if self.config.mixup:
                # A seed per (run seed, step, replica): 64 replicas at most draw apart.
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                inputs, partners, weights = mixup(inputs, labels, self.config.mixup, tf.stack(
                    [self.config.seed, tf.cast(optimizer.iterations, tf.int32) * 64 + replica]))
            per_example_loss, probabilities, grads = compiled(inputs, labels, partners, weights)
            optimizer.apply_gradients(zip(grads, network.trainable_variables))
            self.train_loss.update_state(per_example_loss)
            if self.config.mixup:  # a blended example counts as the label weighing more in it
                labels = tf.where(weights >= 0.5, labels, partners)
            self.train_accuracy.update_state(labels, probabilities)

        return tf.function(lambda batch: self.strategy.run(replica_step, args=batch))

    def _eval_step(self, network: keras.Model):
        def replica_step(inputs, labels):
            probabilities = network(inputs, training=False)
            self.val_loss.update_state(self.loss_fn(labels, probabilities))
            self.val_accuracy.update_state(labels, probabilities)
            return tf.cast(probabilities, tf.float32)

        return tf.function(lambda batch: self.strategy.run(replica_step, args=batch))

    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        """The run's optimizers by checkpoint key (the fine-tuning one when there is one)."""
        found = {"optimizer": self.optimizer, "fine_tune_optimizer": self.fine_tune_optimizer}
        return {key: optimizer for key, optimizer in found.items() if optimizer}

    def train_epoch(self, dataset, source: Source, steps: int,
                    progress: ProgressLine) -> dict[str, float]:
        """One training pass over distributed (inputs, labels) batches from `source`, each
        through its network; the epoch's mean loss and accuracy."""
        for metric in (self.train_loss, self.train_accuracy):
            metric.reset_state()
        step_fn = self._train_step_for(source)
        for step, batch in enumerate(dataset, 1):
            step_fn(batch)
            progress.update(min(step, steps), values=self._results(
                self.train_loss, self.train_accuracy))
        self._end_epoch()
        return dict(self._results(self.train_loss, self.train_accuracy))

    def _end_epoch(self) -> None:
        """With --ema (head epochs) or --fine_tune_ema, an epoch ends with the moving average
        written over the weights it trained: validation, the checkpoint and the export all see
        it."""
        if self.config.fine_tune_ema if self.fine_tuning else self.config.ema:
            self._phase_optimizer.finalize_variable_values(self.model.trainable_variables)

    def evaluate(self, dataset, source: Source) -> tuple[dict[str, float], np.ndarray]:
        """Mean loss and accuracy over the validation batches, and the probabilities [N, C] in
        the batches' order (the publish gate reuses the best epoch's)."""
        for metric in (self.val_loss, self.val_accuracy):
            metric.reset_state()
        step_fn = self._eval_step_for(source)
        probabilities = [self.strategy.gather(step_fn(batch), axis=0).numpy()
                         for batch in dataset]
        return dict(self._results(self.val_loss, self.val_accuracy)), np.concatenate(
            probabilities)

    @staticmethod
    def _results(*metrics: keras.metrics.Metric) -> list[tuple[str, float]]:
        return [(m.name, float(m.result())) for m in metrics]
