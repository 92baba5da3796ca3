"""Patient-level, seeded splits."""
import json

from mass_nn.planning.splits import ensure_splits, make_splits

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_splits_partition_the_cases_and_are_seeded():
    cases = [f"c{i:02d}" for i in range(20)]
    splits = make_splits(cases, seed=7, fractions=FRACTIONS)
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == cases
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (16, 2, 2)
    assert make_splits(cases, seed=7, fractions=FRACTIONS) == splits
    assert make_splits(cases, seed=8, fractions=FRACTIONS) != splits


def test_cases_of_one_patient_share_a_split():
    cases = [f"p{p}_scan{s}" for p in range(6) for s in range(3)]
    patient_of_case = {c: c.split("_")[0] for c in cases}
    for seed in range(10):
        splits = make_splits(cases, seed, FRACTIONS, patient_of_case)
        for name in ("train", "val", "test"):
            patients = {patient_of_case[c] for c in splits[name]}
            others = {patient_of_case[c] for n in ("train", "val", "test") if n != name for c in splits[n]}
            assert not patients & others
        assert splits["val"] and splits["test"], "val and test get at least one patient"
        assert splits["patient_level"]


def test_existing_splits_are_kept_until_the_cases_change(tmp_path):
    path = tmp_path / "splits.json"
    first = ensure_splits(path, ["a", "b", "c", "d"], 1, FRACTIONS)
    edited = {**first, "note": "kept"}
    path.write_text(json.dumps(edited))
    assert ensure_splits(path, ["a", "b", "c", "d"], 1, FRACTIONS)["note"] == "kept"
    renewed = ensure_splits(path, ["a", "b", "c", "d", "e"], 1, FRACTIONS)
    assert "note" not in renewed and "e" in renewed["train"] + renewed["val"] + renewed["test"]
