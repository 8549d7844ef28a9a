"""Frame store, quantiser fitting (vs the reference trainer), determinism, resume, CLI."""
import random
import re

import numpy as np
import pytest
import torch
from multi_quantization.quantization import Quantizer as RefQuantizer
from multi_quantization.quantization import QuantizerTrainer as RefTrainer

from spear_fast.cli import main as spear_main
from spear_fast.mvq import FrameStore, FrameStoreWriter, Quantizer, QuantizerTrainer, TrainerConfig
from spear_fast.mvq.metrics import relative_error
from spear_fast.mvq.trainer import quantizer_loss


def cluster_frames(num: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    means = 2.0 * torch.randn(48, dim, generator=gen)
    labels = torch.randint(0, 48, (num,), generator=gen)
    return means[labels] + 0.5 * torch.randn(num, dim, generator=gen)


def write_store(path, frames: torch.Tensor, shard_frames: int = 700) -> FrameStore:
    writer = FrameStoreWriter(path, frames.shape[1], shard_frames=shard_frames)
    for part in torch.split(frames, 333):
        writer.add(part)
    return writer.close()


def test_frame_store_roundtrip_sampling_and_holdout(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(2100, 6, generator=gen)
    store = write_store(tmp_path / "s", frames)
    assert len(store) == 2100 and store.dim == 6
    assert len(list((tmp_path / "s").glob("shard-*.npy"))) == 3
    as_f16 = frames.half().float()
    assert torch.equal(torch.cat(list(store.iter_batches(500))), as_f16)
    rows = np.array([2099, 0, 700, 699, 1400, 5])
    assert torch.equal(store.read(rows), as_f16[rows])
    # sampling: deterministic, training rows only (never a multiple of holdout_every)
    s1 = store.sample(300, torch.Generator().manual_seed(seed))
    s2 = store.sample(300, torch.Generator().manual_seed(seed))
    assert torch.equal(s1, s2)
    positions = np.arange(store.num_train)
    train_rows = store.train_rows(positions)
    assert np.all(train_rows % store.holdout_every != 0) and len(np.unique(train_rows)) == store.num_train
    assert store.num_train + store.num_heldout == 2100
    heldout_set = {tuple(r) for r in store.heldout(10**6).tolist()}
    assert heldout_set == {tuple(r) for r in as_f16[:: store.holdout_every].tolist()}
    sampled = {tuple(r) for r in s1.tolist()}
    assert not (sampled & heldout_set)


def test_frame_store_rejects_bad_frames(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    writer = FrameStoreWriter(tmp_path / "s", 4)
    bad = torch.randn(10, 4, generator=gen)
    bad[3, 0] = float("nan")
    bad[7, 2] = 1e6  # overflows float16
    with pytest.raises(ValueError, match=r"2 of 10 frames.*\[3, 7\]"):
        writer.add(bad)
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        writer.add(torch.randn(3, 5, generator=gen))
    with pytest.raises(ValueError, match="not a frame store"):
        FrameStore(tmp_path / "s")  # not closed yet: no index
    writer.close()
    with pytest.raises(ValueError, match="already holds"):
        FrameStoreWriter(tmp_path / "s", 4)


def test_loss_terms_match_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = RefQuantizer(dim=16, codebook_size=16, num_codebooks=4)
    ours = Quantizer.from_multi_quantization(ref)
    x = cluster_frames(256, 16, gen)
    expected = ref.compute_loss(x, 1)[:3]
    got = quantizer_loss(ours, x, 1)
    for name, a, b in zip(("rel", "logprob", "entropy"), got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), f"{name}: {a.item()} vs {b.item()}"


def test_fit_matches_reference_trainer(seed):
    """Same data, same step budget (reference: phase_one_iters + 1 + phase_two_iters steps)."""
    gen = torch.Generator().manual_seed(seed)
    dim, num_codebooks, p1, p2, batch = 16, 2, 30, 30, 96
    data = cluster_frames(6000, dim, gen)
    train, valid = data[:5000], data[5000:]
    torch.manual_seed(seed)
    random.seed(seed)
    ref = RefTrainer(dim, num_codebooks, torch.device("cpu"), p1, p2)
    steps = 0
    while not ref.done():
        ref.step(train[torch.randint(0, 5000, (batch,), generator=gen)])
        steps += 1
    ours = QuantizerTrainer(dim, TrainerConfig(num_codebooks, (p1 + 1, p2), batch, seed=seed))
    while not ours.done():
        ours.step(train[torch.randint(0, 5000, (batch,), generator=gen)])
    assert ours.step_count == steps
    q_ref = ref.get_quantizer()
    with torch.no_grad():
        err_ref = relative_error(valid, q_ref.decode(q_ref.encode(valid, 5, as_bytes=False)))
    q = ours.get_quantizer()
    assert (q.num_codebooks, q.codebook_size) == (num_codebooks, 256)
    err_ours = relative_error(valid, q.decode(q.encode(valid, 5)))
    print(f"fit: rel. error ours {err_ours:.4f}, reference {err_ref:.4f}")
    assert err_ours <= 1.05 * err_ref, f"ours {err_ours:.4f} vs reference {err_ref:.4f}"


def test_phase_switch_and_learning_rates():
    trainer = QuantizerTrainer(8, TrainerConfig(2, (8, 8), 16, lr=4e-3, seed=3))
    gen = torch.Generator().manual_seed(0)
    lrs = []
    while not trainer.done():
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.step(torch.randn(16, 8, generator=gen))
    # StepLR halves every quarter phase (2 steps); phase 2 restarts at half the initial lr
    expected = [4e-3 * 0.5 ** (i // 2) for i in range(8)] + [2e-3 * 0.5 ** (i // 2) for i in range(8)]
    assert np.allclose(lrs, expected)
    assert trainer.quantizer.num_codebooks == 2 and trainer.quantizer.codebook_size == 256


def test_deterministic_and_resumable(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    store = write_store(tmp_path / "s", cluster_frames(1500, 8, gen))
    config = TrainerConfig(2, (6, 6), 64, seed=seed)
    full = QuantizerTrainer(8, config)
    full.fit(store, progress=False)
    again = QuantizerTrainer(8, config)
    again.fit(store, progress=False)
    for name, tensor in full.quantizer.state_dict().items():
        assert torch.equal(tensor, again.quantizer.state_dict()[name]), name

    ckpt = tmp_path / "run.ckpt"
    first = QuantizerTrainer(8, config)
    for _ in range(8):  # stop inside phase 2
        first.step(store.sample(config.batch_size, first.generator))
    first.save_checkpoint(ckpt)
    resumed = QuantizerTrainer.from_checkpoint(ckpt)
    assert resumed.step_count == 8 and resumed.phase == 2
    resumed.fit(store, progress=False)
    for name, tensor in full.quantizer.state_dict().items():
        assert torch.equal(tensor, resumed.quantizer.state_dict()[name]), name
    assert full.heldout_metrics["rel_error"] == resumed.heldout_metrics["rel_error"]


def test_cli_fit_and_eval(tmp_path, seed, capsys):
    gen = torch.Generator().manual_seed(seed)
    frames = cluster_frames(2000, 12, gen) * 3.0 + 5.0
    write_store(tmp_path / "frames", frames)
    out = tmp_path / "q.safetensors"
    argv = ["fit-mvq", "--frames", str(tmp_path / "frames"), "--num-codebooks", "2", "--out", str(out),
            "--normalize", "--phase-steps", "10", "10", "--batch-size", "64", "--seed", str(seed % 1000),
            "--checkpoint-every", "5"]
    assert spear_main(argv) == 0
    q = Quantizer.load(out)
    assert q.normalized and (q.num_codebooks, q.codebook_size) == (2, 256)
    train = torch.cat(list(FrameStore(tmp_path / "frames").iter_batches(4096)))
    assert torch.allclose(q.norm_mean, train.mean(0), atol=0.05 * 3)  # training split: 95 % of frames
    capsys.readouterr()
    assert spear_main(["fit-mvq", *argv[1:], "--resume"]) == 0  # nothing left to do: resumes at the end
    assert "resuming" in capsys.readouterr().out
    assert spear_main(["mvq-eval", "--quantizer", str(out), "--frames", str(tmp_path / "frames")]) == 0
    printed = capsys.readouterr().out
    rel = float(re.search(r"relative reconstruction error: ([0-9.]+)", printed).group(1))
    tokens = q.encode(train)
    x = q.normalize(train)
    assert abs(rel - relative_error(x, q.decode(tokens, normalized=True))) < 1e-5
    assert len(re.findall(r"codebook +\d+: [0-9.]+", printed)) == 2
