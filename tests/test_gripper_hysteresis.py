"""`GripperHysteresis`: the gripper switches only after the policy asks for it `switch_after` steps running."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress import GripperHysteresis
from vla_compress.envs.tasks import CLOSED, OPEN


class ScriptedGripper:
    """A stub policy whose gripper command per row follows `commands[t]`; xyz carries the step index."""

    def __init__(self, commands: list[list[float]]):
        self.commands, self.t = commands, 0

    def predict_action(self, images, instructions, unnorm_key=None):
        action = np.zeros((len(instructions), 7), dtype=np.float32)
        action[:, 0] = self.t
        action[:, 6] = self.commands[self.t]
        self.t += 1
        return action


def run(policy, steps: int, rows: int = 1) -> np.ndarray:
    images = np.zeros((rows, 8, 8, 3), dtype=np.uint8)
    return np.stack([policy.predict_action(images, ["put the red cube on the blue plate"] * rows)
                     for _ in range(steps)])


def test_isolated_flips_are_held_back_and_a_repeated_ask_switches():
    c, o = CLOSED, OPEN
    asked = [o, o, c, o, c, c, c, o, c, o, o, c]
    held = [o, o, o, o, o, c, c, c, c, c, o, o]  # switch on the 2nd ask running; lone flips ignored
    actions = run(GripperHysteresis(ScriptedGripper([[a] for a in asked]), switch_after=2), len(asked))
    assert actions[:, 0, 6].tolist() == held
    assert actions[:, 0, 0].tolist() == list(range(len(asked)))  # the arm's action passes through


def test_rows_are_independent_and_the_policys_own_value_passes_when_it_agrees():
    asked = [[0.7, -0.2], [-0.9, 0.5], [-0.8, 0.4]]
    actions = run(GripperHysteresis(ScriptedGripper(asked), switch_after=2), 3, rows=2)
    assert actions[:, 0, 6].tolist() == pytest.approx([0.7, OPEN, -0.8])
    assert actions[:, 1, 6].tolist() == pytest.approx([-0.2, CLOSED, 0.4])


def test_reset_forgets_the_state_of_every_row_or_of_the_rows_named():
    asked = [[OPEN, OPEN], [CLOSED, CLOSED], [CLOSED, CLOSED]]
    policy = GripperHysteresis(ScriptedGripper(asked), switch_after=3)
    run(policy, 1, rows=2)
    policy.reset([1])
    second = run(policy, 1, rows=2)[0]
    assert second[:, 6].tolist() == [OPEN, CLOSED]  # row 1 takes the command as a first step
    policy.reset()
    assert run(policy, 1, rows=2)[0][:, 6].tolist() == [CLOSED, CLOSED]


def test_switch_after_one_is_the_policy_unchanged():
    asked = [[OPEN], [CLOSED], [OPEN], [CLOSED]]
    actions = run(GripperHysteresis(ScriptedGripper(asked), switch_after=1), 4)
    assert actions[:, 0, 6].tolist() == [OPEN, CLOSED, OPEN, CLOSED]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_switch_after_raises_naming_it(bad):
    with pytest.raises(ValueError, match="switch_after"):
        GripperHysteresis(ScriptedGripper([]), switch_after=bad)


def test_decode_needs_an_openvla_model():
    with pytest.raises(ValueError, match="decode='static' needs"):
        GripperHysteresis(ScriptedGripper([]), decode="static")


def test_record_episodes_resets_a_stateful_learner_before_each_batch(monkeypatch):
    import vla_compress.data.demos as demos

    class Envs:
        num_envs = 1

        def reset(self, seed, options):
            events.append("env reset")
            return {"image": np.zeros((1, 8, 8, 3)), "proprio": np.zeros((1, 2))}, {"success": np.zeros(1)}

        def step(self, action):
            return {"image": np.zeros((1, 8, 8, 3)), "proprio": np.zeros((1, 2))}, 0, 0, 0, {"success": np.ones(1)}

    class Expert:
        def act(self, info):
            return np.zeros((1, 7), dtype=np.float32)

    events: list[str] = []
    monkeypatch.setattr(demos, "privileged_state", lambda info, n: np.zeros((n, 3)))
    for _ in range(2):
        demos.record_episodes(Envs(), Expert(), [0], "t", lambda obs, info, a: events.append("act") or a, 3,
                              on_reset=lambda: events.append("policy reset"))
    assert events == ["env reset", "policy reset", "act"] * 2


def test_episode_reset_finds_a_stateful_policys_reset_only():
    from vla_compress.modeling.modeling_openvla import episode_reset

    policy = GripperHysteresis(ScriptedGripper([[OPEN]]))
    policy.predict_action(None, ["go"])
    episode_reset(policy)()
    assert policy._held is None
    assert episode_reset(ScriptedGripper([])) is None

    class NotCallable:
        reset = True

    assert episode_reset(NotCallable()) is None
