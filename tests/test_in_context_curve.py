"""benchmarks/in_context_learning_curve.py --quick end to end on ../shared/data (slow; skipped without it), and
its budget and pool rules (fast)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.in_context_learning_curve import (CPU_BATCH8_BF16, CPU_BATCH16, CPU_BATCH16_BF16,
                                                  CPU_BATCH16_BF16_6MM, FULL, GPU, QUICK, RECIPE_PRESET,
                                                  LearningCurve, _few_per_source, main)
from tests.conftest import requires_shared_data, shared_data_dir


def test_full_budget_fits_an_hour_and_quick_is_a_token_run():
    assert FULL.pretrain_steps == 1200 and len(FULL.seeds) >= 3 and FULL.pool_cases_per_source is None
    assert QUICK.pretrain_steps <= 4 and QUICK.pool_cases_per_source == 2


def test_workspaces_from_before_the_batch_fields_still_match_and_budgets_stay_apart(tmp_path):
    older = {"name": "full", "pretrain_epochs": 12, "pretrain_iters_per_epoch": 100, "finetune_epochs": 2,
             "finetune_iters_per_epoch": 50, "seeds": [0, 1, 2], "pool_cases_per_source": None}
    (tmp_path / "state.json").write_text(json.dumps({"finished": ["datasets"], "budget": older}))
    LearningCurve(tmp_path, tmp_path, FULL, None).run([], redo=False)  # no stage: only the budget check
    assert json.loads((tmp_path / "state.json").read_text())["budget"]["batch_size"] is None
    assert GPU.batch_size == 16 and GPU.lr_scaling == "none"
    with pytest.raises(SystemExit, match="holds runs of budget"):
        LearningCurve(tmp_path, tmp_path, GPU, None).run([], redo=False)


def test_batch16_budget_is_the_gpu_batch_and_lr_in_its_own_workspace_and_excludes_other_budgets(tmp_path):
    assert (CPU_BATCH16.batch_size, CPU_BATCH16.lr_scaling) == (GPU.batch_size, GPU.lr_scaling)
    assert CPU_BATCH16.pretrain_steps == 600 and len(CPU_BATCH16.seeds) >= 3
    for flags in (["--batch16", "--gpu"], ["--batch16", "--quick"], ["--batch8", "--batch16", "--bf16"]):
        with pytest.raises(SystemExit, match="four budgets"):
            main([*flags, "--workspace", str(tmp_path), "--stages", "report"])
    LearningCurve(tmp_path, tmp_path, FULL, None).run([], redo=False)
    with pytest.raises(SystemExit, match="holds runs of budget"):
        LearningCurve(tmp_path, tmp_path, CPU_BATCH16, None).run([], redo=False)


def test_bf16_budget_is_the_batch16_budget_in_bf16_sized_to_the_hour_only_with_batch16(tmp_path):
    assert CPU_BATCH16_BF16.precision == "bf16" and CPU_BATCH16.precision is None
    assert CPU_BATCH16_BF16.pretrain_minutes == 58 and CPU_BATCH16.pretrain_minutes is None
    assert CPU_BATCH16_BF16.pretrain_steps == 1020 > CPU_BATCH16.pretrain_steps == 600  # the most it allows
    differing = ("name", "precision", "pretrain_epochs", "pretrain_minutes")
    assert ({k: v for k, v in vars(CPU_BATCH16_BF16).items() if k not in differing}
            == {k: v for k, v in vars(CPU_BATCH16).items() if k not in differing})
    with pytest.raises(SystemExit, match="--bf16 goes with --batch16 or --batch8"):
        main(["--bf16", "--workspace", str(tmp_path), "--stages", "report"])
    curve = LearningCurve(tmp_path, tmp_path, CPU_BATCH16_BF16, None)
    curve.save_state({"finished": [], "budget": None,
                      "datasets": {"pool": "712", "chaos_mr": "705", "mscmrseg": "706"}})
    options = curve.pretraining_options()  # all 17 epochs' schedule, cut where the machine's 58 minutes run out
    assert (options.precision, options.epochs, options.schedule_epochs, options.max_minutes) == ("bf16", 17, None, 58)
    steps_budget = LearningCurve(tmp_path, tmp_path, CPU_BATCH16, None).pretraining_options()
    assert (steps_budget.precision, steps_budget.epochs, steps_budget.max_minutes) == ("auto", 10, None)


def test_batch8_budget_is_the_bf16_hour_at_half_the_batch_in_twice_the_steps_only_with_bf16(tmp_path):
    differing = ("name", "batch_size", "pretrain_iters_per_epoch")
    assert ({k: v for k, v in vars(CPU_BATCH8_BF16).items() if k not in differing}
            == {k: v for k, v in vars(CPU_BATCH16_BF16).items() if k not in differing})
    assert (CPU_BATCH8_BF16.batch_size, CPU_BATCH8_BF16.pretrain_steps) == (8, 2 * CPU_BATCH16_BF16.pretrain_steps)
    assert (CPU_BATCH8_BF16.batch_size * CPU_BATCH8_BF16.pretrain_iters_per_epoch
            == CPU_BATCH16_BF16.batch_size * CPU_BATCH16_BF16.pretrain_iters_per_epoch)  # samples per epoch
    with pytest.raises(SystemExit, match="--batch8 goes with --bf16"):
        main(["--batch8", "--workspace", str(tmp_path), "--stages", "report"])
    with pytest.raises(SystemExit, match="--grid-6mm goes with --batch16 --bf16"):
        main(["--batch8", "--bf16", "--grid-6mm", "--workspace", str(tmp_path), "--stages", "report"])
    curve = LearningCurve(tmp_path, tmp_path, CPU_BATCH8_BF16, None)
    curve.save_state({"finished": [], "budget": None,
                      "datasets": {"pool": "712", "chaos_mr": "705", "mscmrseg": "706"}})
    options = curve.pretraining_options()
    assert (options.batch_size, options.iters_per_epoch, options.epochs, options.max_minutes, options.lr_scaling,
            options.precision) == (8, 120, 17, 58, "none", "bf16")


def test_every_budget_but_the_full_one_reports_into_a_section_of_its_own(tmp_path):
    from benchmarks.in_context_curve_report import _suffix
    budgets = (FULL, GPU, CPU_BATCH16, CPU_BATCH16_BF16, CPU_BATCH16_BF16_6MM, CPU_BATCH8_BF16)
    suffixes = [_suffix(LearningCurve(tmp_path / b.name, tmp_path, b, None)) for b in budgets]
    assert suffixes[0] == "" and all(suffixes[1:]) and len(set(suffixes)) == len(budgets)


def test_6mm_budget_is_the_bf16_hour_on_the_6mm_preset_only_with_bf16(tmp_path):
    differing = ("name", "preset", "pretrain_epochs")
    assert ({k: v for k, v in vars(CPU_BATCH16_BF16_6MM).items() if k not in differing}
            == {k: v for k, v in vars(CPU_BATCH16_BF16).items() if k not in differing})
    assert CPU_BATCH16_BF16_6MM.pretrain_epochs == 40 and CPU_BATCH16_BF16.preset is None
    with pytest.raises(SystemExit, match="--grid-6mm goes with --batch16 --bf16"):
        main(["--batch16", "--grid-6mm", "--workspace", str(tmp_path), "--stages", "report"])
    assert LearningCurve(tmp_path, tmp_path, CPU_BATCH16_BF16, None).preset == RECIPE_PRESET
    curve = LearningCurve(tmp_path, tmp_path, CPU_BATCH16_BF16_6MM, None)
    curve.save_state({"finished": [], "budget": None,
                      "datasets": {"pool": "712", "chaos_mr": "705", "mscmrseg": "706"}})
    assert (curve.preset, curve.plans_name) == ("cpu_in_context_6mm", "MassPlansInContextCPU6mm")
    assert (curve.pretraining_options().plans_name, curve.pretraining_options().epochs) == (
        "MassPlansInContextCPU6mm", 40)
    assert "MassPlansInContextCPU6mm" in curve.run_folder().name


def test_quick_pool_keeps_the_first_cases_of_every_source():
    images = [(c, Path(f"/x/{c}.nii.gz")) for c in ("chaos_08", "chaos_15", "chaos_21", "STS_001_MR_T1",
                                                     "mscmrseg_04", "brats_2013_pat0001_1_FLAIR")]
    assert [c for c, _ in _few_per_source(images, 2)] == ["chaos_08", "chaos_15", "STS_001_MR_T1", "mscmrseg_04",
                                                         "brats_2013_pat0001_1_FLAIR"]


@pytest.mark.slow
@requires_shared_data
def test_quick_run_writes_the_curve_the_comparison_and_the_report(tmp_path):
    assert main(["--quick", "--shared-data", str(shared_data_dir()), "--workspace", str(tmp_path)]) == 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["finished"] == sorted(["datasets", "masks", "pretrain", "compare", "report"])
    pooled = set(json.loads((tmp_path / "preprocessed" / state["datasets"]["pool"] / "splits.json").read_text())
                 ["train"])
    for key in ("chaos_mr", "mscmrseg"):
        splits = json.loads((tmp_path / "preprocessed" / state["datasets"][key] / "splits.json").read_text())
        assert not (set(splits["test"]) | set(splits["val"])) & pooled  # no evaluation patient is pretrained on
        results = json.loads((tmp_path / "compare" / key / "results.json").read_text())
        assert {r["method"] for r in results["runs"]} == {"in_context", "in_context_calibrated", "finetune",
                                                          "scratch"}
    report = (tmp_path / "report.md").read_text()
    assert "| step | train loss | pretext Dice" in report and "CHAOS MR calibrated" in report
    assert "MASS in context (no training), reference-calibrated thresholds" in report
    assert "untrained network in context (no training), threshold 0.5" in report  # the baseline of the gain
    assert re.search(r"\n\| 0 +\| – +\|", report)  # the curve starts at the untrained network (no train loss)
    assert (tmp_path / "figures" / "in_context_curve.png").is_file()
    # a second run finds everything finished and only rewrites the report
    assert main(["--quick", "--shared-data", str(shared_data_dir()), "--workspace", str(tmp_path)]) == 0


def test_comparison_rows_add_each_structures_own_claim_below_its_label_map_row(tmp_path):
    from types import SimpleNamespace
    from benchmarks.in_context_curve_report import comparison_rows
    from mass_nn.io.atomic import write_json_atomic
    curve = SimpleNamespace(workspace=tmp_path, budget=SimpleNamespace(seeds=[0, 1]),
                            untrained_in_context_folder=lambda key, method, seed: tmp_path / key / method / str(seed))
    runs = [{"method": "in_context", "seed": s, "mean_dice": d, "structures_alone_dice": a}
            for s, d, a in ((0, 0.4, 0.5), (1, 0.6, 0.7))]
    runs.append({"method": "finetune", "seed": 0, "mean_dice": 0.8})  # scored before the second score existed
    write_json_atomic({"runs": runs}, tmp_path / "compare" / "chaos_mr" / "results.json")
    for seed, alone in ((0, 0.02), (1, None)):
        write_json_atomic({"mean_dice": 0.01, "structures_alone": None if alone is None else {"mean_dice": alone}},
                          tmp_path / "chaos_mr" / "in_context" / str(seed) / "summary.json")
    header, rows = comparison_rows(curve)
    table = {row[0]: row[1:] for row in rows}
    assert header == ["method", "CHAOS MR 1-shot", "MS-CMRSeg 1-shot"]
    assert table["MASS in context (no training), threshold 0.5"] == ["50.0 (10.0)", "–"]
    assert table["MASS in context (no training), threshold 0.5, each structure's own claim"] == ["60.0 (10.0)", "–"]
    assert table["untrained network in context (no training), threshold 0.5, each structure's own claim"][0] == \
        "2.0 (0.0)"
    assert table["MASS finetuned"] == ["80.0 (0.0)", "–"]
    assert "MASS finetuned, each structure's own claim" not in table
    assert "MASS in context (no training), reference-calibrated thresholds, each structure's own claim" not in table


def test_a_workspace_written_before_a_budget_field_existed_still_matches_its_budget(tmp_path):
    stored = json.loads(json.dumps(asdict(CPU_BATCH16)))
    del stored["preset"]  # the field's default, as a workspace from before it holds it
    curve = LearningCurve(tmp_path, tmp_path, CPU_BATCH16, None)
    curve.save_state({"finished": [], "budget": stored})
    curve.run([], redo=False)
    stored_bf16 = {**json.loads(json.dumps(asdict(CPU_BATCH16_BF16))), "pretrain_minutes": 55.0}
    old = LearningCurve(tmp_path / "bf16", tmp_path, CPU_BATCH16_BF16, None)
    old.workspace.mkdir()
    old.save_state({"finished": [], "budget": stored_bf16})
    with pytest.raises(SystemExit, match="holds runs of budget"):  # a set field still tells budgets apart
        old.run([], redo=False)
