"""A complete GRPO run on a problem small enough to watch: single-digit addition with a tabular policy.

The policy answers "a + b = ?" (a + b < 10) by picking one digit from a softmax over 10 logits per prompt;
those logits are the parameters. Each step samples G answers per prompt from the old policy, rewards 1
for the right digit, turns rewards into group advantages, and takes ``num_iterations`` clipped-surrogate
steps with a k3 KL penalty to the initial (reference) policy: the whole GRPO algorithm, with the language
model replaced by a lookup table so that it runs in seconds on one CPU. It uses only grpo_jax.losses and
optax, exactly as a user would import them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from grpo_jax.errors import ConfigError
from grpo_jax.losses import group_advantages, grpo_loss

NUM_ANSWERS = 10  # the digits 0..9


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of the addition demo. Names follow TRL's GRPOConfig where they mean the same."""

    steps: int = 40
    num_prompts: int = 8  # distinct "a + b" problems, all sampled every step
    num_generations: int = 8  # G
    num_iterations: int = 2  # mu: updates per sampled batch (> 1 moves the ratio off 1, so the clip can act)
    learning_rate: float = 0.1
    beta: float = 0.04
    epsilon: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "num_prompts", "num_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DemoConfig: `{name}` must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError(f"DemoConfig: `num_generations` must be >= 2, got {self.num_generations}")
        if not 1 <= self.num_prompts <= 55:
            raise ConfigError(
                f"DemoConfig: `num_prompts` must be in [1, 55] (pairs with a+b<10), got {self.num_prompts}")


def worked_example() -> str:
    """The README's example: answers 4, 5, 4 to "2 + 2 = ?" get rewards 1, 0, 1."""
    rewards = jnp.array([1.0, 0.0, 1.0])
    adv = group_advantages(rewards, group_size=3)
    return (
        '"2 + 2 = ?" -> answers 4, 5, 4; rewards 1, 0, 1; group mean '
        f"{float(rewards.mean()):.3f}; advantages " + ", ".join(f"{float(a):+.3f}" for a in adv)
    )


def _problems(num_prompts: int, key: jax.Array) -> tuple[list[str], jax.Array]:
    pairs = [(a, b) for a in range(10) for b in range(10) if a + b < 10]
    order = jax.random.permutation(key, len(pairs))[:num_prompts]
    chosen = [pairs[int(i)] for i in order]
    return [f"{a} + {b} = ?" for a, b in chosen], jnp.array([a + b for a, b in chosen])


def run(config: DemoConfig = DemoConfig(), log: Callable[[str], None] | None = print) -> list[dict[str, float]]:
    """Train the tabular policy; returns one dict of metrics per step (and logs a line per step)."""
    key_problems, key_init, key = jax.random.split(jax.random.key(config.seed), 3)
    prompts, answers = _problems(config.num_prompts, key_problems)
    group_size = config.num_generations
    params = 0.1 * jax.random.normal(key_init, (config.num_prompts, NUM_ANSWERS))
    ref_params = params
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)
    prompt_of_row = jnp.repeat(jnp.arange(config.num_prompts), group_size)  # group-contiguous rows

    def logprobs_of(p: jax.Array, picked: jax.Array) -> jax.Array:
        """[N, 1] log-probabilities of the picked answers (a one-token completion per row)."""
        logp = jax.nn.log_softmax(p[prompt_of_row], axis=-1)
        return jnp.take_along_axis(logp, picked[:, None], axis=-1)

    @jax.jit
    def sample(p: jax.Array, sample_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        picked = jax.random.categorical(sample_key, p[prompt_of_row])  # [N]
        rewards = (picked == answers[prompt_of_row]).astype(jnp.float32)
        return picked, rewards, group_advantages(rewards, group_size)

    @jax.jit
    def update(p, opt_state, picked, old_logprobs, advantages):
        mask = jnp.ones_like(old_logprobs)

        def loss_fn(p):
            return grpo_loss(
                logprobs_of(p, picked), old_logprobs, logprobs_of(ref_params, picked), advantages, mask,
                clip_eps=config.epsilon, beta=config.beta,
            )

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, metrics

    if log:
        log("worked example: " + worked_example())
        log(f"training a tabular policy on {config.num_prompts} problems, e.g. {prompts[0]!r}, G={group_size}")
    history = []
    for step in range(1, config.steps + 1):
        key, sample_key = jax.random.split(key)
        picked, rewards, advantages = sample(params, sample_key)
        old_logprobs = logprobs_of(params, picked)
        for _ in range(config.num_iterations):
            params, opt_state, metrics = update(params, opt_state, picked, old_logprobs, advantages)
        greedy_accuracy = jnp.mean(jnp.argmax(params, axis=-1) == answers)
        row = {
            "step": step,
            "reward/mean": float(rewards.mean()),
            "eval/accuracy": float(greedy_accuracy),
            **{k: float(val) for k, val in metrics.items()},
        }
        history.append(row)
        if log:
            log(
                f"step {step:3d}  reward {row['reward/mean']:.3f}  greedy accuracy {row['eval/accuracy']:.3f}  "
                f"loss {row['loss']:+.4f}  kl {row['kl']:.4f}  clip {row['clip_frac']:.3f}"
            )
    return history
