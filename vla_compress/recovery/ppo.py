"""PPO for a VLA (RL4VLA / RLRC): actor and critic share the model; actions are 7 tokens.

Read it top to bottom against CleanRL's ``ppo.py``; `train_ppo` at the end repeats, per update:
1. `collect_rollout`: whole episodes of every env (temperature-1.0 sampling), storage `[T, N]`, the
   time-limit bootstrap `gamma * V(final observation)` folded into the last reward;
2. `estimate_advantages` (advantages.py): GAE(gamma, lambda), or the group baseline when
   `advantage="group"` (envs of a group share a start state), chosen once by `PPOConfig.advantage`;
3. `ppo_update`: `update_epochs` passes of shuffled minibatches, `ppo_losses` (clipped surrogate,
   clipped Huber value loss), grad-norm clip, optional `target_kl` early stop;
4. metrics (`output_dir/metrics.jsonl` + TensorBoard, CleanRL's names) and atomic checkpoints
   (`resume=True` continues a killed run).
The settings live in ppo_config.py, the env (re-created after a worker crash) in env_runner.py.
`accelerate` makes the same code run on one CPU, one GPU or several processes (each process runs its
own envs; gradients are all-reduced).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_compress.recovery.advantages import (  # noqa: F401 - re-exported: the PPO names in one import
    ADVANTAGE_ESTIMATORS,
    compute_gae,
    estimate_advantages,
    gae_estimate,
    group_advantages,
    group_estimate,
)
from vla_compress.recovery.checkpoint import (
    last_good_checkpoint_note,
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    run_identity,
    run_state,
    save_checkpoint,
)
from vla_compress.recovery.distributed import make_accelerator
from vla_compress.recovery.env_runner import EnvCrashed, EnvRunner, default_env_factory, step_result
from vla_compress.recovery.metrics import MetricsLogger
from vla_compress.recovery.ppo_config import ADVANTAGES, PPOConfig  # noqa: F401 - re-exported
from vla_compress.recovery.rollout import (
    RolloutBuffer,
    act,
    env_actions,
    image_shape,
    info_flag,
    instructions_from_info,
    observation_images,
    training_inputs,
)
from vla_compress.recovery.value_head import ActorCritic, ValueHead, load_value_head

logger = logging.getLogger(__name__)
# PPO's episodes reset from seeds at and above this: above every seed `evaluate` (seed * 1_000_003 + ...)
# and `generate_demos` / `collect_dagger` (seed * 1_000_000 + ...) use for seeds below 1000, so the
# layouts an evaluation scores are never the ones PPO trained on; below 2**31 for every simulator.
EPISODE_SEEDS = 1_500_000_000


# ---- the PPO losses ---------------------------------------------------------------------------------------
def ppo_losses(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
               clip_coef: float = 0.2, vf_clip_coef: float = 0.2, huber_delta: float = 10.0,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pg_loss, v_loss, entropy, approx_kl, clipfrac) of one minibatch.

    Clipped surrogate on `ratio = exp(new - old)`; value loss = max of the Huber losses of the new and
    the clipped value (clipped to `old_values +- vf_clip_coef`); approx_kl is CleanRL's `(r - 1) - log r`.
    """
    logratio = new_log_probs - old_log_probs
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()

    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    v_clipped = old_values + torch.clamp(new_values - old_values, -vf_clip_coef, vf_clip_coef)
    v_loss_unclipped = F.huber_loss(new_values, returns, reduction="none", delta=huber_delta)
    v_loss_clipped = F.huber_loss(v_clipped, returns, reduction="none", delta=huber_delta)
    v_loss = torch.max(v_loss_unclipped, v_loss_clipped).mean()
    return pg_loss, v_loss, entropy.mean(), approx_kl, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] (nan when returns are constant)."""
    var_y = returns.var().item()
    return float("nan") if var_y == 0 else 1.0 - (returns - values).var().item() / var_y


# ---- 1. rollout --------------------------------------------------------------------------------------------
def run_episode(runner: EnvRunner, model, value_head, buffer: RolloutBuffer, t0: int, config: PPOConfig,
                generator: torch.Generator, reset_seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fill rows `t0 .. t0 + episode_steps` of `buffer` with one episode of every env."""
    num_envs = buffer.rewards.shape[1]
    obs, info = runner.call("reset", seed=config.reset_seeds(reset_seed))
    instructions = instructions_from_info(info, num_envs)
    episodic_return = np.zeros(num_envs)
    success_once = np.zeros(num_envs, dtype=bool)
    policy_seconds = env_seconds = 0.0  # where a rollout's time goes: the VLA's decoding vs the simulator
    for t in range(t0, t0 + config.episode_steps):
        tic = time.perf_counter()
        images = observation_images(obs)
        buffer.images[t], buffer.instructions[t] = images, instructions
        buffer.dones[t] = 1.0 if t == t0 else 0.0  # observation t0 starts a new episode
        out = act(model, value_head, images, instructions, config.temperature, generator, device, config.decode)
        buffer.action_indices[t], buffer.log_probs[t], buffer.values[t] = (
            out["action_indices"], out["log_probs"], out["values"])

        actions = env_actions(model, out["action_indices"], config.unnorm_key)
        toc = time.perf_counter()
        obs, reward, terminated, _truncated, info = runner.call("step", actions)
        policy_seconds, env_seconds = policy_seconds + toc - tic, env_seconds + time.perf_counter() - toc
        next_obs, step_info = step_result(obs, info)
        reward = torch.as_tensor(reward).float().cpu().reshape(num_envs)  # numpy or (GPU sim) torch
        episodic_return += reward.numpy()
        success_once |= info_flag(step_info, "success", num_envs)
        if t == t0 + config.episode_steps - 1 and config.bootstrap_truncated:
            # the episode is cut by the time limit, not ended: bootstrap with V(final observation)
            final_values = act(model, value_head, observation_images(next_obs), instructions, 0.0, None,
                               device, config.decode)["values"]
            not_terminated = ~torch.as_tensor(terminated).bool().cpu().reshape(num_envs)
            reward = reward + config.gamma * final_values * not_terminated
        buffer.rewards[t] = reward
        if "instruction" in info:
            instructions = instructions_from_info(info, num_envs)
    return {"episodic_return": episodic_return, "success_once": success_once,
            "success_at_end": info_flag(step_info, "success", num_envs),
            "policy_seconds": np.array([policy_seconds]), "env_seconds": np.array([env_seconds])}


def collect_rollout(runner: EnvRunner, model, value_head, buffer: RolloutBuffer, config: PPOConfig,
                    generator: torch.Generator, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fill `buffer` with whole episodes; an episode interrupted by an env crash is re-collected."""
    model.eval()
    stats: dict[str, list[np.ndarray]] = {}
    for episode in range(buffer.num_steps // config.episode_steps):
        for attempt in range(config.max_env_restarts + 1):
            try:
                result = run_episode(runner, model, value_head, buffer, episode * config.episode_steps, config,
                                     generator, seed + episode * config.num_envs, device)
                break
            except EnvCrashed as err:
                if attempt == config.max_env_restarts:
                    raise RuntimeError(f"the env crashed {attempt + 1} times in a row; giving up") from err
                runner.restart(err)
        for key, value in result.items():
            stats.setdefault(key, []).append(value)
    return {key: np.concatenate(value) for key, value in stats.items()}


# ---- 3. update (2., the advantages, are advantages.py) ------------------------------------------------
def ppo_update(agent, optimizer, accelerator, model, buffer: RolloutBuffer, advantages: torch.Tensor,
               returns: torch.Tensor, config: PPOConfig, generator: torch.Generator,
               policy_signal: bool = True) -> dict[str, float]:
    """One PPO update (update_epochs passes of shuffled minibatches); returns mean diagnostics.

    `policy_signal=False` (a rollout whose episodes earned no reward) zeroes the advantages: the update
    trains the critic only.
    """
    b_images = buffer.images.reshape(-1, *buffer.images.shape[2:])
    b_instructions = buffer.instructions.reshape(-1)
    b_action_indices = buffer.action_indices.reshape(-1, buffer.action_indices.shape[-1])
    b_log_probs, b_values = buffer.log_probs.reshape(-1), buffer.values.reshape(-1)
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
    if not policy_signal:
        b_advantages = torch.zeros_like(b_advantages)  # pg loss 0: only the critic learns from this rollout
    elif config.norm_adv:  # over the whole buffer, as in RL4VLA
        b_advantages = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)

    agent.train()
    device = accelerator.device
    micro = config.micro_batch_size or config.minibatch_size
    sums: dict[str, float] = {}
    n_minibatches = n_steps = 0
    stopped = False  # target_kl's early stop ends the whole update
    for _epoch in range(config.update_epochs):
        if stopped:
            break
        b_inds = torch.randperm(len(b_log_probs), generator=generator)
        for start in range(0, len(b_inds), config.minibatch_size):
            mb_inds = b_inds[start:start + config.minibatch_size]
            optimizer.zero_grad()
            chunks = mb_inds.split(micro)
            minibatch: dict[str, float] = {}
            for i, idx in enumerate(chunks):
                inputs = training_inputs(model, b_images[idx.numpy()], b_instructions[idx.numpy()],
                                         b_action_indices[idx], device)
                new_log_probs, entropy, new_values = agent(**inputs, temperature=config.temperature)
                pg_loss, v_loss, entropy_loss, approx_kl, clipfrac = ppo_losses(
                    new_log_probs, b_log_probs[idx].to(device), b_advantages[idx].to(device), new_values,
                    b_values[idx].to(device), b_returns[idx].to(device), entropy,
                    config.clip_coef, config.vf_clip_coef, config.huber_delta)
                loss = pg_loss - config.ent_coef * entropy_loss + config.vf_coef * v_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite PPO loss (pg_loss={pg_loss.item()}, v_loss={v_loss.item()}); nothing was "
                        f"saved for this update; {last_good_checkpoint_note(config.output_dir)}. Check the rewards, "
                        "lower the learning rate, or use float32.")
                weight = len(idx) / len(mb_inds)
                with accelerator.no_sync(agent) if i < len(chunks) - 1 else nullcontext():
                    accelerator.backward(loss * weight)
                for key, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy_loss),
                                   ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                    minibatch[key] = minibatch.get(key, 0.0) + value.item() * weight
            for key, value in minibatch.items():
                sums[key] = sums.get(key, 0.0) + value
            n_minibatches += 1
            stopped = kl_exceeded(accelerator, minibatch["approx_kl"], config.target_kl)
            if stopped:
                break  # this minibatch's step is not taken
            grad_norm = accelerator.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise FloatingPointError(f"non-finite gradient norm {float(grad_norm)}, not applied; "
                                         f"{last_good_checkpoint_note(config.output_dir)}")
            if not policy_signal and not config.critic_trains_backbone:
                # The policy's gradients are zero here, but Adam's momentum would still move it: leave it out.
                for param in optimizer.param_groups[0]["params"]:
                    param.grad = None
            optimizer.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_steps += 1
    metrics = {f"losses/{k}": v / (n_steps if k == "grad_norm" else n_minibatches) for k, v in sums.items()}
    metrics["charts/optimizer_steps"] = float(n_steps)
    metrics["losses/explained_variance"] = explained_variance(b_values, b_returns)
    metrics["charts/policy_updated"] = float(policy_signal)
    return metrics


def policy_signal(accelerator, config: PPOConfig, stats: dict[str, np.ndarray], advantages: torch.Tensor,
                  spread: torch.Tensor | None, update: int) -> tuple[bool, dict[str, float]]:
    """Whether this update may move the policy (on every process alike), and the group metrics.

    Not during `critic_warmup_updates`; not when no episode earned an env reward (the buffer's rewards
    also hold time-limit bootstraps, i.e. the critic's guesses) and `skip_policy_without_reward`; with
    the group baseline, not when every group's tries ended alike (all advantages zero)."""
    signal = not config.skip_policy_without_reward or bool(np.any(stats["episodic_return"] != 0))
    group_metrics: dict[str, float] = {}
    if spread is not None:
        signal = signal and bool(advantages.any())
        group_metrics["charts/informative_groups"] = accelerator.reduce(  # all processes
            spread.to(accelerator.device), reduction="mean").item()
    return any_process(accelerator, signal and update >= config.critic_warmup_updates), group_metrics


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` holds on any process: all processes then take the same kind of update."""
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum") > 0)


def kl_exceeded(accelerator, approx_kl: float, target_kl: float | None) -> bool:
    """Stable-Baselines3's early stop: the minibatch's approximate KL (mean over processes, so all of them
    stop together) is above 1.5 x `target_kl`."""
    if target_kl is None:
        return False
    kl = accelerator.reduce(torch.tensor(approx_kl, device=accelerator.device), reduction="mean")
    return float(kl) > 1.5 * target_kl


# ---- the training loop ------------------------------------------------------------------------------------
def train_ppo(model, config: PPOConfig) -> Any:
    """Fine-tune `model` (an `OpenVLAForActionPrediction`) with PPO in `config`'s envs; returns it."""
    config.validate()
    if getattr(model, "processor", None) is None:
        raise ValueError("the model has no processor; load it with vla_compress.load_vla(...)")
    accelerator = make_accelerator(config.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    batch_size = config.steps_per_rollout * config.num_envs  # per process
    num_updates = config.total_env_steps // (batch_size * world)
    if num_updates < 1:
        raise ValueError(f"total_env_steps ({config.total_env_steps}) is less than one rollout over "
                         f"{world} processes ({batch_size * world})")
    output_dir = Path(config.output_dir).expanduser()
    run = run_identity(model, config)  # the model as given: a resume must start from the same one
    image_size = config.image_size or int(model.config.image_sizes[0])
    factory = config.env_factory or default_env_factory(config, image_size)

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    if config.dtype is not None:
        model = model.to(getattr(torch, str(config.dtype).removeprefix("torch.")))
    model = model.to(accelerator.device)
    value_head = ValueHead(model.config.text_config.hidden_size).to(accelerator.device)
    agent = ActorCritic(model, value_head, config.critic_trains_backbone)
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": list(value_head.parameters()), "lr": config.critic_learning_rate},
    ], weight_decay=config.weight_decay)
    start_update = _resume(output_dir, run, agent, optimizer) if config.resume else 0
    agent, optimizer = accelerator.prepare(agent, optimizer)

    metrics_logger = MetricsLogger(output_dir) if accelerator.is_main_process else None
    runner = EnvRunner(factory, config.seed + 1_000_003 * rank)
    buffer: RolloutBuffer | None = None
    sample_generator = torch.Generator(device=accelerator.device)
    shuffle_generator = torch.Generator()
    progress = _progress(num_updates, start_update, config.progress and accelerator.is_main_process)
    try:
        for update in range(start_update, num_updates):
            # every update re-seeds from (seed, rank, update): a resumed run replays exactly
            update_seed = config.seed + 7919 * rank + 1_000_003 * (update + 1)
            sample_generator.manual_seed(update_seed)
            shuffle_generator.manual_seed(update_seed + 1)
            start_time = time.time()

            # 1. rollout
            if buffer is None:
                buffer = RolloutBuffer.allocate(config.steps_per_rollout, config.num_envs,
                                                image_shape(runner.envs))
            stats = collect_rollout(runner, model, value_head, buffer, config, sample_generator,
                                    EPISODE_SEEDS + update_seed % 500_000_000, accelerator.device)
            rollout_time = time.time() - start_time

            # 2. advantages (the estimator PPOConfig.advantage names) and the returns the critic regresses on
            advantages, returns, spread = estimate_advantages(buffer, stats, config)

            # 3. PPO update (critic only when the rollout carries no policy signal)
            signal, group_metrics = policy_signal(accelerator, config, stats, advantages, spread, update)
            update_start = time.time()
            metrics = ppo_update(agent, optimizer, accelerator, model, buffer, advantages, returns, config,
                                 shuffle_generator, policy_signal=signal)
            metrics["time/update_s"] = time.time() - update_start

            # 4. logs and checkpoints
            global_step = (update + 1) * batch_size * world
            metrics.update(_rollout_metrics(accelerator, stats))
            metrics.update(group_metrics)  # share of start states whose tries ended differently
            metrics["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
            metrics["charts/critic_learning_rate"] = optimizer.param_groups[1]["lr"]
            metrics["charts/SPS"] = batch_size * world / max(time.time() - start_time, 1e-9)
            metrics["charts/rollout_SPS"] = batch_size * world / max(rollout_time, 1e-9)
            metrics["time/rollout_s"] = rollout_time  # of it: decoding (policy) and env steps (sim + render)
            metrics["time/policy_s"] = float(stats["policy_seconds"].sum())
            metrics["time/env_s"] = float(stats["env_seconds"].sum())
            metrics["charts/env_restarts"] = runner.restarts
            metrics["charts/update"] = update + 1
            if config.eval_every and (update + 1) % config.eval_every == 0 and accelerator.is_main_process:
                metrics.update(_evaluate(model, config))
            if metrics_logger is not None:
                metrics_logger.log(global_step, metrics)
            is_last = update + 1 == num_updates
            if is_last or (config.checkpoint_every and (update + 1) % config.checkpoint_every == 0):
                _save(accelerator, agent, optimizer, output_dir, global_step, update + 1, config, run)
            progress.update(1)
            progress.set_postfix(ret=f"{metrics['charts/episodic_return']:.3f}",
                                 succ=f"{metrics['charts/success_rate']:.2f}",
                                 kl=f"{metrics['losses/approx_kl']:.4f}", sps=f"{metrics['charts/SPS']:.1f}")
    finally:
        progress.close()
        runner.close()
        if metrics_logger is not None:
            metrics_logger.close()
    model.eval()
    return accelerator.unwrap_model(agent).model


def _resume(output_dir: Path, run: dict[str, Any], agent: ActorCritic, optimizer) -> int:
    """Load the newest intact checkpoint of this run into `agent` and `optimizer`; the update to start at."""
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        return 0
    state = load_trainer_state(checkpoint, run)
    load_model_weights(agent.model, checkpoint)
    load_value_head(agent.value_head, checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from %s (update %d)", checkpoint, int(state["update"]))
    return int(state["update"])


def _rollout_metrics(accelerator, stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Episode statistics averaged over every env of every process."""
    means = torch.tensor([stats["episodic_return"].mean(), stats["success_at_end"].mean(),
                          stats["success_once"].mean()], dtype=torch.float32, device=accelerator.device)
    means = accelerator.reduce(means, reduction="mean")
    return {"charts/episodic_return": means[0].item(), "charts/success_rate": means[1].item(),
            "charts/success_once": means[2].item()}


def _save(accelerator, agent, optimizer, output_dir: Path, global_step: int, update: int, config: PPOConfig,
          run: dict[str, Any]) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(agent)
        state = {"update": update, "global_step": global_step, "optimizer": optimizer.state_dict(),
                 **run_state(run, unwrapped.model)}
        save_checkpoint(output_dir, global_step, unwrapped, state, keep=config.keep_checkpoints)
    accelerator.wait_for_everyone()


def _evaluate(model, config: PPOConfig) -> dict[str, float]:
    """Greedy evaluation through `config.eval_fn` or `vla_compress.evaluation.evaluate`, as `eval/...`."""
    eval_fn = config.eval_fn
    if eval_fn is None:
        try:
            from vla_compress.evaluation import evaluate
        except ImportError:
            logger.warning("eval_every is set but vla_compress.evaluation.evaluate is unavailable; skipping")
            return {}
        suite, tasks = config._suite_and_tasks()  # greedy: predict_action's default temperature is 0
        eval_fn = partial(evaluate, suite=suite, tasks=tasks, num_envs=config.num_envs, seed=config.seed,
                          image_size=config.image_size or int(model.config.image_sizes[0]),
                          max_episode_steps=config.episode_steps, unnorm_key=config.unnorm_key, progress=False)
    result = eval_fn(model)
    result = result if isinstance(result, dict) else vars(result)
    return {(k if k.startswith("eval/") else f"eval/{k}"): float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="ppo", unit="update", disable=not enabled)
