"""Built-in models: small, fully configurable, generated in code (no downloads).

Module names are chosen so the report reads well: ``layers.3.linear``, ``blocks.2.attn``,
``head``. Every model is a plain ``nn.Module`` that ``torch.func.functional_call`` and
``vmap`` can run (no in-place tricks, no data-dependent control flow); BatchNorm's running
statistics are stacked per member by the vectorized engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "identity"]
Init = Literal["default", "he", "xavier", "normal", "orthogonal", "heavy_tailed"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU, "identity": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _init_linear(weight: torch.Tensor, bias: torch.Tensor | None, scheme: str,
                 activation: str, std: float | None) -> None:
    """Re-initialise one weight matrix (or conv kernel) in place."""
    if scheme == "default":
        return  # PyTorch's own kaiming-uniform(a=sqrt(5)) from the layer constructor
    fan_in = weight[0].numel()
    nonlinearity = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(activation, "linear")
    gain = nn.init.calculate_gain(nonlinearity)  # type: ignore[arg-type]
    with torch.no_grad():
        if scheme == "he":
            nn.init.kaiming_normal_(weight, nonlinearity="relu")
        elif scheme == "xavier":
            nn.init.xavier_normal_(weight, gain=gain)
        elif scheme == "normal":
            nn.init.normal_(weight, 0.0, std if std is not None else 1.0 / math.sqrt(fan_in))
        elif scheme == "orthogonal":
            nn.init.orthogonal_(weight.view(weight.shape[0], -1), gain=gain)
        elif scheme == "heavy_tailed":
            # Student-t with 3 degrees of freedom, rescaled to He variance: same variance,
            # far heavier tails (the failure mode the init kurtosis check looks for).
            t = torch.distributions.StudentT(3.0).sample(weight.shape)
            weight.copy_(t / math.sqrt(3.0) * math.sqrt(2.0 / fan_in))
        else:
            raise ValueError(f"unknown init {scheme!r}; expected default, he, xavier, normal, "
                             "orthogonal or heavy_tailed")
        if bias is not None:
            bias.zero_()


class MLPBlock(nn.Module):
    """``linear → norm → activation``, plus the input when ``residual`` and shapes match."""

    def __init__(self, d_in: int, d_out: int, activation: str, norm: str | None,
                 residual: bool, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        self.norm: nn.Module = _norm_1d(norm, d_out)
        self.act = _activation(activation)
        self.residual = residual and d_in == d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.linear(x)))
        return x + h if self.residual else h


def _norm_1d(norm: str | None, width: int) -> nn.Module:
    if norm in (None, "none"):
        return nn.Identity()
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "batchnorm":
        return nn.BatchNorm1d(width)
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    raise ValueError(f"unknown norm {norm!r}; expected none, layernorm, rmsnorm or batchnorm")


class MLP(nn.Module):
    """A multilayer perceptron: ``layers.0 … layers.N-1`` then ``head``."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str, residual: bool, norm: str | None, bias: bool) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(
            MLPBlock(widths[i], widths[i + 1], activation, norm, residual, bias)
            for i in range(len(hidden))
        )
        self.head = nn.Linear(widths[-1], out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1) if x.dim() > 2 else x
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def mlp(in_features: int = 20, hidden: Sequence[int] | None = None, out_features: int = 4,
        activation: Activation = "relu", residual: bool = False,
        norm: Literal["none", "layernorm", "rmsnorm", "batchnorm"] | None = None,
        init: Init = "default", init_std: float | None = None, bias: bool = True,
        depth: int | None = None, width: int = 64, head_scale: float = 1.0) -> nn.Module:
    """A multilayer perceptron.

    ``hidden`` lists the hidden widths; alternatively ``depth`` hidden layers of ``width``.
    ``hidden: []`` is plain linear (or logistic) regression. ``residual`` adds the input to
    every block whose input and output widths match; ``norm`` goes after each linear layer.
    ``head_scale`` multiplies the output layer's initial weights (e.g. 0.1 to start with
    small logits, the usual fix for a high initial loss).
    """
    if hidden is None:
        hidden = [width] * (depth if depth is not None else 2)
    elif depth is not None:
        raise ValueError("give either 'hidden' or 'depth', not both")
    if any(int(h) <= 0 for h in hidden) or in_features <= 0 or out_features <= 0:
        raise ValueError("layer widths must be positive")
    model = MLP(in_features, [int(h) for h in hidden], out_features, activation, residual,
                norm, bias)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _init_linear(module.weight, module.bias, init, activation, init_std)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    return model


class CNN(nn.Module):
    """``features.i`` conv blocks (conv → norm → activation → 2x2 pool), then ``head``."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int,
                 activation: str, norm: str | None, kernel_size: int) -> None:
        super().__init__()
        blocks = []
        c_in = in_channels
        for c_out in channels:
            blocks.append(ConvBlock(c_in, c_out, activation, norm, kernel_size))
            c_in = c_out
        self.features = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = block(x)
        return self.head(x.mean(dim=(-2, -1)))


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, activation: str, norm: str | None,
                 kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        if norm in (None, "none"):
            self.norm: nn.Module = nn.Identity()
        elif norm == "batchnorm":
            self.norm = nn.BatchNorm2d(c_out)
        elif norm == "groupnorm":
            self.norm = nn.GroupNorm(min(8, c_out), c_out)
        else:
            raise ValueError(f"unknown norm {norm!r}; expected none, batchnorm or groupnorm")
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.act(self.norm(self.conv(x))), 2, ceil_mode=True)


def cnn(in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 4,
        activation: Activation = "relu",
        norm: Literal["none", "batchnorm", "groupnorm"] | None = None,
        kernel_size: int = 3, init: Init = "default") -> nn.Module:
    """A small convolutional classifier for ``[N, C, H, W]`` images (e.g. built-in ``images``)."""
    model = CNN(in_channels, list(channels), num_classes, activation, norm, kernel_size)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            _init_linear(module.weight, module.bias, init, activation, None)
    return model


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention, written out so ``vmap`` and forward hooks see each step."""

    def __init__(self, d_model: int, n_heads: int, qk_layernorm: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        head_dim = d_model // n_heads
        # qk-layernorm (Dehghani et al. 2023; Wortsman et al. 2023) bounds attention logits.
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_layernorm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_layernorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q = self.q_norm(q.reshape(shape)).transpose(1, 2)
        k = self.k_norm(k.reshape(shape)).transpose(1, 2)
        v = v.reshape(shape).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = logits.masked_fill(mask, float("-inf")).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm GPT block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, qk_layernorm: bool,
                 activation: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, qk_layernorm)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), _activation(activation),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A tiny causal language model: ``embed``, ``blocks.i``, ``ln_f``, ``head``."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, n_layers: int,
                 n_heads: int, mlp_ratio: int, qk_layernorm: bool, activation: str) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, mlp_ratio, qk_layernorm, activation)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than seq_len={self.seq_len}")
        positions = torch.arange(t, device=tokens.device)
        x = self.embed(tokens) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def transformer(vocab_size: int = 128, seq_len: int = 64, d_model: int = 64, n_layers: int = 2,
                n_heads: int = 4, mlp_ratio: int = 4, qk_layernorm: bool = False,
                activation: Activation = "gelu", init_std: float = 0.02) -> nn.Module:
    """A tiny pre-norm causal transformer LM (GPT-2 style init, std ``init_std``).

    Pairs with the built-in ``text`` dataset (vocab 128, ASCII). ``qk_layernorm`` normalises
    queries and keys per head, the fix Wortsman et al. (2023) found for attention-logit growth.
    """
    model = TinyGPT(vocab_size, seq_len, d_model, n_layers, n_heads, mlp_ratio, qk_layernorm,
                    activation)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers).
            residual_out = name.endswith(("proj.weight", "mlp.2.weight"))
            scale = 1.0 / math.sqrt(2 * n_layers) if residual_out else 1.0
            nn.init.normal_(param, 0.0, init_std * scale)
        elif name.endswith("bias"):
            nn.init.zeros_(param)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn,
                                                "transformer": transformer}
