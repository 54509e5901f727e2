"""Two processes on localhost, each with 4 CPU devices, joined by jax.distributed (gloo), train on one
global 8-device mesh exactly like one process with 8 devices; they checkpoint and resume together; if one
dies, the other fails with an error within the heartbeat timeout instead of hanging."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from subprocess_lines import LineReader
from trainer_runs import tiny_config

from grpo_jax.metrics import read_metrics
from grpo_jax.trainer import build_context, restore_params, train

ROOT = Path(__file__).resolve().parents[1]
RUN = ["max_steps=3", "eval_steps=0", "save_steps=1", "run.mesh=data:2,fsdp:4", "num_iterations=2"]

_DRIVER = """
import sys
from grpo_jax import distributed
distributed.initialize()
from trainer_runs import tiny_config
from grpo_jax.trainer import train
resume = sys.argv[2] == "resume"
print("STARTED", flush=True)
train(tiny_config(*sys.argv[3:]), output_dir=sys.argv[1], resume=resume)
print("DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp_path, run_dir, mode, overrides, heartbeat_s=60):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                   GRPO_JAX_COORDINATOR_ADDRESS=f"localhost:{port}", GRPO_JAX_NUM_PROCESSES="2",
                   GRPO_JAX_PROCESS_ID=str(pid), GRPO_JAX_HEARTBEAT_TIMEOUT_S=str(heartbeat_s),
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
        procs.append(subprocess.Popen([sys.executable, str(driver), str(run_dir), mode, *overrides], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path))
    return procs


def _finish(procs, timeout=600):
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outputs.append(out)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _params(config, run_dir):
    return jax.device_get(restore_params(*build_context(config, str(run_dir)))[0])


# every host-side path that splits work between hosts: dynamic sampling regroups rows from several rollouts,
# process supervision scores steps per row, maj@k votes per prompt group; and a second iteration per batch
ALL_PATHS = [*RUN, "dynamic_sampling=true", "step_reward=arithmetic_steps", "eval_steps=3", "eval_num_samples=2",
             "max_resample_rounds=2"]
COMPARED = ("loss", "reward/mean", "advantage/abs_mean", "dynamic/rounds", "dynamic/informative_groups",
            "eval/accuracy", "eval/maj@2", "eval/pass@2")


def test_two_processes_train_like_one_and_resume_as_two_slices(tmp_path):
    """Two processes train 2 steps on one 8-device mesh and checkpoint; they resume for step 3 laid out as two
    slices (run.dcn_mesh: the data axis across the hosts over DCN, fsdp within each host over ICI). Metrics and
    final parameters equal one process's uninterrupted run, with every host-side path on (ALL_PATHS). One test
    covers them all: each launch of two processes costs about 30 s of start-up and compiles, and each
    one-process reference run as much again."""
    config = tiny_config(*ALL_PATHS)
    train(config, output_dir=str(tmp_path / "one"))
    one = read_metrics(tmp_path / "one")
    assert any("dynamic/rounds" in r for r in one) and any("eval/maj@2" in r for r in one)
    run_dir = tmp_path / "two"
    _finish(_launch(tmp_path, run_dir, "fresh", [*ALL_PATHS, "max_steps=2"]))
    assert sorted(os.listdir(run_dir / "checkpoints"))[-1] == "2"
    _finish(_launch(tmp_path, run_dir, "resume", [*ALL_PATHS, "run.mesh=fsdp:4", "run.dcn_mesh=data:2"]))
    assert sorted(os.listdir(run_dir / "checkpoints"))[-1] == "3"

    two = read_metrics(run_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two, strict=True):
        shared = [k for k in COMPARED if k in a]
        np.testing.assert_allclose([b[k] for k in shared], [a[k] for k in shared], rtol=1e-4, atol=1e-6)
        if "rollout/rows_scored_here" in a:  # process 0 decoded and rewarded only the rows its devices hold;
            # dynamic sampling keeps groups of several rollouts, so the kept rows need not split in half
            assert 0 < b["rollout/rows_scored_here"] < a["rollout/rows_scored_here"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), _params(config, tmp_path / "one"),
                 _params(config, run_dir))


def test_two_processes_train_lora_like_one(tmp_path):
    """LoRA (model.lora_rank > 0, with the KL penalty to the frozen base): two processes on one 8-device mesh
    give one process's metrics and adapters."""
    lora = [*RUN, "model.lora_rank=8", "max_steps=2", "optimizer.lora_lr_scale=1"]  # Adam at 30x amplifies rounding
    config = tiny_config(*lora)
    train(config, output_dir=str(tmp_path / "one"))
    _finish(_launch(tmp_path, tmp_path / "two", "fresh", lora))
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"), strict=True):
        shared = [k for k in ("loss", "kl", "reward/mean", "grad_norm", "params/trainable") if k in a]
        np.testing.assert_allclose([b[k] for k in shared], [a[k] for k in shared], rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), _params(config, tmp_path / "one"),
                 _params(config, tmp_path / "two"))


def test_two_processes_run_their_own_tool_calls_and_train_like_one(tmp_path):
    """Tool calls during rollouts (tests/test_trainer_tools.py's markers): each process runs the calls of the rows
    it owns, and the run's metrics and parameters equal one process's."""
    tools = [*RUN, "max_steps=2", "max_new_tokens=12", "temperature=2.0", "max_tool_calls=2", "tools.call_start==",
             "tools.call_end=?", "tools.result_template={output}=", "tools.timeout_s=2", "tools.max_output_chars=8"]
    config = tiny_config(*tools)
    train(config, output_dir=str(tmp_path / "one"))
    _finish(_launch(tmp_path, tmp_path / "two", "fresh", tools))
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        shared = [k for k in ("loss", "reward/mean", "tools/calls_per_completion", "tools/errors", "tools/token_frac",
                              "eval/accuracy", "eval/tool_calls_per_completion") if k in a]
        np.testing.assert_allclose([b[k] for k in shared], [a[k] for k in shared], rtol=1e-4, atol=1e-6)
        if "tools/calls_run_here" in a:
            assert a["tools/calls_run_here"] > 0 and 0 < b["tools/calls_run_here"] < a["tools/calls_run_here"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), _params(config, tmp_path / "one"),
                 _params(config, tmp_path / "two"))


def test_a_dead_peer_is_an_error_not_a_hang(tmp_path):
    heartbeat = 10
    procs = _launch(tmp_path, tmp_path / "run", "fresh", [*RUN, "max_steps=1000", "save_steps=0"],
                    heartbeat_s=heartbeat)
    readers = [LineReader(p.stdout) for p in procs]
    try:
        for reader in readers:
            _, started = reader.wait_for("STARTED", timeout_s=120)
            assert started
        time.sleep(15)  # let both compile and train a few steps
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[0].wait(timeout=heartbeat * 6 + 60)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode != 0
    assert waited < heartbeat * 6 + 60
    lines, _ = readers[0].wait_for("\0", timeout_s=5)
    text = "\n".join(lines)
    assert "DONE" not in text
    assert "heartbeat" in text.lower(), text[-3000:]  # JAX names the task that stopped sending heartbeats
