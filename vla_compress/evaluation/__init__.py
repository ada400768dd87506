"""Evaluation: success-rate rollouts (ManiSkill IND / OOD, LIBERO) and memory / latency profiles."""

from vla_compress.evaluation.gripper_hysteresis import GripperHysteresis
from vla_compress.evaluation.profile import ProfileResult, profile
from vla_compress.evaluation.success import (
    EvalResult,
    RandomPolicy,
    evaluate,
    format_success,
    success_summary,
    two_proportion_test,
    wilson_interval,
)

__all__ = ["EvalResult", "GripperHysteresis", "ProfileResult", "RandomPolicy", "evaluate", "format_success", "profile",
           "success_summary", "two_proportion_test", "wilson_interval"]
