"""What mass_demo prints under its table, that it plans with the demo preset, and how it sizes pretraining."""
from mass_nn.cli.demo import (DEMO_DATASET_ID, MAX_EPOCHS, MIN_EPOCHS, PRESET, TRAINER, _best_structures,
                              _budgeted_epochs, _pretraining_options, build_parser, epochs_for_budget)
from mass_nn.paths import MassPaths
from mass_nn.planning.planner_settings import load_preset
from mass_nn.training.options import save_run_config
from mass_nn.training.run_folder import run_folder


def test_best_structures_rank_nonzero_pretrained_dice():
    pretrained = {"liver": 0.505, "spleen": 0.0, "vertebrae": 0.315, "aorta": None, "psoas": 0.02, "ribs": 0.01}
    untrained = {"liver": 0.0, "vertebrae": 0.008, "psoas": 0.024}
    assert _best_structures(pretrained, untrained) == "liver 50.5 vs 0.0, vertebrae 31.5 vs 0.8, psoas 2.0 vs 2.4"
    assert _best_structures({"liver": 0.0, "aorta": None}, {}) == "none above 0"
    assert _best_structures({"liver": 0.3}, {}) == "liver 30.0 vs n/a"


def test_demo_defaults_are_the_measured_budget():
    args = build_parser().parse_args([])
    assert (args.preset, args.epochs, args.iters_per_epoch, args.pretrain_minutes) == (PRESET, None, 50, 5.0)
    assert build_parser().parse_args(["--epochs", "12"]).epochs == 12
    assert load_preset(PRESET)[1] == "MassPlansDemo"
    assert (MIN_EPOCHS, MAX_EPOCHS) == (10, 20)


def test_epochs_fill_the_budget_between_the_bounds():
    assert epochs_for_budget(0.27, 50, 5.0) == 20  # 22 fit; capped
    assert epochs_for_budget(0.40, 50, 5.0) == 15
    assert epochs_for_budget(0.50, 50, 5.0) == 12
    assert epochs_for_budget(0.60, 50, 5.0) == 10
    assert epochs_for_budget(2.0, 50, 5.0) == 10  # a slow machine still gets the 500-step run
    assert epochs_for_budget(0.40, 25, 5.0) == 20


def test_a_started_run_keeps_its_epochs_without_timing_again(tmp_path):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "results")
    folder = run_folder(paths.results, f"Dataset{DEMO_DATASET_ID}_PhantomCT", TRAINER, "MassPlansDemo", "3d_cpu")
    folder.mkdir(parents=True)
    save_run_config(_pretraining_options("MassPlansDemo", 17, 50), folder)
    args = build_parser().parse_args([])
    assert _budgeted_epochs(paths, args, "MassPlansDemo") == 17  # no data here: timing would have failed
