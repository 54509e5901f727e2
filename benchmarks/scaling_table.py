"""Per-device memory of a GRPO step for Qwen2.5 0.5B-32B on v5e-8, v5p-16 and 8 x H100: the tables of docs/scaling.md.

Everything here is arithmetic on shapes, not a measurement: parameter shards come from the model's own
logical axes (``param_logical_axes``) and the mesh rules (``grpo_jax.sharding.logical_to_mesh_spec``),
activations and temporaries from the formulas in docs/scaling.md. Nothing is allocated or compiled.

    python benchmarks/scaling_table.py            # print the generated blocks
    python benchmarks/scaling_table.py --write    # rewrite them in docs/scaling.md
    python benchmarks/scaling_table.py --check    # exit 1 if docs/scaling.md is out of date
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from grpo_jax.models import ModelConfig, build_model, param_logical_axes, param_shapes
from grpo_jax.models.memory import parameter_count
from grpo_jax.sharding import logical_to_mesh_spec

GIB = 2**30
DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"

# Architectures as published in each checkpoint's config.json (Qwen/Qwen2.5-*): hidden_size,
# intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
# tie_word_embeddings. Qwen2 has biases on q/k/v and none on o; head_dim = hidden / heads.
QWEN25 = {
    "Qwen2.5-0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "Qwen2.5-1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2.5-7B": (3584, 18944, 28, 28, 4, 152064, False),
    "Qwen2.5-32B": (5120, 27648, 64, 40, 8, 152064, False),
}


def model_config(name: str) -> ModelConfig:
    """The ModelConfig of a Qwen2.5 checkpoint, bf16 compute with per-layer remat (the recipes' settings)."""
    d, f, layers, heads, kv_heads, vocab, tied = QWEN25[name]
    return ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=d, intermediate_size=f,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=d // heads, tie_word_embeddings=tied, qkv_bias=True,
                       dtype=jnp.bfloat16, remat=True)


@dataclasses.dataclass(frozen=True)
class Platform:
    name: str
    chips: int  # JAX devices (one per chip: a v5p chip's two TensorCores are one megacore device)
    hosts: int
    hbm_gib: float  # per device


PLATFORMS = (
    Platform("v5e-8", chips=8, hosts=1, hbm_gib=16),
    Platform("v5p-16", chips=8, hosts=2, hbm_gib=95),
    Platform("8×H100", chips=8, hosts=1, hbm_gib=80),
)
USABLE_FRACTION = 0.9  # what an estimate may use: the rest is XLA's scratch, fragmentation, runtime reserve
COMFORTABLE_FRACTION = 0.75  # below this the estimate's own error (tens of percent) should not matter


@dataclasses.dataclass(frozen=True)
class Workload:
    """One GRPO step: B prompts x G completions, prompt P + completion T tokens (the GSM8K recipes' shape)."""

    prompts: int = 16  # data.batch_size (B)
    group: int = 16  # sampling.num_generations (G)
    prompt_len: int = 512  # data.max_prompt_length (P)
    completion_len: int = 1024  # sampling.max_new_tokens (T)
    beta: float = 0.04  # > 0: a reference model is kept
    num_minibatches: int = 1
    param_bytes: int = 4  # float32 master weights (model.param_dtype)
    reference_bytes: int = 4  # the trainer copies the parameters, so the reference has their dtype
    moment_bytes: int = 8  # AdamW's mu and nu, in the parameters' dtype (optax's default)
    compute_bytes: int = 2  # bfloat16 activations and KV cache (model.dtype)
    cast_params_once: bool = True  # sampling.cast_params_once: the sampler holds the parameters in model.dtype
    gather_params_once: bool = True  # sampling.gather_params_once: with FSDP the sampler gathers them whole once
    logprob_chunk: int = 128  # token_logprobs_from_hidden's time chunk

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.completion_len


WORKLOAD = Workload()
MESHES = ("data:8", "fsdp:8", "fsdp:4,tensor:2", "fsdp:2,tensor:4", "tensor:8")  # the order of preference


# ---- shards ---------------------------------------------------------------------------------------------

def parse_mesh(spec: str) -> dict[str, int]:
    """ "fsdp:4,tensor:2" -> {"fsdp": 4, "tensor": 2}: run.mesh's syntax with explicit sizes (the test checks
    that grpo_jax.trainer.config.parse_mesh reads every mesh here the same way)."""
    return {name: int(size) for name, size in (part.split(":") for part in spec.split(","))}


def _mesh(axes: Mapping[str, int]):
    """What logical_to_mesh_spec reads of a mesh (its axis sizes), without needing the devices."""
    return types.SimpleNamespace(shape=dict(axes))


def shard_factor(logical_axes: Sequence[str | None], shape: Sequence[int], axes: Mapping[str, int]) -> int:
    """Over how many devices an array with these logical axes is split on a mesh of ``axes`` (the rest of
    the mesh holds replicas): the mesh rules' own choice, including dimensions they leave whole."""
    spec = logical_to_mesh_spec(logical_axes, shape, _mesh(axes))
    used = [a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)]
    return math.prod(axes[a] for a in used)


def per_device_elements(logical_axes, shape, axes) -> float:
    return math.prod(shape) / shard_factor(logical_axes, shape, axes)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """Parameter tensors (logical axes, shape) of a model: those outside the layers, and one layer's."""

    outer: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]
    layer: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]
    num_layers: int

    def elements_per_device(self, axes: Mapping[str, int]) -> tuple[float, float]:
        """(all parameters, one layer's) elements held by one device."""
        one_layer = sum(per_device_elements(a, s, axes) for a, s in self.layer)
        return sum(per_device_elements(a, s, axes) for a, s in self.outer) + self.num_layers * one_layer, one_layer


def param_layout(config: ModelConfig) -> ParamLayout:
    """From the model itself: a one-layer copy of the architecture (layers are identical) traced abstractly."""
    model = build_model(config.replace(num_hidden_layers=1))
    flat_axes = jax.tree_util.tree_flatten_with_path(param_logical_axes(model),
                                                     is_leaf=lambda x: isinstance(x, tuple))[0]
    shapes = dict(jax.tree_util.tree_flatten_with_path(param_shapes(model))[0])
    outer, layer = [], []
    for path, logical in flat_axes:
        entry = (tuple(logical), tuple(shapes[path].shape))
        (layer if str(getattr(path[0], "key", path[0])).startswith("layers_") else outer).append(entry)
    layout = ParamLayout(tuple(outer), tuple(layer), config.num_hidden_layers)
    total = sum(math.prod(s) for _, s in layout.outer) + layout.num_layers * sum(math.prod(s) for _, s in layout.layer)
    assert total == parameter_count(config), (total, parameter_count(config))
    return layout


# ---- the estimate ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per device. Persistent: params, moments, reference. Sampling adds the KV cache and the sampler's
    temporaries; the update adds gradients and activations. Peak = persistent + the larger of the two phases."""

    mesh: str
    accumulation: int  # optimizer.gradient_accumulation_steps
    params: float
    grads: float
    moments: float
    reference: float
    kv_cache: float
    sampler_temps: float
    activations: float  # saved layer inputs + one layer's recompute + a log-prob chunk
    weight_copies: float  # bf16 (all-gathered, for FSDP) copies of two layers and the unembedding
    sampling_params: float  # the sampler's compute-dtype copy of the (sharded) parameters

    @property
    def persistent(self) -> float:
        return self.params + self.moments + self.reference

    @property
    def sampling_peak(self) -> float:
        return self.persistent + self.kv_cache + self.sampler_temps + self.weight_copies + self.sampling_params

    @property
    def update_peak(self) -> float:
        return self.persistent + self.grads + self.activations + self.weight_copies

    @property
    def peak(self) -> float:
        return max(self.sampling_peak, self.update_peak)


def estimate(config: ModelConfig, mesh: str, accumulation: int = 1, workload: Workload = WORKLOAD,
             layout: ParamLayout | None = None) -> Estimate:
    """The per-device estimate of one GRPO step of ``workload`` with ``config`` on ``mesh`` (docs/scaling.md)."""
    w, c = workload, config
    axes = parse_mesh(mesh)
    layout = layout or param_layout(config)
    n_params, n_layer = layout.elements_per_device(axes)
    d, f, h, k, dh, v, layers = (c.hidden_size, c.intermediate_size, c.num_attention_heads,
                                 c.num_key_value_heads, c.head_dim, c.vocab_size, c.num_hidden_layers)
    s, cb = w.seq_len, w.compute_bytes

    params = n_params * w.param_bytes
    grads = params * (1 if accumulation == 1 else 2)  # lax.scan: the running sum and one micro-batch's gradient
    moments = n_params * w.moment_bytes  # AdamW mu and nu, sharded like the parameters
    reference = n_params * w.reference_bytes if w.beta > 0 else 0.0

    # Sampling: every layer's k and v for the B prompts' P slots, shared by their G completions, and for the
    # B*G completions' own T slots.
    cache_axes = ("batch", "kv_heads", "length", "head_dim")
    kv = 2 * layers * cb * (per_device_elements(cache_axes, (w.prompts, k, w.prompt_len, dh), axes)
                            + per_device_elements(cache_axes, (w.rows, k, w.completion_len, dh), axes))
    prefill_logits = per_device_elements(("batch", "vocab"), (w.prompts, v), axes) * 4  # the last position only
    # XLA's buffer assignment of the sampler (CPU, vocabulary 151,936, 256 rows) holds two [rows, V] fp32
    # arrays at temperature 1 and three otherwise (the logits divided by it): count three
    decode_logits = 3 * per_device_elements(("batch", "vocab"), (w.rows, v), axes) * 4
    sampler_temps = max(prefill_logits, decode_logits)
    # sampling.cast_params_once: the parameters converted to the compute dtype once per rollout, sharded like them;
    # sampling.gather_params_once: on an FSDP mesh that copy (or the masters, uncast) is gathered whole once per
    # rollout, split only by the other axes
    no_fsdp = {a: n for a, n in axes.items() if a != "fsdp"}
    copy_bytes = cb if w.cast_params_once else w.param_bytes
    if w.gather_params_once and axes.get("fsdp", 1) > 1:
        sampling_params = layout.elements_per_device(no_fsdp)[0] * copy_bytes
    else:
        sampling_params = n_params * cb if w.cast_params_once and cb != w.param_bytes else 0.0

    # Update, with remat: each layer keeps its bf16 input; one layer is recomputed at a time.
    micro = w.rows // w.num_minibatches // accumulation
    saved = (layers + 1) * per_device_elements(("batch", "length", "embed"), (micro, s, d), axes) * cb
    # One block of queries at a time (grpo_jax.models.attention): fp32 scores, bf16 probs, their gradients.
    block = min(c.attention_query_block, s)
    scores = per_device_elements(("batch", "heads", "length", None), (micro, h, block, s), axes) * 12
    mlp = per_device_elements(("batch", "length", "mlp"), (micro, s, f), axes) * 16  # gate, up, product + grads, bf16
    logprob_chunk = 4 * per_device_elements(("batch", None, "vocab"), (micro, w.logprob_chunk, v), axes) * 4
    activations = saved + scores + mlp + logprob_chunk

    # bf16 copies made for the matmuls: without FSDP the cast of a layer; with FSDP the all-gathered layer
    # (two in flight: XLA prefetches the next) and the unembedding for the log-probs.
    _, gathered_layer = layout.elements_per_device(no_fsdp)
    unembedding = per_device_elements(("embed", "vocab"), (d, v), no_fsdp)
    weight_copies = (2 * gathered_layer + unembedding) * cb
    return Estimate(mesh, accumulation, params, grads, moments, reference, kv, sampler_temps, activations,
                    weight_copies, sampling_params)


def accumulation_choices(mesh: str, workload: Workload = WORKLOAD) -> list[int]:
    """Gradient-accumulation steps that keep every micro-batch's rows evenly sharded over the batch axes."""
    axes = parse_mesh(mesh)
    batch_shards = axes.get("data", 1) * axes.get("fsdp", 1)
    minibatch = workload.rows // workload.num_minibatches
    return [a for a in (2**i for i in range(12)) if minibatch % a == 0 and (minibatch // a) % batch_shards == 0]


def best_fit(config: ModelConfig, platform: Platform, workload: Workload = WORKLOAD,
             layout: ParamLayout | None = None, meshes: Sequence[str] = MESHES) -> tuple[Estimate, str]:
    """The mesh to pick and its estimate, with a verdict: "fits" (peak <= COMFORTABLE_FRACTION of HBM),
    "tight" (<= USABLE_FRACTION) or "no". The first mesh of ``meshes`` (fewest accumulation steps) that fits
    comfortably, else the first that fits tightly, else the estimate with the smallest peak."""
    layout = layout or param_layout(config)
    found = [estimate(config, mesh, accumulation, workload, layout)
             for mesh in meshes for accumulation in accumulation_choices(mesh, workload)]
    for fraction, verdict in ((COMFORTABLE_FRACTION, "fits"), (USABLE_FRACTION, "tight")):
        for e in found:
            if e.peak <= fraction * platform.hbm_gib * GIB:
                return e, verdict
    return min(found, key=lambda e: e.peak), "no"


def scaled_meshes(chips: int) -> list[str]:
    """FSDP over ``chips``, then FSDP x tensor with tensor 2, 4, 8."""
    return [f"fsdp:{chips // t}" + (f",tensor:{t}" if t > 1 else "") for t in (1, 2, 4, 8) if chips // t >= 1]


def chips_needed(config: ModelConfig, platform: Platform, workload: Workload = WORKLOAD,
                 layout: ParamLayout | None = None) -> tuple[int, Estimate] | None:
    """Fewest chips (a power of two from 16 to 512) of this platform's kind on which some FSDP (x tensor)
    mesh fits (peak <= USABLE_FRACTION of HBM), with that mesh's estimate."""
    layout = layout or param_layout(config)
    for n in (2**i for i in range(4, 10)):
        e, verdict = best_fit(config, platform, workload, layout, scaled_meshes(n))
        if verdict != "no":
            return n, e
    return None


def _slice_name(platform: Platform, chips: int) -> str:
    if platform.name.startswith("v5e"):
        return f"v5e-{chips}"
    if platform.name.startswith("v5p"):
        return f"v5p-{2 * chips}"
    return f"{chips // 8} × 8×H100"


def advice(config: ModelConfig, platform: Platform, verdict: str, e: Estimate, layout: ParamLayout) -> str:
    if verdict != "no":
        text = f"`optimizer.gradient_accumulation_steps={e.accumulation}`" if e.accumulation > 1 else "as is"
        return text + (" (tight: above 75% of HBM)" if verdict == "tight" else "")
    options = []
    e0, verdict0 = best_fit(config, platform, dataclasses.replace(WORKLOAD, beta=0.0), layout)
    if verdict0 != "no":
        options.append(f"`grpo.beta=0` (no reference model): {e0.peak / GIB:.1f} GiB on `{e0.mesh}`, "
                       f"accumulation {e0.accumulation}" + (" (tight)" if verdict0 == "tight" else ""))
    needed = chips_needed(config, platform, WORKLOAD, layout)
    if needed:
        n, en = needed
        options.append(f"{_slice_name(platform, n)} with `{en.mesh}`: {en.peak / GIB:.1f} GiB, "
                       f"accumulation {en.accumulation}")
    return "**does not fit**; " + ("; or ".join(options) if options else "needs more than 512 chips")


# ---- the doc's generated blocks --------------------------------------------------------------------------

def architecture_rows() -> list[str]:
    rows = ["| model | hidden | layers | heads / kv heads | head dim | intermediate | vocab | tied | parameters N |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in QWEN25:
        c = model_config(name)
        rows.append(f"| {name} | {c.hidden_size} | {c.num_hidden_layers} | {c.num_attention_heads} / "
                    f"{c.num_key_value_heads} | {c.head_dim} | {c.intermediate_size:,} | {c.vocab_size:,} | "
                    f"{'yes' if c.tie_word_embeddings else 'no'} | {parameter_count(c):,} |")
    return rows


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def scaling_rows() -> list[str]:
    rows = ["| model | platform (HBM GiB per chip) | mesh | params + grads + AdamW | reference | KV cache | "
            "update activations | peak | fits? what to set or change |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in QWEN25:
        config = model_config(name)
        layout = param_layout(config)
        for platform in PLATFORMS:
            e, verdict = best_fit(config, platform, WORKLOAD, layout)
            rows.append(
                f"| {name} | {platform.name} ({platform.hbm_gib:g}) | "
                f"{'`' + e.mesh + '`' if verdict != 'no' else '(' + e.mesh + ')'} | "
                f"{_gib(e.params + e.grads + e.moments)} | {_gib(e.reference)} | {_gib(e.kv_cache)} | "
                f"{_gib(e.activations)} | **{_gib(e.peak)}** | {advice(config, platform, verdict, e, layout)} |")
    return rows


def mesh_rows(name: str = "Qwen2.5-7B", accumulation: int = 4) -> list[str]:
    """The same model on each candidate mesh of 8 devices: why the table picks what it picks."""
    config = model_config(name)
    layout = param_layout(config)
    rows = ["| mesh | params + grads + AdamW | reference | KV cache | update activations | bf16 weight copies | "
            "sampling peak | update peak |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mesh in MESHES:
        e = estimate(config, mesh, accumulation, WORKLOAD, layout)
        rows.append(f"| `{mesh}` | {_gib(e.params + e.grads + e.moments)} | {_gib(e.reference)} | "
                    f"{_gib(e.kv_cache)} | {_gib(e.activations)} | {_gib(e.weight_copies)} | "
                    f"{_gib(e.sampling_peak)} | {_gib(e.update_peak)} |")
    return rows


LEVERS = (
    ("the table's step (fp32 reference, as the trainer keeps it)", {}),
    ("bf16 reference (not implemented: the trainer copies the fp32 parameters)", {"reference_bytes": 2}),
    ("`grpo.beta=0`: no reference model", {"beta": 0.0}),
    ("`sampling.num_generations=8` (G 8: 128 sequences)", {"group": 8}),
    ("`sampling.max_new_tokens=512`", {"completion_len": 512}),
    ("`sampling.cast_params_once=false`: the sampler gathers and reads the fp32 masters, no bf16 copy",
     {"cast_params_once": False}),
    ("`sampling.gather_params_once=false`: the sampler's weights stay FSDP-sharded, gathered layer by layer in every "
     "decode step", {"gather_params_once": False}),
    ("`model.param_dtype=bfloat16`: bf16 params, grads, moments, reference (lossy, see below)",
     {"param_bytes": 2, "moment_bytes": 4, "reference_bytes": 2}),
)


def lever_rows(name: str = "Qwen2.5-32B", platform: Platform = PLATFORMS[1], mesh: str = "fsdp:8") -> list[str]:
    """What each change saves for one model on one mesh (the fewest accumulation steps with the smallest peak)."""
    config = model_config(name)
    layout = param_layout(config)
    rows = ["| change | accumulation steps | persistent (params + AdamW + reference) | sampling peak | update peak | "
            f"peak | fits {platform.hbm_gib:g} GiB? |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, changes in LEVERS:
        workload = dataclasses.replace(WORKLOAD, **changes)
        e = min((estimate(config, mesh, a, workload, layout) for a in accumulation_choices(mesh, workload)),
                key=lambda e: e.peak)
        fraction = e.peak / (platform.hbm_gib * GIB)
        verdict = "yes" if fraction <= COMFORTABLE_FRACTION else "tight" if fraction <= USABLE_FRACTION else "no"
        rows.append(f"| {label} | {e.accumulation} | {_gib(e.persistent)} | {_gib(e.sampling_peak)} | "
                    f"{_gib(e.update_peak)} | **{_gib(e.peak)}** | {verdict} ({fraction:.0%}) |")
    return rows


def blocks() -> dict[str, str]:
    """Generated block name -> its markdown (between <!-- NAME:start --> and <!-- NAME:end --> in the doc)."""
    return {"architectures": "\n".join(architecture_rows()), "scaling": "\n".join(scaling_rows()),
            "meshes": "\n".join(mesh_rows()), "levers": "\n".join(lever_rows())}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def doc_blocks(text: str) -> dict[str, str]:
    """The generated blocks as they stand in the doc's text."""
    found = {}
    for name in blocks():
        match = _pattern(name).search(text)
        if match:
            found[name] = match.group(2).removesuffix("\n")
    return found


def render(text: str) -> str:
    for name, body in blocks().items():
        text, count = _pattern(name).subn(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), text)
        if count != 1:
            raise ValueError(f"{DOC} has {count} '<!-- {name}:start -->' blocks; expected 1")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"rewrite the generated blocks of {DOC}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {DOC} differs from the computation")
    args = parser.parse_args(argv)
    if args.write:
        DOC.write_text(render(DOC.read_text()))
        return 0
    if args.check:
        text = DOC.read_text()
        stale = render(text) != text
        print(f"{DOC}: {'out of date: run benchmarks/scaling_table.py --write' if stale else 'up to date'}")
        return int(stale)
    for name, body in blocks().items():
        print(f"## {name}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
