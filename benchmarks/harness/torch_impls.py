"""The PyTorch peers: a per-task loop with ``autograd.grad(create_graph=True)`` and ``torch.func``.

Both run the same Conv4 as jmaml (SAME padding as XLA pads it, batch-statistics BatchNorm,
NHWC flattening order for the miniImageNet head) from the same initial weights, so all
implementations compute the same meta-loss and meta-gradient. PyTorch is imported lazily:
without it, creating either bench raises :class:`~benchmarks.harness.base.Skipped`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.harness.base import Grads, Skipped
from benchmarks.harness.workloads import BenchWorkload
from jmaml.core.types import Tasks


def _torch():
    try:
        import torch
    except ImportError as err:
        raise Skipped("PyTorch is not installed (pip install torch)") from err
    return torch


def _same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int]:
    """XLA's SAME padding (low, high): the extra pixel, if any, goes at the high end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def to_torch_params(params: Grads, device) -> dict[str, Any]:
    """jmaml's parameter tree as flat ``{layer_leaf: tensor}``, conv kernels HWIO -> OIHW."""
    torch = _torch()
    flat = {}
    for layer, leaves in params.items():
        for leaf, value in leaves.items():
            value = np.asarray(value)
            if layer.startswith("conv") and leaf == "kernel":
                value = value.transpose(3, 2, 0, 1)
            flat[f"{layer}_{leaf}"] = torch.tensor(value, device=device)
    return flat


def from_torch_grads(grads: dict[str, Any]) -> Grads:
    """The inverse of :func:`to_torch_params` for gradients: back to jmaml's layout, numpy."""
    tree: Grads = {}
    for name, value in grads.items():
        layer, leaf = name.split("_", 1)
        value = value.detach().cpu().numpy()
        if layer.startswith("conv") and leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)
        tree.setdefault(layer, {})[leaf] = value
    return tree


def make_model(workload: BenchWorkload, params: Grads, device):
    """A ``torch.nn.Module`` Conv4 (NCHW) whose parameters are those of ``params``."""
    torch = _torch()
    F = torch.nn.functional
    omniglot = workload.variant == "omniglot"
    stride = 2 if omniglot else 1

    class TorchConv4(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, value in to_torch_params(params, device).items():
                self.register_parameter(name, torch.nn.Parameter(value))

        def forward(self, x):
            for i in range(4):
                (top, bottom), (left, right) = (_same_padding(s, stride) for s in x.shape[-2:])
                x = F.conv2d(F.pad(x, (left, right, top, bottom)), getattr(self, f"conv{i}_kernel"),
                             getattr(self, f"conv{i}_bias"), stride=stride)
                mean = x.mean(dim=(0, 2, 3), keepdim=True)
                var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
                scale = getattr(self, f"norm{i}_scale").view(1, -1, 1, 1)
                shift = getattr(self, f"norm{i}_bias").view(1, -1, 1, 1)
                x = F.relu((x - mean) * torch.rsqrt(var + 1e-5) * scale + shift)
                if not omniglot:
                    x = F.max_pool2d(x, 2)
            x = x.mean(dim=(2, 3)) if omniglot else x.permute(0, 2, 3, 1).flatten(1)
            return x @ self.head_kernel + self.head_bias

    return TorchConv4()


class _TorchBench:
    """Model, Adam and batches on the torch device (CUDA if available, else CPU)."""

    compile_s = None
    flops = None
    program_bytes = None

    def __init__(self, workload: BenchWorkload, params: Grads, batches: list[Tasks], options: dict[str, Any]):
        torch = self.torch = _torch()
        if options.get("threads"):
            torch.set_num_threads(options["threads"])
        self.workload = workload
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = (f"cuda {torch.cuda.get_device_name()} (torch)" if self.dev.type == "cuda"
                       else f"cpu (torch, {torch.get_num_threads()} thread(s))")
        self.model = make_model(workload, params, self.dev)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=workload.meta_lr)
        self.batches = [self._tensors(b) for b in batches]
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _tensors(self, tasks: Tasks) -> Tasks:
        t = self.torch
        to = lambda a: t.tensor(np.asarray(a), device=self.dev)  # noqa: E731
        nchw = lambda a: to(np.ascontiguousarray(np.asarray(a).transpose(0, 1, 4, 2, 3)))  # noqa: E731
        return Tasks(nchw(tasks.x_support), to(tasks.y_support).long(), nchw(tasks.x_query),
                     to(tasks.y_query).long())

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def _backward(self, tasks: Tasks):
        """Fills ``.grad`` of the model's parameters with the meta-gradient; returns the meta-loss."""
        raise NotImplementedError

    def step(self, index: int) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(self.batches[index % len(self.batches)])
        self.optimizer.step()
        self._sync()
        return float(loss)

    def step_on(self, tasks: Tasks) -> tuple[float, Grads]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(self._tensors(tasks))
        grads = from_torch_grads({n: p.grad for n, p in self.model.named_parameters()})
        self.optimizer.step()
        return float(loss), grads

    def peak_bytes(self) -> int | None:
        return int(self.torch.cuda.max_memory_allocated()) if self.dev.type == "cuda" else None


class TorchLoopBench(_TorchBench):
    """The learn2learn / higher pattern: a Python loop over tasks, ``autograd.grad(create_graph=True)``
    for each inner step, and a backward pass per task that accumulates the meta-gradient."""

    def _backward(self, tasks: Tasks):
        torch, w = self.torch, self.workload
        F = torch.nn.functional
        call = torch.func.functional_call
        names = [n for n, _ in self.model.named_parameters()]
        total = torch.zeros((), device=self.dev)
        for t in range(w.meta_batch):
            fast = dict(self.model.named_parameters())
            for _ in range(w.inner_steps):
                loss = F.cross_entropy(call(self.model, fast, (tasks.x_support[t],)), tasks.y_support[t])
                grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=True)
                fast = {n: fast[n] - w.inner_lr * g for n, g in zip(names, grads)}
            logits = call(self.model, fast, (tasks.x_query[t],))
            query = F.cross_entropy(logits, tasks.y_query[t]) / w.meta_batch
            query.backward()
            total = total + query.detach()
        return total


class TorchFuncBench(_TorchBench):
    """``torch.func``: ``functional_call`` + ``grad`` for the inner loop, ``vmap`` over tasks,
    ``grad_and_value`` for the meta-gradient."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        torch, w, model = self.torch, self.workload, self.model
        F, func = torch.nn.functional, torch.func

        def loss(params, x, y):
            return F.cross_entropy(func.functional_call(model, params, (x,)), y)

        def task_loss(params, xs, ys, xq, yq):
            fast = params
            for _ in range(w.inner_steps):
                grads = func.grad(loss)(fast, xs, ys)
                fast = {n: fast[n] - w.inner_lr * grads[n] for n in fast}
            return loss(fast, xq, yq)

        def meta_loss(params, xs, ys, xq, yq):
            return func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).mean()

        self.grad_and_value = func.grad_and_value(meta_loss)

    def _backward(self, tasks: Tasks):
        params = dict(self.model.named_parameters())
        grads, loss = self.grad_and_value({n: p.detach() for n, p in params.items()}, *tasks)
        for name, p in params.items():
            p.grad = grads[name]
        return loss.detach()
