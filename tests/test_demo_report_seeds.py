"""`spear report-table`: several demo reports (pre-training seeds) as mean +- sample standard deviation."""
import json
import statistics

import pytest

from spear_fast.cli import main as spear_main
from spear_fast.eval.demo_report import seed_table


def fake_report(generator_seed: int) -> dict:
    import random

    rng = random.Random(generator_seed)
    models = []
    for label, role in (("SPEAR student", "student"), ("fbank", "baseline")):
        scores = {"spoken_word": rng.random(), "voice_id": rng.random(), "pitch_class": rng.random()}
        means = {"audio": scores["pitch_class"], "content": scores["spoken_word"],
                 "speech": (scores["spoken_word"] + scores["voice_id"]) / 2, "all": sum(scores.values()) / 3}
        models.append({"label": label, "role": role, "test_accuracy": scores, "mean_accuracy": means})
    return {"run_dir": f"runs/seed{generator_seed}", "tasks": {t: {} for t in ("spoken_word", "voice_id", "pitch_class")},
            "models": models}


def test_cells_are_the_mean_and_sample_deviation(tmp_path):
    reports = [fake_report(s) for s in (1, 2, 3)]
    lines = seed_table(reports).splitlines()
    assert lines[1].split()[1:] == ["spoken_word", "voice_id", "pitch_class", "audio", "mean", "content", "mean",
                                    "speech", "mean", "mean"]
    for row, index in ((lines[2], 0), (lines[3], 1)):
        values = [100 * r["models"][index]["test_accuracy"]["voice_id"] for r in reports]
        assert row.split()[-6] == f"{statistics.mean(values):.1f}±{statistics.stdev(values):.1f}"  # voice_id
        alls = [100 * r["models"][index]["mean_accuracy"]["all"] for r in reports]
        assert row.split()[-1] == f"{statistics.mean(alls):.1f}±{statistics.stdev(alls):.1f}"
    paths = []
    for i, report in enumerate(reports):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(report))
    assert spear_main(["report-table", *map(str, paths)]) == 0


def test_reports_of_other_models_are_refused():
    other = fake_report(2)
    other["models"][1]["label"] = "random init"
    with pytest.raises(ValueError, match="disagree on models or tasks"):
        seed_table([fake_report(1), other])
    with pytest.raises(ValueError, match="no reports"):
        seed_table([])
