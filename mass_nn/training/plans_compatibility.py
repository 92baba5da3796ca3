"""Which differences between two plans make a model trained on one unusable on the other.

Used when a run is continued (everything that shapes the data or the network must be equal) and when a
checkpoint is loaded for another dataset (grid, channels and normalisation scheme must agree).
"""
from __future__ import annotations

from mass_nn.planning.plans import Plans
from mass_nn.schema import to_dict


def _channel_summary(plans: Plans, with_statistics: bool) -> list[dict]:
    keys = ("name", "modality", "normalization") + (("clip_lower", "clip_upper", "mean", "std") if with_statistics
                                                   else ())
    return [{k: getattr(c, k) for k in keys} for c in plans.channels]


def plans_differences(reference: Plans, reference_configuration: str, candidate: Plans,
                      candidate_configuration: str, same_dataset: bool = True) -> list[str]:
    """Human-readable differences ("what: reference vs candidate"); empty when compatible.

    same_dataset=True also compares the patch, the network and the per-dataset normalisation statistics.
    """
    ref = reference.configuration(reference_configuration)
    cand = candidate.configuration(candidate_configuration)
    checks = [("target spacing (mm, zyx)", ref.target_spacing_zyx_mm, cand.target_spacing_zyx_mm),
              ("number of input channels", len(reference.channels), len(candidate.channels)),
              ("channels (name, modality, normalisation)", _channel_summary(reference, same_dataset),
               _channel_summary(candidate, same_dataset))]
    if same_dataset:
        checks += [("patch size (zyx)", ref.patch_size_zyx, cand.patch_size_zyx),
                   ("network", to_dict(ref.network), to_dict(cand.network))]
    return [f"{what}: {a} vs {b}" for what, a, b in checks if a != b]
