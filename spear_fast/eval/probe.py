"""SUPERB-style probing of a frozen upstream: softmax-weighted sum of all layers -> linear (or MLP) head.

Protocol (one task, one upstream):
  * features are extracted once per split into a feature store (features.py) and reused by reruns;
    utterance tasks store each layer's mean over the valid frames, (L, d) per clip: the weighted sum
    is linear, so mean-pooling before it is exactly mean-pooling after it;
  * every layer is standardised with the train split's per-dimension mean and std (a fixed affine map,
    so layers of different scales start on an equal footing; s3prl leaves them raw);
  * model: w = softmax(layer_logits) (L,), logits zero at the start (uniform weights);
    x = sum_l w_l * layer_l (d,); head = Linear(d, C), or Linear(d, h)-ReLU-Linear(h, C);
  * Adam (lr 1e-3 for the head, 1e-2 for the L layer logits) on cross-entropy, shuffled mini-batches
    from a seeded generator, parameters initialised under a fixed seed; every epoch is scored on the
    valid split, the best state (task metric, then lower valid loss) is kept, training stops
    `patience` epochs after the last improvement, and the best state is scored on the test split.
Reported: accuracy and macro-F1 (mean F1 over the classes present in the labels or predictions, as
sklearn's f1_score(average="macro")), the loss, the learned layer weights, chance and majority rates.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from spear_fast.config import check, field
from spear_fast.errors import UserError


@dataclass
class ProbeConfig:
    head: Literal["linear", "mlp"] = field("linear", "linear: Linear(d, C); mlp: Linear(d, h)-ReLU-Linear(h, C)")
    hidden_dim: int = field(256, "MLP hidden width h", ge=1)
    epochs: int = field(200, "most epochs", ge=1)
    patience: int = field(20, "epochs without a valid improvement before stopping", ge=1)
    batch_size: int = field(32, "utterances (utterance tasks) per step", ge=1)
    frame_batch_size: int = field(1024, "frames (frame tasks) per step", ge=1)
    lr: float = field(1e-3, "the head's Adam learning rate", gt=0.0)
    # Adam moves a logit by about lr per step, and a demo-sized task gives a few hundred steps, in
    # which 1e-3 leaves the weights near uniform (s3prl trains 10k+ steps).
    layer_lr: float = field(1e-2, "the layer logits' Adam learning rate", gt=0.0)
    weight_decay: float = field(0.0, "Adam weight decay of the head", ge=0.0)
    seed: int = field(0, "seed of the initialisation and the batch order")
    # the probe's tensors are small, and more threads mostly add synchronisation (measured on the
    # 2-core dev box under load: 52 ms/step with 2, 2.2 ms with 1)
    threads: int = field(1, "intra-op threads while fitting", ge=1)
    layer: int | None = field(
        None, "one hidden state alone (0: the front end's output) instead of the weighted sum, the per-layer "
              "view that shows where a model keeps what a task needs; None: all layers, weighted (SUPERB)", ge=0)


class WeightedLayerProbe(nn.Module):
    """(x (N, L, d)) -> logits (N, C): softmax-weighted layer sum, then the head."""

    def __init__(self, num_layers: int, dim: int, num_classes: int, head: str = "linear", hidden_dim: int = 256):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        if head == "linear":
            self.head = nn.Linear(dim, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes))

    @property
    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)  # (L,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("nld,l->nd", x, self.layer_weights)  # (N, d)
        return self.head(mixed)  # (N, C)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """accuracy and macro-F1 of integer predictions (N,) against targets (N,)."""
    if pred.shape != target.shape or pred.dim() != 1 or pred.numel() == 0:
        raise ValueError(f"metrics: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal, "
                         f"non-empty 1-D")
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, -1)
    tp = confusion.diag().double()  # (C,)
    support, predicted = confusion.sum(1).double(), confusion.sum(0).double()  # (C,), (C,)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    return {"accuracy": float(tp.sum() / target.numel()), "macro_f1": float(f1[present].mean())}


@dataclass
class ProbeData:
    x: torch.Tensor  # (N, L, d) float32 (utterances or frames)
    y: torch.Tensor  # (N,) int64 class indexes
    subsets: list[str] | None = None  # utterance tasks with a subset_field: each row's subset


@dataclass
class ProbeResult:
    test: dict[str, float]  # accuracy, macro_f1, loss
    valid: dict[str, float]  # at the best epoch
    layer_weights: list[float]
    best_epoch: int  # 1-based
    epochs_run: int
    history: list[dict[str, float]]  # per epoch: train_loss, valid_loss, valid metric
    test_predictions: torch.Tensor | None = None  # (N,) the best state's predicted classes on test


def _logits(model: WeightedLayerProbe, data: ProbeData, batch: int = 4096) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(data.x[i : i + batch]) for i in range(0, data.x.shape[0], batch)])  # (N, C)


def _evaluate(model: WeightedLayerProbe, data: ProbeData, num_classes: int) -> dict[str, float]:
    logits = _logits(model, data)  # (N, C)
    metrics = classification_metrics(logits.argmax(-1), data.y, num_classes)
    metrics["loss"] = float(F.cross_entropy(logits, data.y))
    return metrics


def subset_scores(pred: torch.Tensor, data: ProbeData, num_classes: int) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of each subset of the rows (data.subsets), with its row count."""
    if data.subsets is None:
        return {}
    scores = {}
    for name in sorted(set(data.subsets)):
        rows = torch.tensor([s == name for s in data.subsets])  # (N,) bool
        scores[name] = {**classification_metrics(pred[rows], data.y[rows], num_classes), "count": int(rows.sum())}
    return scores


def standardise(train: ProbeData, *others: ProbeData, eps: float = 1e-5) -> list[ProbeData]:
    """Every split mapped with the train split's per-(layer, dim) mean and std."""
    mean = train.x.mean(0, keepdim=True)  # (1, L, d)
    std = train.x.std(0, unbiased=False, keepdim=True) + eps  # (1, L, d)
    return [ProbeData((d.x - mean) / std, d.y, d.subsets) for d in (train, *others)]


def train_probe(train: ProbeData, valid: ProbeData, test: ProbeData, num_classes: int,
                config: ProbeConfig | None = None, metric: str = "accuracy", batch_size: int | None = None
                ) -> ProbeResult:
    """Fit the weighted-layer probe on train with early stopping on valid; score the best on test."""
    config = config or ProbeConfig()
    check(config)
    for name, data in (("train", train), ("valid", valid), ("test", test)):
        if data.x.dim() != 3 or data.y.shape != (data.x.shape[0],) or data.x.shape[0] == 0:
            raise ValueError(f"probe {name} split: x must be (N, L, d) with y (N,), N > 0; got "
                             f"{tuple(data.x.shape)} and {tuple(data.y.shape)}")
        if data.y.numel() and (int(data.y.min()) < 0 or int(data.y.max()) >= num_classes):
            raise ValueError(f"probe {name} split: labels must lie in [0, {num_classes}), got "
                             f"[{int(data.y.min())}, {int(data.y.max())}]")
    if not (train.x.shape[1:] == valid.x.shape[1:] == test.x.shape[1:]):
        raise ValueError(f"probe splits disagree on (L, d): {tuple(train.x.shape[1:])}, {tuple(valid.x.shape[1:])}, "
                         f"{tuple(test.x.shape[1:])}")
    train, valid, test = standardise(train, valid, test)
    _, num_layers, dim = train.x.shape
    batch_size = batch_size or config.batch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = WeightedLayerProbe(num_layers, dim, num_classes, config.head, config.hidden_dim)
    optimizer = torch.optim.Adam([{"params": [model.layer_logits], "lr": config.layer_lr, "weight_decay": 0.0},
                                  {"params": model.head.parameters()}], lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(model, optimizer, generator, train, valid, test, num_classes, config, metric, batch_size)
    finally:
        torch.set_num_threads(threads)


def _fit(model: WeightedLayerProbe, optimizer: torch.optim.Optimizer, generator: torch.Generator, train: ProbeData,
         valid: ProbeData, test: ProbeData, num_classes: int, config: ProbeConfig, metric: str, batch_size: int
         ) -> ProbeResult:
    best, best_key, best_epoch, history = None, None, 0, []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(train.x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        scores = _evaluate(model, valid, num_classes)
        history.append({"epoch": epoch, "train_loss": total / order.numel(), "valid_loss": scores["loss"],
                        f"valid_{metric}": scores[metric]})
        key = (scores[metric], -scores["loss"])
        if best_key is None or key > best_key:
            best, best_key, best_epoch = copy.deepcopy(model.state_dict()), key, epoch
            best_valid = scores
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best)
    return ProbeResult(test=_evaluate(model, test, num_classes), valid=best_valid,
                       layer_weights=[float(w) for w in model.layer_weights.detach()], best_epoch=best_epoch,
                       epochs_run=len(history), history=history, test_predictions=_logits(model, test).argmax(-1))


# ---------------------------------------------------------------------------------------------
# Tasks on an upstream: features (cached), alignment of frame labels, results.

def _slug(text: str) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')[-48:]}-{digest}"


def frame_label_indexes(num_frames: int, frame_rate: float, num_labels: int, label_rate: float) -> torch.Tensor:
    """Index of the label frame that holds each upstream frame's centre ((j + 0.5) / frame_rate s);
    -1 where the centre lies past the last label frame."""
    centres = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / frame_rate  # (T,) seconds
    index = torch.floor(centres * label_rate).long()  # (T,)
    return torch.where(index < num_labels, index, torch.full_like(index, -1))


def task_split_data(task, split: str, store) -> ProbeData:
    """The probe inputs of one split from its feature store (eval.features.FeatureStore)."""
    targets = task.targets(split)
    subsets = task.subsets(split)
    xs, ys, kept_subsets = [], [], []
    for i, (entry, target) in enumerate(zip(task.splits[split], targets, strict=True)):
        if entry.id not in store:
            continue  # unreadable clip (reported by the extraction)
        features = store[entry.id]  # (L, d) pooled, or (L, T, d)
        if subsets is not None:
            kept_subsets.append(subsets[i])
        if task.type == "utterance":
            xs.append(features[None])  # (1, L, d)
            ys.append(torch.tensor([target]))
        else:
            index = frame_label_indexes(features.shape[1], store.meta["frame_rate"], len(target), task.label_rate)
            keep = index >= 0
            xs.append(features[:, keep].transpose(0, 1))  # (T_kept, L, d)
            ys.append(torch.tensor(target)[index[keep]])
    if not xs:
        raise UserError(f"task {task.name!r}: no {split} features (every clip failed to load?)")
    return ProbeData(torch.cat(xs).float(), torch.cat(ys).long(), kept_subsets if subsets is not None else None)


def check_layer(layer: int, num_states: int, model_name: str) -> None:
    """ValueError unless hidden state `layer` exists among a model's `num_states`."""
    if layer >= num_states:
        raise UserError(f"probe layer {layer} does not exist: {model_name} exposes {num_states} hidden "
                        f"states (0 .. {num_states - 1})")


def one_layer(data: ProbeData, layer: int, model_name: str) -> ProbeData:
    """The probe inputs of hidden state `layer` alone: x (N, L, d) -> (N, 1, d)."""
    check_layer(layer, data.x.shape[1], model_name)
    return ProbeData(data.x[:, layer : layer + 1], data.y, data.subsets)


def probe_task(upstream, task, config: ProbeConfig, cache_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Extract (or reuse) the task's features for `upstream` and fit/score the probe; a results dict."""
    from spear_fast.eval.features import FeatureStore, extract_features

    start = time.perf_counter()
    pool = "mean" if task.type == "utterance" else "none"
    splits, failed = {}, {}
    # the layer count is in the key: the same weights exposed with other hidden states are another upstream
    model_key = _slug(f"{upstream.info.name}@{upstream.info.fingerprint}x{upstream.info.num_layers}")
    task_key = _slug(f"{task.name}@{task.fingerprint}")  # a rebuilt task (manifests changed) gets a new cache
    for split in ("train", "valid", "test"):
        directory = Path(cache_dir) / model_key / task_key / split
        report = extract_features(upstream, task.splits[split], directory, layers="all", pool=pool,
                                  progress=progress)
        failed.update(report.failed)
        splits[split] = task_split_data(task, split, FeatureStore(directory))
    if config.layer is not None:
        splits = {name: one_layer(data, config.layer, upstream.info.name) for name, data in splits.items()}
    extract_seconds = time.perf_counter() - start
    batch = config.batch_size if task.type == "utterance" else config.frame_batch_size
    result = train_probe(splits["train"], splits["valid"], splits["test"], task.num_classes, config, task.metric,
                         batch_size=batch)
    train_counts = torch.bincount(splits["train"].y, minlength=task.num_classes)
    majority = int(train_counts.argmax())
    return {
        "task": task.name, "type": task.type, "metric": task.metric, "num_classes": task.num_classes,
        "test": result.test, "valid": result.valid, "layer_weights": result.layer_weights,
        "test_subsets": subset_scores(result.test_predictions, splits["test"], task.num_classes),
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "chance": 1.0 / task.num_classes,
        "majority_test_accuracy": float((splits["test"].y == majority).double().mean()),
        "counts": {s: int(d.y.numel()) for s, d in splits.items()}, "failed_clips": sorted(failed),
        "extract_seconds": round(extract_seconds, 2), "probe_seconds": round(time.perf_counter() - start
                                                                            - extract_seconds, 2),
        "history": result.history,
    }


def run_probes(model: str, task_dirs: list[str | os.PathLike], out: str | os.PathLike, config: ProbeConfig,
               cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
               upstream=None) -> dict:
    """Probe one model on several tasks and write RESULTS.json (atomically, after every task). Tasks
    already in an existing results file with the same model and probe settings are kept, not rerun."""
    from spear_fast.eval.tasks import load_task
    from spear_fast.eval.upstreams import load_upstream

    check(config)
    tasks = [load_task(d) for d in task_dirs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"probe: two task directories share a task name: {names}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent / "features"
    settings = asdict(config)
    results = {"model": model, "probe": settings, "tasks": {}}
    if out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("model") == model and previous.get("probe") == settings:
            results["tasks"] = previous.get("tasks", {})
    upstream = upstream if upstream is not None else load_upstream(model, device=device)
    if results["tasks"] and previous.get("upstream") != asdict(upstream.info):
        results["tasks"] = {}  # the weights (or the hidden states exposed) changed since: nothing earlier stands
    results["upstream"] = asdict(upstream.info)
    if config.layer is not None:  # before any extraction, not after the first task's
        check_layer(config.layer, upstream.info.num_layers, upstream.info.name)
    for task in tasks:
        if results["tasks"].get(task.name, {}).get("task_fingerprint") == task.fingerprint:
            continue  # done with these weights, this task data and these settings
        record = probe_task(upstream, task, config, cache_dir, progress=progress)
        record["directory"] = str(task.directory.resolve())
        record["task_fingerprint"] = task.fingerprint
        results["tasks"][task.name] = record
        if progress:
            test = record["test"]
            print(f"probe {model} on {task.name}: test accuracy {test['accuracy']:.4f}, macro-F1 "
                  f"{test['macro_f1']:.4f} (chance {record['chance']:.3f}); layer weights "
                  f"{[round(w, 3) for w in record['layer_weights']]}")
        _write_results(out, results)
    scores = [results["tasks"][n]["test"]["accuracy"] for n in names]
    results["mean_test_accuracy"] = sum(scores) / len(scores) if scores else math.nan
    _write_results(out, results)
    return results


def _write_results(path: Path, results: dict) -> None:
    from spear_fast.atomic import atomic_write_json

    atomic_write_json(path, results, indent=2)


def binomial_se(accuracy: float, count: int) -> float:
    """Standard error of an accuracy measured on `count` independent test clips: sqrt(p (1 - p) / n)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / count) if count > 0 else math.nan


def format_table(results: list[dict], metric: str = "accuracy", domains: dict[str, str] | None = None) -> str:
    """A plain-text table of several run_probes results: one row per model (its "label", else its
    "model"), one column per task (test `metric` in %, +- its binomial standard error over the test
    clips), then, when `domains` maps tasks to domains, the mean over each domain's tasks, then the
    mean over all the tasks every model has (a mean's error: sqrt(sum of squared errors) / count,
    the tasks' test sets being independent)."""
    if not results:
        raise ValueError("format_table: no results given")
    tasks = sorted(set.intersection(*(set(r["tasks"]) for r in results)))
    if not tasks:
        raise UserError("format_table: the results share no task")
    groups = {}
    for task in tasks:
        if domains is not None:
            groups.setdefault(domains[task], []).append(task)
    names = [r.get("label", r["model"]) for r in results]
    name_width = max(len("model"), *(len(n) for n in names))
    columns = tasks + [f"{d} mean" for d in groups] + ["mean"]
    widths = [max(len(c), 10) for c in columns]
    lines = ["  ".join([f"{'model':<{name_width}}", *(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))])]

    def mean(cells: list[tuple[float, float]]) -> tuple[float, float]:
        return (sum(v for v, _ in cells) / len(cells), math.sqrt(sum(e * e for _, e in cells)) / len(cells))

    for name, record in zip(names, results, strict=True):
        cell = {}
        for t in tasks:
            value = record["tasks"][t]["test"][metric]
            cell[t] = (100 * value, 100 * binomial_se(value, record["tasks"][t]["counts"]["test"]))
        values = [cell[t] for t in tasks]
        values += [mean([cell[t] for t in members]) for members in groups.values()]
        values.append(mean(list(cell.values())))
        cells = [f"{f'{v:.1f}±{e:.1f}':>{w}}" for (v, e), w in zip(values, widths, strict=True)]
        lines.append("  ".join([f"{name:<{name_width}}", *cells]))
    return "\n".join(lines)
