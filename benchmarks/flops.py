"""What a catdog training job must compute, in FLOPs, counted from VGG16's own layers.

A convolution's forward pass costs 2·H·W·k²·Cin·Cout FLOPs (a multiply and an add per weight and
output pixel); its backward pass about twice that (gradients of its input and of its weights).
Pooling, ReLU and the head are under 0.1% of VGG16 and left out. The structural ceiling of a
speed-up is today's FLOPs divided by the FLOPs that remain: no implementation of the same job
can beat it on the same hardware.
"""

from __future__ import annotations

import dataclasses

import keras

from catdog.config import VGG16_LAYERS


def conv_flops(image_size: int) -> dict[str, float]:
    """Forward FLOPs of one image through each VGG16 convolution, by layer name."""
    base = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(image_size, image_size, 3))
    flops = {}
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            k1, k2, in_channels, _ = layer.kernel.shape
            flops[layer.name] = 2.0 * height * width * k1 * k2 * in_channels * out_channels
    return flops


def forward(image_size: int, from_layer: str = VGG16_LAYERS[0]) -> float:
    """Forward FLOPs of one image through VGG16 from `from_layer` to the top."""
    start = VGG16_LAYERS.index(from_layer)
    above = set(VGG16_LAYERS[start:])
    return sum(f for name, f in conv_flops(image_size).items() if name in above)


@dataclasses.dataclass(frozen=True)
class Job:
    """The VGG16 work of one training job (the head's is negligible)."""

    train_images: int
    validation_images: int
    image_size: int
    head_epochs: int
    views: int  # feature views computed once (0: the head trains on images every epoch)
    fine_tune_from: str = ""
    fine_tune_epochs: int = 0
    frozen_blocks_cached: bool = False

    def flops(self) -> float:
        size, whole = self.image_size, forward(self.image_size)
        if self.views:  # the feature pass: every view of every image, and validation, once
            total = (self.views * self.train_images + self.validation_images) * whole
        else:  # the head trains on augmented images every epoch, validation features once
            total = (self.head_epochs * self.train_images + self.validation_images) * whole
        if self.fine_tune_from:
            trainable = forward(size, self.fine_tune_from)
            below = 0.0 if self.frozen_blocks_cached else whole - trainable
            step = below + 3 * trainable  # forward of all, backward of the trainable blocks
            validate = below + trainable
            total += self.fine_tune_epochs * (self.train_images * step
                                              + self.validation_images * validate)
        return total
