"""The plain PyTorch loop a user writes for a grid: no stabcheck code is imported here.

    python benchmarks/plain_loop.py CONFIG.yaml

It reads the grid (learning rates x seeds x batch sizes, steps, warmup) from the same YAML
config ``stabcheck audit`` reads and trains every grid point the way a user would: seed, build
a fresh model, a ``torch.optim`` optimizer, then forward, loss, ``backward``, ``step``. It is
what ``benchmarks/bench_real.py`` times against the whole ``stabcheck audit`` process.

* models and data named by ``factory: "file.py:name"`` are loaded from that file (the
  calibration corpus); the built-in ``mlp`` and ``blobs`` are written out here in plain torch
  (the same layers and the same data recipe), since a user has no stabcheck built-ins;
* seed protocol as stabcheck's (and ``calibration/plain.py``'s): ``random``, ``numpy`` and
  ``torch`` seeded with the probe seed before the model is built; a ``torch.Generator`` seeded
  with it draws one ``randperm`` per epoch, the last incomplete batch dropped;
* the loss is read once a step (``float(loss)``, as a user logs it), and a run whose loss is no
  longer finite stops there, as stabcheck stops a diverged probe.

Prints ``plain loop: N runs x S steps in T s`` on stdout.
"""

from __future__ import annotations

import importlib.util
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "rmsprop": torch.optim.RMSprop}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _load(base: Path, ref: str) -> Any:
    file, attr = ref.rsplit(":", 1)
    path = (base / file).resolve()
    spec = importlib.util.spec_from_file_location(f"_plain_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, attr)


def mlp(in_features: int = 20, hidden: list[int] | None = None, out_features: int = 4,
        activation: str = "relu") -> nn.Module:
    """The MLP a user writes: Linear, activation, ..., Linear."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden if hidden is not None else [64, 64]:
        layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_features))


def blobs(n_samples: int = 2048, n_features: int = 20, n_classes: int = 4,
          cluster_std: float = 1.0, center_scale: float = 2.0,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters, one per class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, n_features, generator=g) * center_scale
    labels = (torch.arange(n_samples) % n_classes)[torch.randperm(n_samples, generator=g)]
    return centers[labels] + cluster_std * torch.randn(n_samples, n_features, generator=g), labels


_BUILTINS = {"mlp": mlp, "blobs": blobs}


def _factory(cfg: dict[str, Any], section: str, base: Path) -> Any:
    spec = cfg[section]
    if "builtin" in spec:
        if spec["builtin"] not in _BUILTINS:
            raise SystemExit(f"plain_loop: no plain version of built-in {spec['builtin']!r}")
        return _BUILTINS[spec["builtin"]]
    return _load(base, spec["factory"])


def _batch(data: Any, index: torch.Tensor) -> Any:
    if isinstance(data, dict):
        return {k: v[index] for k, v in data.items()}
    return tuple(t[index] for t in data)


def _loss(model: nn.Module, batch: Any, loss: str) -> torch.Tensor:
    if loss == "model":
        out = model(**batch) if isinstance(batch, dict) else model(*batch)
        return out.loss if hasattr(out, "loss") else out
    if loss == "cross_entropy":
        x, y = batch
        out = model(x)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
    raise SystemExit(f"plain_loop: loss {loss!r} is not implemented")


def run(path: Path) -> int:
    """Train every grid point of the config at ``path``; the number of runs."""
    with path.open(encoding="utf-8") as fh:
        cfg = dict(yaml.safe_load(fh))
    base = path.parent
    model_fn = _factory(cfg, "model", base)
    model_kwargs = cfg["model"].get("kwargs") or {}
    data = _factory(cfg, "data", base)(**(cfg["data"].get("kwargs") or {}))
    n = len(next(iter(data.values()))) if isinstance(data, dict) else len(data[0])
    opt = cfg.get("optimizer") or {}
    opt_cls, opt_kwargs = _OPTIMIZERS[opt.get("name", "sgd")], opt.get("kwargs") or {}
    probe = cfg.get("probe") or {}
    steps, warmup = int(probe.get("steps", 200)), int(probe.get("warmup_steps") or 0)
    loss_name = cfg.get("loss", "cross_entropy")
    sweep = cfg["sweep"]
    runs = 0
    for bs in sorted(sweep["batch_sizes"]):
        for lr in sorted(float(v) for v in sweep["learning_rates"]):
            for seed in sorted(sweep["seeds"]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                model = model_fn(**model_kwargs)
                model.train()
                optimizer = opt_cls([p for p in model.parameters() if p.requires_grad],
                                    lr=lr, **opt_kwargs)
                g = torch.Generator().manual_seed(seed)
                per_epoch = n // bs
                order = torch.cat([torch.randperm(n, generator=g)[: per_epoch * bs]
                                   for _ in range(-(-steps // per_epoch))]).view(-1, bs)
                for t in range(steps):
                    if warmup:
                        for group in optimizer.param_groups:
                            group["lr"] = lr * min(1.0, (t + 1) / warmup)
                    loss = _loss(model, _batch(data, order[t]), loss_name)
                    if not math.isfinite(float(loss.detach())):
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                runs += 1
    return runs


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/plain_loop.py CONFIG.yaml", file=sys.stderr)
        return 2
    started = time.perf_counter()
    path = Path(argv[0])
    runs = run(path)
    with path.open(encoding="utf-8") as fh:
        steps = int((yaml.safe_load(fh).get("probe") or {}).get("steps", 200))
    print(f"plain loop: {runs} runs x {steps} steps in {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
