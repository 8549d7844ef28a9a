"""ScaledAdam: the Zipformer optimiser (icefall, egs/librispeech/ASR/zipformer/optim.py), SPEAR.md section 6.

Adam whose step for each tensor is relative to that tensor's size, plus a learned size. For a tensor
p (numel > 1) with gradient g at step t (0-based, per tensor), learning rate lr, P = size_update_period:

    g    <- c * g                                   group-wide clipping factor c <= 1 (below)
    v    <- beta2 * v + (1 - beta2) * g^2           v_hat = v / (1 - beta2^(t+1)) while that divisor < 0.99
    u     = -lr * g / (sqrt(v_hat) + eps) * max(rms, param_min_rms)
            rms = RMS(p), measured at the first step and refreshed at every t % P == P - 1
    u    <- u + s * p                               only at t % P == P - 1, t > 0: the size step (below)
    m    <- beta1 * m + (1 - beta1) * u             momentum without bias correction (a gentler start)
    p    <- p + m
Size step: the gradient of the loss w.r.t. log(size of p) is sum(p * g); the last P of them, h_1..h_P,
drive an Adam step of lr * scalar_lr_scale on log-size with its own second moment
    w <- beta2^P * w + (1 - beta2^P) * mean(h^2),
    s  = -lr * scalar_lr_scale * sqrt(1 - beta2^(P * n)) * sum(h) / (sqrt(w) + eps)   (n-th size step)
then s = 0 when rms < param_min_rms (never shrink further), s clamped to [-0.1, 0.1] and to
s <= (param_max_rms - rms) / rms (the RMS never grows past param_max_rms).
Scalars (numel == 1) take the plain Adam step u = -lr * scalar_lr_scale * g / (sqrt(v_hat) + eps) with the
same momentum, and are clamped to [-scalar_max, scalar_max] after the update.

Clipping (clipping_scale not None), per param group, before the updates: the norm of the step-relevant
gradient, ||g|| = sqrt(sum_tensors ||g * rms||^2 + sum_scalars (scalar_lr_scale * g)^2) (rms = the stored
value), enters a ring of the last clipping_update_period norms. At every step that is a multiple of the
period, and early at steps 10, 20 and 40 (when below the period; then over the norms seen so far and with
twice the threshold), threshold = clipping_scale * median of the ring (icefall's median: element
2 * (n // 4) of the n sorted norms). Then c = min(1, threshold / ||g||) (no clipping before the first
threshold or on step 0). Whatever the clipping, c = 0 when ||g|| is not finite: the step's gradient
is dropped, as icefall drops it.

Host and device: c stays on the device, so a step reads nothing back from it. Only the threshold
updates read the ring of norms (every clipping_update_period steps), and log the quartiles and how
many steps since the last update were clipped (a warning for those scaled by less than 0.5).

A parameter without a gradient counts as a zero gradient, as in icefall: its momentum keeps moving it.
Differences from icefall's code, not its arithmetic: parameters are updated one by one rather than
stacked by shape (icefall's batching is a kernel-launch saving; the result is the same up to float
rounding), optimiser state is kept in float64 for float64 parameters (icefall: always float32), and
gradients are not scaled in place.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Early threshold estimates (steps below the clipping period): the norm changes fast at the start,
# so these use the norms seen so far and twice the threshold.
EARLY_CLIPPING_STEPS = (10, 20, 40)
# Largest change of a tensor's log-size in one size step (icefall's stability limit).
MAX_SIZE_STEP = 0.1
# Adam's second-moment bias correction is dropped once its divisor reaches this.
BIAS_CORRECTION_CUTOFF = 0.99


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    """Optimiser statistics: float32 for half-precision parameters, else the parameter's dtype."""
    return torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype


class ScaledAdam(torch.optim.Optimizer):
    """ScaledAdam with icefall's defaults; the update rule is in the module docstring.

    params: an iterable of tensors or of param-group dicts (as for any torch optimiser).
    clipping_scale: clip the group's relative gradient norm to this many times its recent median;
        None disables the clipping. Default 2.0, what icefall's Zipformer recipes pass (its class
        default is None).
    `last_clip_factor[i]`: the clipping factor c that group i got at the latest step (read from the device).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.03, betas: tuple[float, float] = (0.9, 0.98),
                 scalar_lr_scale: float = 0.1, eps: float = 1e-8, param_min_rms: float = 1e-5,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0, size_update_period: int = 4,
                 clipping_scale: float | None = 2.0, clipping_update_period: int = 100):
        if not lr > 0:
            raise ValueError(f"ScaledAdam: lr must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"ScaledAdam: betas must lie in [0, 1), got {betas}")
        if not (scalar_lr_scale > 0 and eps > 0 and scalar_max > 0):
            raise ValueError(f"ScaledAdam: scalar_lr_scale={scalar_lr_scale}, eps={eps} and "
                             f"scalar_max={scalar_max} must be > 0")
        if not 0 < param_min_rms < param_max_rms:
            raise ValueError(f"ScaledAdam: need 0 < param_min_rms < param_max_rms, got {param_min_rms}, "
                             f"{param_max_rms}")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError(f"ScaledAdam: size_update_period={size_update_period} and clipping_update_period="
                             f"{clipping_update_period} must be >= 1")
        if clipping_scale is not None and not clipping_scale > 0:
            raise ValueError(f"ScaledAdam: clipping_scale must be > 0 or None, got {clipping_scale}")
        defaults = {"lr": lr, "betas": tuple(betas), "scalar_lr_scale": scalar_lr_scale, "eps": eps,
                    "param_min_rms": param_min_rms, "param_max_rms": param_max_rms, "scalar_max": scalar_max,
                    "size_update_period": size_update_period, "clipping_scale": clipping_scale,
                    "clipping_update_period": clipping_update_period}
        super().__init__(params, defaults)
        self._clip_factors: list[torch.Tensor | float] = [1.0] * len(self.param_groups)

    @property
    def last_clip_factor(self) -> list[float]:
        return [float(factor) for factor in self._clip_factors]

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._clip_factors = [1.0] * len(self.param_groups)
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if not params:
                continue
            grads = []
            for p in params:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                grads.append(torch.zeros_like(p) if p.grad is None else p.grad)
                self._init_state(group, p)
            factor = self._clip_factor(group, grads)
            self._clip_factors[index] = factor
            for p, grad in zip(params, grads):
                self._update(group, p, grad, factor)
        return loss

    def _init_state(self, group: dict[str, Any], p: torch.Tensor) -> None:
        state = self.state[p]
        if "step" in state:
            return
        dtype = _state_dtype(p)
        state["step"] = 0
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        state["momentum"] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        if p.numel() > 1:
            state["param_rms"] = _rms(p.to(dtype))  # () refreshed every size_update_period steps
            state["size_grads"] = torch.zeros(group["size_update_period"], dtype=dtype, device=p.device)
            state["size_exp_avg_sq"] = torch.zeros((), dtype=dtype, device=p.device)

    def _update(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, clip: torch.Tensor) -> None:
        """One step of one tensor (the equations of the module docstring)."""
        state = self.state[p]
        dtype = _state_dtype(p)
        step = state["step"]
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        value = p.to(dtype)  # the parameter before this step
        # c = 0 drops a non-finite gradient (inf * 0 would be nan); c = 1 leaves it as it is
        grad = torch.where(clip > 0, grad.to(dtype) * clip, 0.0)

        # Adam direction (second moment only; momentum is applied to the whole update below)
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        correction = 1.0 - beta2 ** (step + 1)
        second = exp_avg_sq / correction if correction < BIAS_CORRECTION_CUTOFF else exp_avg_sq
        scalar = p.numel() == 1
        step_lr = lr * group["scalar_lr_scale"] if scalar else lr
        update = grad / (second.sqrt() + eps) * -step_lr

        if not scalar:
            update = self._scale_relative(group, state, value, grad, update, step)

        momentum = state["momentum"]
        momentum.mul_(beta1).add_(update, alpha=1.0 - beta1)
        p.add_(momentum.to(p.dtype))
        if scalar:
            p.clamp_(-group["scalar_max"], group["scalar_max"])
        state["step"] = step + 1

    @staticmethod
    def _scale_relative(group: dict[str, Any], state: dict[str, Any], value: torch.Tensor, grad: torch.Tensor,
                        update: torch.Tensor, step: int) -> torch.Tensor:
        """Scale a tensor's Adam step by its RMS; every size_update_period steps add the size step."""
        period = group["size_update_period"]
        size_grads = state["size_grads"]  # (P,) d loss / d log-size, last P steps
        size_grads[step % period] = (value * grad).sum()
        param_rms = state["param_rms"]  # ()
        size_turn = step % period == period - 1
        if size_turn:
            param_rms.copy_(_rms(value))
        min_rms, max_rms = group["param_min_rms"], group["param_max_rms"]
        update = update * param_rms.clamp(min=min_rms)
        if size_turn and step > 0:
            beta2 = group["betas"][1] ** period  # one size step spans `period` steps
            size_exp_avg_sq = state["size_exp_avg_sq"]
            size_exp_avg_sq.mul_(beta2).add_((size_grads**2).mean(), alpha=1.0 - beta2)
            size_steps = (step + 1) // period  # 1 at the first size step
            correction = math.sqrt(1.0 - beta2**size_steps)
            size_lr = group["lr"] * group["scalar_lr_scale"]
            size_step = -size_lr * correction * size_grads.sum() / (size_exp_avg_sq.sqrt() + group["eps"])  # ()
            size_step = torch.where(param_rms < min_rms, torch.zeros_like(size_step), size_step)
            size_step = size_step.clamp(-MAX_SIZE_STEP, MAX_SIZE_STEP)
            size_step = torch.minimum(size_step, (max_rms - param_rms) / param_rms)
            update = update + value * size_step
        return update

    # ------------------------------------------------------------------ clipping
    def _clip_factor(self, group: dict[str, Any], grads: list[torch.Tensor]) -> torch.Tensor:
        """The group's gradient factor c (module docstring), () float64 on the device; also maintains
        the norm ring and threshold."""
        scale = group["clipping_scale"]
        first = self.state[group["params"][0]]  # the group's clipping statistics live here
        step = first["step"]
        scalar_lr_scale = group["scalar_lr_scale"]
        terms = []
        for p, grad in zip(group["params"], grads):
            grad = grad.to(_state_dtype(p))
            if p.numel() == 1:
                terms.append((grad.square() * scalar_lr_scale**2).sum())
            else:
                terms.append((grad * self.state[p]["param_rms"]).square().sum())
        norm = sum(terms).sqrt()  # () relative gradient norm of the group
        finite = torch.isfinite(norm)
        if scale is None or step == 0:
            return finite.double()
        period = group["clipping_update_period"]
        if "clip_norms" not in first:
            first["clip_norms"] = torch.zeros(period, dtype=norm.dtype, device=norm.device)
        norms = first["clip_norms"]  # (period,) ring of recent norms
        norms[step % period] = norm
        early = step in EARLY_CLIPPING_STEPS and step < period
        if step % period == 0 or early:
            self._update_threshold(first, scale, step, early)
        threshold = first.get("clip_threshold")
        if threshold is None:
            return finite.double()
        factor = (threshold / (norm.double() + 1e-20)).clamp(max=1.0)
        # steps clipped since the last threshold update, counted on the device
        first["clip_count"] = first.get("clip_count", 0) + (factor < 1.0)
        first["clip_hard_count"] = first.get("clip_hard_count", 0) + (factor < 0.5)
        return torch.where(finite, factor, 0.0)

    @staticmethod
    def _update_threshold(first: dict[str, Any], scale: float, step: int, early: bool) -> None:
        """A new threshold from the ring of norms (host reads: every clipping_update_period steps)."""
        ordered = first["clip_norms"].sort().values.cpu()
        if early:
            ordered = ordered[-step:]  # the `step` norms recorded so far (slot 0 is still empty)
        count = ordered.numel()
        quartiles = [float(ordered[min(count - 1, (count // 4) * k)]) for k in range(5)]
        median = quartiles[2]
        if not math.isfinite(median):
            raise RuntimeError(f"ScaledAdam: the median gradient norm of the last {count} steps is {median}: "
                               f"too many gradients were not finite")
        threshold = scale * median * (2.0 if early else 1.0)
        clipped, hard = int(first.get("clip_count", 0)), int(first.get("clip_hard_count", 0))
        log.info("ScaledAdam step %d: clipping_scale=%s, grad-norm quartiles %s, threshold=%.3e, "
                 "clipped %.1f %% of steps", step, scale, " ".join(f"{q:.3e}" for q in quartiles), threshold,
                 100.0 * clipped / count)
        if hard:
            log.warning("ScaledAdam step %d: %d of the last %d steps scaled their gradients by less than 0.5",
                        step, hard, count)
        first["clip_threshold"] = threshold
        first["clip_count"] = first["clip_hard_count"] = 0

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, except that statistics keep their saved dtype (torch casts every floating
        tensor to its parameter's dtype, which would round float32 statistics of half parameters)."""
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for key, p in zip(ids, params):
            for name, value in saved.get(key, {}).items():
                if torch.is_tensor(value):
                    self.state[p][name] = value.to(device=p.device, copy=True)
        self._clip_factors = [1.0] * len(self.param_groups)


def _rms(x: torch.Tensor) -> torch.Tensor:
    """() root-mean-square of all elements."""
    return x.square().mean().sqrt()
