"""The plain PyTorch loop that labels the corpus: no stabcheck code is imported here.

It reads the same YAML config stabcheck reads, builds the same model from the same factory,
and reproduces stabcheck's probe protocol so both see the same init and the same batches:

* before each probe, ``random.seed(s)``, ``numpy.random.seed(s)``, ``torch.manual_seed(s)``,
  then the model is built (the order of stabcheck's sequential engine);
* the optimizer gets the trainable parameters in ``named_parameters()`` order;
* batches: a ``torch.Generator`` seeded with the probe seed draws one ``randperm`` of the
  dataset per epoch, the last incomplete batch is dropped;
* linear warmup: step ``t`` uses ``lr * min(1, (t + 1) / warmup_steps)``;
* the loss of step ``t`` is computed before update ``t``.

``python -m calibration run`` checks that stabcheck's recorded loss traces agree with these.
"""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "rmsprop": torch.optim.RMSprop}


def _load(base: Path, ref: str) -> Any:
    file, attr = ref.rsplit(":", 1)
    path = (base / file).resolve()
    name = f"_calibration_plain_{path.stem}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(module, attr)


def read_config(path: Path) -> dict[str, Any]:
    """The YAML config as plain data."""
    with path.open(encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh))


def grid(cfg: dict[str, Any]) -> list[tuple[int, float, int]]:
    """(batch size, lr, seed) of every probe, in a fixed order."""
    sweep = cfg["sweep"]
    return [(bs, float(lr), seed) for bs in sorted(sweep["batch_sizes"])
            for lr in sorted(sweep["learning_rates"]) for seed in sorted(sweep["seeds"])]


def _batch(data: Any, index: torch.Tensor) -> Any:
    if isinstance(data, dict):
        return {k: v[index] for k, v in data.items()}
    return tuple(t[index] for t in data)


def _loss(model: torch.nn.Module, batch: Any, loss: str) -> torch.Tensor:
    if loss == "model":
        out = model(**batch) if isinstance(batch, dict) else model(*batch)
        return out.loss if hasattr(out, "loss") else out
    if loss == "cross_entropy":
        x, y = batch
        return F.cross_entropy(model(x).float(), y)
    raise ValueError(f"the plain loop does not implement loss {loss!r}")


def run(path: Path) -> list[dict[str, Any]]:
    """Train every probe of the config at ``path``; per probe its grid point and losses."""
    cfg = read_config(path)
    base = path.parent
    model_fn = _load(base, cfg["model"]["factory"])
    model_kwargs = cfg["model"].get("kwargs") or {}
    data = _load(base, cfg["data"]["factory"])(**(cfg["data"].get("kwargs") or {}))
    n = len(next(iter(data.values()))) if isinstance(data, dict) else len(data[0])
    opt = cfg.get("optimizer") or {}
    opt_cls = _OPTIMIZERS[opt.get("name", "sgd")]
    opt_kwargs = opt.get("kwargs") or {}
    probe = cfg.get("probe") or {}
    steps, warmup = int(probe.get("steps", 200)), int(probe.get("warmup_steps", 0))
    loss_name = cfg.get("loss", "cross_entropy")
    out = []
    for bs, lr, seed in grid(cfg):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        model = model_fn(**model_kwargs)
        model.train()
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        optimizer = opt_cls(params, lr=lr, **opt_kwargs)
        g = torch.Generator().manual_seed(seed)
        per_epoch = n // bs
        order = torch.cat([torch.randperm(n, generator=g)[: per_epoch * bs]
                           for _ in range(-(-steps // per_epoch))]).view(-1, bs)
        losses: list[float | None] = []
        for t in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (t + 1) / warmup) if warmup else lr
            loss = _loss(model, _batch(data, order[t]), loss_name)
            value = float(loss.detach())
            if not math.isfinite(value):
                losses.append(None)
                break
            losses.append(value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        out.append({"batch_size": bs, "lr": lr, "seed": seed, "losses": losses})
    return out
