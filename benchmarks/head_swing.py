"""Why do the head epochs swing? The same head on the same cached features, in float32 and in
mixed_bfloat16, and with the changes that might steady it.

    python -m catdog.train --flagfile=configs/quickstart.flags --feature_cache_dir=/tmp/features \
        --data_dir=../shared/datasets/cats_vs_dogs --weights=<weights> --nodownload
    python benchmarks/head_swing.py --feature_cache_dir=/tmp/features

Reads the pooled VGG16 features a run cached (train-*/ and validation-*/features.npz, view 0)
and trains the seed's head on them as catdog does (Dense(512, relu) → Dense(2, softmax) in
float32, Adam, batch 16, 10 epochs), once per seed and variant, printing the validation accuracy
of every epoch and the spread of the last five. Variants: float32; mixed_bfloat16 on features
rounded to bfloat16 (what a CPU with native bfloat16 computes); a float32 head on bfloat16
features; Adam at 3e-4 and 1e-4; batch normalisation of the features; a warm-up then cosine;
3e-4 on a cosine (--schedule=cosine); an exponential moving average of the weights written over
them at each epoch's end (--ema), alone and with the cosine.
bfloat16 is emulated on a CPU without it: slower, the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

_CACHE = flags.DEFINE_string("feature_cache_dir", "/tmp/features", "A run's feature cache.")
_SEEDS = flags.DEFINE_list("seeds", ["42", "43"], "Seeds, one run each.")
EPOCHS, BATCH = 10, 16

VARIANTS = {  # name: (policy, features rounded to bfloat16, learning rate, extra)
    "float32": ("float32", False, 1e-3, ""),
    "mixed_bfloat16": ("mixed_bfloat16", True, 1e-3, ""),
    "float32 head, bfloat16 features": ("float32", True, 1e-3, ""),
    "Adam 3e-4": ("float32", False, 3e-4, ""),
    "Adam 1e-4": ("float32", False, 1e-4, ""),
    "batch-normalised features": ("float32", False, 1e-3, "batch_norm"),
    "warm-up 1 epoch, then cosine": ("float32", False, 1e-3, "warm_up"),
    "Adam 3e-4 on a cosine (--learning_rate=0.0003 --schedule=cosine)":
        ("float32", False, 3e-4, "cosine"),
    "EMA 0.99 written over the weights each epoch (--ema=0.99)": ("float32", False, 1e-3, "ema"),
    "Adam 3e-4 on a cosine, EMA 0.99": ("float32", False, 3e-4, "cosine_ema"),
}


def features(split: str) -> tuple[np.ndarray, np.ndarray]:
    (path,) = Path(_CACHE.value).glob(f"{split}-*/features.npz")
    with np.load(path) as stored:
        return stored["features"][0], stored["labels"]


def head(policy: str, extra: str, learning_rate: float, steps: int) -> keras.Model:
    keras.mixed_precision.set_global_policy(policy)
    inputs = keras.Input((512,), name="features")
    x = keras.layers.BatchNormalization()(inputs) if extra == "batch_norm" else inputs
    x = keras.layers.Dense(512, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(2, activation="softmax", dtype="float32", name="out")(x)
    model = keras.Model(inputs, outputs)
    rate = learning_rate
    if extra == "warm_up":
        rate = keras.optimizers.schedules.CosineDecay(0.0, steps * (EPOCHS - 1),
                                                      warmup_target=learning_rate,
                                                      warmup_steps=steps)
    elif extra.startswith("cosine"):  # as catdog's --schedule=cosine
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps * EPOCHS)
    ema = extra.endswith("ema")  # as catdog's --ema: the average written over at epoch ends
    model.compile(optimizer=keras.optimizers.Adam(rate, use_ema=ema, ema_momentum=0.99,
                                                  ema_overwrite_frequency=steps if ema else None),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    keras.mixed_precision.set_global_policy("float32")
    return model


def rounded(x: np.ndarray) -> np.ndarray:
    return tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()


def main(argv):
    del argv
    (train_x, train_y), (val_x, val_y) = features("train"), features("validation")
    print(f"features: mean |x| {np.abs(train_x).mean():.2f}, max {train_x.max():.1f}")
    print("| variant | seed | validation accuracy by epoch | spread of the last 5 |")
    print("|---|---:|---|---:|")
    for name, (policy, round_features, rate, extra) in VARIANTS.items():
        for seed in map(int, _SEEDS.value):
            keras.utils.set_random_seed(seed)
            model = head(policy, extra, rate, -(-len(train_x) // BATCH))
            x, v = (rounded(train_x), rounded(val_x)) if round_features else (train_x, val_x)
            accuracy = model.fit(x, train_y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                                 validation_data=(v, val_y)).history["val_accuracy"]
            print(f"| {name} | {seed} | {' '.join(f'{a:.3f}' for a in accuracy)} | "
                  f"{max(accuracy[5:]) - min(accuracy[5:]):.3f} |")


if __name__ == "__main__":
    app.run(main)
