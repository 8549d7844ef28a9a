"""The SPEAR objective (spear_fast/objective.py) against a float64 by-hand computation of the full
formula: frame weights, modes, lambda, missing tokens, both frame-rate alignments, length tolerance."""
import math

import pytest
import torch

from spear_fast.config import apply_overrides
from spear_fast.masking import MaskingConfig, compute_masks
from spear_fast.model.config import tiny
from spear_fast.model.student import SpearStudent
from spear_fast.objective import ObjectiveConfig, SpearObjective, TeacherSpec, align_targets

K = 8  # small codebooks keep the by-hand loops cheap


def by_hand(hidden, lengths, output_mask, targets, domains, specs, heads, student_rate, alpha, lam, mode):
    """Float64 loops over clips, frames and codebooks, straight from SPEAR.md section 6."""
    total = 0.0
    weight_total = 0.0
    per_teacher = {}
    for b in range(hidden.shape[0]):
        for f in range(int(lengths[b])):
            weight_total += alpha if output_mask[b, f] else 1 - alpha
    for spec in specs:
        weight, bias = (p.detach().double() for p in heads[spec.name])
        s_t, w_t = 0.0, 0.0
        if spec.name not in targets:
            per_teacher[spec.name] = (0.0, 0.0)
            continue
        tokens, token_lengths = targets[spec.name]
        for b in range(hidden.shape[0]):
            if mode == "asymmetric":
                applies = spec.domain == "speech" or domains[b] == "audio"
            elif mode == "own_teacher":
                applies = spec.domain == domains[b]
            else:
                applies = True
            n_tok = int(token_lengths[b])
            if not applies or n_tok == 0:
                continue
            for f in range(int(lengths[b])):
                w = alpha if output_mask[b, f] else 1 - alpha
                # the teacher frames behind student frame f
                if spec.frame_rate * 2 == student_rate:  # repeat: frame f <- teacher frame f // 2
                    frame_targets = [tokens[b, f // 2].tolist() if f // 2 < n_tok else [-100] * spec.num_codebooks]
                elif spec.frame_rate == student_rate * 2:  # group: frames 2f and 2f + 1
                    frame_targets = [tokens[b, t].tolist() if t < n_tok else [-100] * spec.num_codebooks
                                     for t in (2 * f, 2 * f + 1)]
                else:
                    frame_targets = [tokens[b, f].tolist() if f < n_tok else [-100] * spec.num_codebooks]
                z = [v for part in frame_targets for v in part]
                if all(v == -100 for v in z):
                    continue
                logits = weight @ hidden[b, f].double() + bias  # (len(z) * K,)
                ce = 0.0
                for n, target in enumerate(z):
                    if target == -100:
                        continue
                    row = logits[n * K:(n + 1) * K]
                    ce += (torch.logsumexp(row, 0) - row[target]).item()
                s_t += w * ce / len(z)
                w_t += w
        scale = 1.0 if spec.domain == "speech" else lam
        total += scale * s_t
        per_teacher[spec.name] = (s_t, w_t)
    return total, weight_total, per_teacher


def make_tokens(generator, batch, frames, codebooks, lengths):
    tokens = torch.randint(0, K, (batch, frames, codebooks), generator=generator)
    tokens[torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]] = -100  # padding
    return tokens, torch.tensor(lengths)


@pytest.mark.parametrize("mode", ["asymmetric", "own_teacher", "both_all"])
@pytest.mark.parametrize("student_rate", [50.0, 25.0])
def test_loss_matches_float64_by_hand(mode, student_rate, seed):
    generator = torch.Generator().manual_seed(seed)
    if student_rate == 50.0:  # 25 Hz speech teacher (repeat x2), 50 Hz audio teacher (same rate)
        specs = (TeacherSpec("speech_t", "speech", 3, 25.0, K), TeacherSpec("audio_t", "audio", 2, 50.0, K))
    else:  # 50 Hz speech teacher (frame pairs -> 2N codebooks), 25 Hz audio teacher
        specs = (TeacherSpec("speech_t", "speech", 3, 50.0, K), TeacherSpec("audio_t", "audio", 2, 25.0, K))
    alpha, lam = 0.3, 0.25  # not the defaults, so a swapped alpha / 1 - alpha or a lost lambda shows
    config = ObjectiveConfig(teachers=specs, alpha=alpha, lambda_audio=lam, mode=mode)
    dim = 12
    objective = SpearObjective(config, dim, student_rate).double()
    for head in objective.heads.values():  # larger weights than the default init: CE far from log K
        torch.nn.init.normal_(head.weight, std=0.5, generator=generator)
        torch.nn.init.normal_(head.bias, std=0.5, generator=generator)
    lengths = torch.tensor([9, 6, 7, 4])
    domains = ["speech", "audio", "audio", "speech"]
    hidden = torch.randn(4, 9, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    output_mask = torch.rand(4, 9, generator=generator) < 0.5
    # token lengths at the teacher rate: exact, +-1 (within tolerance) and a clip with no tokens
    targets = {}
    for spec in specs:
        ratio = spec.frame_rate / student_rate
        exact = [math.ceil(n * ratio) for n in lengths.tolist()]
        token_lengths = [exact[0], exact[1] + 1, 0, max(1, exact[3] - 1)]
        targets[spec.name] = make_tokens(generator, 4, max(token_lengths) + 2, spec.num_codebooks, token_lengths)
    # a few ignored targets inside valid frames
    targets["speech_t"][0][0, 1, 0] = -100

    out = objective(hidden, lengths, output_mask, targets, domains)
    heads = {name: (head.weight, head.bias) for name, head in objective.heads.items()}
    total, weight_total, per_teacher = by_hand(hidden.detach(), lengths, output_mask, targets, domains, specs,
                                                heads, student_rate, alpha, lam, mode)
    assert out.weight_total.item() == pytest.approx(weight_total, rel=1e-12)
    assert out.loss_sum.item() == pytest.approx(total, rel=1e-6)
    assert out.loss.item() == pytest.approx(total / weight_total, rel=1e-6)
    for name, (s_t, w_t) in per_teacher.items():
        assert out.teacher_sums[name].item() == pytest.approx(s_t, rel=1e-6)
        assert out.teacher_weights[name].item() == pytest.approx(w_t, rel=1e-12)
        if w_t > 0:
            assert out.teacher_losses[name].item() == pytest.approx(s_t / w_t, rel=1e-6)
    # the trainer's call, lengths as Python ints and no checks: the same numbers
    host_targets = {name: (tokens, token_lengths.tolist()) for name, (tokens, token_lengths) in targets.items()}
    fast = objective(hidden, lengths.tolist(), output_mask, host_targets, domains, check=False)
    assert torch.equal(fast.loss, out.loss)
    for name in out.teacher_sums:
        assert torch.equal(fast.teacher_sums[name], out.teacher_sums[name])
        assert torch.equal(fast.teacher_weights[name], out.teacher_weights[name])
    # the production dtype: fp32 heads and hidden give the float64 result to fp32 accuracy
    out32 = objective.float()(hidden.detach().float(), lengths, output_mask, targets, domains)
    assert out32.loss.dtype == torch.float32
    assert out32.loss.item() == pytest.approx(total / weight_total, rel=1e-5)
    objective.double()
    # gradients against autograd through a float64 dense formulation
    out.loss.backward()
    grad_hidden = hidden.grad.clone()
    hidden.grad = None
    dense = dense_loss(hidden, lengths, output_mask, targets, domains, specs, objective, student_rate, alpha, lam,
                       mode)
    dense.backward()
    torch.testing.assert_close(grad_hidden, hidden.grad, atol=1e-8, rtol=1e-6)


def dense_loss(hidden, lengths, output_mask, targets, domains, specs, objective, student_rate, alpha, lam, mode):
    """The same loss with dense tensor ops (autograd gives reference gradients)."""
    total = hidden.new_zeros(())
    frames = hidden.shape[1]
    valid = torch.arange(frames)[None, :] < lengths[:, None]
    w = torch.where(output_mask, alpha, 1 - alpha).double() * valid
    for spec in specs:
        tokens, token_lengths = targets[spec.name]
        group = round(spec.frame_rate / student_rate) if spec.frame_rate > student_rate else 1
        repeat = round(student_rate / spec.frame_rate) if spec.frame_rate < student_rate else 1
        z = torch.full((4, frames, spec.num_codebooks * group), -100, dtype=torch.int64)
        for b in range(4):
            for f in range(int(lengths[b])):
                for g in range(group):
                    t = (f * group + g) // repeat
                    if t < int(token_lengths[b]):
                        z[b, f, g * spec.num_codebooks:(g + 1) * spec.num_codebooks] = tokens[b, t]
        head = objective.heads[spec.name]
        logits = (hidden @ head.weight.T + head.bias).unflatten(-1, (-1, K))  # (B, T, gN, K)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, K), z.reshape(-1), ignore_index=-100,
                                               reduction="none").reshape(z.shape)
        for b in range(4):
            applies = {"asymmetric": spec.domain == "speech" or domains[b] == "audio",
                       "own_teacher": spec.domain == domains[b], "both_all": True}[mode]
            if applies:
                scale = 1.0 if spec.domain == "speech" else lam
                total = total + scale * (w[b] * ce[b].sum(-1) / z.shape[-1]).sum()
    return total / w.sum()


def test_align_targets_repeat_group_and_tolerance(seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (2, 5, 2), generator=generator)
    # 25 Hz under 50 Hz: each frame twice; clip 1 has 4 token frames -> 8 student frames, student has 9
    out = align_targets(tokens, torch.tensor([5, 4]), 25.0, 50.0, torch.tensor([10, 9]), 11)
    assert out.shape == (2, 11, 2)
    assert torch.equal(out[0, :10], tokens[0].repeat_interleave(2, dim=0)) and (out[0, 10:] == -100).all()
    assert torch.equal(out[1, :8], tokens[1, :4].repeat_interleave(2, dim=0)) and (out[1, 8:] == -100).all()
    # 50 Hz under 25 Hz: frame pairs concatenated; an odd last frame leaves -100 in its second half
    out = align_targets(tokens, torch.tensor([5, 3]), 50.0, 25.0, torch.tensor([3, 2]), 3)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[0, 1], torch.cat([tokens[0, 2], tokens[0, 3]]))
    assert torch.equal(out[0, 2, :2], tokens[0, 4]) and (out[0, 2, 2:] == -100).all()
    assert torch.equal(out[1, 1, :2], tokens[1, 2]) and (out[1, 1, 2:] == -100).all() and (out[1, 2] == -100).all()
    # trimming: more tokens than student frames (within tolerance) are cut at the student length
    out = align_targets(tokens, torch.tensor([5, 5]), 50.0, 50.0, torch.tensor([4, 3]), 4)
    assert torch.equal(out[0], tokens[0, :4]) and (out[1, 3] == -100).all()
    with pytest.raises(ValueError, match=r"utterance 1 has 5 token frames .* student has 2 frames \(tolerance 2\)"):
        align_targets(tokens, torch.tensor([5, 5]), 50.0, 50.0, torch.tensor([4, 2]), 4)
    # a clip without tokens is exempt from the length check and comes out all ignored
    out = align_targets(tokens, torch.tensor([5, 0]), 50.0, 50.0, torch.tensor([5, 2]), 5)
    assert (out[1] == -100).all()
    with pytest.raises(ValueError, match="not integer multiples"):
        align_targets(tokens, torch.tensor([5, 5]), 30.0, 50.0, torch.tensor([5, 5]), 5)


def test_objective_input_errors(seed):
    specs = (TeacherSpec("s", "speech", 2, 50.0, K),)
    objective = SpearObjective(ObjectiveConfig(teachers=specs), 6, 50.0)
    hidden, lengths, mask = torch.randn(2, 4, 6), torch.tensor([4, 3]), torch.zeros(2, 4, dtype=torch.bool)
    tokens = (torch.randint(0, K, (2, 4, 2)), torch.tensor([4, 3]))
    with pytest.raises(ValueError, match=r"hidden must be \(B, T', 6\), got \(2, 4, 5\)"):
        objective(torch.randn(2, 4, 5), lengths, mask, {"s": tokens}, ["speech", "audio"])
    with pytest.raises(ValueError, match=r"tokens must be \(2, T, 2\), got \(2, 4, 3\)"):
        objective(hidden, lengths, mask, {"s": (torch.zeros(2, 4, 3, dtype=torch.long), lengths)}, ["speech"] * 2)
    with pytest.raises(ValueError, match="unknown teachers"):
        objective(hidden, lengths, mask, {"x": tokens}, ["speech", "audio"])
    with pytest.raises(ValueError, match="domains must be 2 values"):
        objective(hidden, lengths, mask, {"s": tokens}, ["speech", "music"])
    with pytest.raises(ValueError, match="empty"):
        ObjectiveConfig().validate()


def test_end_to_end_gradients_reach_heads_and_student(seed):
    generator = torch.Generator().manual_seed(seed)
    student = SpearStudent(apply_overrides(tiny(), ["encoder.num_layers=2", "encoder.dim=32", "encoder.num_heads=2",
                                                    "encoder.ffn_dim=48", "subsampling.channels=16"]))
    specs = (TeacherSpec("speech_t", "speech", 4, 50.0), TeacherSpec("audio_t", "audio", 2, 25.0))
    objective = SpearObjective(ObjectiveConfig(teachers=specs), 32, student.frame_rate)
    feat_lengths = torch.tensor([120, 90, 64])
    feats = torch.randn(3, 120, 128, generator=generator)
    masks = compute_masks(feats, feat_lengths, MaskingConfig(), generator, time_stride=2)
    out = student(masks.feats, feat_lengths, time_mask=masks.time_mask)
    assert torch.equal(out.lengths, masks.output_lengths)
    student_lengths = out.lengths.tolist()
    targets = {
        "speech_t": make_tokens(generator, 3, 60, 4, student_lengths),
        "audio_t": make_tokens(generator, 3, 30, 2, [math.ceil(n / 2) for n in student_lengths]),
    }
    result = objective(out.hidden, out.lengths, masks.output_mask, targets, ["speech", "audio", "speech"])
    assert torch.isfinite(result.loss)
    # at init the heads predict ~uniformly: mean CE close to log(256)
    assert abs(result.teacher_losses["speech_t"].item() - math.log(256)) < 0.5
    result.loss.backward()
    for name, param in [*objective.named_parameters(), *student.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {name}"


def test_objective_config_round_trips_through_dict():
    from spear_fast.config import apply_overrides, config_from_dict, config_to_dict

    config = ObjectiveConfig(teachers=(TeacherSpec("w", "speech", 16, 50.0), TeacherSpec("c", "audio", 8, 25.0)))
    config = apply_overrides(config, ["mode=both_all", "lambda_audio=0.3"])
    assert config.mode == "both_all" and config.lambda_audio == 0.3
    assert config_from_dict(ObjectiveConfig, config_to_dict(config)) == config
    with pytest.raises(ValueError, match="must be one of"):
        apply_overrides(config, ["mode=symmetric"])
    with pytest.raises(ValueError, match="out of range"):
        apply_overrides(config, ["alpha=1.5"])


def test_teacher_absent_from_batch_contributes_nothing(seed):
    generator = torch.Generator().manual_seed(seed)
    specs = (TeacherSpec("speech_t", "speech", 2, 50.0, K), TeacherSpec("audio_t", "audio", 3, 50.0, K))
    objective = SpearObjective(ObjectiveConfig(teachers=specs, mode="both_all"), 6, 50.0).double()
    hidden = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    lengths, mask = torch.tensor([5, 3]), torch.rand(2, 5, generator=generator) < 0.5
    targets = {"speech_t": make_tokens(generator, 2, 5, 2, [5, 3])}
    domains = ["audio", "speech"]
    out = objective(hidden, lengths, mask, targets, domains)
    heads = {name: (head.weight, head.bias) for name, head in objective.heads.items()}
    total, weight_total, _ = by_hand(hidden.detach(), lengths, mask, targets, domains, specs, heads, 50.0, 0.5,
                                     0.1, "both_all")
    assert out.loss.item() == pytest.approx(total / weight_total, rel=1e-9)
    assert out.teacher_sums["audio_t"].item() == 0.0 and out.teacher_weights["audio_t"].item() == 0.0
    assert math.isnan(out.teacher_losses["audio_t"].item())
    out.loss.backward()  # the absent teacher's head is still in the graph (DDP), with zero gradient
    assert objective.heads["audio_t"].weight.grad is not None
    assert (objective.heads["audio_t"].weight.grad == 0).all()
    assert objective.heads["speech_t"].weight.grad.abs().sum() > 0
