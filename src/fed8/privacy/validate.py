"""Model checks for differential privacy (after Opacus' ``ModuleValidator``).

Client-level DP bounds what one client's *update* can change, so layers are fine as
long as the update is computed from the client's own data only. BatchNorm is still
flagged: its running statistics are averaged outside the clipped update (they are not
parameters, so clipping does not bound them) and its batch statistics couple samples;
GroupNorm has neither problem.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

__all__ = ["check_model_for_dp", "dp_problems"]


def dp_problems(model: nn.Module) -> list[str]:
    """Every problem of ``model`` under DP, one line each (empty if none)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append(f"{name or 'model'} ({type(m).__name__}): BatchNorm mixes samples and its running "
                       "statistics are averaged without clipping or noise")
    return out


def check_model_for_dp(model: nn.Module, *, model_name: str = "") -> None:
    """Raise :class:`ConfigError` listing every problem, with the fix."""
    problems = dp_problems(model)
    if problems:
        fix = ("Set model.norm = \"group\" (GroupNorm) for resnet20" if model_name == "resnet20"
               else "Replace BatchNorm with GroupNorm (model.norm = \"group\" for resnet20)")
        raise ConfigError(
            f"privacy.dp is set but the model has {len(problems)} layer(s) that break its guarantee:\n  - "
            + "\n  - ".join(problems[:10]) + ("\n  - ..." if len(problems) > 10 else "") + f"\n{fix}.")
