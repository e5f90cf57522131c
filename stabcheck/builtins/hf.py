"""Hugging Face ``transformers`` models built from a config (random init, no download) and
synthetic data that fits each task.

``transformers`` is an optional extra (``pip install 'stabcheck[hf]'``) and is imported only
when a config names ``builtin: hf``. Nothing here calls ``from_pretrained``: the model is
built with ``AutoModelFor<Task>.from_config``, so an audit never touches the network.

The model is wrapped in :class:`HFModel`, which

* accepts the batch as positional tensors (``(input_ids, labels)``, ``(pixel_values,
  labels)``) or as keyword arguments (a dict batch), mapping positions to the task's names;
* sets ``labels = input_ids`` for a causal LM whose batch carries no labels (the model
  shifts them itself);
* returns the model's own output (``loss: model`` reads its ``.loss``; any other loss reads
  its ``.logits``).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import nn

# config: short family name → transformers config class name.
FAMILIES = {"gpt2": "GPT2Config", "llama": "LlamaConfig", "bert": "BertConfig",
            "vit": "ViTConfig", "resnet": "ResNetConfig"}
# task → (Auto class, names of the positional batch entries)
TASKS = {
    "causal_lm": ("AutoModelForCausalLM", ("input_ids", "labels")),
    "masked_lm": ("AutoModelForMaskedLM", ("input_ids", "labels")),
    "sequence_classification": ("AutoModelForSequenceClassification", ("input_ids", "labels")),
    "image_classification": ("AutoModelForImageClassification", ("pixel_values", "labels")),
}
INSTALL_HINT = "Hugging Face models need transformers: pip install 'stabcheck[hf]'"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return transformers


def _choice(value: str, choices: Any, what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


class HFModel(nn.Module):
    """A ``transformers`` model that takes stabcheck's batches (see the module docstring)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.names = TASKS[task][1]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        if len(args) > len(self.names):
            raise TypeError(f"a {self.task} batch has at most {len(self.names)} tensors "
                            f"({', '.join(self.names)}); got {len(args)}")
        inputs = dict(zip(self.names, args, strict=False))
        inputs.update(kwargs)
        if self.task == "causal_lm" and "labels" not in inputs and "input_ids" in inputs:
            inputs["labels"] = inputs["input_ids"]
        return self.model(**inputs)


def hf(config: str = "gpt2", task: str = "causal_lm",
       config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised ``transformers`` model.

    ``config`` is a family (gpt2, llama, bert, vit, resnet) or any ``transformers`` config
    class name (``"MistralConfig"``); ``config_overrides`` are that config's own keyword
    arguments (``n_layer``, ``hidden_size``, ``num_labels`` …); ``task`` picks the head.
    """
    _choice(task, TASKS, "task")
    lib = _transformers()
    class_name = FAMILIES.get(config, config)
    config_cls = getattr(lib, class_name, None)
    if config_cls is None or not class_name.endswith("Config"):
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(FAMILIES)} "
                         "or a transformers config class name such as 'GPT2Config'")
    overrides = dict(config_overrides or {})
    # A config class takes unknown keywords silently: a typo would audit the wrong model.
    default = config_cls()
    known = set(default.to_dict()) | set(inspect.signature(config_cls).parameters)
    for key in overrides:
        if key not in known and not hasattr(default, key):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{class_name} has no setting {key!r} (config_overrides){hint}")
    try:
        cfg = config_cls(**overrides)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{class_name}: {exc}") from None
    auto = getattr(lib, TASKS[task][0])
    try:
        model = auto.from_config(cfg)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ValueError(f"{class_name} has no {task} head ({first})") from None
    return HFModel(model, task)


def _markov_tokens(n_samples: int, seq_len: int, vocab_size: int,
                   g: torch.Generator) -> torch.Tensor:
    # Each token has 3 likely successors: low-entropy structure a model can learn in a few
    # hundred steps, unlike uniform noise.
    successors = torch.randint(0, vocab_size, (vocab_size, 3), generator=g)
    tokens = torch.empty(n_samples, seq_len, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (n_samples,), generator=g)
    for t in range(1, seq_len):
        pick = torch.randint(0, 3, (n_samples,), generator=g)
        tokens[:, t] = successors[tokens[:, t - 1], pick]
    return tokens


def hf_data(task: str = "causal_lm", n_samples: int = 512, seq_len: int = 32,
            vocab_size: int = 256, num_labels: int = 2, image_size: int = 32,
            num_channels: int = 3, mask_prob: float = 0.15,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic batches shaped for ``task`` (a dict: the model gets them as keyword args).

    * ``causal_lm``: ``input_ids`` from a sparse Markov chain (labels are the inputs);
    * ``masked_lm``: the same sequences with ``mask_prob`` of them replaced by the last token
      id (the mask token) and ``labels`` -100 everywhere else;
    * ``sequence_classification``: two Markov chains, ``labels`` says which one made the
      sequence;
    * ``image_classification``: ``pixel_values`` = one smooth template per class + noise.
    """
    _choice(task, TASKS, "task")
    for name, value in (("n_samples", n_samples), ("seq_len", seq_len),
                        ("vocab_size", vocab_size), ("num_labels", num_labels),
                        ("image_size", image_size), ("num_channels", num_channels)):
        if int(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    g = torch.Generator().manual_seed(int(seed))
    if task == "causal_lm":
        return {"input_ids": _markov_tokens(n_samples, seq_len, vocab_size, g)}
    if task == "masked_lm":
        if vocab_size < 2:
            raise ValueError("masked_lm needs vocab_size >= 2 (the last id is the mask token)")
        tokens = _markov_tokens(n_samples, seq_len, vocab_size - 1, g)
        masked = torch.rand(n_samples, seq_len, generator=g) < mask_prob
        masked[:, 0] = True  # every sequence has at least one target
        labels = torch.where(masked, tokens, torch.full_like(tokens, -100))
        return {"input_ids": torch.where(masked, vocab_size - 1, tokens), "labels": labels}
    if task == "sequence_classification":
        chains = [_markov_tokens(n_samples, seq_len, vocab_size, g) for _ in range(num_labels)]
        labels = torch.randint(0, num_labels, (n_samples,), generator=g)
        stacked = torch.stack(chains)  # [C, N, T]
        return {"input_ids": stacked[labels, torch.arange(n_samples)], "labels": labels}
    coarse = torch.randn(num_labels, num_channels, 4, 4, generator=g)
    templates = nn.functional.interpolate(coarse, size=(image_size, image_size),
                                          mode="bilinear", align_corners=False)
    labels = torch.arange(n_samples) % num_labels
    labels = labels[torch.randperm(n_samples, generator=g)]
    pixels = templates[labels] + 0.5 * torch.randn(n_samples, num_channels, image_size,
                                                   image_size, generator=g)
    return {"pixel_values": pixels, "labels": labels}
