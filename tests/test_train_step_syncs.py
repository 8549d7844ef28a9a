"""The training step reads no tensor value on the host (DESIGN.md, errors and the hot path).

On a GPU every such read (`.item()`, `int(t)`, `bool(t)`, `if t:`, `.tolist()`, `.cpu()`) waits
for the device to catch up, and so does `nonzero()`, whose output size depends on the values. A CPU
run cannot see the wait, so the test counts the calls instead: each of them is wrapped, and a step
of the real trainer (token mixing, fbank, masks, student, heads, fused CE, backward, ScaledAdam)
must make none.
"""
from __future__ import annotations

import importlib
import traceback

import pytest
import torch

from spear_fast.config import apply_overrides
from spear_fast.data.manifest import read_manifest
from spear_fast.train.config import train_config
from spear_fast.train.data import open_token_stores, validate_corpus
from spear_fast.train.loop import Trainer
from spear_fast.train.synthetic import (
    TEST_OVERRIDES,
    fresh_seed,
    write_synthetic_corpus,
)

# Tensor -> Python: each of these reads the tensor's values on the host (nonzero: to size its output).
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero")


class ReadCounter:
    """Wraps the READS of torch.Tensor (and torch.nonzero); `calls` lists (method, innermost project
    frame) while on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.on = False
        self.calls: list[tuple[str, str]] = []
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "nonzero", self._wrap("torch.nonzero", torch.nonzero))

    def _wrap(self, name, method):
        def counted(tensor, *args, **kwargs):
            if self.on:
                self.calls.append((name, _caller()))
            return method(tensor, *args, **kwargs)

        return counted

    def paused(self, fn):
        def call(*args, **kwargs):
            on, self.on = self.on, False
            try:
                return fn(*args, **kwargs)
            finally:
                self.on = on

        return call


def _caller() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/spear_fast/" in f.filename or "/kernels/" in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno} {frames[-1].line}" if frames else "torch"


def test_a_training_step_reads_no_tensor_value_on_the_host(tmp_path, monkeypatch):
    seed = fresh_seed() % 1000
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=6, seed=seed)
    # every clip mixed (the token_mix path runs), and no log line due in the steps below
    config = apply_overrides(train_config("tiny"), TEST_OVERRIDES + [
        "mixing.token_mix_prob=1", f"runtime.seed={seed}", "logging.log_every=1000"])
    stores = open_token_stores(corpus.token_dirs, config)
    entries, _ = validate_corpus(read_manifest(corpus.manifest), stores, config)
    trainer = Trainer(config, entries, stores, tmp_path / "run")
    # loaded before counting (data loading is no part of the step), each with a partner to mix in
    batches = [c.batch for c in trainer.loader if c.batch is not None and len(c.batch.ids) >= 2][:2]
    assert len(batches) == 2, "the synthetic corpus gave fewer than two batches of two clips"
    counter = ReadCounter(monkeypatch)
    # The torch twin of token_mix is the op's CPU implementation: it walks its plan, which lives on
    # the host, row by row. On a GPU the Triton kernels run instead and read nothing.
    token_mix_module = importlib.import_module("kernels.token_mix")  # the module: `kernels.token_mix` is the op
    monkeypatch.setattr(token_mix_module, "_token_mix_torch", counter.paused(token_mix_module._token_mix_torch))

    trainer.train_step([batches[0]])  # the first step builds what is kept (fbank's mel banks, optimiser state)
    before = [p.detach().clone() for p in trainer.module.parameters()]
    counter.on = True
    trainer.train_step([batches[1]])
    counter.on = False

    assert counter.calls == [], "host reads in a training step:\n" + "\n".join(f"{m} at {c}" for m, c in counter.calls)
    assert trainer.step == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.module.parameters())), "the step changed nothing"


def test_scaled_adam_reads_nothing_between_threshold_updates(monkeypatch):
    """Past step 10 ScaledAdam clips against a threshold on every step; only the threshold updates
    (steps 10, 20, 40, then every clipping_update_period) read the norms back."""
    from spear_fast.train.scaled_adam import ScaledAdam

    gen = torch.Generator().manual_seed(fresh_seed())
    params = [torch.nn.Parameter(torch.randn(8, 5, generator=gen)), torch.nn.Parameter(torch.randn((), generator=gen))]
    optimiser = ScaledAdam(params, lr=0.02)
    counter = ReadCounter(monkeypatch)
    for step in range(13):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * (1000 if step == 12 else 1)  # step 12 is clipped
        counter.on = step > 10
        optimiser.step()
    counter.on = False
    assert counter.calls == [], "host reads in a ScaledAdam step:\n" + "\n".join(f"{m} at {c}" for m, c in counter.calls)
    assert optimiser.last_clip_factor[0] < 0.1
