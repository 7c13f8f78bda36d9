"""The demo model trained for a few hundred steps on the demo tokenizer's corpus
(cluster/corpus), so that accuracy figures mean something: the random-weight demo model's
perplexity is about its vocabulary size whatever its numbers are rounded to. Trained with
transformers' Llama (same weights layout as kvfleet loads) and AdamW on CPU, written as a
checkpoint kvfleet serves, cached under ~/.cache/kvfleet (keyed by the steps, the seed and the
corpus) since it takes minutes. Still a tiny model trained briefly: it has learned word and
phrase statistics, not to quote its context."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from bench.engine import load_hf
from cluster.demo_model import write_demo_model
from worker.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parent.parent / "cluster" / "corpus"
CACHE = Path.home() / ".cache" / "kvfleet"
_SEQ_LEN, _BATCH, _LR = 128, 8, 3e-3


def trained_demo_model(steps: int, seed: int = 0) -> Path:
    """The directory of the tiny demo model after ``steps`` training steps (built once)."""
    texts = [p.read_text() for p in sorted(CORPUS.glob("*.txt"))]
    key = hashlib.sha256(f"{steps}:{seed}:{_SEQ_LEN}:{_BATCH}:{_LR}".encode())
    for text in texts:
        key.update(text.encode())
    out = CACHE / f"trained-demo-{key.hexdigest()[:12]}"
    if (out / "model.safetensors").is_file():
        return out
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    write_demo_model(work, preset="tiny", seed=seed)
    _train(work, texts, steps, seed)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out


def _train(model_dir: Path, texts: list[str], steps: int, seed: int) -> None:
    tokenizer = Tokenizer.from_dir(model_dir)
    tokens = torch.tensor([t for text in texts for t in tokenizer.encode(text)])
    windows = tokens[: len(tokens) // _SEQ_LEN * _SEQ_LEN].view(-1, _SEQ_LEN)
    model = load_hf(model_dir, torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, _LR, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (_BATCH,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
