"""Build the demo corpus: plan every clip from the seed, render the jobs in parallel, write the
pre-training manifest, the labelled probe sets, the licences and a summary.

Manifests use spear_fast.data.manifest (ManifestEntry lines); audio paths are relative to the
directory of the manifest that lists them; a probe row's class is meta["label"] (task.json names
the field), so probe sets read with read_manifest like any manifest.
Output layout:
  train.jsonl                         pre-training clips (audio under audio/<source>/)
  probes/<task>/{train,valid,test}.jsonl, probes/<task>/task.json, probes/<task>/audio/...
  sources.json, LICENSES.md, licenses/<package>.copyright, summary.json, failures.jsonl
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time

from tqdm import tqdm

from ..data.manifest import ManifestEntry, write_manifest
from .audio_util import SAMPLE_RATE
from .plan import DemoConfig, Planner, Resources, gather_resources
from .render import Job, run_job
from .sources import default_cache_dir


def _write_text_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=False) + "\n" for row in rows)


def _run_jobs(jobs: list[Job], out_dir: str, workers: int) -> list[dict]:
    total_clips = sum(len(j.clips) for j in jobs)
    records: list[dict] = []
    # Heaviest kinds first so the last jobs are short (better balance across workers).
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].kind not in ("music", "flite"), i))
    bar = tqdm(total=total_clips, desc="prepare-demo", unit="clip", dynamic_ncols=True)
    audio_seconds = 0.0
    start = time.time()

    def consume(result: list[dict]) -> None:
        nonlocal audio_seconds
        records.extend(result)
        audio_seconds += sum(r.get("frames", 0) for r in result) / SAMPLE_RATE
        bar.update(len(result))
        bar.set_postfix(audio_h=f"{audio_seconds / 3600:.2f}",
                        x_realtime=f"{audio_seconds / max(time.time() - start, 1e-6):.0f}")

    if workers == 1:
        for i in order:
            consume(run_job(jobs[i], out_dir))
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            for result in pool.imap_unordered(_run_job_star, [(jobs[i], out_dir) for i in order]):
                consume(result)
    bar.close()
    return records


def _run_job_star(args: tuple[Job, str]) -> list[dict]:
    return run_job(*args)


def build_corpus(config: DemoConfig) -> dict:
    """Build (or finish building) the corpus in config.out; returns the summary."""
    started = time.time()
    out = os.path.abspath(config.out)
    os.makedirs(out, exist_ok=True)
    res = gather_resources(config.cache_dir or default_cache_dir())
    planner = Planner(config, res)
    planner.pretraining()
    tasks = planner.probes()
    setup_seconds = time.time() - started

    records = {r["id"]: r for r in _run_jobs(planner.jobs, out, config.jobs)}
    clips = [c for job in planner.jobs for c in job.clips]
    rows_by_manifest: dict[str, list[ManifestEntry]] = {}
    failures = []
    for clip in clips:
        record = records[clip.id]
        if record["status"] == "failed":
            failures.append({"id": clip.id, "manifest": clip.manifest, "kind": record["kind"],
                             "error": record["error"], "params": _short(clip.params)})
            continue
        meta = dict(clip.meta) if clip.label is None else {"label": clip.label, **clip.meta}
        entry = ManifestEntry(id=clip.id, path=os.path.join(out, os.path.dirname(clip.manifest), clip.relpath),
                              duration=record["frames"] / record["sample_rate"],
                              sample_rate=record["sample_rate"], domain=clip.domain, meta=meta)
        rows_by_manifest.setdefault(clip.manifest, []).append(entry)
    for manifest, entries in rows_by_manifest.items():
        write_manifest(os.path.join(out, manifest), sorted(entries, key=lambda e: e.id), relative_paths=True)
    for name, task in tasks.items():
        _write_text_atomic(os.path.join(out, "probes", name, "task.json"), json.dumps(task, indent=2) + "\n")
    _write_text_atomic(os.path.join(out, "failures.jsonl"), _jsonl(failures))
    write_licences(out, res)
    summary = summarize(config, rows_by_manifest, failures, time.time() - started, setup_seconds)
    _write_text_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def _short(params: dict) -> dict:
    """Params for the failure report, without the long lists (sample banks, stems)."""
    return {k: v for k, v in params.items() if not isinstance(v, list) or len(v) <= 8}


def write_licences(out: str, res: Resources) -> None:
    packages = [*sorted(res.packages.values(), key=lambda p: p.name), *res.programs]
    sources = []
    lines = ["# Licences of the demo corpus sources", "",
             "Every clip's manifest row names its source package and licence in `meta.licence`; the "
             "full Debian copyright file of each package is in `licenses/`.", "",
             "| package | version | role | licence of the files used | all License: fields |",
             "|---|---|---|---|---|"]
    for p in packages:
        target = os.path.join(out, "licenses", f"{p.name}.copyright")
        if os.path.exists(p.copyright_path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(p.copyright_path, target)
        entry = {k: v for k, v in p.to_json().items() if k != "root"}
        entry["copyright_file"] = os.path.relpath(target, out)
        sources.append(entry)
        lines.append(f"| {p.name} | {p.version} | {p.role} | {p.licence} | "
                     f"{', '.join(p.licences) or '(free-form file)'} |")
    kit_lines = ["", "## Hydrogen drum kits (each kit's own licence statement)", ""]
    for kit, samples in sorted(res.kits.items()):
        kit_lines.append(f"- {kit}: {samples[0].licence or 'see licenses/hydrogen-drumkits.copyright'}")
    _write_text_atomic(os.path.join(out, "sources.json"), json.dumps(sources, indent=2) + "\n")
    _write_text_atomic(os.path.join(out, "LICENSES.md"), "\n".join(lines + kit_lines) + "\n")


def summarize(config: DemoConfig, rows_by_manifest: dict[str, list[ManifestEntry]], failures: list[dict],
              seconds: float, setup_seconds: float) -> dict:
    train = rows_by_manifest.get("train.jsonl", [])
    hours: dict[str, dict[str, float]] = {}
    for entry in train:
        domain = hours.setdefault(entry.domain, {})
        domain[entry.meta["source"]] = domain.get(entry.meta["source"], 0.0) + entry.duration / 3600
    probes = {m: {"clips": len(e), "hours": round(sum(x.duration for x in e) / 3600, 4)}
              for m, e in sorted(rows_by_manifest.items()) if m != "train.jsonl"}
    return {
        "seed": config.seed, "tiny": config.tiny, "hours_requested": config.hours, "jobs": config.jobs,
        "train_clips": len(train),
        "train_hours": round(sum(e.duration for e in train) / 3600, 4),
        "hours_by_domain": {d: round(sum(s.values()), 4) for d, s in sorted(hours.items())},
        "hours_by_source": {d: {k: round(v, 4) for k, v in sorted(s.items())} for d, s in sorted(hours.items())},
        "probes": probes, "probe_hours": round(sum(p["hours"] for p in probes.values()), 4),
        "failed_clips": len(failures), "build_seconds": round(seconds, 1),
        "setup_seconds": round(setup_seconds, 1), "sample_rate": SAMPLE_RATE,
    }
