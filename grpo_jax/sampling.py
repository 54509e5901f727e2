"""Group sampling: B prompts -> B * G completions, one jit-compiled program per shape bucket.

How it works:
  1. Prompts are left-padded and bucketed: the prompt length is padded (on the left) up to the next entry
     of ``prompt_length_buckets`` and the batch (with empty rows) up to the next ``batch_buckets`` entry,
     so a training run with varying prompts compiles at most len(prompt buckets) x len(batch buckets)
     times, and in practice a handful.
  2. Prefill runs once per *prompt* (B rows, not B * G) and writes the prompt's keys/values into a KV cache
     of B rows; the LM head runs on each prompt's last position only. Its G completions (completion j of
     prompt i is row i * G + j, the layout of grpo_jax.losses) share that cache as a prefix they all attend
     (``Transformer(prefix=...)``), never copied to their rows; each row's own cache holds only its new
     tokens. So the KV cache holds B * P + B * G * max_new_tokens slots, not B * G * (P + max_new_tokens),
     and a decode step reads each prompt's keys and values once, not G times.
  3. Decoding is a ``lax.while_loop`` inside the same jit: sample a token for every row, append it to the
     cache, run the model on it, repeat, and stop as soon as every row has produced an EOS/stop token (or
     after max_new_tokens). No host round trip per token. The new tokens' cache grows in phases of
     ``decode_phase_tokens`` slots (one loop per phase), so a decode step reads the slots filled so far
     plus at most one phase, not the whole max_new_tokens: the loops of a 1,024-token completion read
     about 63% of the new-token slots one loop would. Whether every row has ended is checked every
     ``decode_steps_per_check`` steps (16 on GPUs, whose runtime stalls the host on each check; 1 elsewhere).

Log-probabilities and the trainer (read this before using ``logprobs`` as pi_old):
  * ``policy_logprobs`` = log softmax(logits / temperature)[token]: exactly what the trainer computes with
    ``grpo_jax.losses.token_logprobs(logits, tokens, temperature=temperature)`` on the full sequence (the
    same temperature-scaled, untruncated distribution). With mu = 1 the trainer may use it as pi_old, and
    the first importance ratio is 1 up to float rounding.
  * ``logprobs`` = the log-probability under the distribution actually sampled from: temperature-scaled,
    then restricted to the top-k / top-p set and renormalised. With top_k = 0 and top_p = 1 (GRPO's usual
    setting) the two are identical; with truncation they differ by the log of the kept probability mass.
  * greedy decoding samples nothing; both fields then hold log softmax(logits / temperature) of the argmax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import _validation as v
from grpo_jax import compilation
from grpo_jax.distributed import global_rows
from grpo_jax.matmul import dense
from grpo_jax.models.model import param_shardings, positions_from_mask
from grpo_jax.models.transformer import Transformer, init_cache, unembedding_matrix
from grpo_jax.sharding import logical_sharding

# Field metadata of the SamplingConfig settings that change how the sampler runs (memory, speed) but not the
# tokens and log-probabilities it produces.
SAME_TOKENS = {"same_tokens": True}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn. Names follow TRL's GRPOConfig / generation config where they exist.

    num_generations: G, completions per prompt.
    max_new_tokens: longest completion.
    temperature: > 0; logits are divided by it (also in the trainer's log-probabilities).
    top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches top_p (1 = off).
    top_k: keep the k most likely tokens (0 = off).
    greedy: argmax decoding (eval); ignores temperature, top_p, top_k for the choice of token.
    eos_token_ids: tokens that end a completion (EOS plus extra stop ids); the stop token is kept and
      counts in the mask.
    stop_sequences: token-id sequences that end a completion as an EOS token does: a row is done as soon as
      its last len(s) generated tokens equal some s (only tokens generated in this call count, not the
      prompt); the sequence's tokens are kept and count in the mask. For tool calls: generation stops at a
      marker such as a tokenized "</py>". A single-token sequence is the same as adding its id to
      eos_token_ids; a sequence longer than max_new_tokens never ends a completion.
    pad_token_id: written after a completion ends and used to pad prompts.
    prompt_length_buckets, batch_buckets: ascending sizes prompts and batches are padded up to; beyond
      the largest, sizes round up to a multiple of it.
    decode_phase_tokens: the new tokens' KV cache grows by this many slots at a time while decoding, so a
      decode step reads only the slots of the phase it is in (up to this many more than it has generated)
      besides the prompt's, not all max_new_tokens: one compiled loop per phase, the same tokens.
    cast_params_once: convert the parameters to the model's compute dtype once per call, before the
      prefill, instead of inside every decode step. The model converts every parameter to its compute
      dtype before using it, so the tokens and log-probs are the same; with float32 parameters and
      bfloat16 compute a decode step then reads half the weight bytes (on an FSDP mesh it also
      all-gathers half). The cost is one compute-dtype copy of the parameters while sampling (sharded
      like them, or whole: ``gather_params_once``). Nothing changes when the two dtypes are the same.
    gather_params_once: on a mesh with an ``fsdp`` axis, all-gather the (compute-dtype) parameters once per
      call, before the prefill, so the decode steps need no weight communication; every device then holds
      a whole copy (split only by ``tensor``) while sampling. False keeps them FSDP-sharded: each decode
      step all-gathers every layer's weights as it uses them, for models whose whole copy does not fit.
      Either way the gathers move compute-dtype weights. Without an fsdp axis nothing changes.
    decode_steps_per_check: decode steps run between checks of whether every row has ended (vLLM's
      multi-step scheduling has the same idea). None: ``steps_per_check_for(platform)``, 16 on GPUs, 1 on
      CPUs and TPUs. On a GPU, XLA runs a loop with a data-dependent stop by copying the condition to the
      host after every iteration and waiting for it (``WhileThunk``), so the GPU idles while the host
      launches the next step's kernels; an inner loop of a fixed number of steps runs without that wait.
      The cost is up to this many minus one steps after every row has ended, and the loops run
      max_new_tokens rounded up to a multiple of it. The tokens and log-probs do not change.
    """

    num_generations: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    eos_token_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    pad_token_id: int = 0
    prompt_length_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    # how the sampler runs, not which tokens it draws (SAME_TOKENS): a resumed run may change these
    decode_phase_tokens: int = dataclasses.field(default=256, metadata=SAME_TOKENS)
    cast_params_once: bool = dataclasses.field(default=True, metadata=SAME_TOKENS)
    gather_params_once: bool = dataclasses.field(default=True, metadata=SAME_TOKENS)
    decode_steps_per_check: int | None = dataclasses.field(default=None, metadata=SAME_TOKENS)

    def __post_init__(self) -> None:
        fn = "SamplingConfig"
        for name in ("eos_token_ids", "prompt_length_buckets", "batch_buckets"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, (int, np.integer)) else tuple(int(x) for x in value)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "stop_sequences", _stop_sequences(fn, self.stop_sequences))
        v.as_int(fn, "num_generations", self.num_generations, minimum=1)
        v.as_int(fn, "max_new_tokens", self.max_new_tokens, minimum=1)
        v.as_int(fn, "top_k", self.top_k, minimum=0)
        v.as_int(fn, "pad_token_id", self.pad_token_id, minimum=0)
        v.as_int(fn, "decode_phase_tokens", self.decode_phase_tokens, minimum=1)
        if self.decode_steps_per_check is not None:
            v.as_int(fn, "decode_steps_per_check", self.decode_steps_per_check, minimum=1)
        for name in ("cast_params_once", "gather_params_once"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{fn}: `{name}` must be True or False, got {getattr(self, name)!r}")
        v.require_positive(fn, "temperature", self.temperature)
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"{fn}: `top_p` must be in (0, 1], got {self.top_p!r}")
        for name in ("prompt_length_buckets", "batch_buckets"):
            buckets = getattr(self, name)
            if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
                raise ValueError(f"{fn}: `{name}` must be strictly ascending positive sizes, got {buckets}")
        if any(t < 0 for t in self.eos_token_ids):
            raise ValueError(f"{fn}: `eos_token_ids` must be token ids >= 0, got {self.eos_token_ids}")


def _stop_sequences(fn: str, value: Any) -> tuple[tuple[int, ...], ...]:
    """``stop_sequences`` as a tuple of tuples of ints (lists accepted), each non-empty, of ids >= 0."""
    scalar = lambda x: isinstance(x, (str, bytes, int, np.integer)) or not hasattr(x, "__iter__")  # noqa: E731
    if scalar(value):
        raise TypeError(f"{fn}: `stop_sequences` must be a sequence of token-id sequences, e.g. [[27, 14, 29]], "
                        f"got {value!r}")
    sequences = []
    for i, seq in enumerate(value):
        if scalar(seq):
            raise TypeError(f"{fn}: `stop_sequences`[{i}] must be a sequence of token ids, got {seq!r}")
        seq = tuple(seq)
        if not seq:
            raise ValueError(f"{fn}: `stop_sequences`[{i}] is empty; a stop sequence needs at least one token id")
        try:
            ids = tuple(v.as_int(fn, "stop_sequences", t, minimum=0) for t in seq)
        except ValueError:
            raise ValueError(f"{fn}: `stop_sequences`[{i}] must hold token ids (ints >= 0), got {seq!r}") from None
        sequences.append(ids)
    return tuple(sequences)


def same_tokens_fields() -> tuple[str, ...]:
    """Names of the SamplingConfig fields marked SAME_TOKENS: changing them changes how the sampler runs, never
    what it samples (a resumed run may change them, e.g. on other hardware)."""
    return tuple(f.name for f in dataclasses.fields(SamplingConfig) if f.metadata.get("same_tokens"))


@flax.struct.dataclass
class SampleResult:
    """B * G completions, group-contiguous (row i * G + j = completion j of prompt i).

    tokens: [B*G, max_new_tokens] int32, pad_token_id after the end.
    mask: [B*G, max_new_tokens] int32, 1 up to and including the EOS/stop token.
    logprobs: [B*G, max_new_tokens] float32, under the distribution sampled from (0 where mask is 0).
    policy_logprobs: [B*G, max_new_tokens] float32, log softmax(logits / temperature) (0 where mask is 0).
    finished: [B*G] bool, ended by an EOS/stop token (False: truncated at max_new_tokens).
    decode_steps: int32 scalar, decode iterations run: max_new_tokens rounded up to a multiple of
      decode_steps_per_check, or fewer when every row stopped early.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    policy_logprobs: jax.Array
    finished: jax.Array
    decode_steps: jax.Array


def bucket_size(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; beyond the largest, the next multiple of the largest."""
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def compile_count() -> int:
    """How many times the sampler's program has been compiled (or loaded from the persistent compilation
    cache) in this process: once per (batch bucket, prompt bucket, config, model) it runs with
    (grpo_jax.compilation)."""
    return compilation.count(_generate_program.__name__)


CDF_BLOCK = 128  # tokens per block of inverse_cdf's two-level search


def _two_level_search(blocks: jax.Array, u: jax.Array, weight) -> tuple[jax.Array, jax.Array]:
    """The two-level inverse-CDF search shared by ``inverse_cdf`` and ``sample_logits``.

    blocks: [N, V / block, block] values that ``weight`` (elementwise, applied to [N, ..., block] arrays)
    turns into non-negative weights; u: [N] in [0, 1). Returns (token [N] int32, total weight [N]).
    """
    block = blocks.shape[-1]
    ends = jnp.cumsum(jnp.sum(weight(blocks), axis=-1), axis=-1)  # [N, V / block]: cumulative weight at block ends
    target = u[:, None] * ends[:, -1:]
    # the first block reaching the target with weight so far (ends never decrease: both conditions hold on a
    # leading run of blocks, so counting them finds it); u < 1 keeps the target within the total
    chosen = jnp.minimum(jnp.sum((ends < target) | (ends <= 0), axis=-1), ends.shape[1] - 1)
    inside = weight(jnp.take_along_axis(blocks, chosen[:, None, None], axis=1)[:, 0])  # [N, block]
    before = jnp.where(chosen > 0, jnp.take_along_axis(ends, jnp.maximum(chosen - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    running = jnp.cumsum(inside, axis=-1)
    local = jnp.sum((before[:, None] + running < target) | (running <= 0), axis=-1)
    # float rounding may leave the block's own sum just short of the target: then its last token of weight > 0
    last = block - 1 - jnp.argmax((inside > 0)[:, ::-1], axis=-1)
    return (chosen * block + jnp.minimum(local, last)).astype(jnp.int32), ends[:, -1]


def _in_blocks(x: jax.Array, block: int, fill: float) -> jax.Array:
    """[N, V] -> [N, ceil(V / block), block], the tail padded with ``fill``."""
    return jnp.pad(x, ((0, 0), (0, -x.shape[1] % block)), constant_values=fill).reshape(x.shape[0], -1, block)


def inverse_cdf(weights: jax.Array, u: jax.Array, block: int = CDF_BLOCK) -> jax.Array:
    """The token each row's ``u`` selects: the first index whose cumulative weight is positive and reaches
    ``u`` times the row's total, so never a token of weight 0 (not even for u = 0).

    weights: [N, V] non-negative (unnormalised probabilities); u: [N] uniform in [0, 1). Returns [N] int32.
    Two levels, not a cumulative sum over all V: the block sums of ``block`` tokens and their cumulative
    sum pick the block, then a cumulative sum inside that block picks the token. XLA lowers a cumulative
    sum as reduce-windows, slow over a whole vocabulary; the block sums are one pass.
    """
    return _two_level_search(_in_blocks(weights, block, 0.0), u, lambda w: w)[0]


def sample_logits(logits: jax.Array, u: jax.Array, block: int = CDF_BLOCK) -> tuple[jax.Array, jax.Array]:
    """``inverse_cdf`` of softmax(logits), without forming the probabilities: (token [N] int32, logsumexp [N]).

    logits: [N, V] float32, -inf on excluded tokens (at least one finite per row); u: [N] in [0, 1). The
    weights are exp(logits - row max), computed inside the block sums and again for the chosen block only,
    so the [N, V] arrays are read twice (the max, the block sums) and none is written. The log-probability
    of the token is ``logits[token] - logsumexp``. Forming log_softmax and its exp first wrote two [N, V]
    float32 arrays per decode step and read them back: at Qwen's V = 151,936 and 256 rows, 156 MB each.
    """
    peak = jnp.max(logits, axis=-1)
    weight = lambda x: jnp.exp(x - peak.reshape(peak.shape + (1,) * (x.ndim - 1)))  # noqa: E731
    token, total = _two_level_search(_in_blocks(logits, block, -jnp.inf), u, weight)
    return token, peak + jnp.log(total)


def _choose(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample one token per row from logits [N, V] (float32): (token, sampled logprob, policy logprob).

    Sampling is by inverse CDF (``sample_logits``): one uniform number per row against the cumulative
    probabilities. It draws from exactly the same distribution as Gumbel-max (``jax.random.categorical``)
    but needs N random numbers instead of N * V (random bits are not cheap to generate). No [N, V]
    log-probabilities are formed: each log-probability is the token's logit minus a logsumexp.
    """
    scaled = logits / config.temperature
    at = lambda x, token: jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]  # noqa: E731
    if config.greedy:
        token = jnp.argmax(logits, axis=-1)
        lp = at(scaled, token) - jax.nn.logsumexp(scaled, axis=-1)
        return token, lp, lp
    kept, truncated = scaled, False
    vocab = logits.shape[-1]
    if 0 < config.top_k < vocab:
        kth = jax.lax.top_k(scaled, config.top_k)[0][:, -1:]
        kept, truncated = jnp.where(scaled >= kth, kept, -jnp.inf), True
    if config.top_p < 1.0:
        ordered = jnp.sort(kept, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # the smallest logit still needed to reach top_p (the first token is always kept)
        threshold = jnp.min(jnp.where(mass_before < config.top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        kept, truncated = jnp.where(kept >= threshold, kept, -jnp.inf), True
    token, kept_lse = sample_logits(kept, jax.random.uniform(key, (logits.shape[0],), jnp.float32))
    lp = at(kept, token) - kept_lse
    return token, lp, (at(scaled, token) - jax.nn.logsumexp(scaled, axis=-1)) if truncated else lp


def params_in_compute_dtype(model_config, params):
    """``params`` with every floating-point leaf converted to ``model_config.dtype`` (the model converts each
    parameter to that dtype before using it, so the model's outputs do not change). Integer leaves and
    leaves already in that dtype are returned as they are."""
    dtype = jnp.dtype(model_config.dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def sampling_param_shardings(model: Transformer, gather: bool) -> dict:
    """Where the sampler keeps the parameters on the model's mesh: as the model lays them out (FSDP-sharded),
    or, with ``gather``, with the ``fsdp`` mesh axis dropped from every rule (whole on each device, split
    only by the other axes, e.g. ``tensor``). A pytree of NamedSharding like the parameters."""
    rules = model.mesh_rules
    table = rules.rules
    if gather:
        as_tuple = lambda axes: (axes,) if isinstance(axes, str) else tuple(axes or ())  # noqa: E731
        table = tuple((name, tuple(a for a in as_tuple(axes) if a != "fsdp")) for name, axes in table)
    return param_shardings(model, rules.mesh, table)


@flax.struct.dataclass
class DecodeState:
    """The decode loops' carry. N = B * G rows (the batch bucket's), T = the decode steps the loops may run
    (max_new_tokens rounded up to whole ``decode_steps_per_check`` chunks), L = the new tokens' cache slots
    of the phase being decoded, V = vocabulary size.

    step: int32 scalar, the index of the token the next step generates (steps run so far).
    last_logits: [N, V] float32, the logits that token is sampled from.
    tokens: [N, T] int32, generated tokens, pad_token_id after a row's end.
    mask: [N, T] int32, 1 on generated tokens up to and including the stop token.
    logprobs: [N, T] float32, log-probabilities under the distribution sampled from (0 where mask is 0).
    policy_logprobs: [N, T] float32, log softmax(logits / temperature) (0 where mask is 0).
    done: [N] bool, the row has produced a stop token (or is bucket padding).
    cache: the new tokens' KV cache (grpo_jax.models.transformer.init_cache), [N, kv_heads, L, head_dim] leaves.
    kv_mask: [N, L] int32, 1 on the cache slots holding a row's tokens.
    key: the jax.random key the next step splits.
    """

    step: jax.Array
    last_logits: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    policy_logprobs: jax.Array
    done: jax.Array
    cache: Any
    kv_mask: jax.Array
    key: jax.Array


def _generate_program(model: Transformer, config: SamplingConfig, params, prompt_ids, prompt_mask, key):
    """The jitted sampler for one (batch bucket, prompt bucket). Shapes: prompt_* [Bb, Pb].

    Its compiles are counted under its name (``compile_count``): keep the name unique."""
    num_generations, new = config.num_generations, config.max_new_tokens
    chunk = config.decode_steps_per_check or 1  # generate() has resolved None for the device
    total = -(-new // chunk) * chunk  # decode steps the loops may run: whole chunks
    b, p = prompt_ids.shape
    n = b * num_generations
    rules = model.mesh_rules
    if config.cast_params_once:  # once here, not inside every decode step of the loops below
        params = params_in_compute_dtype(model.config, params)
    # Pin the parameters' layout: otherwise XLA may all-gather the float32 masters whole before the loops, a
    # 4-byte copy of every parameter on every device. Converted where they lie first, then gathered: the
    # gathers move compute-dtype bytes.
    layout = None
    if rules is not None:
        sharded = sampling_param_shardings(model, False)
        layout = sampling_param_shardings(model, True) if config.gather_params_once else sharded
        params = jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(params, sharded), layout)

    def rows(x, axes):  # shard rows of per-completion state over the batch axes of the mesh
        return x if rules is None else jax.lax.with_sharding_constraint(
            x, logical_sharding(axes, x.shape, rules.mesh, rules.rules))

    # The cache of new tokens grows in phases: while generating tokens ends[i - 1] ... ends[i] - 1 it has
    # ends[i] slots. Phases hold whole chunks of steps, so no chunk crosses a phase's end.
    phase = -(-config.decode_phase_tokens // chunk) * chunk
    ends = [*range(phase, total, phase), total]
    cache_axes = ("batch", "kv_heads", "length", "head_dim")

    # Prefill: once per prompt. Its keys and values stay one copy per prompt: the G completions (rows
    # i * G ... i * G + G - 1) attend them as a shared prefix, and their own cache holds only new tokens.
    # Only the last prompt position's logits are needed: the LM head runs on [B, D], not [B, P, D] (no
    # [B, P, V] float32 logits), the same matmul the model's own head does.
    hidden_BxPxD, prompt_cache = model.apply(
        {"params": params}, prompt_ids, positions_from_mask(prompt_mask), prompt_mask,
        cache=init_cache(model.config, b, p), cache_index=0, return_hidden=True,
    )
    head = unembedding_matrix(model.config, params).astype(model.config.dtype)
    last_logits_BxV = dense(hidden_BxPxD[:, -1], head, preferred_element_type=jnp.float32)
    last_logits_NxV = rows(jnp.repeat(last_logits_BxV, num_generations, axis=0), ("batch", "vocab"))
    cache = jax.tree.map(lambda x: rows(x, cache_axes), init_cache(model.config, n, ends[0]))
    kv_mask = rows(jnp.zeros((n, ends[0]), jnp.int32), ("batch", "length"))
    first_position = jnp.repeat(jnp.sum(prompt_mask, axis=1), num_generations)  # rotary position of token 0

    # stop sequences: single tokens act as EOS ids; longer ones are grouped by length (one slice per length),
    # and those that cannot fit in max_new_tokens are dropped
    stop_ids = config.eos_token_ids + tuple(s[0] for s in config.stop_sequences if len(s) == 1)
    longer_stops: dict[int, list[tuple[int, ...]]] = {}
    for s in config.stop_sequences:
        if 1 < len(s) <= new:
            longer_stops.setdefault(len(s), []).append(s)

    def keep_going(state: DecodeState, end: int):
        return (state.step < end) & ~jnp.all(state.done)

    def step(state: DecodeState) -> DecodeState:
        t = state.step
        key, sub = jax.random.split(state.key)
        token, lp, plp = _choose(state.last_logits, sub, config)
        live = ~state.done & (t < new)  # steps past max_new_tokens (the last chunk's) change nothing
        token = jnp.where(live, token, config.pad_token_id).astype(jnp.int32)
        done = state.done | (live & jnp.isin(token, jnp.asarray(stop_ids, jnp.int32)))
        for k, sequences in longer_stops.items():  # the stop sequences of k > 1 tokens that end at step t
            previous = jax.lax.dynamic_slice_in_dim(state.tokens, t - (k - 1), k - 1, axis=1)  # [N, k - 1]
            table = jnp.asarray(sequences, jnp.int32)  # [S, k]
            ends_here = jnp.any(jnp.all(previous[:, None] == table[:, :-1], axis=-1)
                                & (token[:, None] == table[:, -1]), axis=-1)
            # before step k - 1 the slice's start is clamped to 0 and would compare the wrong tokens
            done = done | (live & ends_here & (t >= k - 1))
        kv_mask = state.kv_mask.at[:, t].set(live.astype(state.kv_mask.dtype))
        weights = params
        if layout is not None and not config.gather_params_once:
            # sharded weights gathered as each layer uses them, every step: the barrier ties them to the step
            # counter, so XLA cannot hoist the gathers out of the loop (a whole copy, which would not fit)
            weights, _ = jax.lax.optimization_barrier((params, t))
            weights = jax.lax.with_sharding_constraint(weights, layout)
        logits, cache = model.apply(
            {"params": weights}, token[:, None], (first_position + t)[:, None], kv_mask, cache=state.cache,
            cache_index=t, prefix=prompt_cache, prefix_mask=prompt_mask,
        )
        return state.replace(
            step=t + 1, last_logits=logits[:, 0],
            tokens=state.tokens.at[:, t].set(token),
            mask=state.mask.at[:, t].set(live.astype(jnp.int32)),
            logprobs=state.logprobs.at[:, t].set(jnp.where(live, lp, 0.0)),
            policy_logprobs=state.policy_logprobs.at[:, t].set(jnp.where(live, plp, 0.0)),
            done=done, cache=cache, kv_mask=kv_mask, key=key,
        )

    def steps(state: DecodeState) -> DecodeState:
        # the steps between two checks; a fixed trip count, which XLA's GPU runtime runs unwaited
        return step(state) if chunk == 1 else jax.lax.fori_loop(0, chunk, lambda _, s: step(s), state)

    state = DecodeState(
        step=jnp.int32(0), last_logits=last_logits_NxV,
        tokens=jnp.full((n, total), config.pad_token_id, jnp.int32), mask=jnp.zeros((n, total), jnp.int32),
        logprobs=jnp.zeros((n, total), jnp.float32), policy_logprobs=jnp.zeros((n, total), jnp.float32),
        # rows of bucket padding (no prompt token: generate() refuses such a real row) are done from the
        # start; otherwise they decode freely and, rarely drawing a stop token, keep the loop to its end
        done=rows(jnp.repeat(~jnp.any(prompt_mask.astype(bool), axis=1), num_generations), ("batch",)),
        cache=cache, kv_mask=kv_mask, key=key,
    )
    for phase_index, end in enumerate(ends):
        if phase_index:  # the next phase: room for its tokens (a copy of the cache per phase, not per step)
            grow = end - ends[phase_index - 1]
            state = state.replace(
                cache=jax.tree.map(
                    lambda x, grow=grow: rows(jnp.pad(x, ((0, 0), (0, 0), (0, grow), (0, 0))), cache_axes),
                    state.cache),
                kv_mask=rows(jnp.pad(state.kv_mask, ((0, 0), (0, grow))), ("batch", "length")),
            )
        state = jax.lax.while_loop(lambda s, end=end: keep_going(s, end), steps, state)
    return SampleResult(state.tokens[:, :new], state.mask[:, :new], state.logprobs[:, :new],
                        state.policy_logprobs[:, :new], state.done, state.step)


_generate_jit = jax.jit(_generate_program, static_argnums=(0, 1))


GPU_STEPS_PER_CHECK = 16  # decode_steps_per_check's default on GPUs (docs/benchmarks.md: not yet measured)


def steps_per_check_for(platform: str) -> int:
    """``SamplingConfig.decode_steps_per_check``'s default on a JAX platform ("gpu", "cuda" or "rocm": 16;
    "cpu", "tpu" and others: 1, as their loops stop without a wait on the host)."""
    return GPU_STEPS_PER_CHECK if platform in ("gpu", "cuda", "rocm") else 1


def _platform(model: Transformer, params) -> str:
    """The platform the sampler will run on: the model's mesh, else where the parameters are."""
    if model.mesh_rules is not None:
        return model.mesh_rules.mesh.devices.flat[0].platform
    leaf = jax.tree.leaves(params)[0]
    return next(iter(leaf.devices())).platform if isinstance(leaf, jax.Array) else jax.default_backend()


def _check_prompts(prompt_ids, prompt_mask, vocab_size: int, pad_token_id: int) -> None:
    fn = "generate"
    if pad_token_id >= vocab_size:
        raise ValueError(f"generate: `pad_token_id` {pad_token_id} is not a token id of the model (vocab_size="
                         f"{vocab_size}); its embedding would be NaN and spread to every row")
    v.require_rank(fn, "prompt_ids", prompt_ids, (2,), "[B, P] left-padded prompt token ids")
    v.require_integer(fn, "prompt_ids", prompt_ids)
    v.require_same_shape(fn, "prompt_mask", prompt_mask, "prompt_ids", prompt_ids)
    if v.shape_of(prompt_ids)[0] == 0 or v.shape_of(prompt_ids)[1] == 0:
        raise ValueError(f"generate: `prompt_ids` is empty, shape {v.shape_of(prompt_ids)}")
    ids = np.asarray(jax.device_get(prompt_ids))
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"generate: `prompt_ids` must lie in [0, vocab_size={vocab_size}), got values in "
                         f"[{ids.min()}, {ids.max()}] (an out-of-range id's embedding is NaN, padding included)")
    mask = np.asarray(jax.device_get(prompt_mask)).astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"generate: prompt row(s) {empty[:5].tolist()} have no tokens (all of prompt_mask is 0)")
    # left padding: once a row's real tokens start, they continue to the last column
    not_left_padded = np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
    if not_left_padded.size:
        raise ValueError(
            f"generate: prompts must be left-padded (real tokens flush with the last column); row(s) "
            f"{not_left_padded[:5].tolist()} are not. Use a tokenizer with padding_side='left'."
        )


def generate(
    model: Transformer,
    params: dict,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    config: SamplingConfig,
) -> SampleResult:
    """Sample ``config.num_generations`` completions for each of the B left-padded prompts.

    Args:
      model, params: from grpo_jax.models (a model built with a mesh shards rows over its batch axes).
      prompt_ids: [B, P] int token ids, left-padded; prompt_mask: [B, P], 1 on real tokens.
      key: a jax.random key; the same key gives the same completions (on any mesh).
      config: SamplingConfig.

    Returns a SampleResult with B * G rows (row i * G + j = completion j of prompt i).
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"generate: `config` must be a SamplingConfig, got {type(config).__name__}")
    _check_prompts(prompt_ids, prompt_mask, model.config.vocab_size, config.pad_token_id)
    if config.decode_steps_per_check is None:
        config = dataclasses.replace(config, decode_steps_per_check=steps_per_check_for(_platform(model, params)))
    b, p = v.shape_of(prompt_ids)
    bb, pb = bucket_size(b, config.batch_buckets), bucket_size(p, config.prompt_length_buckets)
    ids = np.full((bb, pb), config.pad_token_id, np.int32)
    mask = np.zeros((bb, pb), np.int32)
    ids[:b, pb - p:] = np.asarray(jax.device_get(prompt_ids))
    mask[:b, pb - p:] = np.asarray(jax.device_get(prompt_mask))
    if model.mesh_rules is not None:
        rules = model.mesh_rules
        # each process copies only its own devices' rows (multi-host: no host sends another's shards)
        ids, mask = (global_rows(x, logical_sharding(("batch", "length"), x.shape, rules.mesh, rules.rules))
                     for x in (ids, mask))
    result = _generate_jit(model, config, params, ids, mask, key)
    n = b * config.num_generations  # drop the rows of bucket padding
    return result.replace(**{f: getattr(result, f)[:n] for f in
                             ("tokens", "mask", "logprobs", "policy_logprobs", "finished")})
