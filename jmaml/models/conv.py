"""A 2-D convolution with a choice of lowering: XLA's convolution, or im2col + matmul."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["auto", "xla", "im2col"]
# "float32": everything in float32. "bf16": convolution and matmul operands in bfloat16, their
# products accumulated and returned in float32; parameters, BatchNorm and losses stay float32.
Precision = Literal["float32", "bf16"]


def lowered(x: jax.Array, precision: Precision) -> jax.Array:
    """``x`` as a convolution or matmul operand: bfloat16 under ``"bf16"``, unchanged otherwise."""
    return x.astype(jnp.bfloat16) if precision == "bf16" else x


def _result_type(precision: Precision) -> jnp.dtype | None:
    """float32 accumulation and result for bfloat16 operands; the operands' own type otherwise."""
    return jnp.dtype(jnp.float32) if precision == "bf16" else None


def matmul(x: jax.Array, w: jax.Array, precision: Precision = "float32") -> jax.Array:
    """``x @ w``; under ``"bf16"`` with bfloat16 operands, accumulated and returned in float32."""
    return jnp.matmul(lowered(x, precision), lowered(w, precision), preferred_element_type=_result_type(precision))


def resolve_impl(impl: ConvImpl, backend: str | None = None) -> str:
    """``"auto"`` picks ``"im2col"`` on CPU and GPU and ``"xla"`` elsewhere (TPU).

    On the GPU, XLA's convolution under ``vmap`` with per-task (adapted) kernels becomes grouped cuDNN
    convolutions (one group per task), whose weight gradients include forward convolutions with windows
    as large as the feature map, the pattern jax-ml/jax#13800 reports as slow; im2col's per-task
    products are batched GEMMs, and its compiled meta-step launches fewer kernels on the Omniglot configs
    and about as many on miniImageNet, where it needs more memory (``benchmarks/gpu_program.py``,
    RESULTS.md 2026-12-07). Not yet timed on a GPU.

    Args:
      impl: the configured lowering.
      backend: the platform the program is compiled for (``"cpu"``, ``"gpu"``, ...); default
        ``jax.default_backend()``. A program compiled for another target than the default
        backend (``benchmarks/gpu_program.py``) names it.
    """
    if impl == "auto":
        return "im2col" if (backend or jax.default_backend()) in ("cpu", "gpu", "cuda", "rocm") else "xla"
    return impl


def im2col(x: jax.Array, size: int, stride: int) -> jax.Array:
    """SAME-padded ``size x size`` patches of NHWC ``x``, features ordered (row, column, channel).

    Built from strided slices of the padded input only (no convolution), so its transpose in the
    backward pass is a pad and a sum, and a leading task axis under ``vmap`` folds into the batch.
    """
    height, width = x.shape[-3:-1]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + size - height, 0)
    pad_w = max((out_w - 1) * stride + size - width, 0)
    pads = [(0, 0)] * (x.ndim - 3) + [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)]
    xp = jnp.pad(x, pads)
    cols = [xp[..., i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
            for i in range(size) for j in range(size)]
    return jnp.concatenate(cols, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, strides: int, impl: ConvImpl,
           precision: Precision = "float32") -> jax.Array:
    """SAME-padded convolution of NHWC ``x`` by an HWIO square ``kernel``, plus ``bias``.

    The math shared by the linen and the NNX :class:`Conv2D`; ``impl`` and ``precision`` as there.
    Under ``"bf16"`` the result is float32.
    """
    size, _, cin, features = kernel.shape
    if resolve_impl(impl) == "xla":
        y = lax.conv_general_dilated(lowered(x, precision), lowered(kernel, precision), (strides,) * 2, "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     preferred_element_type=_result_type(precision))
    else:
        y = matmul(im2col(lowered(x, precision), size, strides),
                   kernel.reshape(size * size * cin, features), precision)
    return y + bias


class Conv2D(nn.Module):
    """A square convolution with SAME padding; parameters exactly those of ``nn.Conv``.

    Two lowerings of the same math:

    - ``"xla"``: ``lax.conv_general_dilated``. Under ``vmap`` over tasks with per-task
      (adapted) kernels it becomes a grouped convolution, which XLA:CPU runs very slowly and cuDNN
      runs as grouped kernels (jax-ml/jax#13800).
    - ``"im2col"``: gather the patches with strided slices (no weights involved, so the task axis
      folds into the batch) and multiply by the kernel as a matrix; under ``vmap`` that is a
      batched matmul, which XLA:CPU runs an order of magnitude faster (``benchmarks/RESULTS.md``)
      and which a GPU runs as batched GEMMs, with no convolution in the meta-step.

    Attributes:
      features: output channels.
      kernel_size: side of the square kernel.
      strides: stride in both spatial dimensions.
      impl: ``"auto"`` (im2col on CPU and GPU, xla elsewhere), ``"xla"`` or ``"im2col"``.
      precision: ``"float32"``, or ``"bf16"`` (bfloat16 operands, float32 accumulation and result;
        the parameters stay float32).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    impl: ConvImpl = "auto"
    precision: Precision = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (size, size, cin, self.features),
                            x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        return conv2d(x, kernel, bias, self.strides, self.impl, self.precision)
