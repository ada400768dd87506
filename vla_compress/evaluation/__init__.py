"""Evaluation: success-rate rollouts on the simulation suite (IND / OOD)."""

from vla_compress.evaluation.profile import ProfileResult, profile
from vla_compress.evaluation.success import EvalResult, RandomPolicy, evaluate

__all__ = ["EvalResult", "ProfileResult", "RandomPolicy", "evaluate", "profile"]
