"""Frozen-feature evaluation: upstreams (students, teachers, baselines), feature stores, probe tasks,
SUPERB-style weighted-layer probes. The HEAR API lives in spear_fast.hear."""
from spear_fast.eval.features import FeatureStore, extract_features, parse_layers
from spear_fast.eval.probe import (
    ProbeConfig,
    ProbeData,
    ProbeResult,
    WeightedLayerProbe,
    classification_metrics,
    format_table,
    run_probes,
    train_probe,
)
from spear_fast.eval.tasks import Task, load_task, make_task
from spear_fast.eval.upstreams import (
    FbankUpstream,
    StudentUpstream,
    TeacherUpstream,
    Upstream,
    UpstreamInfo,
    UpstreamOutput,
    load_upstream,
)

__all__ = [
    "FbankUpstream", "FeatureStore", "ProbeConfig", "ProbeData", "ProbeResult", "StudentUpstream", "Task",
    "TeacherUpstream", "Upstream", "UpstreamInfo", "UpstreamOutput", "WeightedLayerProbe", "classification_metrics",
    "extract_features", "format_table", "load_task", "load_upstream", "make_task", "parse_layers", "run_probes",
    "train_probe",
]
