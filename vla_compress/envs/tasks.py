"""Task names, colours, instructions and the fixed IND / OOD split of the ManiSkill suite."""

from __future__ import annotations

COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.10, 0.10, 1.0),
    "green": (0.10, 0.65, 0.15, 1.0),
    "blue": (0.10, 0.25, 0.90, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Base-camera views, (eye, target, vertical fov in rad): both low and frontal, so gripper height and finger
# opening are visible (a top-down view hides both, and the first tiny-maniskill trained on it never
# learned when to descend or close). "workspace" is closer and framed on the object slots, so the
# objects fill more of the image.
CAMERAS: dict[str, tuple[list[float], list[float], float]] = {
    "front": ([0.45, 0.0, 0.38], [-0.1, 0.0, 0.04], 0.9),
    "workspace": ([0.30, 0.0, 0.36], [-0.06, 0.0, 0.02], 1.0),
}
# Views with a wrist-camera inset: the base view named here, with the hand camera's image pasted into its
# top-right corner (a square of WRIST_INSET_SHARE of the image side). From the base view alone whether the
# cube sits between the fingers is a few pixels; the wrist camera sees it close up, as real VLA setups do.
WRIST_INSET_VIEWS: dict[str, str] = {"workspace+wrist": "workspace"}
WRIST_INSET_SHARE = 0.375  # 48 px of 128: 3 x 3 patches of 16 px
CAMERAS.update({name: CAMERAS[base] for name, base in WRIST_INSET_VIEWS.items()})
DEFAULT_CAMERA = "workspace+wrist"  # the view the shipped tiny-maniskill was trained on
OPEN, CLOSED = 1.0, -1.0  # the gripper action (action[..., 6]) of every suite here: +1 open, -1 closed


def check_camera(camera: str) -> None:
    """Raise ValueError naming `camera` unless it is one of `CAMERAS`."""
    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {tuple(CAMERAS)}, got {camera!r}")


def task_name(cube: str, plate: str) -> str:
    """The task id for putting the `cube`-coloured cube on the `plate`-coloured plate."""
    return f"{cube}_cube_on_{plate}_plate"


ALL_TASKS: tuple[str, ...] = tuple(task_name(c, p) for c in COLOUR_NAMES for p in COLOUR_NAMES)

# 9 held-out (cube, plate) combinations; every colour still appears in IND as cube and as plate colour.
_OOD_PAIRS = (
    ("red", "green"), ("green", "blue"), ("blue", "yellow"), ("yellow", "purple"), ("purple", "red"),
    ("red", "yellow"), ("green", "purple"), ("blue", "red"), ("yellow", "green"),
)
TASKS_OOD: tuple[str, ...] = tuple(task_name(c, p) for c, p in _OOD_PAIRS)
TASKS_IND: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in TASKS_OOD)


def parse_task(task: str) -> tuple[str, str]:
    """(cube colour, plate colour) of a task id; ValueError for an unknown task."""
    if task not in ALL_TASKS:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {', '.join(ALL_TASKS)}")
    cube, rest = task.split("_cube_on_")
    return cube, rest.removesuffix("_plate")


def instruction(task: str) -> str:
    """The language instruction of a task, e.g. 'put the red cube on the blue plate'."""
    cube, plate = parse_task(task)
    return f"put the {cube} cube on the {plate} plate"


def resolve_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand 'ind' / 'ood' / 'all', a single task id, or a list of task ids, validating each."""
    groups = {"ind": TASKS_IND, "ood": TASKS_OOD, "all": ALL_TASKS}
    if isinstance(tasks, str):
        tasks = list(groups.get(tasks.lower(), [tasks]))
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks must not be empty; use 'ind', 'ood', 'all' or a list of task ids")
    for task in tasks:
        parse_task(task)
    return tasks
