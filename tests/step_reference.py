"""One MASS training step on fixed inputs, reduced to numbers that can be compared across code versions.

The step's optimisations (joint conv1/shortcut convolution, the mask merge's weight gradient, multi-tensor LAMB)
must not change what is learned. `tests/data/step_reference_a3d41a4.json` holds this record computed with the
code of commit a3d41a4, before any of them; tests/test_step_equivalence.py recomputes it with the current code.
Regenerate (only when the network itself is meant to change):

    git worktree add /tmp/a3d41a4 a3d41a4
    python tests/step_reference.py --source /tmp/a3d41a4 --out tests/data/step_reference_a3d41a4.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAMPLED_VOXELS = 64


def step_record() -> dict:
    """Loss, sampled logits, per-tensor gradient norms and per-tensor weight change after clip + LAMB + EMA of
    the tiny in-context network (seed 0) on seeded inputs (batch 2, K = 3, 32³)."""
    import torch
    from mass_nn.networks.in_context.config import InContextNetworkConfig
    from mass_nn.networks.in_context.in_context_model import InContextSegmenter
    from mass_nn.training.losses import SegmentationLoss
    from mass_nn.training.optim.ema import ModelEMA
    from mass_nn.training.optim.lamb import Lamb
    torch.manual_seed(0)
    network = InContextSegmenter(InContextNetworkConfig.tiny())
    generator = torch.Generator().manual_seed(1)
    query, reference = torch.randn(2, 1, 32, 32, 32, generator=generator), torch.randn(2, 1, 32, 32, 32,
                                                                                        generator=generator)
    reference_masks = (torch.rand(2, 3, 32, 32, 32, generator=generator) > 0.6).float()
    query_masks = (torch.rand(2, 3, 32, 32, 32, generator=generator) > 0.6).float()
    task_weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    voxels = torch.randint(0, 2 * 3 * 32 ** 3, (SAMPLED_VOXELS,), generator=generator)
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    optimizer, ema = Lamb(network.parameters(), lr=2e-3, weight_decay=1e-5), ModelEMA(network, decay=0.99)
    logits = network(query, reference, reference_masks)
    loss, parts = SegmentationLoss()(logits, query_masks, task_weights)
    loss.backward()
    gradient_norms = {name: float(p.grad.norm()) for name, p in network.named_parameters()}
    total_norm = float(torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0))
    optimizer.step()
    ema.update(network)
    return {
        "loss": float(loss.detach()), "parts": parts, "sampled_logits": logits.detach().flatten()[voxels].tolist(),
        "gradient_norms": gradient_norms, "total_gradient_norm": total_norm,
        "weight_change_norms": {name: float((p.detach() - before[name]).norm())
                                for name, p in network.named_parameters()},
        "ema_sum": float(sum(float(t.double().sum()) for t in ema.module.state_dict().values())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="root of the mass_nn tree to compute the record with")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.source).resolve()))
    Path(args.out).write_text(json.dumps(step_record(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
