"""One live run per run directory (grpo_jax.run_lock): a second run is refused at once, naming the holder; a run
killed without releasing leaves a lock the next run takes over; object stores get a lease; multi-host jobs
share one lock; and through the command line a refused run changes nothing in the directory."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_runs import TINY, error_line, snapshot
from fake_gcs import install_fake_gcs

from grpo_jax import run_lock, storage
from grpo_jax.cli import main
from grpo_jax.errors import RunDirectoryLockedError

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from grpo_jax import run_lock
    lock = run_lock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")
TRY = textwrap.dedent("""
    import sys
    from grpo_jax import run_lock
    from grpo_jax.errors import RunDirectoryLockedError
    try:
        run_lock.acquire(sys.argv[1]).release()
        print("acquired")
    except RunDirectoryLockedError as e:
        print("refused:", e)
""")


def _python(script: str, *args: str, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, **kwargs)


def _try_in_another_process(directory) -> str:
    proc = _python(TRY, str(directory))
    out, _ = proc.communicate(timeout=120)
    return out.strip()


def test_a_second_acquire_is_refused_naming_the_directory_and_holder(tmp_path, caplog):
    run = tmp_path / "run"
    lock = run_lock.acquire(str(run))
    record = json.loads((run / run_lock.LOCK_FILENAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
    with pytest.raises(RunDirectoryLockedError) as e:
        run_lock.acquire(str(run))  # flock: two opens in one process conflict too
    message = str(e.value)
    assert message.startswith(f"{run} is in use by another run (pid {os.getpid()} on host {socket.gethostname()}")
    assert "choose another --output-dir" in message
    lock.release()
    lock.release()  # idempotent
    assert (run / run_lock.LOCK_FILENAME).read_text() == ""  # a clean release leaves no holder record
    with caplog.at_level(logging.WARNING, logger="grpo_jax.run_lock"):
        with run_lock.acquire(str(run)) as again:
            assert again.held
    assert not again.held and not caplog.records


def test_another_process_is_refused_while_the_lock_is_held(tmp_path):
    run = tmp_path / "run"
    with run_lock.acquire(str(run)):
        out = _try_in_another_process(run)
        assert out.startswith(f"refused: {run} is in use by another run (pid {os.getpid()} on host")
    assert _try_in_another_process(run) == "acquired"


def test_a_killed_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _python(HOLD, str(run), "600")
    assert holder.stdout.readline().strip() == "held"
    assert _try_in_another_process(run).startswith(f"refused: {run} is in use by another run (pid {holder.pid} ")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with caplog.at_level(logging.WARNING, logger="grpo_jax.run_lock"):
        lock = run_lock.acquire(str(run))
    lock.release()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stale lock" in warnings[0] and f"pid {holder.pid} on host" in warnings[0]


def test_object_stores_get_a_lease_that_expires(tmp_path, monkeypatch, caplog):
    install_fake_gcs(tmp_path / "gcs")
    url = "gs://bucket/run"
    path = storage.join(url, run_lock.LOCK_FILENAME)
    lock = run_lock.acquire(url)
    lease = json.loads(storage.read_text(path))
    assert lease["pid"] == os.getpid() and lease["token"] and time.time() - lease["heartbeat"] < 60
    first_heartbeat = lease["heartbeat"]
    time.sleep(0.01)
    lock.refresh()
    assert json.loads(storage.read_text(path))["heartbeat"] > first_heartbeat
    with pytest.raises(RunDirectoryLockedError, match=f"pid {os.getpid()} on host"):
        run_lock.acquire(url)  # our own fresh lease: another run would see exactly this
    lock.release()
    assert not storage.exists(path)

    other = {"pid": 4242, "host": "tpu-vm-7", "token": "other", "heartbeat": time.time()}
    storage.write_text(path, json.dumps(other))
    with pytest.raises(RunDirectoryLockedError, match="pid 4242 on host tpu-vm-7"):
        run_lock.acquire(url)
    assert json.loads(storage.read_text(path))["token"] == "other"  # the refused run wrote nothing

    storage.write_text(path, json.dumps(dict(other, heartbeat=time.time() - run_lock.LEASE_EXPIRY_S - 1)))
    with caplog.at_level(logging.WARNING, logger="grpo_jax.run_lock"):
        lock = run_lock.acquire(url)
    assert any("stale lease" in r.getMessage() and "pid 4242" in r.getMessage() for r in caplog.records)
    assert json.loads(storage.read_text(path))["token"] != "other"
    lock.release()


@pytest.mark.parametrize("process_0_succeeds", [True, False])
def test_other_processes_of_a_job_follow_process_0(tmp_path, monkeypatch, process_0_succeeds):
    """Process 1 of a 2-process job takes no lock: it proceeds or fails as process 0 did."""
    import jax

    run = tmp_path / "run"
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    broadcasts = []
    monkeypatch.setattr(run_lock, "_broadcast_from_process_0",
                        lambda value: broadcasts.append(value) or int(process_0_succeeds))
    if process_0_succeeds:
        lock = run_lock.acquire(str(run))
        assert not lock.held
        lock.release()
    else:
        with pytest.raises(RunDirectoryLockedError, match="process 0 of this job could not lock it"):
            run_lock.acquire(str(run))
    assert len(broadcasts) == 1  # one collective; process 1's own value is ignored by the broadcast
    assert not (run / run_lock.LOCK_FILENAME).exists()
    # process 0 of the job takes the lock and broadcasts its success
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(run_lock, "_broadcast_from_process_0", lambda value: broadcasts.append(value) or value)
    broadcasts.clear()
    with run_lock.acquire(str(run)) as lock:
        assert lock.held and broadcasts == [1]


def test_a_second_training_run_into_a_live_runs_directory_changes_nothing(tmp_path, capsys):
    """Through the CLI: while another run holds the directory, `grpo-jax train` into it exits 2 naming the holder,
    and the directory is exactly as before (no config.json of its own, no metrics line, no checkpoint)."""
    run = tmp_path / "run"
    first = ["train", f"--output-dir={run}", *TINY]
    assert main(first) == 0
    capsys.readouterr()
    holder = _python(HOLD, str(run), "600")  # the first run, alive again (e.g. resumed)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        assert main(["train", f"--output-dir={run}", "--resume", *TINY, "max_steps=2", "grpo.beta=0.5"]) == 2
        line = error_line(capsys)
        assert f"{run} is in use by another run (pid {holder.pid} on host" in line
        assert main(["sft", f"--output-dir={run}", *TINY, "sft.steps=1"]) == 2
        assert f"pid {holder.pid}" in error_line(capsys)
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
