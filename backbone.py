"""The multi-output CNN: one face image in, an age distribution over 0-100 years and P(male) out.

    model = build_model()                          # the default: 96 px, width 24 (~1.1M parameters)
    model = build_model(image_size=128, width=64)  # for GPUs

A residual trunk (3x3 convolutions, batch norm, four stages halving resolution) feeds two heads:
`age`, a softmax over AGE_BINS whose expected value is the age (DEX) and whose spread gives a range,
and `gender`, a sigmoid. The model takes raw BGR pixels (0-255) and scales them itself.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from model_card import AGE_BINS, IMAGE_SIZE, WIDTH

AGE_SIGMA_YEARS = 2.0  # spread of the soft (Gaussian) age target: neighbouring ages are nearly right
AGE_L1_WEIGHT = 0.2  # adds |expected age - true age| to the distribution loss, as in DLDL-v2
BN_MOMENTUM = 0.9  # batch-norm statistics settle within a few hundred steps, so short runs validate right


def conv_bn_relu(x, filters: int, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.ReLU()(x)


def residual_block(x, filters: int):
    shortcut = x
    x = conv_bn_relu(x, filters)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    # gamma = 0: each block starts as the identity, which keeps early training stable
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, gamma_initializer="zeros")(x)
    return layers.ReLU()(layers.Add()([shortcut, x]))


def build_model(image_size: int = IMAGE_SIZE, width: int = WIDTH, blocks_per_stage: int = 1,
                dropout: float = 0.3) -> keras.Model:
    images = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(images)
    x = conv_bn_relu(x, width, strides=2 if image_size > 64 else 1)
    for filters in (width, 2 * width, 4 * width, 8 * width):
        x = conv_bn_relu(x, filters, strides=2)
        for _ in range(blocks_per_stage):
            x = residual_block(x, filters)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    age_logits = layers.Dense(AGE_BINS)(x)
    gender_logit = layers.Dense(1)(x)
    # float32 outputs keep softmax and sigmoid exact under mixed precision
    age = layers.Activation("softmax", dtype="float32", name="age")(age_logits)
    gender = layers.Activation("sigmoid", dtype="float32", name="gender")(gender_logit)
    return keras.Model(images, {"age": age, "gender": gender}, name="age_gender_cnn")


def expected_age(age_probs):
    return ops.sum(age_probs * ops.arange(AGE_BINS, dtype=age_probs.dtype), axis=-1)


def gaussian_age_targets(age_years):
    """The soft target of each true age: a Gaussian over AGE_BINS around it (neighbouring ages are nearly right)."""
    age_years = ops.reshape(ops.cast(age_years, "float32"), (-1, 1))
    bins = ops.arange(AGE_BINS, dtype="float32")[None, :]
    target = ops.exp(-0.5 * ops.square((bins - age_years) / AGE_SIGMA_YEARS))
    return target / ops.sum(target, axis=-1, keepdims=True)


def _split_age_target(age_target):
    """(age in years, target distribution) from either form of the age target: (batch, 1) true ages, or
    (batch, 1 + AGE_BINS) an age followed by its target distribution (a teacher's mixed in, train.py --teacher)."""
    age_target = ops.cast(age_target, "float32")
    if len(age_target.shape) == 2 and age_target.shape[-1] == 1 + AGE_BINS:
        return age_target[:, 0], age_target[:, 1:]
    age_years = ops.reshape(age_target, (-1,))
    return age_years, gaussian_age_targets(age_years)


@keras.saving.register_keras_serializable(package="age_gender")
def age_distribution_loss(age_target, age_probs):
    """Cross-entropy against the target distribution, plus the L1 error of the expected age."""
    age_years, target = _split_age_target(age_target)
    age_probs = ops.cast(age_probs, "float32")
    cross_entropy = -ops.sum(target * ops.log(ops.clip(age_probs, 1e-7, 1.0)), axis=-1)
    l1_years = ops.abs(expected_age(age_probs) - age_years)
    return cross_entropy + AGE_L1_WEIGHT * l1_years


class _MeanOverFaces(keras.metrics.MeanMetricWrapper):
    """The mean of a per-face function; saved by its name alone (the function belongs to the class)."""

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="age_gender")
class AgeMAE(_MeanOverFaces):
    """Mean absolute error in years of the distribution's expected age."""

    def __init__(self, name: str = "mae", dtype=None):
        super().__init__(fn=_age_abs_error, name=name, dtype=dtype)


def _age_abs_error(age_target, age_probs):
    return ops.abs(expected_age(ops.cast(age_probs, "float32")) - _split_age_target(age_target)[0])


@keras.saving.register_keras_serializable(package="age_gender")
class GenderAccuracy(_MeanOverFaces):
    """Share of faces whose P(male) falls on the target's side of 0.5 (the target may be a soft probability)."""

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(fn=_gender_right, name=name, dtype=dtype)


def _gender_right(gender_target, p_male):
    is_male = ops.reshape(ops.cast(gender_target, "float32"), (-1,)) >= 0.5
    said_male = ops.reshape(ops.cast(p_male, "float32"), (-1,)) >= 0.5
    return ops.cast(ops.equal(is_male, said_male), "float32")
