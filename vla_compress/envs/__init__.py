"""Simulation suites behind one interface: :func:`make_env`.

The ManiSkill3 suite "put the {colour} cube on the {colour} plate" has 25 tasks: 16 in-distribution
(``TASKS_IND``) for training and 9 held out (``TASKS_OOD``). Importing this package needs neither
gymnasium nor ManiSkill; the simulator names below are loaded on first use.
"""

from typing import Any

from vla_compress.envs.tasks import ALL_TASKS, COLOUR_NAMES, TASKS_IND, TASKS_OOD, instruction, resolve_tasks

_VECTOR_NAMES = ("REWARD_MODES", "SIM_BACKENDS", "SUITES", "check_vulkan", "env_info", "make_env")

__all__ = ["ALL_TASKS", "COLOUR_NAMES", "TASKS_IND", "TASKS_OOD", "instruction", "resolve_tasks", *_VECTOR_NAMES]


def __getattr__(name: str) -> Any:
    if name in _VECTOR_NAMES:
        from vla_compress.envs import vector

        return getattr(vector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
