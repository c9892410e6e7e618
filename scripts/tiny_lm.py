"""The training loop and perplexity measure behind scripts/train_tiny.py (CPU, deterministic)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

CONTEXT = 512


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    bos: int | None  # LLaMA windows start with BOS, as llama.cpp's perplexity chunks do
    seed: int
    batch: int = 4
    context: int = CONTEXT
    warmup: int = 30
    weight_decay: float = 0.1
    final_lr_ratio: float = 0.1
    log_every: int = 25


def _windows(
    stream: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> torch.Tensor:
    """A batch of random windows of the token stream (first token replaced by BOS if set)."""
    starts = torch.randint(
        0, len(stream) - settings.context, (settings.batch,), generator=generator
    )
    batch = torch.stack([stream[s : s + settings.context] for s in starts.tolist()])
    if settings.bos is not None:
        batch[:, 0] = settings.bos
    return batch


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_ratio`` of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return settings.lr * (settings.final_lr_ratio + (1 - settings.final_lr_ratio) * cosine)


def train_lm(model: Any, stream: torch.Tensor, settings: TrainSettings) -> float:
    """Train ``model`` in place on windows of ``stream``; returns the seconds spent."""
    generator = torch.Generator().manual_seed(settings.seed)
    # Norms and biases are not decayed: pulling them to zero only hurts.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    started = time.monotonic()
    running = 0.0
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        batch = _windows(stream, settings, generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            count = (step % settings.log_every) + 1
            print(
                f"  step {step + 1}/{settings.steps} loss {running / count:.3f} "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            running = 0.0
    model.eval()
    return time.monotonic() - started


@torch.no_grad()
def heldout_perplexity(
    model: Any, ids: torch.Tensor, *, bos: int | None, context: int = CONTEXT
) -> float:
    """exp(mean NLL) over consecutive windows of ``context`` tokens, every position scored.

    With ``bos`` each window is BOS + ``context - 1`` text tokens, so every text token is scored
    once with the context a fresh llama.cpp chunk would give it.
    """
    model.eval()
    step = context - 1 if bos is not None else context
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, step):
        window = ids[start : start + step]
        if bos is not None:
            window = torch.cat([torch.tensor([bos]), window])
        if len(window) < 2:
            break
        logits = model(input_ids=window[None]).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum")
        total += nll.item()
        count += len(window) - 1
    return math.exp(total / count)


def random_init_perplexity(
    factory: Callable[[], Any], ids: torch.Tensor, *, bos: int | None, seed: int = 0
) -> float:
    """The perplexity of the same architecture, freshly initialised: the untrained baseline."""
    torch.manual_seed(seed)
    return heldout_perplexity(factory(), ids, bos=bos)
