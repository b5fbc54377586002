"""Network building blocks shared by the plugins: MLPs, batched ensembles, normalisers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["mlp", "EnsembleLinear", "EnsembleMLP", "Normalizer", "per_env_call"]


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: int = 256,
    n_hidden: int = 2,
    dropout: float = 0.0,
    layer_norm: bool = False,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``n_hidden`` x (Linear [-> LayerNorm] -> activation [-> Dropout]) -> Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers.append(nn.Linear(d, hidden))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers computed as one batched matmul.

    input (E,B,I) @ weight (E,I,O) + bias (E,1,O) -> (E,B,O); an input (B,I) is shared by all
    members.
    """

    def __init__(self, n_members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)  # nn.Linear's default, per member
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (B,I): the same input for every member
            return torch.einsum("bi,eio->ebo", x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class _EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature axis with separate affine parameters per member."""

    def __init__(self, n_members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x, x.shape[-1:])
        return x * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """E MLPs (Linear -> [LayerNorm] -> activation, ``n_hidden`` times, then Linear), batched
    over E."""

    def __init__(
        self,
        n_members: int,
        in_dim: int,
        out_dim: int,
        hidden: int = 400,
        n_hidden: int = 4,
        layer_norm: bool = True,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden):
            layers.append(EnsembleLinear(n_members, d, hidden))
            if layer_norm:
                layers.append(_EnsembleLayerNorm(n_members, hidden))
            layers.append(activation())
            d = hidden
        layers.append(EnsembleLinear(n_members, d, out_dim))
        self.net = nn.Sequential(*layers)
        self.n_members = n_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,I) or (E,B,I) -> (E,B,out)."""
        return self.net(x)


class Normalizer(nn.Module):
    """Per-dimension standardisation with statistics stored as buffers (saved with weights)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.eps = eps

    def fit(self, data: np.ndarray | torch.Tensor) -> Normalizer:
        data = torch.as_tensor(np.asarray(data, np.float32))
        self.mean.copy_(data.mean(0))
        self.std.copy_(data.std(0).clamp_min(self.eps))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def mixed_forward(net: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """``net(x)`` with every layer but the last under bf16 autocast when ``precision`` is
    "bf16"; the output layer runs in fp32, so that values in the hundreds (Q, V) keep fp32's
    resolution. ``net`` is an ``nn.Sequential`` (:func:`mlp`) or an :class:`EnsembleMLP`."""
    if precision != "bf16":
        return net(x)
    seq = net.net if isinstance(net, EnsembleMLP) else net
    assert isinstance(seq, nn.Sequential), f"mixed_forward needs a Sequential, got {type(net)}"
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        h = seq[:-1](x)
    return seq[-1](h.float())


def per_env_call(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    *inputs: torch.Tensor,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``module(*inputs)`` with its own weights for every leading index b of the batch.

    ``params`` maps parameter names of ``module`` to (B, ...) tensors (the weights of each of
    B environments; parameters not named keep the module's), ``inputs`` are (B, ...); the
    result is (B, ...). ``output`` picks a tensor from the module's output (e.g. d3rlpy's
    ``ActionOutput.squashed_mu``). ``torch.func.vmap`` over ``functional_call``: one pass of
    batched matmuls, differentiable w.r.t. the params and the inputs; the module's own
    parameters are only read. The module must not branch on tensor values.
    """
    from torch.func import functional_call, vmap

    def one(p: dict[str, torch.Tensor], *x: torch.Tensor) -> torch.Tensor:
        y = functional_call(module, p, x)
        return output(y) if output is not None else y

    return vmap(one)(params, *inputs)
