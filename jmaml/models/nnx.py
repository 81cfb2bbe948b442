"""The paper's models as flax NNX modules, with the parameter paths of the linen ones.

``jmaml.functional`` turns any NNX module into ``(init, apply)`` whose parameters are a plain
nested dict. The modules here are built so that dict has exactly the paths of the linen
:class:`~jmaml.models.MLP` and :class:`~jmaml.models.Conv4` (``Dense_0/kernel``, ``conv0/kernel``,
``norm0/scale``, ``head/bias``, ...), so path masks such as ANIL's ``"head"`` select the same
leaves and a linen parameter tree can be used with the NNX module unchanged.

Unlike linen, NNX creates parameters at construction, so every input width must be known up
front: ``inputs`` of :class:`MLP`, ``channels`` and (for the ``"mini_imagenet"`` variant, whose
head sees the flattened feature map) ``image_size`` of :class:`Conv4`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jmaml.models.conv import ConvImpl, conv2d
from jmaml.models.norm import batch_stat_norm


class MLP(nnx.Module):
    """ReLU multilayer perceptron; the MAML sinusoid model is ``MLP((40, 40), 1, rngs=nnx.Rngs(0))``.

    Parameter paths: ``Dense_0``, ``Dense_1``, ... and ``head``, each with ``kernel`` and ``bias``,
    as in the linen :class:`~jmaml.models.MLP`, with the same initialisers (LeCun normal, zeros).

    Args:
      hidden: widths of the hidden layers.
      outputs: width of the linear output layer.
      inputs: width of the input.
      rngs: the random streams that initialise the weights.

    References:
      Finn, Abbeel & Levine (2017), section 5.1. https://arxiv.org/abs/1703.03400
    """

    def __init__(self, hidden: Sequence[int] = (40, 40), outputs: int = 1, *, inputs: int = 1, rngs: nnx.Rngs):
        widths = (inputs, *hidden)
        self.depth = len(hidden)
        for i in range(self.depth):
            setattr(self, f"Dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
        self.head = nnx.Linear(widths[-1], outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = nnx.relu(getattr(self, f"Dense_{i}")(x))
        return self.head(x)


class Conv2D(nnx.Module):
    """A square convolution with SAME padding; the NNX twin of :class:`jmaml.models.conv.Conv2D`.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: side of the square kernel.
      strides: stride in both spatial dimensions.
      impl: ``"auto"`` (im2col on CPU and GPU, xla elsewhere), ``"xla"`` or ``"im2col"``.
      rngs: the random streams that initialise the kernel.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *, strides: int = 1,
                 impl: ConvImpl = "auto", rngs: nnx.Rngs):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(jax.nn.initializers.lecun_normal()(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.strides = strides
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...], self.bias[...], self.strides, self.impl)


class BatchStatNorm(nnx.Module):
    """Batch normalisation with the current batch's statistics only (no running averages).

    The NNX twin of :class:`jmaml.models.BatchStatNorm`: only ``scale`` and ``bias`` are state.

    Args:
      features: size of the last axis.
      epsilon: added to the variance.

    References:
      Ioffe & Szegedy (2015). Batch Normalization. ICML. https://arxiv.org/abs/1502.03167
    """

    def __init__(self, features: int, *, epsilon: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        return batch_stat_norm(x, self.scale[...], self.bias[...], self.epsilon)


class Conv4(nnx.Module):
    """Four [3x3 conv, batch-statistics BatchNorm, ReLU] blocks and a linear head (NHWC).

    The NNX twin of the linen :class:`~jmaml.models.Conv4`, with the same variants and parameter
    paths (``conv0`` .. ``conv3``, ``norm0`` .. ``norm3``, ``head``).

    Args:
      ways: number of output classes.
      variant: ``"omniglot"`` (64 filters, stride 2, spatial mean) or ``"mini_imagenet"``
        (32 filters, stride 1 and 2x2 max-pooling, flattened features).
      filters: overrides the variant's filter count (tiny models for tests).
      conv: how convolutions are lowered (see :class:`jmaml.models.conv.Conv2D`).
      channels: input channels; 1 for ``"omniglot"`` and 3 for ``"mini_imagenet"`` by default.
      image_size: side of the square input images; it fixes the width of the ``"mini_imagenet"``
        head (84 -> 5x5 feature map) and is not needed for ``"omniglot"``.
      rngs: the random streams that initialise the weights.

    References:
      Finn, Abbeel & Levine (2017), section 5.2. https://arxiv.org/abs/1703.03400
      Vinyals et al. (2016). Matching Networks for One Shot Learning. NeurIPS.
    """

    def __init__(self, ways: int, variant: Literal["omniglot", "mini_imagenet"] = "omniglot",
                 filters: int | None = None, conv: ConvImpl = "auto", *, channels: int | None = None,
                 image_size: int = 84, rngs: nnx.Rngs):
        self.omniglot = variant == "omniglot"
        filters = filters or (64 if self.omniglot else 32)
        widths = (channels or (1 if self.omniglot else 3),) + (filters,) * 4
        for block in range(4):
            setattr(self, f"conv{block}", Conv2D(widths[block], filters, 3, strides=2 if self.omniglot else 1,
                                                 impl=conv, rngs=rngs))
            setattr(self, f"norm{block}", BatchStatNorm(filters))
        side = image_size
        for _ in range(4):
            side //= 2
        self.head = nnx.Linear(filters if self.omniglot else side * side * filters, ways, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in range(4):
            x = nnx.relu(getattr(self, f"norm{block}")(getattr(self, f"conv{block}")(x)))
            if not self.omniglot:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = jnp.mean(x, axis=(-3, -2)) if self.omniglot else x.reshape(x.shape[:-3] + (-1,))
        return self.head(x)


__all__ = ["BatchStatNorm", "Conv2D", "Conv4", "MLP"]
