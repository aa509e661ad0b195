"""A training run killed (SIGKILL) at random moments and resumed from ``last.ckpt`` each time ends
exactly where a run that was never killed ends: step count, every weight, optimiser and scheduler
state, final validation metrics (benchmarks/kill_resume.py does it 20 times)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_resume


def test_a_killed_and_resumed_training_ends_as_an_unkilled_one(tmp_path):
    data = kill_resume.make_images(tmp_path / "images")
    kill_resume.train_unkilled(tmp_path / "unkilled", data, "lae", 12, 3)
    events = kill_resume.train_killed(tmp_path / "killed", data, "lae", 12, 3, kills=2, seed=1)
    assert len(events) >= 1
    result = kill_resume.compare(tmp_path / "unkilled", tmp_path / "killed")
    assert result["steps"] == (12, 12)
    assert result["tensors_differing"] == [] and result["optimizer_entries_differing"] == []
    assert result["schedulers_equal"]
    assert result["val_metrics"][0] == result["val_metrics"][1] != {}
