"""Times training steps or in-context inference with the mass_nn of a given source tree, in its own process.

`benchmarks/step_comparison.py` runs this file once with the current tree and once with an earlier commit
checked out into a temporary worktree, on the same saved batches, and compares the two. Only APIs that both
sides share are used here: TrainingOptions, the trainer registry, Trainer.resolve_data / fill_defaults / setup /
train_step, load_in_context_checkpoint, encode_reference_labels and SegmentationPredictor.

Usage: python benchmarks/step_runner.py SPEC.json  (SPEC: see `main`); prints one JSON line of seconds.
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import typing
from pathlib import Path


def _timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def time_train_steps(spec: dict) -> list[float]:
    """Seconds of `spec["steps"]` train_step calls of spec["trainer"] on the saved batches, after two untimed
    warm-up steps; the weights, optimiser and batch-level randomness are seeded identically on both sides.
    spec["precision"] (trees with mass_train --precision only) sets the step's arithmetic."""
    import torch
    from mass_nn.paths import MassPaths
    from mass_nn.registry import TRAINERS
    from mass_nn.training.optim.ema import ModelEMA
    from mass_nn.training.optim.schedules import build_lr_scheduler
    from mass_nn.training.options import TrainingOptions
    roots = roots_this_tree_reads(spec["paths"])
    paths = MassPaths(**{key: Path(value) for key, value in roots.items()})
    options = TrainingOptions(mode="PRETRAIN", datasets=[str(spec["dataset"])], trainer=spec["trainer"],
                              configuration=spec["configuration"], epochs=1, iters_per_epoch=spec["steps"] + 2,
                              device="cpu", num_workers=0, batch_size=spec.get("batch_size"),
                              **({"precision": spec["precision"]} if spec.get("precision") else {}))
    trainer = TRAINERS.get(spec["trainer"])(options, paths)
    trainer.resolve_data()
    trainer.fill_defaults()
    torch.manual_seed(0)
    trainer.setup()
    if hasattr(trainer, "resolve_learning_rate"):  # commits before the lr rule filled lr in fill_defaults
        trainer.resolve_learning_rate()
    trainer.model = trainer.network
    trainer.optimizer = trainer.build_optimizer()
    trainer.scheduler = build_lr_scheduler(trainer.optimizer, trainer.options.schedule,
                                           total_steps=spec["steps"] + 2, warmup_steps=0)
    trainer.ema = ModelEMA(trainer.network, decay=trainer.options.ema_decay)
    batches = torch.load(spec["batches"], weights_only=False)
    position = iter(range(10 ** 9))

    def step():
        index = next(position)
        torch.manual_seed(index)  # baselines draw their corruptions / masks from torch's generator
        trainer.train_step(batches[index % len(batches)])

    _timed(step, 2)
    return _timed(step, spec["steps"])


def time_in_context_query(spec: dict) -> list[float]:
    """Seconds of segmenting one preprocessed query (sliding window) under a reference encoded beforehand."""
    import numpy as np
    import torch
    from mass_nn.inference.model_loading import load_in_context_checkpoint
    from mass_nn.inference.predictor import InferenceSettings, SegmentationPredictor
    from mass_nn.inference.reference_encoding import encode_reference_labels
    from mass_nn.planning.plans import Plans
    network, _, _ = load_in_context_checkpoint(checkpoint_this_tree_reads(Path(spec["checkpoint"])))
    arrays = np.load(spec["arrays"])
    reference = (arrays["reference_image"], arrays["reference_label"])
    classes = [int(c) for c in spec["classes"]]
    with torch.no_grad():
        embedding = encode_reference_labels(network, [reference], classes, network.config.input_size_zyx)
    plans = plans_this_tree_reads(json.loads(Path(spec["plans"]).read_text()))
    # the same windows and tasks on both sides (the labels alone at overlap 0.5, every version's defaults until
    # context tasks and overlap 0.75 came in), so the ratio is the cost of the same computation
    predictor = SegmentationPredictor(network, embedding, classes, Plans.from_dict(plans), spec["configuration"],
                                      settings=InferenceSettings(overlap=0.5))
    query = arrays["query_image"]
    _timed(lambda: predictor.label_map(query), 1)
    return _timed(lambda: predictor.label_map(query), spec["steps"])


def _keep_known_fields(kind, value):
    """`value` (JSON) without the keys that the dataclass `kind` (or the dataclasses nested in it) does not have."""
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        return {key: _keep_known_fields(hints[key], item) for key, item in value.items() if key in names}
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is dict and isinstance(value, dict):
        return {key: _keep_known_fields(arguments[1], item) for key, item in value.items()}
    if origin is list and isinstance(value, list):
        return [_keep_known_fields(arguments[0], item) for item in value]
    nested = [a for a in arguments if dataclasses.is_dataclass(a)]  # Optional[SomePlan] and the like
    return _keep_known_fields(nested[0], value) if len(nested) == 1 and isinstance(value, dict) else value


def plans_this_tree_reads(plans: dict) -> dict:
    """`plans` without the fields this tree's Plans dataclasses do not know: fields added after an earlier commit,
    which its strict loader refuses. The earlier tree then reads the plans as it would have written them, provided
    the new fields hold what it did implicitly (true of `baseline_size` "cpu" for 3d_cpu and of the mask
    generation `channel` 0 of one-channel data, the cases these benchmarks use)."""
    from mass_nn.planning.plans import Plans
    return _keep_known_fields(Plans, plans)


def _first_class(name: str, modules: tuple[str, ...]):
    """Class `name` from the first of `modules` (the places it lived in over the commits) that this tree has."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"{name} is in none of {modules} of this tree")


def _scratch_folder(prefix: str) -> Path:
    """A new folder under the system's temporary directory, removed when this process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def checkpoint_this_tree_reads(path: Path) -> Path:
    """`path`, or a copy in a scratch folder whose meta leaves out what this tree's CheckpointMeta, network config
    and plans do not know (a checkpoint of the current tree read by an earlier commit)."""
    import torch
    meta_class = _first_class("CheckpointMeta", ("mass_nn.model.checkpoint", "mass_nn.training.checkpoint"))
    config_class = _first_class("InContextNetworkConfig", ("mass_nn.networks.in_context.config",
                                                           "mass_nn.networks.config"))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta_json"])
    readable = {**_keep_known_fields(meta_class, meta), "plans": plans_this_tree_reads(meta["plans"]),
                "network_config": _keep_known_fields(config_class, meta["network_config"])}
    if readable == meta:
        return path
    copy = _scratch_folder("checkpoint_for_earlier_tree_") / path.name
    torch.save({**payload, "meta_json": json.dumps(readable)}, copy)
    return copy.resolve()


def roots_this_tree_reads(roots: dict) -> dict:
    """The spec's roots, with the preprocessed root replaced by a shadow folder (links to every file, plans
    rewritten by `plans_this_tree_reads`) when a plans file there has fields this tree does not know."""
    preprocessed = Path(roots["preprocessed"])
    files = {path: json.loads(path.read_text()) for path in preprocessed.glob("*/*.json")}
    readable = {path: plans_this_tree_reads(plans) for path, plans in files.items() if "configurations" in plans}
    if all(readable[path] == files[path] for path in readable):
        return roots
    shadow = _scratch_folder("plans_for_earlier_tree_")
    for dataset in (d for d in preprocessed.iterdir() if d.is_dir()):
        (shadow / dataset.name).mkdir()
        for entry in dataset.iterdir():
            (shadow / dataset.name / entry.name).symlink_to(entry.resolve())
    for path, plans in readable.items():
        target = shadow / path.parent.name / path.name
        target.unlink()
        target.write_text(json.dumps(plans))
    return {**roots, "preprocessed": str(shadow.resolve())}


def keep_freed_memory_as_training_does(spec: dict) -> str:
    """What `Trainer.run` does about freed memory in trees that have mass_nn/memory_reuse.py (off when the spec
    says "memory_reuse": false); older trees leave malloc as it is."""
    import importlib.util
    if importlib.util.find_spec("mass_nn.memory_reuse") is None:
        return "not in this tree"
    if not spec.get("memory_reuse", True):
        return "off"
    from mass_nn.memory_reuse import keep_freed_memory
    return "on" if keep_freed_memory().enabled else "off"


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    # mass_nn must come from spec["source"]: the path goes first, and every mass_nn import of this file sits in
    # the functions above, which run only after this line
    sys.path.insert(0, spec["source"])
    import mass_nn
    import torch
    torch.set_num_threads(int(spec["threads"]))
    memory_reuse = keep_freed_memory_as_training_does(spec)
    kind = spec["kind"]
    seconds = time_train_steps(spec) if kind == "train_step" else time_in_context_query(spec)
    print(json.dumps({"seconds": seconds, "median": statistics.median(seconds), "threads": torch.get_num_threads(),
                      "memory_reuse": memory_reuse, "module": str(Path(mass_nn.__file__).resolve().parent)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
