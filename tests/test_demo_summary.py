"""What mass_demo prints under its table, and that it plans with the demo preset."""
from mass_nn.cli.demo import PRESET, _best_structures, build_parser
from mass_nn.planning.planner_settings import load_preset


def test_best_structures_rank_nonzero_pretrained_dice():
    pretrained = {"liver": 0.505, "spleen": 0.0, "vertebrae": 0.315, "aorta": None, "psoas": 0.02, "ribs": 0.01}
    untrained = {"liver": 0.0, "vertebrae": 0.008, "psoas": 0.024}
    assert _best_structures(pretrained, untrained) == "liver 50.5 vs 0.0, vertebrae 31.5 vs 0.8, psoas 2.0 vs 2.4"
    assert _best_structures({"liver": 0.0, "aorta": None}, {}) == "none above 0"
    assert _best_structures({"liver": 0.3}, {}) == "liver 30.0 vs n/a"


def test_demo_defaults_are_the_measured_budget():
    args = build_parser().parse_args([])
    assert (args.preset, args.epochs, args.iters_per_epoch) == (PRESET, 10, 50)
    assert load_preset(PRESET)[1] == "MassPlansDemo"
