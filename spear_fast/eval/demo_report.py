"""The embedded demo's last stage: probe the pre-trained student beside its reference points on the
demo corpus's probe tasks, then print a results table and write report.json and report.png.

    report = demo_report(DemoReportInputs(run_dir=..., checkpoint=..., config=..., demo=..., ...))

Rows of the table (every one probed with the same SUPERB-style protocol, spear_fast.eval.probe):
  SPEAR student    the run's final checkpoint (EMA weights when kept), all its layers
  speech teacher   the demo's speech teacher through the teacher interface (the layer it is distilled from)
  audio teacher    the demo's audio teacher, likewise
  fbank            the 128-bin log-mel frames the student reads (the no-learning baseline)
  random init      the run's own student architecture with seeded random weights
Features are cached under the demo directory (keyed by the weights' fingerprint and the task data),
so a rerun only fits what changed and an ablation run (--teachers speech|audio) only extracts its
own student's features. Columns: each task's test accuracy with its binomial standard error, the
mean over each domain's tasks (a task's domain is the domain of most of its clips), and the mean over
all tasks. Tasks that name a "group" in task.json (the demo's spoken-content tasks: "content") also
get that group's mean in report.json and in the comparison lines.
Trend: the run's milestone checkpoints (checkpoint.keep_every) are probed too, on the content tasks
(all tasks when none is grouped), and report.png plots that mean against training steps, from the
random init (step 0) to the final student.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from spear_fast.atomic import atomic_write_json
from spear_fast.checkpoint import checkpoint_step, list_checkpoints
from spear_fast.errors import UserError
from spear_fast.eval.probe import ProbeConfig, _slug, format_table, run_probes
from spear_fast.eval.tasks import Task, load_task

RANDOM_INIT_SEED = 0  # seed of the random-init baseline's weights


@dataclass
class ProbeModel:
    label: str  # the row name
    spec: str  # what load_upstream builds it from (recorded in the results)
    role: str  # "student" | "teacher" | "baseline"
    upstream: Any = None  # a ready Upstream when the spec alone cannot rebuild it (the run's random init)


@dataclass
class DemoReportInputs:
    run_dir: Path  # the training run (log.jsonl; report.json, report.png and probes/ are written here)
    checkpoint: Path  # the student to probe
    student_config: Any  # the run's StudentConfig (the random-init baseline's architecture)
    teachers_used: str  # loss.teachers of the run: "both" | "speech" | "audio"
    teacher_specs: dict[str, str]  # "speech" / "audio" -> the demo teacher specs
    probes_dir: Path  # one folder per task (task.json + split manifests)
    cache_dir: Path  # feature cache shared by runs
    stage_seconds: dict[str, float] = field(default_factory=dict)  # earlier stages' wall times (data, train)
    keep_every: int = 0  # the run's checkpoint.keep_every: its milestones are probed for the trend (0: none)
    probe_config: ProbeConfig = field(default_factory=ProbeConfig)
    progress: bool = True


def task_domain(task: Task) -> str:
    """The domain ("speech" / "audio") of most of the task's clips."""
    entries = [e for split in task.splits.values() for e in split]
    speech = sum(e.domain == "speech" for e in entries)
    return "speech" if 2 * speech >= len(entries) else "audio"


def probe_models(inputs: DemoReportInputs) -> list[ProbeModel]:
    from spear_fast.eval.upstreams import StudentUpstream
    from spear_fast.model import SpearStudent

    student_label = "SPEAR student" + ("" if inputs.teachers_used == "both" else f" ({inputs.teachers_used} only)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        random_student = SpearStudent(inputs.student_config).eval()
    random_spec = f"random-init {inputs.student_config.name} (seed {RANDOM_INIT_SEED})"
    return [
        ProbeModel(student_label, str(inputs.checkpoint), "student"),
        *(ProbeModel(f"{name} teacher", f"teacher:{spec}", "teacher") for name, spec in inputs.teacher_specs.items()),
        ProbeModel("fbank", "fbank", "baseline"),
        ProbeModel("random init", random_spec, "baseline", StudentUpstream(random_student, random_spec, "random")),
    ]


def train_summary(log_records: list[dict[str, Any]], window: int = 10) -> dict[str, Any]:
    """Steps, and the mean of each loss over the first and the last `window` logged steps."""
    if not log_records:
        return {"steps": 0}
    keys = ["loss"] + sorted({k for r in log_records for k in r if k.startswith("loss_")})
    window = max(1, min(window, len(log_records) // 2))

    def mean(records: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {"steps": log_records[-1]["step"], "window": window,
            "first": {k: mean(log_records[:window], k) for k in keys},
            "last": {k: mean(log_records[-window:], k) for k in keys},
            "seconds": round(sum(r.get("step_time", 0.0) for r in log_records), 1)}


def demo_report(inputs: DemoReportInputs) -> dict[str, Any]:
    """Probe every model on every task, print the table, write report.json and report.png."""
    from spear_fast.machine import machine_name
    from spear_fast.plot import read_log

    started = time.perf_counter()
    task_dirs = sorted(p.parent for p in Path(inputs.probes_dir).glob("*/task.json"))
    if not task_dirs:
        raise UserError(f"demo report: no probe tasks (*/task.json) under {inputs.probes_dir}")
    tasks = {t.name: t for t in (load_task(d) for d in task_dirs)}
    domains = {name: task_domain(task) for name, task in tasks.items()}
    groups = {name: task.extra["group"] for name, task in tasks.items() if "group" in task.extra}

    def probe(model: ProbeModel, names: list[str] | None = None) -> dict[str, Any]:
        out = inputs.run_dir / "probes" / f"{_slug(model.label)}.json"
        dirs = [d for d in task_dirs if names is None or d.name in names]
        print(f"[demo] probing {model.label} ({model.spec}) on {len(dirs)} tasks")
        record = run_probes(model.spec, dirs, out, inputs.probe_config, cache_dir=inputs.cache_dir,
                            progress=inputs.progress, upstream=model.upstream)
        record.update(label=model.label, role=model.role, results_file=str(out))
        return record

    results = [probe(model) for model in probe_models(inputs)]
    # The milestones are probed on the spoken-content tasks only (the group SPEAR's claim is about, and
    # a fifth of the probe audio): a full-suite probe of each would cost as much as the student's own.
    trend_key = "content" if "content" in groups.values() else "all"
    trend_tasks = sorted(n for n in tasks if trend_key == "all" or groups.get(n) == trend_key)
    milestones = {checkpoint_step(path): probe(ProbeModel(f"student at step {checkpoint_step(path)}", str(path),
                                                         "milestone"), trend_tasks)
                  for path in milestone_checkpoints(inputs.run_dir, inputs.checkpoint, inputs.keep_every)}
    table = format_table(results, domains=domains)
    probe_seconds = round(time.perf_counter() - started, 1)
    stage_seconds = {**inputs.stage_seconds, "probe": probe_seconds}
    log_records = read_log(inputs.run_dir / "log.jsonl") if (inputs.run_dir / "log.jsonl").is_file() else []
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_name("cuda" if torch.cuda.is_available() else "cpu"),
        "run_dir": str(inputs.run_dir),
        "student": {"checkpoint": str(inputs.checkpoint), "preset": inputs.student_config.name,
                    "teachers_used": inputs.teachers_used},
        "teachers": inputs.teacher_specs,
        "train": train_summary(log_records),
        "tasks": {name: {"domain": domains[name], "num_classes": task.num_classes, "type": task.type,
                         "chance": 1.0 / task.num_classes, "description": task.description}
                  for name, task in tasks.items()},
        "models": [_model_summary(r, domains, groups) for r in results],
        "table": table,
        "stage_seconds": stage_seconds,
        "total_seconds": round(sum(stage_seconds.values()), 1),
    }
    report["comparisons"] = _comparisons(report["models"])
    report["trend"] = _trend(report["models"], {step: _model_summary(r, domains, groups) for step, r in
                                                milestones.items()}, checkpoint_step(inputs.checkpoint),
                             trend_key, trend_tasks)
    atomic_write_json(inputs.run_dir / "report.json", report, indent=2)
    note = plot_report(report, log_records, inputs.run_dir / "report.png")
    print(table)
    for text in report["comparisons"]["lines"]:
        print(text)
    print(f"[demo] report: {inputs.run_dir / 'report.json'}" + (f" ({note})" if note else
                                                               f" and {inputs.run_dir / 'report.png'}"))
    return report


def milestone_checkpoints(run_dir: Path, final: Path, keep_every: int) -> list[Path]:
    """The run's milestones before `final` (the checkpoints kept by checkpoint.keep_every; the newest few
    that checkpoint.keep_last keeps are not probed), oldest first."""
    if keep_every <= 0:
        return []
    return [p for p in list_checkpoints(run_dir)
            if checkpoint_step(p) < checkpoint_step(final) and checkpoint_step(p) % keep_every == 0]


def _trend(models: list[dict[str, Any]], milestones: dict[int, dict[str, Any]], final_step: int, key: str,
           names: list[str]) -> list[dict[str, Any]]:
    """Probe means over the trend's tasks (`names`, the group `key`) against training steps: the random
    init (step 0), the milestones, the final student."""
    start = next((m for m in models if m["label"] == "random init"), None)
    student = next(m for m in models if m["role"] == "student")
    points = [(0, start)] if start is not None else []
    points += sorted(milestones.items()) + [(final_step, student)]
    return [{"step": step, "tasks": names, "mean_accuracy": {key: _mean([m["test_accuracy"][n] for n in names])}}
            for step, m in points]


def _model_summary(record: dict[str, Any], domains: dict[str, str], groups: dict[str, str]) -> dict[str, Any]:
    domains = {name: domain for name, domain in domains.items() if name in record["tasks"]}  # the tasks probed
    scores = {name: record["tasks"][name]["test"]["accuracy"] for name in domains}
    means = {d: _mean([s for t, s in scores.items() if domains[t] == d]) for d in sorted(set(domains.values()))}
    means.update({g: _mean([s for t, s in scores.items() if groups.get(t) == g]) for g in sorted(set(groups.values()))
                  if any(groups.get(t) == g for t in scores)})
    means["all"] = _mean(list(scores.values()))
    return {"label": record["label"], "role": record["role"], "spec": record["model"],
            "fingerprint": record["upstream"]["fingerprint"], "test_accuracy": scores, "mean_accuracy": means,
            "macro_f1": {name: record["tasks"][name]["test"]["macro_f1"] for name in domains},
            "layer_weights": {name: record["tasks"][name]["layer_weights"] for name in domains},
            "test_subsets": {name: record["tasks"][name]["test_subsets"] for name in domains
                             if record["tasks"][name].get("test_subsets")},
            "results_file": record["results_file"]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _comparisons(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The student's mean accuracy minus each other model's, in points, per domain and overall."""
    student = next(m for m in models if m["role"] == "student")
    gaps = {m["label"]: {d: 100 * (student["mean_accuracy"][d] - v) for d, v in m["mean_accuracy"].items()}
            for m in models if m is not student}
    lines = [f"{student['label']} vs {label}: " + ", ".join(f"{d} {g:+.1f} pts" for d, g in gap.items())
             for label, gap in gaps.items()]
    return {"student_minus": gaps, "lines": lines}


def plot_report(report: dict[str, Any], log_records: list[dict[str, Any]], out_path: Path) -> str | None:
    """report.png: the pre-training loss curves beside each model's test accuracy per task."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    from spear_fast.plot import draw_losses, save_figure

    figure, (loss_axis, trend_axis, score_axis) = plt.subplots(1, 3, figsize=(20, 5),
                                                               gridspec_kw={"width_ratios": [1, 0.8, 1.4]})
    if log_records:
        draw_losses(loss_axis, log_records)
    loss_axis.set_title(f"pre-training loss ({report['student']['preset']}, teachers: "
                        f"{report['student']['teachers_used']})")
    trend = report.get("trend", [])
    for key in (trend[0]["mean_accuracy"] if trend else {}):
        trend_axis.plot([p["step"] for p in trend], [100 * p["mean_accuracy"][key] for p in trend], "o-",
                        label=f"{key} mean" if key != "all" else "mean of all tasks", lw=2.5 if key == "all" else 1.2)
    trend_axis.set_xlabel("training step (0 = random init)")
    trend_axis.set_ylabel("test accuracy (%)")
    trend_axis.set_title("student probes along training")
    trend_axis.legend(fontsize=8)
    trend_axis.grid(alpha=0.3)
    tasks = list(report["tasks"])
    columns = tasks + ["mean"]
    models = report["models"]
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [100 * model["test_accuracy"][t] for t in tasks] + [100 * model["mean_accuracy"]["all"]]
        positions = [c + (i - (len(models) - 1) / 2) * width for c in range(len(columns))]
        score_axis.bar(positions, values, width, label=model["label"])
    score_axis.set_xticks(range(len(columns)), [f"{c}\n({report['tasks'][c]['domain']})" if c in tasks else c
                                                for c in columns])
    score_axis.set_ylabel("test accuracy (%)")
    score_axis.set_title("frozen-feature probes (weighted layer sum + linear head)")
    score_axis.legend(fontsize=8)
    score_axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"spear-fast demo, {report['created']}, {report['machine']}", fontsize=9)
    figure.tight_layout()
    save_figure(figure, out_path)
    return None


def seed_table(reports: list[dict[str, Any]]) -> str:
    """Several demo reports of one recipe (e.g. pre-training seeds) as one table: per model (row) and
    task, then domain/group means and the mean of all tasks (columns), the mean over the reports +-
    their sample standard deviation, in test accuracy %. Every report must hold the same models and tasks."""
    import statistics

    if not reports:
        raise UserError("seed table: no reports given")
    labels = [m["label"] for m in reports[0]["models"]]
    tasks = list(reports[0]["tasks"])
    for report in reports[1:]:
        if [m["label"] for m in report["models"]] != labels or list(report["tasks"]) != tasks:
            raise UserError(f"seed table: reports disagree on models or tasks ({report.get('run_dir')})")
    means = [k for k in reports[0]["models"][0]["mean_accuracy"] if k != "all"] + ["all"]
    columns = tasks + [f"{k} mean" if k != "all" else "mean" for k in means]
    name_width = max(len("model"), *(len(label) for label in labels))
    widths = [max(len(c), 11) for c in columns]
    lines = [f"{len(reports)} report(s); cells: mean +- sample standard deviation over them (test accuracy %)",
             "  ".join([f"{'model':<{name_width}}", *(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))])]
    for i, label in enumerate(labels):
        cells = []
        for column in tasks + means:
            values = [100 * (r["models"][i]["test_accuracy"][column] if column in tasks
                             else r["models"][i]["mean_accuracy"][column]) for r in reports]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f}±{spread:.1f}")
        lines.append("  ".join([f"{label:<{name_width}}", *(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))]))
    return "\n".join(lines)
