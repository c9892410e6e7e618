"""What ``ggufkit bnb`` measures for each model: memory, generation speed, quality, weight error.

Memory: on CUDA the peak allocated and reserved bytes since the model started loading
(``torch.cuda.max_memory_allocated/reserved`` after ``reset_peak_memory_stats``); on CPU the
model's footprint and the process's peak RSS since loading (Linux resets the high-water mark
through ``/proc/self/clear_refs``). Quality is measured like ``llama-perplexity``: the corpus
with BOS in front, cut into chunks of ``ctx`` tokens each starting with BOS, and the second half
of each chunk scored, so the numbers compare in kind with ``ggufkit eval``.
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.bnb.guards import constants_bytes, dequantized_weight, quantized_modules
from ggufkit.bnb.results import Quality
from ggufkit.core.fsutil import check_free_disk
from ggufkit.core.log import get_logger

log = get_logger("bnb.measure")

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


# --- memory ------------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux); False where the OS does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int | None:
    """The process's peak resident set size in bytes since start (or the last reset)."""
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s*kB", STATUS.read_text())
    except OSError:
        match = None
    if match:
        return int(match.group(1)) * 1024
    if sys.platform == "win32":
        return None  # no getrusage; the footprint is reported instead
    import resource  # POSIX-only: imported here so that `ggufkit --help` works on Windows

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class ChildPeakRss:
    """The largest peak RSS (``VmHWM``) of this process's descendants named ``name`` while the
    ``with`` block runs, sampled every ``interval`` seconds (Linux; ``peak`` stays None elsewhere).
    """

    def __init__(self, name: str, interval: float = 0.01) -> None:
        self.name, self.interval = name[:15], interval  # /proc/PID/comm keeps 15 characters
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ChildPeakRss:
        if Path("/proc/self/task").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in _descendants(os.getpid()):
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() != self.name:
                        continue
                    match = re.search(
                        r"VmHWM:\s+(\d+)\s*kB", Path(f"/proc/{pid}/status").read_text()
                    )
                except OSError:
                    continue
                if match:
                    self.peak = max(self.peak or 0, int(match.group(1)) * 1024)


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            queue += kids
    return found


@dataclass
class MemoryStats:
    footprint_bytes: int | None = None  # parameters, buffers and quantization constants
    peak_allocated_bytes: int | None = None  # CUDA
    peak_reserved_bytes: int | None = None  # CUDA
    peak_rss_bytes: int | None = None  # CPU: process peak RSS since loading
    rss_reset: bool = True  # False: peak RSS counts from process start


class MemoryProbe:
    """Peak memory of one model, from just before it loads to when it is measured."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.rss_reset = False

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def reset(self) -> None:
        gc.collect()
        if self.is_cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.rss_reset = reset_peak_rss()

    def read(self, model: Any) -> MemoryStats:
        footprint = int(model.get_memory_footprint()) + constants_bytes(model)
        stats = MemoryStats(footprint_bytes=footprint)
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            stats.peak_allocated_bytes = int(torch.cuda.max_memory_allocated(self.device))
            stats.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
        else:
            stats.peak_rss_bytes = peak_rss()
            stats.rss_reset = self.rss_reset
        return stats


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# --- generation --------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    seconds: float  # all runs, all prompts
    runs: int
    tokens: int  # new tokens generated over all runs
    outputs: list[str]  # the first run's continuation of each prompt

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    @property
    def ms_per_token(self) -> float | None:
        return 1000.0 * self.seconds / self.tokens if self.tokens else None


def time_generation(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    runs: int,
    max_new_tokens: int,
    seed: int,
    device: str,
    encoded: Sequence[Any] = (),
) -> GenerationStats:
    """Greedy generation of each prompt, ``runs`` times, after one untimed warm-up step.
    ``encoded``: model inputs already made (a processor's, with pixels) instead of ``prompts``."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = list(encoded) or [tokenizer(p, return_tensors="pt").to(device) for p in prompts]
    settings: dict[str, Any] = {"do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():
        model.generate(**encoded[0], max_new_tokens=1, **settings)
        seconds, tokens, outputs = 0.0, 0, []
        for run in range(runs):
            torch.manual_seed(seed)
            for inputs in encoded:
                synchronize(device)
                start = time.perf_counter()
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, **settings)
                synchronize(device)
                seconds += time.perf_counter() - start
                new = out[0, inputs["input_ids"].shape[1] :]
                tokens += int(new.numel())
                if run == 0:
                    outputs.append(tokenizer.decode(new, skip_special_tokens=True))
    return GenerationStats(seconds=seconds, runs=runs, tokens=tokens, outputs=outputs)


# --- quality -----------------------------------------------------------------------------------


@dataclass
class Windows:
    """The corpus as llama-perplexity cuts it: ``chunks`` rows of ``ctx`` token ids."""

    ids: Any  # torch.LongTensor [chunks, ctx]
    n_tokens: int  # corpus tokens, BOS included

    @property
    def chunks(self) -> int:
        return int(self.ids.shape[0])

    @property
    def ctx(self) -> int:
        return int(self.ids.shape[1])

    @property
    def first(self) -> int:
        return self.ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.ctx - 1 - self.first


def tokenize_corpus(tokenizer: Any, text: str) -> tuple[list[int], bool]:
    """The corpus' token ids with BOS in front when the tokenizer adds one; and whether it did."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    add_bos = bos is not None and bool(probe) and probe[0] == bos
    return ([bos, *ids] if add_bos else ids), add_bos


def make_windows(ids: list[int], *, ctx: int, chunks: int, bos: int | None) -> Windows:
    import torch

    rows = torch.tensor(ids[: chunks * ctx], dtype=torch.long).reshape(chunks, ctx)
    if bos is not None:
        rows[:, 0] = bos
    return Windows(ids=rows, n_tokens=len(ids))


class BaselineLogits:
    """The baseline's scored logits, kept in a float32 memory-mapped file (not in RAM)."""

    def __init__(self, windows: Windows, vocab: int, tmp_dir: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ggufkit-bnb-", dir=tmp_dir)
        path = Path(self._dir.name) / "baseline.f32"
        shape = (windows.chunks, windows.scored_per_chunk, vocab)
        check_free_disk(path, 4 * math.prod(shape), what="the baseline logits")
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    def close(self) -> None:
        del self.array
        self._dir.cleanup()


def _mean_err(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    mean = float(values.mean())
    err = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return mean, err


def _scored_logits(model: Any, row: Any, keep: int) -> Any:
    """Logits of the scored positions (float32, CPU); only the last ``keep`` are computed where the
    model supports ``logits_to_keep`` (remote-code models may not)."""
    try:
        out = model(row, logits_to_keep=keep)
    except TypeError:
        out = model(row)
    return out.logits[0, -keep:-1].float().cpu()


def score(
    model: Any,
    windows: Windows,
    *,
    device: str,
    baseline: BaselineLogits,
    record: bool,
) -> Quality:
    """Perplexity of ``model`` on the windows; with ``record`` the logits become the baseline,
    else KL-divergence, top-1 agreement and |Δlogit| against it are measured too."""
    import torch

    keep = windows.ctx - windows.first
    nll, kld, top1, dlogit, dmax = [], [], [], [], []
    with torch.inference_mode():
        for i in range(windows.chunks):
            logits = _scored_logits(model, windows.ids[i : i + 1].to(device), keep)
            logits = logits[:, : baseline.array.shape[2]]
            targets = windows.ids[i, windows.first + 1 :]
            logp = torch.log_softmax(logits, dim=-1)
            nll.append(-logp.gather(1, targets[:, None])[:, 0].double().numpy())
            if record:
                baseline.array[i] = logits.numpy()
                continue
            base = torch.from_numpy(np.asarray(baseline.array[i]))
            base_logp = torch.log_softmax(base, dim=-1)
            kld.append((base_logp.exp() * (base_logp - logp)).sum(-1).double().numpy())
            top1.append((base.argmax(-1) == logits.argmax(-1)).double().numpy())
            delta = (logits - base).abs()
            dlogit.append(delta.mean(-1).double().numpy())
            dmax.append(float(delta.max()))
    nlls = np.concatenate(nll)
    mean_nll, nll_err = _mean_err(nlls)
    ppl = math.exp(mean_nll)
    quality = Quality(ppl=ppl, ppl_err=ppl * nll_err)
    if not record:
        klds, agree = np.concatenate(kld), np.concatenate(top1)
        quality.kld_mean, quality.kld_err = _mean_err(klds)
        quality.kld_median = float(np.median(klds))
        quality.kld_p99 = float(np.percentile(klds, 99))
        quality.kld_max = float(klds.max())
        quality.top1_agreement, quality.top1_err = _mean_err(agree)
        quality.mean_abs_dlogit = float(np.concatenate(dlogit).mean())
        quality.max_abs_dlogit = max(dmax)
    return quality


def weight_error(model: Any, model_dir: Path) -> tuple[float | None, int]:
    """Relative Frobenius error of the quantized layers against the checkpoint's weights
    (over all of them together), and how many layers it covers."""
    import torch

    from ggufkit.formats.safetensors import Checkpoint

    diff = total = 0.0
    layers = 0
    with Checkpoint.open(model_dir) as checkpoint:
        for name, module in quantized_modules(model).items():
            key = f"{name}.weight"
            if key not in checkpoint:
                continue
            weight = dequantized_weight(module)
            if weight is None:
                continue
            original = torch.from_numpy(np.array(checkpoint.read(key, float32=True)))
            if tuple(original.shape) != tuple(weight.shape):
                continue
            weight = weight.cpu().double()
            original = original.double()
            diff += float(((weight - original) ** 2).sum())
            total += float((original**2).sum())
            layers += 1
            checkpoint.release(key)
    return (math.sqrt(diff / total) if total > 0 else None), layers
