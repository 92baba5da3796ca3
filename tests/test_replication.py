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
def test_budget_gives_every_pretraining_method_the_same_steps(quick):
    from benchmarks.replication import FULL, QUICK
    budget = QUICK if quick else FULL
    assert budget.pretrain_steps == budget.pretrain_epochs * budget.pretrain_iters_per_epoch > 0
    assert budget.threads_per_job * budget.parallel_jobs <= 2


def test_custom_budget_scales_epochs_and_refuses_mixing_with_quick():
    from benchmarks.replication import FULL, choose_budget
    custom = choose_budget(False, 40, None)
    assert (custom.name, custom.pretrain_steps, custom.finetune_steps) == (
        "custom", 40 * FULL.pretrain_iters_per_epoch, FULL.finetune_steps)
    assert choose_budget(False, None, None) is FULL
    with pytest.raises(SystemExit, match="--quick has its own budget"):
        choose_budget(True, 40, None)
    with pytest.raises(SystemExit, match="--finetune-epochs must be at least 1"):
        choose_budget(False, None, 0)


def test_workspace_of_another_budget_is_refused(tmp_path):
    from benchmarks.replication import FULL, QUICK, Replication
    Replication(tmp_path, tmp_path, FULL).mark_finished("datasets", 1.0)
    Replication(tmp_path, tmp_path, FULL).check_budget()  # same budget: resumes
    with pytest.raises(SystemExit, match="pass --workspace with a new folder"):
        Replication(tmp_path, tmp_path, QUICK).check_budget()


def test_stage_clock_counts_the_time_of_an_interrupted_attempt(tmp_path):
    import time

    from benchmarks.replication import FULL, Replication, StageClock
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
