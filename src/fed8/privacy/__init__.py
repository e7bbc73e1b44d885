"""Client-level differential privacy, its accounting, and secure aggregation.

``dp`` (clipping, noise, adaptive clipping: pure functions), ``accounting`` (over
``dp-accounting``), ``plan`` (config -> noise and rounds), ``validate`` (models under
DP), ``secagg`` (secure aggregation; imports ``cryptography`` lazily).
"""

from .accounting import Accountant, PrivacySpec, calibrate_noise_multiplier, epsilon, max_rounds_within
from .dp import adaptive_clip_step, add_gaussian_noise, clip_by_norm, global_norm, split_noise_multiplier
from .plan import PrivacyPlan, make_plan
from .validate import check_model_for_dp, dp_problems

__all__ = [
    "Accountant", "PrivacyPlan", "PrivacySpec", "adaptive_clip_step", "add_gaussian_noise",
    "calibrate_noise_multiplier", "check_model_for_dp", "clip_by_norm", "dp_problems", "epsilon",
    "global_norm", "make_plan", "max_rounds_within", "split_noise_multiplier",
]
