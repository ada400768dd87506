"""The state-based scripted expert: correct labels from any state a learner can reach (DAgger's premise)."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress.data.expert import CARRY_Z, CLOSED, HOVER_Z, OPEN, PLACE_Z, ScriptedExpert, expert_target

CUBE = np.array([-0.12, 0.15, 0.02])
PLATE = np.array([0.05, -0.15, 0.005])
OPEN_WIDTH, HELD_WIDTH = 0.08, 0.04


def test_from_the_start_it_goes_above_the_cube_with_open_fingers():
    target, gripper = expert_target(np.array([0.0, 0.0, 0.17]), CUBE, PLATE, OPEN_WIDTH, False)
    np.testing.assert_allclose(target, [CUBE[0], CUBE[1], CUBE[2] + HOVER_Z])
    assert gripper == OPEN


def test_at_the_cube_it_closes_and_keeps_closing_while_the_fingers_move():
    assert expert_target(CUBE + [0.002, 0, 0], CUBE, PLATE, OPEN_WIDTH, False)[1] == CLOSED
    assert expert_target(CUBE + [0.01, 0, 0], CUBE, PLATE, 0.06, False)[1] == CLOSED  # half closed, cube nudged


def test_a_missed_grasp_reopens_and_goes_back_above_the_cube():
    target, gripper = expert_target(CUBE + [0.05, 0.0, 0.0], CUBE, PLATE, 0.0, False)  # closed on nothing
    assert gripper == OPEN
    np.testing.assert_allclose(target[:2], CUBE[:2])


def test_aligned_but_closed_fingers_wait_before_descending():
    tcp = CUBE + [0.0, 0.0, 0.05]
    target, gripper = expert_target(tcp, CUBE, PLATE, 0.02, False)
    assert gripper == OPEN and target[2] == pytest.approx(tcp[2])


def test_a_little_off_in_xy_it_corrects_while_descending_instead_of_climbing_back():
    tcp = CUBE + [0.015, 0.0, 0.08]  # 1.5 cm off, 8 cm above: inside the funnel over the cube
    target, gripper = expert_target(tcp, CUBE, PLATE, OPEN_WIDTH, False)
    assert gripper == OPEN and target[2] < tcp[2]
    np.testing.assert_allclose(target[:2], CUBE[:2])
    nearer, _ = expert_target(CUBE + [0.01, 0.0, 0.08], CUBE, PLATE, OPEN_WIDTH, False)
    assert CUBE[2] < nearer[2] < target[2]  # the nearer in xy, the lower the target
    held = np.array([PLATE[0] + 0.025, PLATE[1], 0.10])  # carrying, 2.5 cm off the plate centre
    target, gripper = expert_target(held, held, PLATE, HELD_WIDTH, True)
    assert gripper == CLOSED and PLACE_Z < target[2] < held[2]
    np.testing.assert_allclose(target[:2], PLATE[:2])
    low_off = np.array([PLATE[0] + 0.015, PLATE[1], PLACE_Z + 0.005])  # low and 1.5 cm off: release
    assert expert_target(low_off, low_off, PLATE, HELD_WIDTH, True)[1] == OPEN


def test_the_wrong_cube_held_is_dropped_for_the_target():
    tcp = np.array([0.05, 0.0, 0.12])  # fingers closed on the distractor, far from the target cube
    target, gripper = expert_target(tcp, CUBE, PLATE, HELD_WIDTH, False)
    assert gripper == OPEN
    np.testing.assert_allclose(target[:2], CUBE[:2])


def test_holding_the_cube_it_lifts_then_carries_then_releases_over_the_plate():
    low = np.array([CUBE[0], CUBE[1], 0.03])
    target, gripper = expert_target(low, low, PLATE, HELD_WIDTH, True)
    np.testing.assert_allclose(target, [low[0], low[1], CARRY_Z])  # straight up first
    assert gripper == CLOSED
    high = np.array([CUBE[0], CUBE[1], CARRY_Z])
    target, gripper = expert_target(high, high, PLATE, HELD_WIDTH, True)
    np.testing.assert_allclose(target, [PLATE[0], PLATE[1], CARRY_Z])
    assert gripper == CLOSED
    over = np.array([PLATE[0], PLATE[1], PLACE_Z + 0.002])
    assert expert_target(over, over, PLATE, HELD_WIDTH, True)[1] == OPEN


def test_a_cube_on_the_wrong_plate_is_picked_up_again():
    wrong_plate_cube = np.array([-0.12, -0.15, 0.03])  # resting on some other plate
    target, gripper = expert_target(np.array([-0.12, -0.15, 0.12]), wrong_plate_cube, PLATE, OPEN_WIDTH, False)
    assert gripper == OPEN and target[2] < 0.12  # aligned above it: descends to grasp


def test_placed_cube_means_retreat():
    cube = np.array([PLATE[0], PLATE[1], 0.03])
    target, gripper = expert_target(cube + [0, 0, 0.01], cube, PLATE, OPEN_WIDTH, False)
    assert gripper == OPEN and target[2] == pytest.approx(CARRY_Z)


def test_batched_actions_follow_the_per_state_rule():
    info = {"tcp_pos": np.stack([np.array([0.0, 0.0, 0.17]), CUBE]), "cube_pos": np.stack([CUBE, CUBE]),
            "plate_pos": np.stack([PLATE, PLATE]), "gripper_width": np.array([OPEN_WIDTH, OPEN_WIDTH]),
            "is_grasped": np.array([False, False])}
    actions = ScriptedExpert(2).act(info)
    assert actions.shape == (2, 7) and actions.dtype == np.float32
    assert actions[0, 6] == OPEN and actions[1, 6] == CLOSED
    assert np.all(np.abs(actions[:, :3]) <= 1.0) and np.all(actions[:, 3:6] == 0)


def _run_until_success(env, expert, info, steps: int, perturb=None) -> bool:
    for t in range(steps):
        if perturb is not None:
            perturb(t, info)
        _, _, _, _, info = env.step(expert.act(info))
        if bool(np.asarray(info["success"]).reshape(-1)[0]):
            return True
    return False


@pytest.mark.sim
def test_expert_recovers_in_the_simulator_from_perturbed_states():
    """A dropped cube, a cube moved away mid-grasp and a cube start on the wrong plate: each still succeeds."""
    import sapien

    from vla_compress.envs import make_env

    env = make_env(tasks=["red_cube_on_blue_plate"], num_envs=1)
    base = env.envs[0].unwrapped
    expert = ScriptedExpert(1)

    def teleport_cube(x: float, y: float, z: float = 0.02) -> None:
        base.cube.set_pose(sapien.Pose(p=[x, y, z]))
        base.cube.set_linear_velocity(np.zeros(3))

    def moved_mid_grasp(t, info):
        if bool(np.asarray(info["is_grasped"]).reshape(-1)[0]) and not moved:
            moved.append(t)
            teleport_cube(0.05, 0.15 if float(info["cube_pos"].reshape(-1)[1]) < 0 else -0.15)

    try:
        for case in ("dropped", "wrong_plate"):
            _, info = env.reset(seed=7, options={"tasks": ["red_cube_on_blue_plate"]})
            if case == "wrong_plate":
                p = base.distractor_plate.pose.p.reshape(-1).tolist()
                teleport_cube(p[0], p[1], 0.031)
            moved: list[int] = []
            perturb = moved_mid_grasp if case == "dropped" else None
            assert _run_until_success(env, expert, info, 150, perturb), case
            if case == "dropped":
                assert moved, "the expert never grasped the cube"
    finally:
        env.close()


@pytest.mark.sim
def test_a_reset_after_holding_the_cube_starts_ungrasped():
    """ManiSkill's grasp check reads the last step's contacts: the suite must not carry them into a reset."""
    from vla_compress.envs import make_env

    env = make_env(tasks=["red_cube_on_blue_plate"], num_envs=1)
    expert = ScriptedExpert(1)
    try:
        _, info = env.reset(seed=3, options={"tasks": ["red_cube_on_blue_plate"]})
        for _ in range(40):
            _, _, _, _, info = env.step(expert.act(info))
            if bool(np.asarray(info["is_grasped"]).reshape(-1)[0]):
                break
        assert bool(np.asarray(info["is_grasped"]).reshape(-1)[0]), "the expert never grasped the cube"
        _, info = env.reset(seed=4, options={"tasks": ["red_cube_on_blue_plate"]})
        assert not bool(np.asarray(info["is_grasped"]).reshape(-1)[0])
    finally:
        env.close()


@pytest.mark.parametrize("kwargs, name", [({"episodes_per_task": 0}, "episodes_per_task"),
                                          ({"num_workers": 0}, "num_workers"), ({"expert_mix": 1.5}, "expert_mix"),
                                          ({"tasks": ["no_such_task"]}, "task"), ({"decode": "fast"}, "decode"),
                                          ({"decode": "static"}, "decode='static' needs"), ({}, "policy")])
def test_collect_dagger_rejects_bad_input_before_any_work(tmp_path, kwargs, name):
    from vla_compress.data import collect_dagger

    with pytest.raises(ValueError, match=name):
        policy = object() if name == "policy" else (lambda images, instructions: None)
        collect_dagger(policy, tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_success_summary_counts_each_split_with_wilson_intervals():
    from vla_compress.envs import TASKS_IND, TASKS_OOD
    from vla_compress.evaluation import format_success, success_summary

    episodes = [{"task": TASKS_IND[0], "success": True}, {"task": TASKS_IND[1], "success": False},
                {"task": TASKS_OOD[0], "success": False}, {"task": "libero_task_0", "success": True}]
    summary = success_summary(episodes)
    assert (summary["ind"]["successes"], summary["ind"]["episodes"]) == (2, 3)  # LIBERO tasks count as IND
    assert (summary["ood"]["successes"], summary["ood"]["episodes"], summary["ood"]["rate"]) == (0, 1, 0.0)
    assert summary["ind"]["wilson95"] == pytest.approx([0.2077, 0.9385], abs=1e-4)
    assert format_success(296, 320) == "92.5 [89.1, 94.9] (296/320)" and format_success(0, 0) == "—"
    with pytest.raises(ValueError, match="successes must be in"):
        format_success(5, 3)


def test_two_proportion_test_matches_hand_values_and_rejects_bad_counts():
    from vla_compress.evaluation import two_proportion_test

    # 40/100 -> 60/100: pooled 0.5, spread sqrt(0.25 * 0.02) = 0.0707, z = 2.828, p = 0.00468
    assert two_proportion_test(40, 100, 60, 100) == pytest.approx((2.8284, 0.004678), abs=1e-4)
    z, p = two_proportion_test(60, 100, 40, 100)
    assert z == pytest.approx(-2.8284, abs=1e-4) and p == pytest.approx(0.004678, abs=1e-5)
    assert two_proportion_test(0, 10, 0, 20) == (0.0, 1.0)
    for bad in [(1, 0, 1, 1), (3, 2, 1, 1), (1, 1, -1, 1)]:
        with pytest.raises(ValueError, match="successes_"):
            two_proportion_test(*bad)


def test_wilson_interval_matches_hand_values_and_rejects_bad_counts():
    from vla_compress.evaluation.success import wilson_interval

    assert wilson_interval(0, 64) == pytest.approx((0.0, 0.0566), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in ((3, 2), (-1, 5), (0, -1)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(*bad)
