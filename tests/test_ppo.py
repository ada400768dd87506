"""PPO: GAE and losses against hand-worked numbers; training, resume and failure handling on a fake env."""

from __future__ import annotations

import math
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from vla_compress import load_vla
from vla_compress.recovery.checkpoint import latest_checkpoint
from vla_compress.recovery.metrics import read_metrics
from vla_compress.recovery.ppo import PPOConfig, compute_gae, group_advantages, ppo_losses, train_ppo
from vla_compress.recovery.value_head import VALUE_HEAD_FILE

torch.set_num_threads(1)


# ---- fake env: random images and rewards, fixed-length episodes ------------------------------------------
class FakeTaskEnv(gym.Env):
    """16x16 random images, reward 0.1 or 1.0 at random, one instruction, truncation after `episode_steps`."""

    crash_on_step: int | None = None  # class-wide: raise once at this global step count
    nan_reward_after: int | None = None  # class-wide: NaN rewards once this many resets happened
    zero_rewards = False  # class-wide: every reward is 0 (a rollout without any policy signal)
    steps = 0
    resets = 0
    reset_seeds: list[int | None] = []

    def __init__(self, episode_steps: int = 4) -> None:
        self.episode_steps = episode_steps
        self.observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.t = 0

    def _obs(self) -> dict:
        return {"image": self.np_random.integers(0, 256, (16, 16, 3), dtype=np.uint8)}

    def _info(self) -> dict:
        return {"instruction": "put the red cube on the blue plate", "success": bool(self.np_random.random() < 0.3)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        FakeTaskEnv.resets += 1
        FakeTaskEnv.reset_seeds.append(seed)
        self.t = 0
        return self._obs(), self._info()

    def step(self, action):
        FakeTaskEnv.steps += 1
        if FakeTaskEnv.crash_on_step is not None and FakeTaskEnv.steps == FakeTaskEnv.crash_on_step:
            raise EOFError("worker died")
        self.t += 1
        reward = float(self.np_random.choice([0.0, 0.1, 1.0]))
        if FakeTaskEnv.nan_reward_after is not None and FakeTaskEnv.resets > FakeTaskEnv.nan_reward_after:
            reward = float("nan")
        if FakeTaskEnv.zero_rewards:
            reward = 0.0
        return self._obs(), reward, False, self.t >= self.episode_steps, self._info()


def fake_factory(num_envs: int = 2, episode_steps: int = 4):
    def factory(seed: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([lambda: FakeTaskEnv(episode_steps) for _ in range(num_envs)])

    return factory


class BanditEnv(FakeTaskEnv):
    """Reward 1.0 exactly when the first action dimension is above 0.3: PPO must learn to raise it."""

    def step(self, action):
        self.t += 1
        reward = float(action[0] > 0.3)
        return self._obs(), reward, False, self.t >= self.episode_steps, self._info()


@pytest.fixture(autouse=True)
def _reset_fake_env():
    FakeTaskEnv.crash_on_step, FakeTaskEnv.nan_reward_after, FakeTaskEnv.zero_rewards = None, None, False
    FakeTaskEnv.steps = FakeTaskEnv.resets = 0
    FakeTaskEnv.reset_seeds = []
    yield


def tiny_config(tmp_path, name: str = "run", updates: int = 1, **kwargs) -> PPOConfig:
    settings = {"num_envs": 2, "episode_steps": 4, "total_env_steps": 8 * updates, "minibatch_size": 4,
                    "env_factory": fake_factory(2, 4), "device": "cpu", "seed": 0, "output_dir": tmp_path / name,
                    "checkpoint_every": 1, "progress": False}
    settings.update(kwargs)
    return PPOConfig(**settings)


# ---- GAE -----------------------------------------------------------------------------------------------------
def test_gae_hand_worked_with_done_in_the_middle():
    # obs 2 starts a new episode (dones[2] = 1): no bootstrapping from step 1 into step 2
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    advantages, returns = compute_gae(rewards, values, dones, torch.tensor([2.0]), torch.tensor([0.0]),
                                      gamma=0.5, lam=0.5)
    # t=2: 3 + 0.5*2 - 1.5 = 2.5 | t=1: 2 - 1 = 1.0 | t=0: (1 + 0.5*1 - 0.5) + 0.25*1.0 = 1.25
    torch.testing.assert_close(advantages, torch.tensor([[1.25], [1.0], [2.5]]))
    torch.testing.assert_close(returns, torch.tensor([[1.75], [2.0], [4.0]]))

    advantages, _ = compute_gae(rewards, values, dones, torch.tensor([2.0]), torch.tensor([1.0]), 0.5, 0.5)
    assert advantages[2, 0].item() == pytest.approx(1.5)  # next_done: 3 - 1.5, no bootstrap


# ---- losses -----------------------------------------------------------------------------------------------
def test_ppo_losses_hand_made_batch():
    ratio = torch.tensor([1.5, 0.5, 1.1])
    advantages = torch.tensor([1.0, -1.0, 2.0])
    old_log_probs = torch.zeros(3)
    new_values, old_values = torch.tensor([0.5, -0.1, 3.0]), torch.zeros(3)
    returns = torch.tensor([1.0, 0.0, 0.0])
    pg_loss, v_loss, entropy, approx_kl, clipfrac = ppo_losses(
        ratio.log(), old_log_probs, advantages, new_values, old_values, returns, torch.tensor([2.0, 4.0, 6.0]),
        clip_coef=0.2, vf_clip_coef=0.2, huber_delta=1.0)
    # ratio 1.5 with A>0 clipped to 1.2; ratio 0.5 with A<0 clipped to 0.8; ratio 1.1 inside the clip
    assert pg_loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    expected_kl = np.mean([(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)])
    assert approx_kl.item() == pytest.approx(expected_kl)
    # values: clipped to [0.2, -0.1, 0.2]; Huber(new) = [0.125, 0.005, 2.5], Huber(clipped) = [0.32, 0.005, 0.02]
    assert v_loss.item() == pytest.approx((0.32 + 0.005 + 2.5) / 3)
    assert entropy.item() == pytest.approx(4.0)


def test_ppo_losses_ratio_one_gives_plain_policy_gradient():
    advantages = torch.tensor([1.0, -2.0])
    log_probs = torch.tensor([-3.0, -4.0], requires_grad=True)
    pg_loss, _, _, approx_kl, clipfrac = ppo_losses(log_probs, log_probs.detach(), advantages, torch.zeros(2),
                                                    torch.zeros(2), torch.zeros(2), torch.zeros(2))
    pg_loss.backward()
    torch.testing.assert_close(log_probs.grad, -advantages / 2)
    assert approx_kl.item() == 0 and clipfrac.item() == 0


def test_group_advantages_hand_worked():
    """Two episode rounds of 4 envs in groups of 2, 3 steps per episode: each step of an episode gets its
    return minus its group's mean; a group whose tries ended alike gets zeros."""
    returns = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                            [2.0, 0.5, 3.0, 3.0]])
    advantages = group_advantages(returns, group_size=2, episode_steps=3)
    expected_rounds = torch.tensor([[0.5, -0.5, 0.0, 0.0],
                                    [0.75, -0.75, 0.0, 0.0]])
    assert advantages.shape == (6, 4)
    torch.testing.assert_close(advantages, expected_rounds.repeat_interleave(3, dim=0))
    with pytest.raises(ValueError, match="group_size must be >= 1 and divide the number of envs"):
        group_advantages(returns, group_size=3, episode_steps=3)


def test_group_mode_resets_each_group_from_one_seed(tmp_path):
    """Group members share a reset seed, so they start alike; on the fake env (rewards drawn from the seeded
    RNG, whatever the action) their returns are equal too: no group carries signal and the policy stays."""
    before = _params(load_vla("tiny"))
    model = train_ppo(load_vla("tiny"), tiny_config(tmp_path, num_envs=4, total_env_steps=16,
                                                    env_factory=fake_factory(4, 4), advantage="group",
                                                    group_size=2, critic_trains_backbone=False))
    first, second = FakeTaskEnv.reset_seeds[:2], FakeTaskEnv.reset_seeds[2:4]
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]
    # PPO's layouts lie above every evaluation and demonstration seed (evaluate: seed * 1_000_003 + task * 1000
    # + k; demos and DAgger: seed * 1_000_000 + task * 10_000 + k; seeds below 1000)
    from vla_compress.recovery.ppo import EPISODE_SEEDS

    assert all(EPISODE_SEEDS <= s < 2**31 for s in first + second)
    assert EPISODE_SEEDS > 999 * 1_000_003 + 25 * 1000 and EPISODE_SEEDS > 999 * 1_000_000 + 25 * 10_000
    row = read_metrics(tmp_path / "run")[-1]
    assert row["charts/informative_groups"] == 0.0 and row["charts/policy_updated"] == 0.0
    for key, value in _params(model).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


# ---- config validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"total_env_steps": -1}, "total_env_steps"),
    ({"minibatch_size": 9}, "larger than the rollout buffer"),
    ({"rollout_steps": 6}, "multiple of episode_steps"),
    ({"env_factory": None, "tasks": ["no_such_task"]}, "unknown task"),
    ({"env_factory": None, "env": "atari"}, "unknown env"),
    ({"gamma": 1.5}, "gamma"),
    ({"device": "tpu"}, "device"),
    ({"critic_warmup_updates": -1}, "critic_warmup_updates"),
    ({"target_kl": 0.0}, "target_kl"),
    ({"advantage": "vtrace"}, "advantage must be one of"),
    ({"advantage": "group", "group_size": 3}, "group_size"),
    ({"advantage": "group", "group_size": 1}, "group_size"),
    ({"sim_backend": "mujoco"}, "sim_backend must be one of"),
    ({"env_factory": None, "advantage": "group", "group_size": 2, "sim_backend": "physx_cuda"},
     "per-env reset seeds"),
    ({"learning_rate": float("inf")}, r"learning_rate must be a finite number > 0, got inf"),
    ({"critic_learning_rate": float("nan")}, r"critic_learning_rate must be a finite number > 0, got nan"),
    ({"max_grad_norm": float("nan")}, r"max_grad_norm must be a number > 0, got nan"),
    ({"max_grad_norm": -1.0}, r"max_grad_norm must be a number > 0, got -1.0"),
    ({"total_env_steps": 8.5}, r"total_env_steps must be an int >= 1, got 8.5"),
    ({"num_envs": True}, r"num_envs must be an int >= 1, got True"),
    ({"checkpoint_every": 1.5}, r"checkpoint_every must be an int >= 0"),
])
def test_bad_config_raises_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, **kwargs).validate()


def test_default_env_factory_passes_the_env_settings(monkeypatch):
    from vla_compress import envs
    from vla_compress.recovery.env_runner import default_env_factory

    calls = []
    monkeypatch.setattr(envs, "make_env", lambda **kwargs: calls.append(kwargs))
    config = PPOConfig(tasks=["red_cube_on_blue_plate"], num_envs=4, episode_steps=20, reward_mode="sparse",
                       sim_backend="physx_cuda")
    default_env_factory(config, image_size=64)(7)
    assert calls == [{"suite": "maniskill", "tasks": ["red_cube_on_blue_plate"], "num_envs": 4, "image_size": 64,
                      "seed": 7, "max_episode_steps": 20, "reward_mode": "sparse", "sim_backend": "physx_cuda"}]


def test_output_dir_that_is_a_file_raises(tmp_path):
    model = load_vla("tiny")
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match="output_dir"):
        train_ppo(model, tiny_config(tmp_path, output_dir=tmp_path / "taken"))
    assert FakeTaskEnv.resets == 0


# ---- training on the fake env --------------------------------------------------------------------------
def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = train_ppo(load_vla("tiny"), tiny_config(tmp_path, "straight", updates=2))
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "resumed", updates=1))
    resumed = train_ppo(load_vla("tiny"), tiny_config(tmp_path, "resumed", updates=2, resume=True))

    before, after_straight, after_resumed = _params(load_vla("tiny")), _params(straight), _params(resumed)
    assert any(not torch.equal(before[k], after_straight[k]) for k in before), "PPO did not change the model"
    for key in after_straight:
        torch.testing.assert_close(after_resumed[key], after_straight[key], rtol=0, atol=1e-6)
    checkpoint = latest_checkpoint(tmp_path / "resumed")
    assert checkpoint.name == "step_00000016" and (checkpoint / VALUE_HEAD_FILE).exists()
    rows = read_metrics(tmp_path / "resumed")
    assert [row["step"] for row in rows] == [8, 16]
    for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "charts/episodic_return",
                "charts/success_rate", "charts/SPS"):
        assert key in rows[-1]
    last = rows[-1]  # where an update's time went: decoding and env steps within the rollout, then the update
    assert 0 < last["time/policy_s"] and 0 < last["time/env_s"]
    assert last["time/policy_s"] + last["time/env_s"] <= last["time/rollout_s"] and last["time/update_s"] > 0
    with pytest.raises(ValueError, match="resume=True"):  # an existing run is never overwritten silently
        tiny_config(tmp_path, "resumed", updates=2).validate()


def test_static_decode_rollouts_train_as_the_dynamic_ones(tmp_path):
    """`decode="static"` samples the same tokens as the default path (same generator), so PPO takes the same
    update, up to float rounding far below the update itself."""
    from vla_compress.recovery.rollout import act

    model = load_vla("tiny")
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    instructions = ["put the red cube on the blue plate", "stack it", "put the green cube on the red plate"]
    sampled = {decode: act(model, _ValueOfZeros(), images, instructions, 1.0,
                           torch.Generator().manual_seed(5), torch.device("cpu"), decode)
               for decode in ("dynamic", "static")}
    assert torch.equal(sampled["static"]["action_indices"], sampled["dynamic"]["action_indices"])
    torch.testing.assert_close(sampled["static"]["log_probs"], sampled["dynamic"]["log_probs"], rtol=0, atol=1e-4)

    before = _params(load_vla("tiny"))
    dynamic = _params(train_ppo(load_vla("tiny"), tiny_config(tmp_path, "dynamic", updates=2)))
    static = _params(train_ppo(load_vla("tiny"), tiny_config(tmp_path, "static", updates=2, decode="static")))
    moved = max((dynamic[k] - before[k]).abs().max().item() for k in before)
    apart = max((static[k] - dynamic[k]).abs().max().item() for k in before)
    assert moved > 1e-4 and apart < 0.2 * moved, (moved, apart)
    allowed = r"allowed: \('dynamic', 'static', 'compiled', 'frozen'\)"
    with pytest.raises(ValueError, match=r"decode='jit' is unknown; " + allowed):
        tiny_config(tmp_path, "bad", decode="jit").validate()


class _ValueOfZeros(torch.nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.new_zeros(features.shape[0])


def test_resume_refuses_a_different_run(tmp_path):
    train_ppo(load_vla("tiny"), tiny_config(tmp_path))
    with pytest.raises(ValueError, match=r"different run; differing: the starting model .*new output_dir"):
        train_ppo(load_vla("tiny", seed=1), tiny_config(tmp_path, resume=True))
    with pytest.raises(ValueError, match=r"differing: learning_rate \(0.0001 in the checkpoint, 0.001 now\)"):
        train_ppo(load_vla("tiny"), tiny_config(tmp_path, resume=True, learning_rate=1e-3))
    assert FakeTaskEnv.resets == 2  # only the first run's episode: the refusals came before any rollout


def test_rollout_without_reward_trains_the_critic_only(tmp_path):
    FakeTaskEnv.zero_rewards = True
    train_ppo(load_vla("tiny"), tiny_config(tmp_path))
    row = read_metrics(tmp_path / "run")[-1]  # zero advantages: the clipped policy loss is exactly 0
    assert row["charts/policy_updated"] == 0.0 and row["losses/policy_loss"] == 0.0 and row["losses/value_loss"] > 0
    # with the critic kept off the backbone, a reward-free update leaves the VLA untouched, also after a
    # rewarded update has given Adam momentum
    FakeTaskEnv.zero_rewards = False
    rewarded = train_ppo(load_vla("tiny"), tiny_config(tmp_path, "detached", critic_trains_backbone=False))
    before = _params(rewarded)
    FakeTaskEnv.zero_rewards = True
    after = _params(train_ppo(rewarded, tiny_config(tmp_path, "detached", updates=2, resume=True,
                                                    critic_trains_backbone=False)))
    assert read_metrics(tmp_path / "detached")[-1]["charts/policy_updated"] == 0.0
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    with_reward = tmp_path / "with_reward"
    FakeTaskEnv.zero_rewards = False
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "with_reward"))
    assert read_metrics(with_reward)[-1]["charts/policy_updated"] == 1.0


def test_critic_warmup_updates_train_the_critic_only(tmp_path):
    before = _params(load_vla("tiny"))
    model = train_ppo(load_vla("tiny"), tiny_config(tmp_path, updates=3, critic_warmup_updates=2,
                                                    critic_trains_backbone=False))
    assert [row["charts/policy_updated"] for row in read_metrics(tmp_path / "run")] == [0.0, 0.0, 1.0]
    assert any(not torch.equal(before[k], v) for k, v in _params(model).items()), "the policy never moved"


def test_target_kl_stops_the_update_early(tmp_path):
    """8 minibatch steps (2 per epoch x 4 epochs) without target_kl; with a tiny one, the first step (ratio 1,
    KL 0) is taken and the second minibatch, already past 1.5 x target_kl, stops the update."""
    settings = {"update_epochs": 4, "learning_rate": 1e-2, "checkpoint_every": 0}
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "full", **settings))
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "stopped", target_kl=1e-6, **settings))
    full, stopped = read_metrics(tmp_path / "full")[-1], read_metrics(tmp_path / "stopped")[-1]
    assert full["charts/optimizer_steps"] == 8.0 and stopped["charts/optimizer_steps"] == 1.0
    assert stopped["losses/approx_kl"] > 1e-6


def _rewarded_mass(model, images: np.ndarray) -> float:
    """Mean probability (temperature 1) that the first action token decodes to a value above 0.3."""
    all_bins = torch.arange(256)[:, None].repeat(1, 7)
    rewarded = torch.as_tensor(model.decode_actions(all_bins, normalized=True)[:, 0] > 0.3)
    prompt = model.processor.tokenize(["put the red cube on the blue plate"] * len(images))
    batch = model.append_action_tokens(prompt, torch.zeros(len(images), 7, dtype=torch.long))
    with torch.no_grad():
        logits = model.action_forward(model.processor.pixel_values(images), batch["input_ids"],
                                      batch["attention_mask"]).action_logits[:, 0].float()
    return float(torch.softmax(logits, dim=-1)[:, rewarded].sum(-1).mean())


@pytest.mark.parametrize("advantage", ["gae", "group"])
def test_ppo_learns_a_bandit(tmp_path, advantage):
    """End to end on the real model: the probability of the rewarded actions rises (sign and pairing of
    actions, log-probs and advantages are right), with the critic's GAE and with the group baseline."""
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    before = _rewarded_mass(load_vla("tiny"), images)

    def factory(seed: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([lambda: BanditEnv(4) for _ in range(8)])

    model = train_ppo(load_vla("tiny"), tiny_config(
        tmp_path, num_envs=8, total_env_steps=32 * 20, minibatch_size=16, env_factory=factory,
        learning_rate=1e-3, gamma=0.0, gae_lambda=0.0, checkpoint_every=0, advantage=advantage))
    after = _rewarded_mass(model, images)
    # measured: gae 0.36 -> 0.80; group 0.36 -> 0.60 and, with other env draws (PPO's reset seeds moved to
    # EPISODE_SEEDS), 0.36 -> 0.47: its per-episode baseline assigns credit more noisily than GAE at gamma 0.
    # A wrong sign or pairing of log-probs and advantages lowers the mass instead.
    assert after > before + (0.2 if advantage == "gae" else 0.08), (before, after)


def test_env_crash_is_recovered(tmp_path):
    FakeTaskEnv.crash_on_step = 5
    train_ppo(load_vla("tiny"), tiny_config(tmp_path))
    assert read_metrics(tmp_path / "run")[-1]["charts/env_restarts"] == 1
    assert latest_checkpoint(tmp_path / "run") is not None


def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path):
    FakeTaskEnv.nan_reward_after = 2  # the second update's rollout (resets 3, 4) gets NaN rewards
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train_ppo(load_vla("tiny"), tiny_config(tmp_path, updates=2))
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint.name == "step_00000008"


def test_eval_hook_logs_eval_metrics(tmp_path):
    seen = []
    config = tiny_config(tmp_path, eval_every=1, eval_fn=lambda model: seen.append(model) or {"success_rate": 0.5})
    train_ppo(load_vla("tiny"), config)
    assert len(seen) == 1 and read_metrics(tmp_path / "run")[-1]["eval/success_rate"] == 0.5


# ---- the simulator ------------------------------------------------------------------------------------------
@pytest.mark.sim
def test_ppo_on_maniskill(tmp_path):
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    model = load_vla("tiny")
    model.config.norm_stats = {"maniskill": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7,
                                                        "mask": [True] * 6 + [False]}}}
    before = _params(model)
    config = PPOConfig(env="maniskill", tasks=["red_cube_on_blue_plate"], num_envs=2, episode_steps=8,
                       image_size=64, total_env_steps=16, minibatch_size=8, device="cpu", num_threads=1,
                       output_dir=tmp_path / "sim", progress=False)
    model = train_ppo(model, config)
    assert any(not torch.equal(before[k], v) for k, v in _params(model).items())
    rows = read_metrics(tmp_path / "sim")
    assert len(rows) == 1 and rows[0]["step"] == 16
    assert {"losses/policy_loss", "losses/value_loss", "losses/approx_kl", "charts/success_rate",
            "charts/SPS"} <= rows[0].keys()
    assert 0.0 <= rows[0]["charts/success_rate"] <= 1.0
    assert (latest_checkpoint(tmp_path / "sim") / VALUE_HEAD_FILE).exists()


class AutoResettingEnv:
    """ManiSkillVectorEnv's convention (physx_cuda): at the time limit it resets at once and returns the
    next episode's first frame, keeping the true last frame and info in `final_observation` / `final_info`."""

    num_envs, episode_steps = 2, 3

    def reset(self, seed=None, options=None):
        self.t = 0
        return {"image": np.full((2, 4, 4, 3), 10, np.uint8)}, self._info(False)

    def _info(self, success: bool) -> dict:
        return {"instruction": np.array(["put the red cube on the blue plate"] * 2), "success": np.array([success] * 2)}

    def step(self, actions):
        self.t += 1
        obs, info = {"image": np.full((2, 4, 4, 3), 10 * (self.t + 1), np.uint8)}, self._info(self.t == 3)
        truncated = np.array([self.t >= self.episode_steps] * 2)
        if truncated.all():
            final_obs, final_info = obs, info
            obs, info = self.reset()
            info.update(final_observation=final_obs, final_info=final_info)
        return obs, np.zeros(2, np.float32), np.zeros(2, bool), truncated, info

    def close(self):
        pass


def test_time_limit_bootstrap_reads_the_final_observation_of_an_auto_resetting_env(monkeypatch):
    """V(final frame), not V(the next episode's first frame): values here are the frame's pixel value."""
    from vla_compress.recovery import ppo
    from vla_compress.recovery.rollout import RolloutBuffer

    def act(model, value_head, images, instructions, temperature, generator, device, decode):
        n = len(images)
        return {"action_indices": torch.zeros(n, 7, dtype=torch.long), "log_probs": torch.zeros(n),
                "values": torch.as_tensor(images.reshape(n, -1)[:, 0], dtype=torch.float32)}

    monkeypatch.setattr(ppo, "act", act)
    monkeypatch.setattr(ppo, "env_actions", lambda model, indices, key: np.zeros((len(indices), 7), np.float32))
    config = PPOConfig(env_factory=lambda seed: AutoResettingEnv(), num_envs=2, episode_steps=3, gamma=0.5)
    buffer = RolloutBuffer.allocate(3, 2, (4, 4, 3))
    runner = ppo.EnvRunner(config.env_factory, 0)
    stats = ppo.run_episode(runner, None, None, buffer, 0, config, None, 0, torch.device("cpu"))
    assert buffer.rewards[2].tolist() == [0.5 * 40, 0.5 * 40]  # the final frame is 40; the reset frame is 10
    assert stats["success_at_end"].all()  # from final_info, not from the new episode's first info
