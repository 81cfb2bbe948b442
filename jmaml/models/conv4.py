"""The four-block convolutional network of the MAML image experiments (NHWC)."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmaml.models.conv import Conv2D, ConvImpl, Precision, matmul
from jmaml.models.norm import BatchStatNorm, NormStats

# How the miniImageNet variant's 2x2 max-pooling is lowered: "reduce_window" (flax's max_pool: a reduce-window,
# its gradient a select-and-scatter) or "reshape" (the input cropped to even sides, reshaped to 2x2 windows and
# reduced with max: elementwise work and one reduction, which XLA fuses with its neighbours).
Pool = Literal["reduce_window", "reshape"]


def max_pool_2x2(x: jax.Array, pool: Pool = "reduce_window") -> jax.Array:
    """2x2 max-pooling with stride 2 and VALID padding over the two axes before the last (NHWC).

    ``"reshape"`` computes the same maxima as ``"reduce_window"``; their gradients differ only where a
    window holds several equal maxima (``reduce_window`` gives the whole gradient to one of them,
    ``jnp.max`` shares it), which after a ReLU happens in windows of zeros, where the ReLU's derivative
    is zero, so the meta-gradient is the same.

    Launches per meta-step on the GPU with each: ``benchmarks/gpu_program.py`` (RESULTS.md).
    """
    if pool == "reduce_window":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    height, width, channels = x.shape[-3] // 2, x.shape[-2] // 2, x.shape[-1]
    x = x[..., :2 * height, :2 * width, :].reshape(x.shape[:-3] + (height, 2, width, 2, channels))
    return jnp.max(x, axis=(-4, -2))


class Conv4(nn.Module):
    """Four [3x3 conv, batch-statistics BatchNorm, ReLU] blocks and a linear head.

    Two variants, as in the MAML paper and its reference code:

    - ``"omniglot"``: 64 filters, stride-2 convolutions with SAME padding, then the mean over
      the remaining spatial positions (28x28 -> 2x2 -> 64 features).
    - ``"mini_imagenet"``: 32 filters, stride-1 convolutions followed by 2x2 max-pooling, then
      the flattened feature map (84x84 -> 5x5x32 = 800 features).

    Attributes:
      ways: number of output classes.
      variant: ``"omniglot"`` or ``"mini_imagenet"``.
      filters: overrides the variant's filter count (tiny models for tests).
      conv: how convolutions are lowered (see :class:`~jmaml.models.conv.Conv2D`).
      precision: ``"float32"``, or ``"bf16"``: the convolutions and the head's matmul take bfloat16
        operands and accumulate in float32; parameters, BatchNorm and the logits stay float32.
      norm: how BatchNorm computes its statistics (:class:`~jmaml.models.BatchStatNorm`'s ``stats``).
      pool: how the ``"mini_imagenet"`` variant's max-pooling is lowered (:func:`max_pool_2x2`).

    References:
      Finn, Abbeel & Levine (2017), section 5.2. https://arxiv.org/abs/1703.03400
      Vinyals et al. (2016). Matching Networks for One Shot Learning. NeurIPS.
    """

    ways: int
    variant: Literal["omniglot", "mini_imagenet"] = "omniglot"
    filters: int | None = None
    conv: ConvImpl = "auto"
    precision: Precision = "float32"
    norm: NormStats = "two_pass"
    pool: Pool = "reduce_window"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        omniglot = self.variant == "omniglot"
        filters = self.filters or (64 if omniglot else 32)
        for block in range(4):
            x = Conv2D(filters, 3, strides=2 if omniglot else 1, impl=self.conv, precision=self.precision,
                       name=f"conv{block}")(x)
            x = nn.relu(BatchStatNorm(stats=self.norm, name=f"norm{block}")(x))
            if not omniglot:
                x = max_pool_2x2(x, self.pool)
        x = jnp.mean(x, axis=(-3, -2)) if omniglot else x.reshape(x.shape[:-3] + (-1,))
        return Head(self.ways, self.precision, name="head")(x)


class Head(nn.Module):
    """The linear output layer; parameters (and their initial values) exactly those of ``nn.Dense``.

    Attributes:
      features: outputs.
      precision: as :class:`Conv4`'s.
    """

    features: int
    precision: Precision = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return matmul(x, kernel, self.precision) + bias
