"""tiny_gpt: a 2-layer GPT-style byte-level decoder, trained for a few hundred steps on English prose.

Why it exists: the zoo's decoder-only transformer for weight-only INT4 work. It has every MatMul shape a
real LLM block has (fused QKV projection, attention score/value matmuls, MLP up/down, LM head), a causal
mask, GELU with the tanh approximation and LayerNorm, at a size that trains in seconds. Training (rather
than random weights) gives weights with real structure and a perplexity that quantization can degrade.

Text: sentences of Python's docstrings (``models.datasets.text``), split into disjoint train / calibration /
evaluation parts; bytes are the tokens (vocabulary 256). Eval labels are the next bytes.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from models.datasets.text import split_sentences
from models.export import export_torch, torch_outputs
from models.registry import BuildContext, BuiltModel
from models.training import deterministic_torch

logger = logging.getLogger(__name__)

VOCAB, WIDTH, LAYERS, HEADS, MAX_CONTEXT = 256, 128, 2, 4, 128
SEQUENCE, TRAIN_STEPS, BATCH = 64, 150, 16
CALIBRATION_SAMPLES, EVAL_SAMPLES = 64, 64


class CausalSelfAttention(nn.Module):
    """Fused QKV projection, scaled dot-product scores, causal mask by slicing a stored lower triangle."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.register_buffer("causal", torch.tril(torch.ones(MAX_CONTEXT, MAX_CONTEXT, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        q, k, v = self.qkv(x).split(WIDTH, dim=2)
        q, k, v = (t.view(batch, time, HEADS, WIDTH // HEADS).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(WIDTH // HEADS))
        scores = scores.masked_fill(~self.causal[:time, :time], torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, time, WIDTH))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with GELU-tanh."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = CausalSelfAttention()
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(approximate="tanh"), nn.Linear(4 * WIDTH, WIDTH)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token + learned position embeddings, ``LAYERS`` blocks, final LayerNorm, untied LM head."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.zeros(MAX_CONTEXT, WIDTH))
        self.blocks = nn.Sequential(*(Block() for _ in range(LAYERS)))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions[: input_ids.shape[1]]
        return self.head(self.ln_f(self.blocks(x)))


def _bytes(sentences: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(sentences).encode("utf-8"), dtype=np.uint8).astype(np.int64)


def _windows(stream: np.ndarray, count: int, length: int) -> np.ndarray:
    """``count`` evenly spaced windows of ``length + 1`` tokens (input plus next-token labels)."""
    starts = np.linspace(0, len(stream) - length - 1, count).astype(np.int64)
    return np.stack([stream[s : s + length + 1] for s in starts])


def _train(model: TinyGPT, stream: np.ndarray, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(stream)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=5e-3, total_steps=TRAIN_STEPS, pct_start=0.1
    )
    losses = []
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - SEQUENCE - 1, (BATCH,), generator=generator)
        window = torch.stack([data[s : s + SEQUENCE + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def build(context: BuildContext) -> BuiltModel:
    parts = split_sentences({"calib": 150, "eval": 150, "train": None}, seed=context.seed)
    calib = _windows(_bytes(parts["calib"]), CALIBRATION_SAMPLES, SEQUENCE)[:, :-1]
    evaluation = _windows(_bytes(parts["eval"]), EVAL_SAMPLES, SEQUENCE)
    eval_ids, eval_labels = evaluation[:, :-1], evaluation[:, 1:]
    with deterministic_torch(context.seed):
        model = TinyGPT()
        losses = _train(model, _bytes(parts["train"]), context.seed)
        reference = torch_outputs(model, [eval_ids], ["logits"])
        exporter = export_torch(
            model,
            (torch.from_numpy(eval_ids[:2]),),
            context.onnx_path,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
            opset=context.opset,
            exporter=context.exporter,
        )
    logits = torch.from_numpy(reference["logits"]).reshape(-1, VOCAB)
    eval_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(eval_labels).reshape(-1)))
    next_byte = float((reference["logits"].argmax(-1) == eval_labels).mean())
    logger.info(
        "tiny_gpt: train loss %.3f -> %.3f, eval perplexity %.2f", losses[0], losses[-1], math.exp(eval_loss)
    )
    return BuiltModel(
        calib={"input_ids": calib},
        eval_inputs={"input_ids": eval_ids},
        labels=eval_labels,
        batch_axes={"input_ids": 0},
        exporter=exporter,
        source={
            "weights": f"trained here ({TRAIN_STEPS} steps AdamW, seed {context.seed})",
            "data": "Python standard-library docstrings (models.datasets.text)",
        },
        metrics={
            "eval_perplexity": round(math.exp(eval_loss), 3),
            "eval_next_byte_accuracy": round(next_byte, 4),
            "final_train_loss": round(float(np.mean(losses[-20:])), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        extra_eval={"reference:logits": reference["logits"]},
        notes=[
            "tokens are UTF-8 bytes; labels are the next byte of each position",
            "LayerNorm exports decomposed below opset 17 and as LayerNormalization from 17",
        ],
    )
