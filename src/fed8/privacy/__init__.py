"""Client-level differential privacy, its accounting, and secure aggregation.

``dp`` (clipping, noise, adaptive clipping: pure functions), ``accounting`` (over
``dp-accounting``), ``plan`` (config -> noise and rounds), ``validate`` (models under
DP), ``secagg`` (secure aggregation; imports ``cryptography`` lazily).
"""

from __future__ import annotations

from .._lazy import lazy_exports

__all__ = [
    "Accountant", "PrivacyPlan", "PrivacySpec", "adaptive_clip_step", "add_gaussian_noise",
    "calibrate_noise_multiplier", "check_model_for_dp", "clip_by_norm", "dp_problems", "epsilon",
    "global_norm", "make_plan", "max_rounds_within", "split_noise_multiplier",
]

_LAZY = {
    **dict.fromkeys(("Accountant", "PrivacySpec", "calibrate_noise_multiplier", "epsilon", "max_rounds_within"),
                    ".accounting"),
    **dict.fromkeys(("adaptive_clip_step", "add_gaussian_noise", "clip_by_norm", "global_norm",
                     "split_noise_multiplier"), ".dp"),
    **dict.fromkeys(("PrivacyPlan", "make_plan"), ".plan"),
    **dict.fromkeys(("check_model_for_dp", "dp_problems"), ".validate"),
}
# lazily: a SuperNode's secure-aggregation stages import fed8.privacy.secagg.protocol without torch
__getattr__ = lazy_exports(__name__, _LAZY)
