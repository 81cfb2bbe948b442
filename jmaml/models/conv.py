"""A 2-D convolution with a choice of lowering: XLA's convolution or patches + matmul."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
from jax import lax

ConvImpl = Literal["auto", "xla", "patches"]
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: ConvImpl) -> str:
    """``"auto"`` picks ``"patches"`` on CPU and ``"xla"`` elsewhere."""
    if impl == "auto":
        return "patches" if jax.default_backend() == "cpu" else "xla"
    return impl


class Conv2D(nn.Module):
    """A square convolution with SAME padding; parameters exactly those of ``nn.Conv``.

    Two lowerings of the same math:

    - ``"xla"``: ``lax.conv_general_dilated``. Under ``vmap`` over tasks with per-task
      (adapted) kernels it becomes a grouped convolution, which XLA:CPU runs slowly.
    - ``"patches"``: extract the 3x3 patches (no weights involved, so the task axis folds into
      the batch) and multiply by the kernel as a matrix; under ``vmap`` that is a batched
      matmul, which XLA:CPU runs several times faster (see ``benchmarks/RESULTS.md``).

    Attributes:
      features: output channels.
      kernel_size: side of the square kernel.
      strides: stride in both spatial dimensions.
      impl: ``"auto"`` (patches on CPU, xla elsewhere), ``"xla"`` or ``"patches"``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (size, size, cin, self.features),
                            x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        strides = (self.strides, self.strides)
        if resolve_impl(self.impl) == "xla":
            y = lax.conv_general_dilated(x, kernel, strides, "SAME", dimension_numbers=_DIMS)
        else:
            patches = lax.conv_general_dilated_patches(x, (size, size), strides, "SAME",
                                                       dimension_numbers=_DIMS)
            # patch features are ordered (in channel, kernel row, kernel column)
            y = patches @ kernel.transpose(2, 0, 1, 3).reshape(cin * size * size, self.features)
        return y + bias
