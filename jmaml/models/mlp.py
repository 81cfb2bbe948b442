"""The fully connected network of the sinusoid experiments."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """ReLU multilayer perceptron; the MAML sinusoid model is ``MLP((40, 40), 1)``.

    Attributes:
      hidden: widths of the hidden layers.
      outputs: width of the linear output layer.

    References:
      Finn, Abbeel & Levine (2017), section 5.1. https://arxiv.org/abs/1703.03400
    """

    hidden: Sequence[int] = (40, 40)
    outputs: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs, name="head")(x)
