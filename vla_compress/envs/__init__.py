"""Simulation suites behind one interface: :func:`make_env`.

The ManiSkill3 suite "put the {colour} cube on the {colour} plate" has 25 tasks: 16 in-distribution
(``TASKS_IND``) for training and 9 held out (``TASKS_OOD``). Importing this package does not import
ManiSkill; :func:`make_env` does.
"""

from vla_compress.envs.tasks import ALL_TASKS, COLOUR_NAMES, TASKS_IND, TASKS_OOD, instruction, resolve_tasks
from vla_compress.envs.vector import SUITES, check_vulkan, env_info, make_env

__all__ = [
    "ALL_TASKS",
    "COLOUR_NAMES",
    "SUITES",
    "TASKS_IND",
    "TASKS_OOD",
    "check_vulkan",
    "env_info",
    "instruction",
    "make_env",
    "resolve_tasks",
]
