"""ScaledAdam (spear_fast/train/scaled_adam.py): an independent float64 transcription of icefall's update
rule, the size-relative step, checkpoint round trip, norm clipping, GradScaler, and the training option."""
from __future__ import annotations

import io
import math

import pytest
import torch

from spear_fast.config import apply_overrides
from spear_fast.checkpoint import load_checkpoint
from spear_fast.train.config import OptimConfig, train_config
from spear_fast.train.main import run
from spear_fast.plot import read_log
from spear_fast.train.scaled_adam import ScaledAdam
from spear_fast.train.synthetic import fresh_seed, train_argv, write_synthetic_corpus

# ---------------------------------------------------------------------------------------------------------
# The oracle: icefall's ScaledAdam equations for plain per-tensor float64 values, written out once more
# without sharing anything with the module (a dict of tensors in, a dict of tensors out).


def oracle(params: dict[str, torch.Tensor], grads: list[dict[str, torch.Tensor | None]], *, lr: float,
           beta1: float = 0.9, beta2: float = 0.98, scalar_lr_scale: float = 0.1, eps: float = 1e-8,
           min_rms: float = 1e-5, max_rms: float = 3.0, scalar_max: float = 10.0, size_period: int = 4,
           clipping_scale: float | None = 2.0, clip_period: int = 100):
    """Run the update rule over `grads` (one dict per step; None = no gradient); returns the final
    parameters and what happened: clip factors per step, steps where the size step hit max_rms, steps
    where a tensor was under min_rms at a size step."""
    p = {k: v.clone() for k, v in params.items()}
    exp_avg_sq = {k: torch.zeros_like(v) for k, v in p.items()}
    moment = {k: torch.zeros_like(v) for k, v in p.items()}
    rms = {k: v.pow(2).mean().sqrt().item() for k, v in p.items() if v.numel() > 1}
    size_grads = {k: [0.0] * size_period for k in rms}
    size_sq = {k: 0.0 for k in rms}
    ring = [0.0] * clip_period
    threshold = None
    log = {"clip": [], "max_rms_hit": [], "min_rms_hit": [], "size_clamp_hit": []}
    for t, step_grads in enumerate(grads):
        g = {k: (torch.zeros_like(p[k]) if step_grads[k] is None else step_grads[k]) for k in p}
        c = 1.0
        if clipping_scale is not None and t > 0:
            total = 0.0
            for k in p:
                if p[k].numel() == 1:
                    total += (scalar_lr_scale * g[k]).pow(2).sum().item()
                else:
                    total += (g[k] * rms[k]).pow(2).sum().item()
            norm = math.sqrt(total)
            ring[t % clip_period] = norm
            early = t in (10, 20, 40) and t < clip_period
            if t % clip_period == 0 or early:
                values = sorted(ring)
                if early:
                    values = values[-t:]
                median = values[min(len(values) - 1, 2 * (len(values) // 4))]
                threshold = clipping_scale * median * (2.0 if early else 1.0)
            if threshold is not None:
                c = min(1.0, threshold / norm)
        log["clip"].append(c)
        for k in p:
            gk = g[k] * c
            exp_avg_sq[k] = beta2 * exp_avg_sq[k] + (1 - beta2) * gk * gk
            bias = 1 - beta2 ** (t + 1)
            v_hat = exp_avg_sq[k] / bias if bias < 0.99 else exp_avg_sq[k]
            if p[k].numel() == 1:
                u = -lr * scalar_lr_scale * gk / (v_hat.sqrt() + eps)
            else:
                u = -lr * gk / (v_hat.sqrt() + eps)
                size_grads[k][t % size_period] = (p[k] * gk).sum().item()
                turn = t % size_period == size_period - 1
                if turn:
                    rms[k] = p[k].pow(2).mean().sqrt().item()
                u = u * max(rms[k], min_rms)
                if turn and t > 0:
                    b = beta2**size_period
                    size_sq[k] = b * size_sq[k] + (1 - b) * sum(h * h for h in size_grads[k]) / size_period
                    n = (t + 1) // size_period
                    s = -lr * scalar_lr_scale * math.sqrt(1 - b**n) * sum(size_grads[k]) / (math.sqrt(size_sq[k]) + eps)
                    if rms[k] < min_rms:
                        s = 0.0
                        log["min_rms_hit"].append((t, k))
                    if abs(s) > 0.1:
                        s = math.copysign(0.1, s)
                        log["size_clamp_hit"].append((t, k))
                    if s > (max_rms - rms[k]) / rms[k]:
                        s = (max_rms - rms[k]) / rms[k]
                        log["max_rms_hit"].append((t, k))
                    u = u + s * p[k]
            moment[k] = beta1 * moment[k] + (1 - beta1) * u
            p[k] = p[k] + moment[k]
            if p[k].numel() == 1:
                p[k] = p[k].clamp(-scalar_max, scalar_max)
    return p, log


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------------------------------------------------
# (1) the optimiser against the oracle


@pytest.mark.parametrize("size_period, clip_period, big_step, steps, scalar_lr_scale",
                         [(3, 4, 6, 10, 0.1), (4, 16, 11, 13, 0.9), (4, 100, 150, 240, 0.1)])
def test_matches_the_float64_oracle(seed, size_period, clip_period, big_step, steps, scalar_lr_scale):
    """A matrix, a bias pushed to grow into param_max_rms, a tensor pushed to shrink (with scalar_lr_scale
    0.9 its size steps exceed the 0.1 limit), a vector under param_min_rms (no gradient on one step), a
    scalar that runs into scalar_max; one step with a 100x gradient is clipped. clip_period 4 sets
    thresholds at steps 4 and 8; clip_period 16 sets the early (10 steps, 2x) threshold at step 10; the long
    run has icefall's period (early thresholds at 10, 20, 40, then 100, 200) and passes step 228, where
    Adam's second-moment bias correction switches off."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    bias = torch.randn(5, generator=gen, dtype=f64) * 0.5
    max_rms = 1.03 * bias.pow(2).mean().sqrt().item()  # a few size steps of growth reach the limit
    params = {
        "matrix": torch.randn(5, 7, generator=gen, dtype=f64) * 0.3,
        "bias": bias,
        "shrinking": torch.randn(3, 2, generator=gen, dtype=f64),
        "tiny": torch.randn(4, generator=gen, dtype=f64) * 1e-7,  # RMS below param_min_rms
        "scalar": torch.tensor(0.3, dtype=f64),
    }
    grads = []
    for t in range(steps):
        step = {k: torch.randn(v.shape, generator=gen, dtype=f64) for k, v in params.items()}
        step["bias"] = -(0.5 + torch.rand(5, generator=gen, dtype=f64)) * params["bias"].sign() * step["bias"].abs()
        step["shrinking"] = (0.5 + torch.rand(3, 2, generator=gen, dtype=f64)) * params["shrinking"]
        step["scalar"] = -(0.1 + torch.rand((), generator=gen, dtype=f64))  # drives the scalar up to scalar_max
        if t == big_step:
            step = {k: v * 100 for k, v in step.items()}
        if t == 2:
            step["tiny"] = None
        grads.append(step)
    settings = {"lr": 0.05, "scalar_max": 0.31, "size_period": size_period, "clip_period": clip_period,
                "max_rms": max_rms, "scalar_lr_scale": scalar_lr_scale}
    expected, log = oracle(params, grads, **settings)

    tensors = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    optimiser = ScaledAdam(list(tensors.values()), lr=0.05, scalar_max=0.31, size_update_period=size_period,
                           clipping_update_period=clip_period, param_max_rms=max_rms,
                           scalar_lr_scale=scalar_lr_scale)
    factors = []
    for step in grads:
        for k, param in tensors.items():
            param.grad = None if step[k] is None else step[k].clone()
        optimiser.step()
        factors.append(optimiser.last_clip_factor[0])

    # the run covers what it claims to
    assert log["clip"][big_step] < 0.5, log["clip"]
    if steps < 100:
        assert all(c == 1.0 for c in log["clip"][:big_step]), log["clip"]
    assert any(k == "bias" for _, k in log["max_rms_hit"]), log
    assert any(k == "tiny" for _, k in log["min_rms_hit"]), log
    assert any(k == "shrinking" for _, k in log["size_clamp_hit"]) == (scalar_lr_scale > 0.5), log
    assert expected["scalar"].item() == pytest.approx(0.31)
    for got, want in zip(factors, log["clip"]):
        assert got == pytest.approx(want, rel=1e-9)
    for k, want in expected.items():
        assert _relative_error(tensors[k].detach(), want) < 1e-9, k
        assert _relative_error(tensors[k].detach(), params[k]) > 1e-4, f"{k} did not move"


# ---------------------------------------------------------------------------------------------------------
# (2) the defining property: steps relative to each tensor's size


def test_update_is_relative_to_the_tensor_rms(seed):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64  # (p + u) - p in float32 would lose ~1e-4 of u
    base = torch.randn(6, 9, generator=gen, dtype=f64) * 0.1
    small, large = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base * 10)
    scalar = torch.nn.Parameter(torch.randn((), generator=gen, dtype=f64))
    lr = 0.04
    eps = 1e-15  # with eps -> 0 the 10x relation is exact (eps/|g| would otherwise differ by 10x between the two)
    optimiser = ScaledAdam([small, large, scalar], lr=lr, clipping_scale=None, eps=eps)
    start_scalar = scalar.detach().clone()
    for t in range(6):  # includes the size step at t = 3
        grad = torch.randn(6, 9, generator=gen, dtype=f64)
        small.grad, large.grad = grad.clone(), grad / 10  # what a 10x larger weight gets in a network
        scalar.grad = torch.randn((), generator=gen, dtype=f64)
        if t == 0:
            rms = base.pow(2).mean().sqrt()
            first_scalar_grad = scalar.grad.clone()
        optimiser.step()
        if t == 0:
            # first step, by hand: v_hat = g^2, momentum keeps (1 - beta1) of the step: a sign step of
            # (1 - beta1) * lr * RMS(p) per element (lr * scalar_lr_scale for the scalar)
            moved = small.detach() - base
            assert torch.allclose(moved, -(1 - 0.9) * lr * rms * grad / (grad.abs() + eps), rtol=1e-9, atol=0)
            assert moved.abs().max() <= 0.1 * lr * rms * (1 + 1e-12)
            scalar_moved = scalar.detach() - start_scalar
            g = first_scalar_grad
            assert torch.allclose(scalar_moved, -(1 - 0.9) * lr * 0.1 * g / (g.abs() + eps), rtol=1e-9, atol=0)
    moved_small, moved_large = small.detach() - base, large.detach() - base * 10
    assert _relative_error(moved_large, moved_small * 10) < 1e-9
    assert moved_small.abs().max() > 1e-4 * rms


# ---------------------------------------------------------------------------------------------------------
# (3) checkpoints


def _model(gen: torch.Generator) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 6, generator=gen)), torch.nn.Parameter(torch.randn(6, generator=gen)),
            torch.nn.Parameter(torch.randn((), generator=gen)),
            torch.nn.Parameter(torch.randn(3, 5, generator=gen).to(torch.bfloat16))]


def test_state_dict_round_trip_continues_the_run(seed):
    gen = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in _model(gen)]
    grads = [[torch.randn(p.shape, generator=gen).to(p.dtype) * (30 if t == 7 else 1) for p in start]
             for t in range(10)]
    settings = {"lr": 0.03, "clipping_update_period": 4, "size_update_period": 3}

    def steps(params, optimiser, todo):
        factors = []
        for step in todo:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimiser.step()
            factors.append(optimiser.last_clip_factor[0])
        return factors

    full = [torch.nn.Parameter(p.clone()) for p in start]
    full_opt = ScaledAdam(full, **settings)
    assert min(steps(full, full_opt, grads)) < 1.0  # the 30x step is clipped: the clipping state matters

    first = [torch.nn.Parameter(p.clone()) for p in start]
    first_opt = ScaledAdam(first, **settings)
    steps(first, first_opt, grads[:5])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    resumed_opt = ScaledAdam(resumed, **settings)
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.state[resumed[3]]["exp_avg_sq"].dtype == torch.float32  # bf16 tensor: fp32 statistics
    steps(resumed, resumed_opt, grads[5:])
    for a, b, s in zip(full, resumed, start):
        assert torch.equal(a, b)
        assert not torch.equal(a, s)


# ---------------------------------------------------------------------------------------------------------
# (4) clipping relative to the recent median norm


@pytest.mark.parametrize("clipping_scale", [2.0, None])
def test_a_huge_gradient_is_clipped_to_the_threshold(seed, clipping_scale):
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.nn.Parameter(torch.randn(8, 5, generator=gen) * 0.2)
    scalar = torch.nn.Parameter(torch.randn((), generator=gen))
    optimiser = ScaledAdam([matrix, scalar], lr=0.02, clipping_scale=clipping_scale)  # period 100
    norms = []
    for t in range(13):
        g_matrix, g_scalar = torch.randn(8, 5, generator=gen), torch.randn((), generator=gen)
        if t == 12:
            g_matrix, g_scalar = g_matrix * 1000, g_scalar * 1000
            exp_avg_sq_before = optimiser.state[matrix]["exp_avg_sq"].clone()
        rms = optimiser.state[matrix]["param_rms"].item() if t > 0 else None
        if t > 0:  # the norm clipping looks at, by hand: the step-relevant gradient
            norms.append(math.sqrt((g_matrix * rms).pow(2).sum().item() + (0.1 * g_scalar).pow(2).item()))
        matrix.grad, scalar.grad = g_matrix.clone(), g_scalar.clone()
        optimiser.step()
        if t < 10:
            assert optimiser.last_clip_factor[0] == 1.0  # no threshold before step 10
    assert torch.equal(matrix.grad, g_matrix)  # the caller's gradient is left alone
    applied = optimiser.state[matrix]["exp_avg_sq"] - 0.98 * exp_avg_sq_before  # (1 - beta2) * (c g)^2
    if clipping_scale is None:
        assert optimiser.last_clip_factor[0] == 1.0
        assert torch.allclose(applied, 0.02 * g_matrix**2, rtol=1e-4)
        return
    # threshold set at step 10 (early estimate): 2 x clipping_scale x the 5th smallest of the norms of steps 1-10
    threshold = 2 * clipping_scale * sorted(norms[:10])[4]
    factor = threshold / norms[11]
    assert factor < 1e-2
    assert optimiser.last_clip_factor[0] == pytest.approx(factor, rel=1e-5)
    assert torch.allclose(applied, 0.02 * (factor * g_matrix) ** 2, rtol=1e-3)
    assert factor * norms[11] == pytest.approx(threshold, rel=1e-6)  # the clipped norm sits at the threshold


def test_grad_scaler_unscales_and_skips_infinite_steps(seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 3, generator=gen) * 0.5
    inputs = [torch.randn(6, 3, generator=gen) for _ in range(4)]
    plain, scaled = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(weight.clone())
    plain_opt, scaled_opt = ScaledAdam([plain], lr=0.03), ScaledAdam([scaled], lr=0.03)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x in inputs:
        (x @ plain.T).tanh().pow(2).sum().backward()
        plain_opt.step()
        plain_opt.zero_grad()
        scaler.scale((x @ scaled.T).tanh().pow(2).sum()).backward()
        scaler.unscale_(scaled_opt)
        scaler.step(scaled_opt)
        scaler.update()
        scaled_opt.zero_grad()
    assert torch.allclose(scaled, plain, rtol=1e-6, atol=1e-7) and not torch.equal(plain, weight)
    before = scaled.detach().clone()
    (scaled.sum() * float("inf")).backward()
    scaler.unscale_(scaled_opt)
    scaler.step(scaled_opt)  # found an inf: no step
    scaler.update()
    assert torch.equal(scaled, before) and scaled_opt.state[scaled]["step"] == len(inputs)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="param_min_rms"):
        ScaledAdam([torch.nn.Parameter(torch.ones(2))], param_min_rms=4.0, param_max_rms=3.0)
    with pytest.raises(ValueError, match="clipping_scale"):
        ScaledAdam([torch.nn.Parameter(torch.ones(2))], clipping_scale=0.0)


# ---------------------------------------------------------------------------------------------------------
# (5) the training option


def test_config_names_the_optimizer():
    config = apply_overrides(train_config("tiny"), ["optim.name=scaled_adam", "optim.clipping_scale=none"])
    assert config.optim.name == "scaled_adam" and config.optim.clipping_scale is None
    assert all(train_config(name).optim.name == "scaled_adam" for name in ("tiny", "base", "large", "xlarge"))
    assert apply_overrides(train_config("tiny"), ["optim.name=adamw"]).optim.name == "adamw"
    with pytest.raises(ValueError, match="optim.name='sgd'"):
        apply_overrides(train_config("tiny"), ["optim.name=sgd"])
    with pytest.raises(ValueError, match="'sgd'"):
        OptimConfig(name="sgd")


@pytest.fixture
def clip_limits(monkeypatch) -> list[float]:
    """The max_norm of every clip_grad_norm_ call the training loop makes, in order."""
    limits = []
    measure = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        limits.append(max_norm)
        return measure(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    return limits


def test_training_with_scaled_adam(tmp_path, clip_limits):
    limits = clip_limits
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=6, seed=fresh_seed())
    result = run(train_argv(corpus, tmp_path / "run", "--max-steps", "3",
                            overrides=["optim.name=scaled_adam", "optim.lr=0.045", "optim.grad_clip=0.5"]))
    assert result.step == 3
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    assert limits == [math.inf] * 3  # ScaledAdam clips; the loop only measures the norm
    state = load_checkpoint(result.checkpoint)
    stats = list(state["optimizer"]["state"].values())
    assert stats and all(s["step"] == 3 for s in stats)
    assert any("param_rms" in s for s in stats)  # ScaledAdam's statistics, not AdamW's
    assert state["optimizer"]["param_groups"][0]["clipping_scale"] == 2.0

    limits.clear()  # without ScaledAdam's clipping the loop's grad_clip applies again
    run(train_argv(corpus, tmp_path / "unclipped", "--max-steps", "1",
                   overrides=["optim.name=scaled_adam", "optim.clipping_scale=none", "optim.grad_clip=0.5"]))
    assert limits == [0.5]


def test_training_with_adamw_still_works(tmp_path, clip_limits):
    limits = clip_limits
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=6, seed=fresh_seed())
    result = run(train_argv(corpus, tmp_path / "run", "--max-steps", "2",
                            overrides=["optim.name=adamw", "optim.lr=2e-3", "optim.grad_clip=0.7"]))
    assert result.step == 2 and limits == [0.7, 0.7]  # the loop clips for AdamW
    state = load_checkpoint(result.checkpoint)["optimizer"]
    assert all("exp_avg" in s and "param_rms" not in s for s in state["state"].values())
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.01, 0.0]  # matrices decay, vectors not
