"""Model factories of the calibration corpus: small real architectures, random init.

Every model is built from a library configuration (Hugging Face ``transformers`` or
``torch.nn``) with tiny sizes, no weights are downloaded, and dropout is off so that a probe's
trajectory depends only on the seed, the init and the batch order. The config files in
``configs/`` name these factories as ``"../models.py:NAME"``; the plain loop in
:mod:`calibration.plain` builds the very same objects.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

VOCAB = 16  # keep equal to data.py's
SEQ = 12
CLASSES = 4
IMAGE = 8

warnings.filterwarnings("ignore", message=".*loss_type=None.*")
logging.getLogger("transformers").setLevel(logging.ERROR)


def gpt2(width: int = 32, layers: int = 2) -> nn.Module:
    """GPT-2 language model (``GPT2LMHeadModel``); forward(input_ids, labels) has ``.loss``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=width, n_layer=layers, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def llama(width: int = 32, layers: int = 2) -> nn.Module:
    """Llama language model (``LlamaForCausalLM``: RMSNorm, rotary, SwiGLU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=SEQ, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg)


def bert(width: int = 32, layers: int = 2) -> nn.Module:
    """BERT sequence classifier (``BertForSequenceClassification``, post-LayerNorm)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * width,
                     max_position_embeddings=SEQ, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    return BertForSequenceClassification(cfg)


def t5(width: int = 32, layers: int = 1) -> nn.Module:
    """T5 encoder-decoder (``T5ForConditionalGeneration``), a sequence-to-sequence copy task."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=VOCAB, d_model=width, d_kv=width // 2, d_ff=2 * width,
                   num_layers=layers, num_heads=2, dropout_rate=0.0, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg)


def vit(width: int = 32, layers: int = 2) -> nn.Module:
    """Vision Transformer classifier (``ViTForImageClassification``), 8x8 images, 4x4 patches."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=IMAGE, patch_size=4, num_channels=3, hidden_size=width,
                    num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * width,
                    num_labels=CLASSES, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg)


def resnet(width: int = 8) -> nn.Module:
    """ResNet with BatchNorm (``ResNetForImageClassification``, basic blocks)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(num_channels=3, embedding_size=width, hidden_sizes=[width, 2 * width],
                       depths=[1, 1], layer_type="basic", num_labels=CLASSES)
    return ResNetForImageClassification(cfg)


def mobilenet_v2(depth_multiplier: float = 0.25) -> nn.Module:
    """MobileNetV2 (``MobileNetV2ForImageClassification``: depthwise convs, BatchNorm, ReLU6)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(num_channels=3, image_size=IMAGE, depth_multiplier=depth_multiplier,
                            min_depth=4, num_labels=CLASSES, classifier_dropout_prob=0.0)
    return MobileNetV2ForImageClassification(cfg)


def convnext(width: int = 8) -> nn.Module:
    """ConvNeXt (``ConvNextForImageClassification``: depthwise 7x7, LayerNorm, GELU)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[width, 2 * width],
                         depths=[1, 1], patch_size=2, num_labels=CLASSES, image_size=IMAGE)
    return ConvNextForImageClassification(cfg)


class _Recurrent(nn.Module):
    """A ``torch.nn`` LSTM or GRU over a sequence, classified from its last hidden state."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], features: int, hidden: int,
                 layers: int) -> None:
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def lstm(features: int = 4, hidden: int = 32, layers: int = 1) -> nn.Module:
    """``torch.nn.LSTM`` sequence classifier."""
    return _Recurrent(nn.LSTM, features, hidden, layers)


def gru(features: int = 4, hidden: int = 32, layers: int = 1) -> nn.Module:
    """``torch.nn.GRU`` sequence classifier."""
    return _Recurrent(nn.GRU, features, hidden, layers)
