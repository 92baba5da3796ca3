"""The replication benchmark's datasets (no evaluation patient in pretraining) and its table logic."""
from __future__ import annotations

import csv
import math

import pytest

from benchmarks.replication_datasets import (ORGAN_MR_SPLITS, SIZE_CUT_MM, build_replication_datasets, pool_images,
                                             sts_test_patients)
from benchmarks.replication_report import _rank_sentences, table_markdown
from tests.conftest import requires_shared_data, shared_data_dir


def test_sts_test_patients_cover_ct_and_pet_only_patients_and_are_seeded():
    patients = {f"STS_{i:03d}": ({"CT", "MR_T1", "PET"} if i < 8 else {"PET"}) for i in range(30)}
    chosen = sts_test_patients(patients)
    assert chosen == sts_test_patients(patients)
    with_ct = [p for p in chosen if "CT" in patients[p]]
    assert len(with_ct) == 3 and len(chosen) - len(with_ct) == round(22 / 3)


def test_table_marks_the_best_mean_and_reading_ranks_mass():
    rows = [("scratch", [[0.10, 0.20]]), ("MAE (FT)", [[0.30, 0.30]]), ("MASS (IC)", [[0.05, math.nan]]),
            ("MASS (FT)", [[0.40, 0.42]])]
    table = table_markdown(["PET 1-shot"], rows)
    cells = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    assert cells == {"scratch": "15.0 (5.0)", "MAE (FT)": "30.0 (0.0)", "MASS (IC)": "5.0 (0.0)",
                     "MASS (FT)": "**41.0 (1.0)**"}
    sentences = _rank_sentences(["PET 1-shot"], rows, "segmentation", "%")
    assert sentences[0] == "MASS is best in 1 of 1 segmentation columns."
    assert "best MASS (FT) 41.0" in sentences[1] and "MASS (IC) 5.0 (rank 4 of 4)" in sentences[1]
    assert "scratch 15.0" in sentences[1]


@requires_shared_data
def test_replication_datasets_keep_evaluation_patients_out_of_the_pool(tmp_path):
    datasets = build_replication_datasets(shared_data_dir(), tmp_path / "raw")
    test_cases = {c for key in ("sts_pet", "sts_ct", "brats_t1c", "totalseg_ct", "chaos_mr", "mscmrseg")
                  for c in datasets[key].splits["test"]}
    pooled = {c for key in ("pool_CT", "pool_MR", "pool_PET") for c in datasets[key].splits["train"]}
    assert test_cases and pooled
    for case in pooled:  # pool case ids start with the patient (STS_xxx_PET, brats_..._FLAIR, totalseg_example_ct)
        assert not any(case.startswith(t) for t in test_cases if not t.startswith("example_")), case
    assert "totalseg_example_ct" in pooled and not any("dicom" in c for c in pooled)
    for key, (_, num_test, num_val) in ORGAN_MR_SPLITS.items():
        splits = datasets[key].splits
        assert (len(splits["test"]), len(splits["val"])) == (num_test, num_val)
        assert set(splits["train"]) <= pooled and not (set(splits["test"]) | set(splits["val"])) & pooled
    assert not any("T1c" in c for c in pooled), "BRATS T1c is held out of pretraining"
    assert set(datasets["sts_ct"].splits["test"]) <= set(datasets["sts_pet"].splits["test"])
    with open(tmp_path / "raw" / datasets["sts_pet"].folder_name / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["size_class"] for r in rows} == {"gt10cm", "le10cm"} and SIZE_CUT_MM == 100.0
    assert len(rows) == len(datasets["sts_pet"].splits["train"]) + len(datasets["sts_pet"].splits["test"])


@requires_shared_data
def test_pool_images_exist_and_exclude_given_patients():
    images = pool_images(shared_data_dir(), {"STS_001"})
    assert all(path.exists() for modality in images.values() for _, path in modality)
    assert not any(case.startswith("STS_001_") for modality in images.values() for case, _ in modality)
    assert {m: bool(v) for m, v in images.items()} == {"CT": True, "MR": True, "PET": True}


@pytest.mark.parametrize("quick", [True, False])
def test_budgets_give_every_pretraining_method_the_same_minutes(quick):
    from benchmarks.replication_budget import FULL, QUICK
    budget = QUICK if quick else FULL
    assert budget.by_minutes and budget.pretrain_minutes > 0 and budget.bf16_where_native
    assert budget.threads_per_job * budget.parallel_jobs <= 2
    assert budget.pretrain_precision() in ("bf16", "fp32")


def test_custom_budget_takes_minutes_or_steps_and_refuses_mixing():
    from benchmarks.replication_budget import FULL, choose_budget
    assert choose_budget(False, None, None, None) is FULL
    minutes = choose_budget(False, None, 40, None)
    assert (minutes.name, minutes.pretrain_minutes, minutes.finetune_steps) == ("custom", 40, FULL.finetune_steps)
    steps = choose_budget(False, 40, None, 3)
    assert (steps.by_minutes, steps.pretrain_steps, steps.finetune_epochs) == (
        False, 40 * FULL.pretrain_iters_per_epoch, 3)
    assert choose_budget(False, None, None, 3).pretrain_minutes == FULL.pretrain_minutes
    with pytest.raises(SystemExit, match="--quick has its own budget"):
        choose_budget(True, 40, None, None)
    with pytest.raises(SystemExit, match="give one of them"):
        choose_budget(False, 40, 20, None)
    with pytest.raises(SystemExit, match="--finetune-epochs must be positive"):
        choose_budget(False, None, None, 0)
    with pytest.raises(SystemExit, match="--pretrain-minutes must be positive"):
        choose_budget(False, None, -1, None)


def test_probe_step_time_and_the_schedule_it_fits():
    from benchmarks.replication_budget import probe_step_seconds, schedule_for_minutes
    records = [{"epoch_seconds": 30.0}, {"epoch_seconds": 10.0}, {"epoch_seconds": 12.0}, {"epoch_seconds": 50.0}]
    assert probe_step_seconds(records, 5) == pytest.approx(12.0 / 5)  # the warm-up epoch is left out
    assert schedule_for_minutes(2.5, 15.0) == (15, 24)  # 360 steps of MASS in epochs of a minute
    assert schedule_for_minutes(0.04, 15.0) == (15, 1500)  # a 40 ms step: 22,500 steps, still minute-long epochs
    assert schedule_for_minutes(0.1, 0.3) == (4, 45)  # a token budget: epochs of a quarter of its minutes
    assert schedule_for_minutes(100.0, 1.0) == (1, 1)  # at least one step
    with pytest.raises(SystemExit, match="probe run wrote 1 epoch record"):
        probe_step_seconds(records[:1], 5)


def test_pretraining_commands_of_a_budget_in_minutes(tmp_path):
    from benchmarks.replication import Replication
    from benchmarks.replication_budget import FULL
    replication = Replication(tmp_path, tmp_path, FULL)
    replication.update_state(lambda state: state.update(
        datasets={"pool_CT": "Dataset711_A", "pool_MR": "Dataset712_B", "pool_PET": "Dataset713_C"},
        pretrain_sizing={m: {"probe_step_seconds": 1.0, "iters": i, "precision": "bf16", "threads": 2, "epochs": e}
                         for m, i, e in (("MASS", 120, 4), ("MAE", 60, 17))}))
    mass, mae = replication.pretraining_job("MASS"), replication.pretraining_job("MAE")
    flags = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    assert [flags(mass.argv, f) for f in ("--epochs", "--iters-per-epoch", "--batch-size", "--lr-scaling",
                                          "--precision", "--max-minutes", "-d")] == [
        "4", "120", "8", "none", "bf16", "15", "Dataset711_A"]
    assert "--batch-size" not in mae.argv and "--masks" not in mae.argv
    assert [flags(mae.argv, f) for f in ("--epochs", "--iters-per-epoch", "--precision")] == ["17", "60", "bf16"]
    assert mass.done == replication.checkpoint("MASS") and mass.done.parent.name.endswith("__repl_full")
    assert replication.checkpoint("scratch") is None


def test_workspace_of_another_budget_is_refused(tmp_path):
    from benchmarks.replication import Replication
    from benchmarks.replication_budget import FULL, QUICK
    Replication(tmp_path, tmp_path, FULL).mark_finished("datasets", 1.0)
    Replication(tmp_path, tmp_path, FULL).check_budget()  # same budget: resumes
    with pytest.raises(SystemExit, match="pass --workspace with a new folder"):
        Replication(tmp_path, tmp_path, QUICK).check_budget()


def test_stage_clock_counts_the_time_of_an_interrupted_attempt(tmp_path):
    import time

    from benchmarks.replication import Replication, StageClock
    from benchmarks.replication_budget import FULL
    replication = Replication(tmp_path, tmp_path, FULL)
    with StageClock(replication, "fewshot", every_s=0.02):  # an attempt that ends without finishing the stage
        time.sleep(0.15)
    saved = replication.state()["elapsed"]["fewshot"]
    assert saved >= 0.1
    with StageClock(replication, "fewshot", every_s=0.02) as resumed:
        assert resumed.seconds() >= saved
    replication.mark_finished("fewshot", resumed.seconds())
    state = replication.state()
    assert state["finished"]["fewshot"]["seconds"] >= round(saved, 1) and "fewshot" not in state["elapsed"]
