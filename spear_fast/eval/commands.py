"""`spear extract`, `spear probe`, `spear probe-table`, `spear report-table`, `spear make-task`: frozen-feature evaluation from the command line."""
from __future__ import annotations

import argparse

from spear_fast.errors import UserError

MODEL_HELP = ("model spec: an export DIR, a training checkpoint .pt, 'fbank', 'random:PRESET[?seed=N]', "
              "'hf:DIR?trust_remote_code=1' (a local transformers remote-code model, e.g. a released SPEAR "
              "checkpoint), or 'teacher:SPEC' (see spear_fast/eval/upstreams.py)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    extract = subparsers.add_parser(
        "extract", help="write per-utterance upstream features of a manifest to a feature store",
        description="Run a frozen upstream over a manifest and store each utterance's features "
                    "(safetensors shards + index.json; atomic, resumable).")
    extract.add_argument("--model", required=True, help=MODEL_HELP)
    extract.add_argument("--manifest", required=True, help="manifest (.jsonl) of the clips")
    extract.add_argument("--layers", default="all", help="all | last | i,j,... (0-based; negative from the end)")
    extract.add_argument("--out", required=True, help="feature store directory")
    extract.add_argument("--pool", choices=("none", "mean"), default="none",
                         help="none: (layers, T, d) per utterance; mean: (layers, d), the mean over frames")
    extract.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    extract.add_argument("--batch-seconds", type=float, default=64.0, help="padded audio seconds per batch")
    extract.add_argument("--device", default="cpu")
    extract.add_argument("--max-duration", type=float, default=None,
                         help="skip (and list in failed.json) clips longer than this many seconds (default: the "
                              "600 s of collect-frames and tokenize); split long recordings into manifest segments")
    extract.set_defaults(func=run_extract)

    probe = subparsers.add_parser(
        "probe", help="SUPERB-style probes (weighted layer sum + linear/MLP head) of a frozen model",
        description="Probe one model on one or more tasks (directories with task.json) and write RESULTS.json.")
    probe.add_argument("--model", required=True, help=MODEL_HELP)
    probe.add_argument("--task", required=True, action="append", help="task directory (repeat for several)")
    probe.add_argument("--out", required=True, help="results JSON file")
    probe.add_argument("--epochs", type=int, default=200, help="most training epochs (early stopping on valid)")
    probe.add_argument("--patience", type=int, default=20, help="epochs without valid improvement before stopping")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--head", choices=("linear", "mlp"), default="linear")
    probe.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate")
    probe.add_argument("--layer-lr", type=float, default=1e-2, help="the layer weights' learning rate")
    probe.add_argument("--batch-size", type=int, default=32, help="utterances per step (frame tasks: 1024 frames)")
    probe.add_argument("--layer", type=int, default=None,
                       help="probe this hidden state alone (0 = the front end's output) instead of the weighted sum")
    probe.add_argument("--cache", default=None, help="feature cache directory (default: features/ beside --out)")
    probe.add_argument("--device", default="cpu")
    probe.set_defaults(func=run_probe)

    table = subparsers.add_parser("probe-table", help="print the test scores of several `spear probe` results",
                                  description="One row per results file (model), one column per shared task.")
    table.add_argument("results", nargs="+", help="RESULTS.json files written by spear probe")
    table.add_argument("--metric", choices=("accuracy", "macro_f1"), default="accuracy")
    table.set_defaults(func=run_probe_table)

    seeds = subparsers.add_parser(
        "report-table", help="one table of several demo reports (e.g. pre-training seeds): mean +- spread",
        description="Rows: the models of the demo reports; cells: the mean over the reports +- their sample "
                    "standard deviation, per task and mean.")
    seeds.add_argument("reports", nargs="+", help="report.json files written by the demo (train.py)")
    seeds.set_defaults(func=run_report_table)

    make = subparsers.add_parser(
        "make-task", help="make a probe task directory from a labelled manifest",
        description="Split a manifest whose rows carry a label into train/valid/test and write task.json.")
    make.add_argument("--manifest", required=True)
    make.add_argument("--out", required=True, help="task directory to write")
    make.add_argument("--name", default=None)
    make.add_argument("--label-field", default="meta.label", help="dotted path of the label in a row")
    make.add_argument("--type", choices=("utterance", "frame"), default="utterance")
    make.add_argument("--label-rate", type=float, default=None, help="frame tasks: label frames per second")
    make.add_argument("--split-field", default=None, help="dotted field holding train/valid/test (else random)")
    make.add_argument("--valid-fraction", type=float, default=0.1)
    make.add_argument("--test-fraction", type=float, default=0.2)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=run_make_task)


def run_extract(args: argparse.Namespace) -> int:
    from spear_fast.data.manifest import read_manifest
    from spear_fast.eval.features import extract_features
    from spear_fast.eval.upstreams import load_upstream

    entries = read_manifest(args.manifest)
    upstream = load_upstream(args.model, device=args.device)
    report = extract_features(upstream, entries, args.out, layers=args.layers, pool=args.pool, dtype=args.dtype,
                              batch_seconds=args.batch_seconds, max_duration=args.max_duration)
    print(f"extract: {report.extracted} written, {report.skipped} already there, {len(report.failed)} failed "
          f"-> {report.directory} ({report.seconds:.1f} s)")
    return 0  # unreadable clips are skipped and listed in failed.json (a rerun retries them)


def run_probe(args: argparse.Namespace) -> int:
    from spear_fast.eval.probe import ProbeConfig, run_probes

    config = ProbeConfig(head=args.head, epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                         lr=args.lr, layer_lr=args.layer_lr, seed=args.seed, layer=args.layer)
    results = run_probes(args.model, args.task, args.out, config, cache_dir=args.cache, device=args.device)
    width = max(len(name) for name in results["tasks"])
    print(f"{'task':<{width}}  accuracy  macro-F1  chance")
    for name in results["tasks"]:
        record = results["tasks"][name]
        print(f"{name:<{width}}  {record['test']['accuracy']:8.4f}  {record['test']['macro_f1']:8.4f}  "
              f"{record['chance']:6.3f}")
    print(f"mean test accuracy {results['mean_test_accuracy']:.4f} -> {args.out}")
    return 0


def run_probe_table(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from spear_fast.eval.probe import format_table

    results = []
    for path in args.results:
        if not Path(path).is_file():
            raise UserError(f"{path}: results file not found")
        try:
            results.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path}: not a JSON results file written by spear probe ({error})") from None
    print(format_table(results, args.metric))
    return 0


def run_report_table(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from spear_fast.eval.demo_report import seed_table

    reports = []
    for path in args.reports:
        if not Path(path).is_file():
            raise UserError(f"{path}: report not found")
        reports.append(json.loads(Path(path).read_text()))
    print(seed_table(reports))
    return 0


def run_make_task(args: argparse.Namespace) -> int:
    from spear_fast.eval.tasks import load_task, make_task

    out = make_task(args.manifest, args.out, name=args.name, label_field=args.label_field, task_type=args.type,
                    label_rate=args.label_rate, split_field=args.split_field, valid_fraction=args.valid_fraction,
                    test_fraction=args.test_fraction, seed=args.seed)
    task = load_task(out)
    sizes = {s: len(rows) for s, rows in task.splits.items()}
    print(f"task {task.name!r} ({task.type}, {task.num_classes} classes) -> {out}: {sizes}")
    return 0
