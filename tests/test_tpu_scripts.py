"""tpu_scripts/: the gcloud commands each script prints (--dry-run) and runs (against a fake gcloud on PATH).

The fake gcloud, written into tmp_path, appends its argv as one JSON line to the file named by
$FAKE_GCLOUD_LOG and exits with $FAKE_GCLOUD_EXIT (default 0). Nothing here talks to Google Cloud. The
remote shell commands (install, launch, tail, stop) are also run locally with bash, with HOME pointing at
tmp_path and fake programs standing in for python3/uv/pip and grpo-jax, so their paths, quoting,
backgrounding and redirections are checked, not just their text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
V5E = ["--name", "my-tpu", "--zone", "us-west4-a"]
V4 = ["--name", "my-pod", "--zone", "us-central2-b"]
RECIPE = "experiments/gsm8k_qwen2p5_1p5b.py"


def run(script, *args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def dry_run(script, *args):
    """The argument lists a script prints with --dry-run."""
    proc = run(script, *args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
    return [shlex.split(line[2:]) for line in lines]


def remote_command(argv):
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
    assert argv.count("--command") == 1
    return argv[argv.index("--command") + 1]


@pytest.fixture
def fake_gcloud(tmp_path):
    """An environment whose PATH starts with a fake gcloud; ``calls()`` returns the argv lists it recorded."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    record = tmp_path / "gcloud_calls.jsonl"
    helper = bindir / "fake_gcloud.py"
    helper.write_text(
        "import json, os, sys\n"
        "with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(['gcloud'] + sys.argv[1:]) + '\\n')\n"
        "sys.exit(int(os.environ.get('FAKE_GCLOUD_EXIT', '0')))\n")
    gcloud = bindir / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(helper))} \"$@\"\n")
    gcloud.chmod(0o755)

    class Fake:
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               "FAKE_GCLOUD_LOG": str(record)}

        @staticmethod
        def calls():
            if not record.exists():
                return []
            return [json.loads(line) for line in record.read_text().splitlines()]

    return Fake


# ---------------------------------------------------------------------------------------------- create.py

@pytest.mark.parametrize("accelerator, version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v4-32", "tpu-ubuntu2204-base"), ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"), ("v6e-256", "v2-alpha-tpuv6e"), ("v4-8", "tpu-ubuntu2204-base"),
])
def test_create_tpu_vm_with_the_family_default_runtime(accelerator, version):
    [argv] = dry_run("create", *V5E, "--accelerator-type", accelerator)
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", "--zone=us-west4-a",
                    f"--accelerator-type={accelerator}", f"--version={version}"]


def test_create_queued_resource_spot_with_project_and_explicit_version():
    [argv] = dry_run("create", *V4, "--accelerator-type", "v4-32", "--queued", "--spot", "--project", "my-proj",
                     "--version", "tpu-ubuntu2204-base")
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-pod", "--zone=us-central2-b",
                    "--project=my-proj", "--node-id=my-pod", "--accelerator-type=v4-32",
                    "--runtime-version=tpu-ubuntu2204-base", "--spot"]


def test_create_reserved():
    [argv] = dry_run("create", *V5E, "--accelerator-type", "v5litepod-8", "--reserved")
    assert argv[-1] == "--reserved" and "--spot" not in argv


def test_create_runs_gcloud(fake_gcloud):
    proc = run("create", *V4, "--accelerator-type", "v4-32", "--queued", env=fake_gcloud.env)
    assert proc.returncode == 0, proc.stderr
    assert fake_gcloud.calls() == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "my-pod", "--zone=us-central2-b",
         "--node-id=my-pod", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base"]]
    assert "queued-resources describe my-pod --zone=us-central2-b" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--accelerator-type", "v3-8"], "unknown TPU family 'v3'"),
    (["--accelerator-type", "tpu7x-8"], "unknown TPU family 'tpu7x'"),
    (["--accelerator-type", "v5e-8"], "Cloud TPU calls v5e 'v5litepod', e.g. v5litepod-8"),
    (["--accelerator-type", "v4-12"], "the size of a v4 slice is a multiple of 8"),
    (["--accelerator-type", "v5litepod-12"], "the size of a v5e slice is one of 1, 4, 8"),
    (["--accelerator-type", "v6e"], "not an accelerator type of the form FAMILY-SIZE"),
    (["--accelerator-type", "v4-32", "--spot", "--reserved"], "not allowed with argument"),
])
def test_create_rejects_bad_accelerator_types_before_calling_gcloud(fake_gcloud, args, message):
    proc = run("create", *V4, *args, env=fake_gcloud.env)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert fake_gcloud.calls() == []


@pytest.mark.parametrize("script, extra", [
    ("create", ["--accelerator-type", "v4-8"]), ("setup", []), ("launch", ["--output-dir", "gs://b/r"]),
    ("logs", []), ("delete", []),
])
def test_every_script_requires_name_and_zone(fake_gcloud, script, extra):
    proc = run(script, "--zone", "us-central2-b", *extra, env=fake_gcloud.env)
    assert proc.returncode == 2
    assert "the following arguments are required: --name" in proc.stderr
    proc = run(script, "--name", "my-pod", *extra, env=fake_gcloud.env)
    assert proc.returncode == 2 and "--zone" in proc.stderr
    proc = run(script, "--name", "My_Pod", "--zone", "us-central2-b", *extra, env=fake_gcloud.env)
    assert proc.returncode == 2 and "'My_Pod' is not a valid TPU name" in proc.stderr
    proc = run(script, "--name", "my-pod", "--zone", "uscentral", *extra, env=fake_gcloud.env)
    assert proc.returncode == 2 and "'uscentral' is not a zone name" in proc.stderr
    assert fake_gcloud.calls() == []


@pytest.mark.parametrize("script", ["create", "setup", "launch", "logs", "delete"])
def test_every_script_has_help(script):
    proc = run(script, "--help")
    assert proc.returncode == 0
    assert "--dry-run" in proc.stdout and "--name" in proc.stdout and "--zone" in proc.stdout


def test_a_missing_gcloud_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH
    proc = run("create", *V5E, "--accelerator-type", "v5litepod-8", env=env)
    assert proc.returncode == 1
    assert "'gcloud' was not found on PATH" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("create", *V5E, "--accelerator-type", "v5litepod-8", "--dry-run", env=env)  # needs no gcloud
    assert proc.returncode == 0 and proc.stdout.startswith("+ gcloud compute tpus tpu-vm create my-tpu ")


def test_a_failing_gcloud_stops_the_script_and_names_the_command(fake_gcloud):
    env = {**fake_gcloud.env, "FAKE_GCLOUD_EXIT": "1"}
    proc = run("delete", *V5E, env=env)
    assert proc.returncode == 1
    assert ("delete.py: error: command failed with exit status 1: "
            "gcloud compute tpus tpu-vm delete my-tpu --zone=us-west4-a --quiet") in proc.stderr
    assert "Traceback" not in proc.stderr

    env["FAKE_GCLOUD_EXIT"] = "3"
    proc = run("launch", *V4, "--config", RECIPE, "--output-dir", "gs://b/r", env=env)
    assert proc.returncode == 3
    assert "command failed with exit status 3: gcloud compute tpus tpu-vm scp " in proc.stderr
    # the first command failed, so the launch itself was never attempted
    assert [c[4] for c in fake_gcloud.calls()] == ["delete", "scp"]


# ----------------------------------------------------------------------------------------------- setup.py

def _git_usable():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return False
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


def test_setup_dry_run_archives_copies_and_installs_on_all_workers(tmp_path):
    tarball = tmp_path / "out" / "repo.tar.gz"
    archive, copy, install, verify = dry_run("setup", *V4, "--project", "p", "--tarball", tarball, "--verify")
    assert archive == ["git", "-C", str(ROOT), "archive", "--format=tar.gz", "-o", str(tarball), "HEAD"]
    assert copy == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(tarball), "my-pod:grpo_jax.tar.gz",
                    "--zone=us-central2-b", "--project=p", "--worker=all"]
    assert install[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
                           "--project=p", "--worker=all"]
    command = remote_command(install)
    assert "tar -xzf ~/grpo_jax.tar.gz -C ~/grpo_jax" in command
    assert "uv venv --seed --allow-existing --python 3.11 ~/grpo_jax_venv" in command
    assert command.endswith('cd ~/grpo_jax && ~/grpo_jax_venv/bin/python -m pip install --quiet '
                            '-c constraints.txt ".[tpu,gcs]"')
    assert "--worker=all" in verify and "jax.device_count()" in remote_command(verify)
    assert not tarball.parent.exists()  # a dry run writes nothing


def test_setup_rejects_a_bad_python_version(fake_gcloud):
    proc = run("setup", *V5E, "--python-version", "3.11.2", env=fake_gcloud.env)
    assert proc.returncode == 2 and "'3.11.2' is not a Python version" in proc.stderr
    assert fake_gcloud.calls() == []


@pytest.mark.skipif(not _git_usable(), reason="needs git and this repository's .git")
def test_setup_ships_the_repository_and_the_install_command_works(fake_gcloud, tmp_path):
    tarball = tmp_path / "build" / "grpo_jax.tar.gz"
    proc = run("setup", *V5E, "--tarball", tarball, env=fake_gcloud.env)
    assert proc.returncode == 0, proc.stderr
    scp, ssh = fake_gcloud.calls()
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(tarball), "my-tpu:grpo_jax.tar.gz",
                   "--zone=us-west4-a", "--worker=all"]
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-west4-a", "--worker=all"]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"setup.py", "constraints.txt", "grpo_jax/cli.py", "experiments/default.py"} <= names

    # Play the worker: HOME is a fresh directory holding the copied tarball, python3 and uv are fakes that
    # record their arguments (uv's venv gets a python that records too), and the install command runs in bash.
    home = tmp_path / "home"
    (home / "grpo_jax" / "grpo_jax").mkdir(parents=True)
    (home / "grpo_jax" / "grpo_jax" / "stale_module.py").write_text("")
    (home / "grpo_jax" / "checkpoints").mkdir()  # user data next to the code survives
    shutil.copy(tarball, home / "grpo_jax.tar.gz")
    bindir, log = tmp_path / "workerbin", tmp_path / "worker_calls.jsonl"
    bindir.mkdir()
    recorder = (f"#!{sys.executable}\nimport json, os, sys\n"
                f"open({str(log)!r}, 'a').write(json.dumps([os.path.basename(sys.argv[0]), os.getcwd()]"
                " + sys.argv[1:]) + '\\n')\n"
                "if sys.argv[1:4] == ['-m', 'uv', 'venv']:\n"
                "    venv = sys.argv[-1]\n"
                "    os.makedirs(os.path.join(venv, 'bin'))\n"
                "    me = open(sys.argv[0]).read()\n"
                "    path = os.path.join(venv, 'bin', 'python')\n"
                "    open(path, 'w').write(me)\n"
                "    os.chmod(path, 0o755)\n")
    (bindir / "python3").write_text(recorder)
    (bindir / "python3").chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", remote_command(ssh)], check=True, cwd=home, env=env, timeout=60)

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [
        ["python3", str(home), "-m", "pip", "install", "--user", "--quiet", "--upgrade", "uv"],
        ["python3", str(home), "-m", "uv", "venv", "--seed", "--allow-existing", "--python", "3.11",
         str(home / "grpo_jax_venv")],
        ["python", str(home / "grpo_jax"), "-m", "pip", "install", "--quiet", "-c", "constraints.txt", ".[tpu,gcs]"],
    ]
    assert (home / "grpo_jax" / "setup.py").is_file() and (home / "grpo_jax" / "constraints.txt").is_file()
    assert (home / "grpo_jax" / "tpu_configs").is_dir() and (home / "grpo_jax" / "checkpoints").is_dir()
    assert not (home / "grpo_jax" / "grpo_jax" / "stale_module.py").exists()
    assert not (home / "grpo_jax.tar.gz").exists()


# ---------------------------------------------------------------------------------------------- launch.py

LAUNCH_ARGS = [*V4, "--config", RECIPE, "--output-dir", "gs://my-bucket/runs/gsm8k",
               "run.mesh=fsdp:-1", "max_steps=200", "data.system_prompt=Think it through; it's fine"]
TRAIN_ARGV = ["train", "--distributed-auto", "--config", RECIPE, "--output-dir", "gs://my-bucket/runs/gsm8k",
              "run.mesh=fsdp:-1", "max_steps=200", "data.system_prompt=Think it through; it's fine"]


def test_launch_copies_the_recipe_then_starts_the_same_command_on_all_workers():
    copy, start = dry_run("launch", *LAUNCH_ARGS)
    assert copy == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(ROOT / RECIPE), f"my-pod:grpo_jax/{RECIPE}",
                    "--zone=us-central2-b", "--worker=all"]
    assert start[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
                         "--worker=all"]
    words = shlex.split(remote_command(start))
    assert words[:3] == ["cd", "~/grpo_jax", "&&"]
    assert words[3:5] == ["nohup", "~/grpo_jax_venv/bin/grpo-jax"]
    assert words[5:5 + len(TRAIN_ARGV)] == TRAIN_ARGV
    assert words[5 + len(TRAIN_ARGV):] == [">", "~/grpo_jax_train.log", "2>&1", "<", "/dev/null", "&"]


def test_the_launched_arguments_are_ones_grpo_jax_train_accepts():
    from grpo_jax.cli import build_parser

    _, start = dry_run("launch", *LAUNCH_ARGS, "--resume")
    words = shlex.split(remote_command(start))
    args = build_parser().parse_args(words[words.index("nohup") + 2:words.index(">")])
    assert args.command == "train" and args.distributed_auto and args.resume
    assert args.config == RECIPE and args.output_dir == "gs://my-bucket/runs/gsm8k"
    assert args.overrides == TRAIN_ARGV[6:]


def test_launch_resume_env_log_file_and_a_recipe_from_outside_the_repository(tmp_path):
    recipe = tmp_path / "my recipe.py"
    recipe.write_text("")
    copy, start = dry_run("launch", *V5E, "--config", recipe, "--output-dir", "runs/local", "--resume",
                          "--env", "XLA_FLAGS=--xla_a=1 --xla_b=2", "--env", "EMPTY=", "--log-file", "logs/a b.log")
    assert copy[5:7] == [str(recipe), "my-tpu:grpo_jax/tpu_configs/my recipe.py"]
    words = shlex.split(remote_command(start))
    assert words[3:6] == ["mkdir", "-p", "~/logs"]
    assert words[7:15] == ["XLA_FLAGS=--xla_a=1 --xla_b=2", "EMPTY=", "nohup", "~/grpo_jax_venv/bin/grpo-jax",
                           "train", "--distributed-auto", "--config", "tpu_configs/my recipe.py"]
    assert words[15:19] == ["--output-dir", "runs/local", "--resume", ">"]
    assert words[19] == "~/logs/a b.log"


def test_launch_without_a_recipe_runs_the_default_and_copies_nothing():
    [start] = dry_run("launch", *V5E, "--output-dir", "gs://b/default")
    assert "grpo-jax train --distributed-auto --output-dir gs://b/default >" in remote_command(start)
    [start] = dry_run("launch", *V5E, "--output-dir", "gs://b/default", "--no-distributed-auto")
    assert "grpo-jax train --output-dir gs://b/default >" in remote_command(start)


@pytest.mark.parametrize("args, message", [
    (["--output-dir", "gs://b/r", "--config", "experiments/nope.py"], "--config 'experiments/nope.py': no such file"),
    (["--output-dir", "gs://b/r", "max_steps"], "'max_steps' is not a field=value override"),
    (["--output-dir", "gs://b/r", "--env", "1X=2"], "'1X=2' is not NAME=VALUE"),
    (["--output-dir", "gs://b/r", "--log-file", "/var/log/x"], "give a path relative to the remote home"),
    (["--config", RECIPE], "the following arguments are required: --output-dir"),
])
def test_launch_rejects_bad_inputs_before_calling_gcloud(fake_gcloud, args, message):
    proc = run("launch", *V4, *args, env=fake_gcloud.env)
    assert proc.returncode == 2 and message in proc.stderr
    assert fake_gcloud.calls() == []


def _play_worker_launch(command, home, tmp_path):
    """Run a launch command as a worker would, with a stand-in grpo-jax; returns (cwd + argv, env value)."""
    (home / "grpo_jax").mkdir(parents=True)
    (home / "grpo_jax_venv" / "bin").mkdir(parents=True)
    argv_file = tmp_path / "argv.json"
    program = home / "grpo_jax_venv" / "bin" / "grpo-jax"
    program.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                       "print('training started', flush=True); print('to stderr', file=sys.stderr, flush=True)\n"
                       f"open({str(argv_file)!r}, 'w').write(json.dumps([[os.getcwd()] + sys.argv[1:],"
                       " os.environ.get('GREETING')]))\n")
    program.chmod(0o755)
    started = time.monotonic()
    subprocess.run(["bash", "-c", command], check=True, cwd=home, timeout=30,
                   env={**os.environ, "HOME": str(home)})
    assert time.monotonic() - started < 10  # returns at once: the training runs in the background
    for _ in range(400):
        if argv_file.exists() and argv_file.read_text():
            break
        time.sleep(0.05)
    return json.loads(argv_file.read_text())


def _wait_for_lines(path, n):
    for _ in range(400):
        if path.exists() and len(path.read_text().splitlines()) >= n:
            break
        time.sleep(0.05)
    return path.read_text().splitlines()


def test_launch_runs_gcloud_and_the_command_starts_training_in_the_background(fake_gcloud, tmp_path):
    proc = run("launch", *LAUNCH_ARGS, env=fake_gcloud.env)
    assert proc.returncode == 0, proc.stderr
    copy, start = fake_gcloud.calls()
    assert copy[4:7] == ["scp", str(ROOT / RECIPE), f"my-pod:grpo_jax/{RECIPE}"] and "--worker=all" in copy
    assert start[4:8] == ["ssh", "my-pod", "--zone=us-central2-b", "--worker=all"]

    # Play a worker: grpo-jax runs from ~/grpo_jax with exactly the training arguments, output in the log.
    home = tmp_path / "home"
    argv, greeting = _play_worker_launch(remote_command(start), home, tmp_path)
    assert argv == [str(home / "grpo_jax"), *TRAIN_ARGV] and greeting is None
    assert _wait_for_lines(home / "grpo_jax_train.log", 2) == ["training started", "to stderr"]


def test_the_launch_command_with_env_and_a_log_file_in_a_new_directory_works(tmp_path):
    _, start = dry_run("launch", *V5E, "--config", RECIPE, "--output-dir", "gs://b/r",
                       "--env", "GREETING=hello 'world' $HOME", "--log-file", "my logs/run 1.log")
    home = tmp_path / "home"
    argv, greeting = _play_worker_launch(remote_command(start), home, tmp_path)
    assert argv == [str(home / "grpo_jax"), "train", "--distributed-auto", "--config", RECIPE,
                    "--output-dir", "gs://b/r"]
    assert greeting == "hello 'world' $HOME"
    assert _wait_for_lines(home / "my logs" / "run 1.log", 2) == ["training started", "to stderr"]


# ------------------------------------------------------------------------------------------------ logs.py

def test_logs_tails_worker_0_by_default(fake_gcloud):
    [argv] = dry_run("logs", *V5E)
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-west4-a", "--worker=0",
                    "--command", "tail -n 100 -F ~/grpo_jax_train.log"]
    proc = run("logs", *V5E, env=fake_gcloud.env)
    assert proc.returncode == 0, proc.stderr
    assert fake_gcloud.calls() == [argv]


def test_logs_on_all_workers_prefix_each_line_with_the_host(tmp_path):
    [argv] = dry_run("logs", *V4, "--worker", "all", "--lines", "2", "--no-follow")
    assert argv[7] == "--worker=all"
    command = remote_command(argv)
    assert command.startswith("tail -n 2 ~/grpo_jax_train.log | sed -u ")
    (tmp_path / "grpo_jax_train.log").write_text("one\ntwo\nthree\n")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True, timeout=30,
                         env={**os.environ, "HOME": str(tmp_path)}).stdout
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert out.splitlines() == [f"[{host}] two", f"[{host}] three"]


def test_logs_worker_lists_and_ranges_and_a_bad_worker(fake_gcloud):
    for worker in ("1-3", "0,2", "0,2-3"):
        [argv] = dry_run("logs", *V4, "--worker", worker)
        assert argv[7] == f"--worker={worker}" and "sed -u" in remote_command(argv)
    [argv] = dry_run("logs", *V4, "--worker", "2")
    assert argv[7] == "--worker=2" and "sed" not in remote_command(argv)
    for worker in ("first", "1-", "-1", "0,,1"):
        proc = run("logs", *V5E, "--worker", worker, env=fake_gcloud.env)
        assert proc.returncode == 2 and f"{worker!r} is not a worker" in proc.stderr
    assert fake_gcloud.calls() == []


# ---------------------------------------------------------------------------------------------- delete.py

def test_delete_tpu_vm_and_queued_resource(fake_gcloud):
    assert dry_run("delete", *V5E) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu", "--zone=us-west4-a", "--quiet"]]
    assert dry_run("delete", *V4, "--queued", "--project", "p") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-pod", "--zone=us-central2-b",
         "--project=p", "--force", "--quiet"]]
    assert run("delete", *V4, "--queued", env=fake_gcloud.env).returncode == 0
    assert fake_gcloud.calls() == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-pod", "--zone=us-central2-b", "--force",
         "--quiet"]]


def test_delete_stop_only_stops_training_on_all_workers(fake_gcloud):
    [argv] = dry_run("delete", *V4, "--stop-only")
    assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone=us-central2-b",
                        "--worker=all"]
    command = remote_command(argv)
    assert command.startswith('pkill -f "[g]rpo-jax train" || exit 0; ')
    assert run("delete", *V4, "--stop-only", env=fake_gcloud.env).returncode == 0
    assert fake_gcloud.calls() == [argv]


@pytest.mark.skipif(shutil.which("pkill") is None or shutil.which("pgrep") is None, reason="needs procps")
def test_the_stop_command_kills_the_training_process_and_spares_the_rest(tmp_path):
    [argv] = dry_run("delete", *V4, "--stop-only")
    command = remote_command(argv)
    # A pattern unique to this test stands in for "grpo-jax train", so no real run on this machine is touched.
    marker = f"grpo-jax-test-{os.getpid()}-{time.monotonic_ns()}"
    command = command.replace("[g]rpo-jax train", f"[{marker[0]}]{marker[1:]} train")
    assert "[g]rpo-jax train" not in command and marker[1:] in command
    script = tmp_path / marker
    script.write_text("import time\ntime.sleep(120)\n")
    target = subprocess.Popen([sys.executable, str(script), "train", "--config", "x.py"])
    bystander = subprocess.Popen([sys.executable, str(script), "eval"])
    try:
        time.sleep(0.2)
        subprocess.run(["bash", "-c", command], check=True, timeout=60)
        assert target.wait(timeout=10) != 0
        assert bystander.poll() is None
        # nothing left to stop: still success
        subprocess.run(["bash", "-c", command], check=True, timeout=60)
    finally:
        for proc in (target, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------------------- README.md

def test_the_readme_shows_the_commands_its_examples_produce():
    if shlex.quote(str(ROOT)) != str(ROOT):
        pytest.skip("the README's /path/to/grpo_jax stands for a path that needs no shell quoting")
    readme = (SCRIPTS / "README.md").read_text()
    examples = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("python tpu_scripts/"):
                examples.append(shlex.split(line, comments=True))
    assert len(examples) >= 10
    produced = set()
    for words in examples:
        script = Path(words[1]).stem
        produced.update("+ " + shlex.join(argv) for argv in dry_run(script, *words[2:]))
    shown = [line.replace("/path/to/grpo_jax", str(ROOT))
             for block in re.findall(r"```text\n(.*?)```", readme, re.S)
             for line in block.splitlines() if line.startswith("+ ")]
    assert len(shown) >= 15
    assert [line for line in shown if line not in produced] == []
