"""The step-cost benchmark's pieces (benchmarks/step_cost.py, step_comparison.py): peak from the OS, the parts of
a step adding up to the whole, and the side-by-side runner refusing to time the wrong source tree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.pretraining_workspace import build_trainer, loader_of
from benchmarks.step_comparison import SideBySide, run_side
from benchmarks.step_cost import PARTS, count_flops, measure_parts, part_functions, peak_fp32_flops
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.training.losses import SegmentationLoss
from mass_nn.training.optim.ema import ModelEMA
from mass_nn.training.optim.lamb import Lamb

REPO = Path(__file__).resolve().parents[1]


def test_peak_is_derived_from_cores_clock_lanes_and_fma():
    peak = peak_fp32_flops()
    assert peak.cores >= 1 and peak.lanes in (4, 8, 16)
    fma = 2 if peak.fma else 1
    assert peak.flops == pytest.approx(peak.cores * peak.ghz * 1e9 * peak.lanes * fma * 2)
    assert f"{peak.cores} cores" in peak.formula() and "GFLOP/s" in peak.formula()


def test_parts_cover_the_whole_step_and_their_flops_add_up():
    torch.manual_seed(0)
    network = InContextSegmenter(InContextNetworkConfig.tiny())
    loss, optimizer, ema = SegmentationLoss(), Lamb(network.parameters()), ModelEMA(network)
    tensors = {"query_image": torch.randn(1, 1, 32, 32, 32), "reference_image": torch.randn(1, 1, 32, 32, 32),
               "reference_masks": (torch.rand(1, 2, 32, 32, 32) > 0.5).float(),
               "query_masks": (torch.rand(1, 2, 32, 32, 32) > 0.5).float(), "task_weights": torch.ones(1, 2)}
    functions = part_functions(network, loss, optimizer, ema, 1.0, tensors)
    assert tuple(functions) == PARTS

    def whole_step():
        network.zero_grad(set_to_none=True)
        value, _ = loss(network(tensors["query_image"], tensors["reference_image"], tensors["reference_masks"]),
                        tensors["query_masks"], tensors["task_weights"])
        value.backward()

    costs = measure_parts(functions, repeats=1, top=2)
    assert [c.name for c in costs] == list(PARTS) and all(c.seconds > 0 for c in costs)
    assert all(len(c.top_ops) == 2 for c in costs)
    whole = count_flops(whole_step)
    # the parts' backward passes also compute input gradients the whole step skips for the images: within 15 %
    assert sum(c.flops for c in costs) == pytest.approx(whole, rel=0.15)
    assert costs[PARTS.index("optimiser")].flops == 0


def test_runner_keeps_freed_memory_like_training_unless_the_spec_turns_it_off(monkeypatch):
    from benchmarks.step_runner import keep_freed_memory_as_training_does
    monkeypatch.delenv("MASS_MEMORY_REUSE", raising=False)
    assert keep_freed_memory_as_training_does({"memory_reuse": False}) == "off"
    assert keep_freed_memory_as_training_does({}) in ("on", "off")  # "off" only where the C library is not glibc


def test_runner_hides_plans_fields_this_tree_does_not_know_behind_a_shadow_root(tmp_path, monkeypatch):
    from benchmarks.step_runner import roots_this_tree_reads
    dataset = tmp_path / "pre" / "Dataset990_X"
    dataset.mkdir(parents=True)
    (dataset / "arrays.b2nd").write_bytes(b"data")
    plans = {"plans_name": "MassPlans", "configurations": {"3d_cpu": {"name": "3d_cpu", "batch_size": 2}}}
    (dataset / "MassPlans.json").write_text(json.dumps(plans))
    roots = {"preprocessed": str(tmp_path / "pre"), "raw": "r"}
    monkeypatch.chdir(tmp_path)
    assert roots_this_tree_reads(roots) == roots  # every field known: the roots stay
    plans["configurations"]["3d_cpu"]["field_from_the_future"] = 1
    (dataset / "MassPlans.json").write_text(json.dumps(plans))
    shadowed = roots_this_tree_reads(roots)
    shadow = Path(shadowed["preprocessed"]) / "Dataset990_X"
    assert shadowed["raw"] == "r" and shadow.parent != tmp_path / "pre"
    assert (shadow / "arrays.b2nd").is_symlink() and (shadow / "arrays.b2nd").read_bytes() == b"data"
    assert json.loads((shadow / "MassPlans.json").read_text())["configurations"]["3d_cpu"] == {
        "name": "3d_cpu", "batch_size": 2}
    assert "field_from_the_future" in (dataset / "MassPlans.json").read_text()  # the original is untouched


def test_side_by_side_ratio_is_earlier_over_current():
    assert SideBySide("x", [4.0, 6.0, 5.0], [2.0, 2.5, 3.0]).ratio == pytest.approx(2.0)


@pytest.mark.slow  # a training step in a fresh process: about a minute on 2 cores
def test_runner_times_this_tree_and_reports_where_mass_nn_came_from(tmp_path, pretraining_roots):
    """One MASS step through the runner, in its own process, with the current tree as the source."""
    trainer = build_trainer(990, pretraining_roots, steps=1)
    with loader_of(trainer, 0, seed=2) as loader:
        torch.save([next(loader)], tmp_path / "batches.pt")
    spec = {"kind": "train_step", "paths": {"raw": str(pretraining_roots.raw),
                                            "preprocessed": str(pretraining_roots.preprocessed),
                                            "results": str(pretraining_roots.results)},
            "dataset": 990, "trainer": "MASSPretrainer", "configuration": trainer.options.configuration, "steps": 1,
            "threads": 1, "batches": str(tmp_path / "batches.pt")}
    seconds = run_side(spec, REPO, tmp_path, "current")
    assert len(seconds) == 1 and seconds[0] > 0
    with pytest.raises(SystemExit, match="not from"):
        run_side(spec, tmp_path, tmp_path, "elsewhere")  # no mass_nn there: the installed one would be timed

