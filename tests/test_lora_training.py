"""GRPO with LoRA end to end (model.lora_rank > 0): only adapters train and reach the checkpoints; the reference
policy is the frozen base, exactly and without a second copy of its weights (XLA's memory analysis); resume is
exact and refuses another base; meshes agree; the export merges, or writes a PEFT adapter."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_runs import params_equal, tiny_config, train_until_crash

from grpo_jax import cli
from grpo_jax.errors import ConfigError
from grpo_jax.metrics import read_metrics
from grpo_jax.models import forward, split_adapters
from grpo_jax.models.lora import count_params
from grpo_jax.trainer import build_context, restore_params, train
from grpo_jax.trainer.loop import GRPOTrainer
from grpo_jax.trainer.step import make_logprobs_fn

LORA = ("model.lora_rank=8", "model.lora_alpha=16")


def _final_params(config, run_dir):
    return jax.device_get(restore_params(*build_context(config, str(run_dir)))[0])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """4 LoRA steps with the KL penalty (beta 0.04), mu = 2 and a checkpoint every step."""
    run_dir = tmp_path_factory.mktemp("lora")
    config = tiny_config(*LORA, "save_steps=1", "num_iterations=2")
    train(config, output_dir=str(run_dir))
    return config, run_dir, read_metrics(run_dir), _final_params(config, run_dir)


def test_only_the_adapters_train_and_reach_the_checkpoint(lora_run):
    config, run_dir, records, final = lora_run
    base_now, adapters = split_adapters(final)
    _, initial = build_context(config)
    base_before, adapters_before = split_adapters(jax.device_get(initial))
    assert params_equal(base_now, base_before)  # the frozen base is the one the run was built with
    assert not params_equal(adapters, adapters_before)  # and the adapters moved (B is no longer zero)
    assert any(np.any(x) for x in jax.tree.leaves(split_adapters(adapters)[1]))
    trainable, total = count_params(adapters), count_params(final)
    for r in records[1:]:
        assert (r["params/trainable"], r["params/total"]) == (trainable, total)
        assert r["kl"] > 0 and np.isfinite(r["loss"])
        assert r["learning_rate"] == pytest.approx(30 * config.optimizer.learning_rate)  # optimizer.lora_lr_scale
    # the checkpoint's arrays: the adapters and their AdamW moments, no base kernel, no reference copy
    tree = json.loads((run_dir / "checkpoints" / "4" / "state" / "_METADATA").read_text())["tree_metadata"]
    leaves = [eval(path) for path in tree]  # noqa: S307 - orbax writes the key paths as tuple literals
    adapter_leaves = [p for p in leaves if p[-1].endswith(("_lora_a", "_lora_b"))]
    assert len(adapter_leaves) == 7 * 2 * 3  # 7 projections x (A, B) x (params, mu, nu)
    others = sorted(p for p in leaves if p not in adapter_leaves)  # counters, step, rng; the rest saved as None
    assert others == [("frozen",), ("opt_state", "0"), ("opt_state", "1", "0", "count"), ("opt_state", "1", "1"),
                      ("opt_state", "1", "2", "count"), ("ref_params",), ("rng",), ("step",)]
    meta = json.loads((run_dir / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["lora_base"]["path"] is None and meta["lora_base"]["seed"] == config.run.seed
    assert meta["lora_base"]["fingerprint"] > 0


def test_resume_is_bit_identical(lora_run, tmp_path, monkeypatch):
    config, _, reference, final = lora_run
    train_until_crash(config, str(tmp_path), monkeypatch)
    train(config, output_dir=str(tmp_path), resume=True)
    resumed = read_metrics(tmp_path)
    for a, b in zip(reference, resumed, strict=True):
        for key in ("loss", "reward/mean", "kl", "grad_norm", "eval/accuracy"):
            if key in a:
                assert a[key] == b[key], (a["step"], key)
    assert params_equal(final, _final_params(config, tmp_path))


def test_resuming_on_another_base_is_refused(lora_run, tmp_path):
    """The checkpoint points at its base (a from-scratch base: the seed): another seed builds another base."""
    config, run_dir, _, _ = lora_run
    other = tiny_config(*LORA, "save_steps=1", "num_iterations=2", "run.seed=7", "max_steps=5")
    with pytest.raises(ConfigError, match="trained on another base model"):
        GRPOTrainer(*build_context(other, str(run_dir)), resume=True)


def test_reference_is_the_base_exactly_with_no_second_copy(tmp_path):
    """beta > 0 under LoRA: the reference log-probs equal those of a separately built base model over a
    separately initialised copy of the base, bit for bit, after the adapters have moved. The state holds no
    reference copy, and XLA's memory analysis of the update and of the reference pass shows no base-sized
    buffer besides the base itself (a second copy, e.g. merged weights, would be one)."""
    overrides = ("hidden_size=128", "intermediate_size=512", "num_hidden_layers=2", "eval_examples=0",
                 "save_steps=0", "max_steps=1")
    ctx, params = build_context(tiny_config(*overrides, *LORA), str(tmp_path / "lora"))
    trainer = GRPOTrainer(ctx, params)
    trainer.step(1)
    state = trainer.state
    assert state.ref_params is None and state.reference_params() is state.frozen
    plain_ctx, plain_params = build_context(tiny_config(*overrides), str(tmp_path / "plain"))  # same seed: same base
    ids = np.asarray(jax.random.randint(jax.random.key(3), (8, 12), 3, ctx.model.config.vocab_size), np.int32)
    mask = np.ones_like(ids)
    ref = trainer.reference_logprobs(state.reference_params(), ids, mask, 4)
    separate = make_logprobs_fn(plain_ctx.model, plain_ctx.mesh, 1.0)(plain_params, ids, mask, 4)
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(separate))
    policy = trainer.logprobs(state.policy_params(), ids, mask, 4)
    assert float(jnp.max(jnp.abs(policy - ref))) > 0  # the adapters moved the policy away from it

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    base_bytes, adapter_bytes = nbytes(state.frozen), nbytes(state.params)
    assert nbytes(state.opt_state) < 2.1 * adapter_bytes  # moments of the adapters only
    assert adapter_bytes < 0.2 * base_bytes
    # the reference pass: its arguments are the base once and the batch; nothing base-sized is made
    analysis = trainer.reference_logprobs.lower(state.reference_params(), ids, mask, 4).compile().memory_analysis()
    assert base_bytes <= analysis.argument_size_in_bytes < base_bytes + 4096
    assert analysis.temp_size_in_bytes < 0.5 * base_bytes
    # the update: the base once (not donated, not returned), the trained state and the batch
    batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": np.ones((8, 4), np.float32),
             "advantages": np.linspace(-1, 1, 8).astype(np.float32), "old_logprobs": np.asarray(policy),
             "ref_logprobs": np.asarray(ref)}
    analysis = trainer.update.lower(state, batch, 1).compile().memory_analysis()
    trained_bytes = nbytes(state.replace(frozen=None))
    assert analysis.argument_size_in_bytes < base_bytes + trained_bytes + 4096
    assert analysis.output_size_in_bytes < trained_bytes + 4096
    assert analysis.temp_size_in_bytes < 0.5 * base_bytes


def test_fsdp_and_tensor_meshes_match_one_device(tmp_path):
    losses, params = [], []
    for i, overrides in enumerate((["run.num_devices=1"], ["run.mesh=fsdp:4,tensor:2"], ["run.mesh=fsdp:8"])):
        config = tiny_config(*LORA, "max_steps=2", "eval_examples=0", "save_steps=2", *overrides)
        train(config, output_dir=str(tmp_path / str(i)))
        losses.append([r["loss"] for r in read_metrics(tmp_path / str(i))])
        params.append(_final_params(config, tmp_path / str(i)))
    for other_losses, other_params in zip(losses[1:], params[1:], strict=True):
        np.testing.assert_allclose(other_losses, losses[0], rtol=1e-4, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params[0], other_params)


def test_merged_sampling_trains_like_unmerged(tmp_path):
    """model.lora_merged_sampling decodes from W + s A B: in float32 the same tokens, so the same run."""
    runs = []
    for merged in ("false", "true"):
        config = tiny_config(*LORA, "max_steps=2", "eval_examples=0", "save_steps=0",
                             f"model.lora_merged_sampling={merged}")
        train(config, output_dir=str(tmp_path / merged))
        runs.append(read_metrics(tmp_path / merged))
    for a, b in zip(*runs, strict=True):
        assert a["reward/mean"] == b["reward/mean"] and a["completion/length_mean"] == b["completion/length_mean"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)


def test_sft_warm_up_trains_the_adapters(tmp_path):
    config = tiny_config(*LORA, "max_steps=1", "eval_examples=0", "save_steps=0", "sft.steps=3")
    ctx, params = build_context(config, str(tmp_path))
    base_before, adapters_before = split_adapters(jax.device_get(params))
    from grpo_jax.trainer.sft import run_sft

    after = jax.device_get(run_sft(ctx, params))
    base_after, adapters_after = split_adapters(after)
    assert params_equal(base_before, base_after) and not params_equal(adapters_before, adapters_after)


def test_export_merges_and_writes_a_peft_adapter(lora_run, tmp_path):
    """The merged export computes the LoRA policy's logits in transformers; --adapter-only writes PEFT's files,
    whose tensors re-merge (in NumPy, independently) to the exported weights."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    config, run_dir, _, final = lora_run
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    assert cli.main(["export", str(run_dir), str(merged_dir)]) == 0
    assert cli.main(["export", str(run_dir), str(adapter_dir), "--adapter-only"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter_dir))

    ctx, _ = build_context(config)
    ids = np.array([[5, 6, 7, 8, 9, 10]], np.int32)
    ours = np.asarray(forward(ctx.model, jax.tree.map(jnp.asarray, final), ids, np.ones_like(ids)))
    hf = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)

    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    weights = load_file(merged_dir / "model.safetensors")
    scale = json.loads((adapter_dir / "adapter_config.json").read_text())["lora_alpha"] / 8
    base = split_adapters(final)[0]["layers_0"]["mlp"]["down_kernel"]
    prefix = "base_model.model.model.layers.0.mlp.down_proj"
    remerged = np.asarray(base).T + scale * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
    np.testing.assert_allclose(weights["model.layers.0.mlp.down_proj.weight"], remerged, rtol=1e-5, atol=1e-6)
    assert cli.main(["export", str(run_dir), str(tmp_path / "again"), "--adapter-only"]) == 0


def test_adapter_only_export_of_a_full_run_is_an_error(tmp_path, capsys):
    config = tiny_config("max_steps=1", "eval_examples=0", "save_steps=1")
    train(config, output_dir=str(tmp_path / "run"))
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--adapter-only"]) == 2
    assert "has no adapters" in capsys.readouterr().err and not (tmp_path / "out").exists()
