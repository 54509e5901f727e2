"""Run outputs at a URL (gs://bucket/run): grpo_jax.storage, the metrics writer and a whole training run.

There is no network here, so ``gs://`` is served by a fake Cloud Storage: an fsspec filesystem registered
for the "gcs" protocol (the one etils.epath asks fsspec for) that keeps objects under a temporary directory.
Like Cloud Storage it has no append mode. Checkpoints are the exception: orbax writes ``gs://`` through
tensorstore's own GCS driver, which the fake cannot serve, so the whole-run test points only the
checkpointer at a local directory and checks that it was handed the URL.
"""

import json
import os

import pytest
from fake_gcs import install_fake_gcs
from trainer_runs import tiny_config

from grpo_jax import storage
from grpo_jax.errors import OutputExistsError
from grpo_jax.metrics import MetricsWriter, plot_metrics, read_metrics


@pytest.fixture
def gcs(tmp_path):
    return install_fake_gcs(tmp_path / "gcs")


@pytest.mark.parametrize("where", ["local", "url"])
def test_file_sizes_and_size_list_every_file_below_a_directory(gcs, tmp_path, where):
    root = "gs://bucket/sizes" if where == "url" else str(tmp_path / "sizes")
    contents = {"a.json": b"{}", "state/d/0123": b"x" * 1000, "state/manifest": b""}
    for name, data in contents.items():
        storage.makedirs(storage.join(root, *name.split("/")[:-1]))
        storage.write_bytes(storage.join(root, name), data)
    assert storage.file_sizes(root) == {name: len(data) for name, data in contents.items()}
    assert storage.size(storage.join(root, "state/d/0123")) == 1000
    assert storage.size(storage.join(root, "state")) is None and storage.size(storage.join(root, "gone")) is None
    assert storage.file_sizes(storage.join(root, "gone")) == {}


def test_files_round_trip_through_a_url(gcs):
    url = "gs://bucket/run"
    storage.makedirs(url)
    storage.write_text(storage.join(url, "config.json"), '{"a": 1}')
    assert storage.is_url(url) and not storage.is_url("/tmp/run")
    assert storage.join(url, "sft", "metrics.jsonl") == "gs://bucket/run/sft/metrics.jsonl"
    assert (gcs / "bucket" / "run" / "config.json").read_text() == '{"a": 1}'
    assert storage.read_text("gs://bucket/run/config.json") == '{"a": 1}'
    assert storage.exists("gs://bucket/run/config.json") and storage.isdir(url)
    assert not storage.exists("gs://bucket/run/missing.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("gs://bucket/run/missing.json")


def test_staged_dir_uploads_new_and_changed_files_only(gcs, monkeypatch):
    stage = storage.StagedDir("gs://bucket/run", interval_s=3600)
    assert os.path.isdir(stage.local) and stage.local != str(gcs)
    with open(os.path.join(stage.local, "a.txt"), "w") as f:
        f.write("one\n")
    stage.sync(force=False)  # the interval has not passed: nothing copied yet
    assert not (gcs / "bucket" / "run" / "a.txt").exists()
    stage.sync()
    assert (gcs / "bucket" / "run" / "a.txt").read_text() == "one\n"
    written = []
    real_write = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda path, data: (written.append(path), real_write(path, data)))
    os.makedirs(os.path.join(stage.local, "tb"))
    with open(os.path.join(stage.local, "tb", "events"), "w") as f:
        f.write("e")
    stage.sync()
    assert written == ["gs://bucket/run/tb/events"]  # a.txt unchanged: not copied again
    with open(os.path.join(stage.local, "a.txt"), "a") as f:
        f.write("two\n")
    local = stage.local
    stage.close()
    assert written[1:] == ["gs://bucket/run/a.txt"]
    assert (gcs / "bucket" / "run" / "a.txt").read_text() == "one\ntwo\n"
    assert (gcs / "bucket" / "run" / "tb" / "events").read_text() == "e"
    assert not os.path.exists(local)


def test_exporting_again_to_a_url_leaves_no_earlier_weights(gcs, tmp_path):
    """A sharded export, then a one-file export to the same URL (and the other way round): the earlier files
    are removed there, as locally. Left behind, the earlier index (this loader) or single file (transformers)
    was read instead of the new weights, without an error."""
    from types import SimpleNamespace

    import jax
    import numpy as np
    from hf_checkpoints import make_checkpoint, make_tokenizer

    from grpo_jax.cli import _save_hf
    from grpo_jax.models import load_pretrained, load_tokenizer

    source = tmp_path / "source"
    make_checkpoint(source, "llama_gqa2_untied", vocab_size=300)
    make_tokenizer(source)
    model, params = load_pretrained(source)
    ctx = SimpleNamespace(model=model, tokenizer=load_tokenizer(source), sampling=SimpleNamespace(eos_token_ids=(1,)),
                          config=SimpleNamespace(model=SimpleNamespace(path=str(source))))
    trained = jax.tree.map(lambda p: p + 1.0, params)
    for first, second in (({"max_shard_bytes": 20_000}, {}), ({}, {"max_shard_bytes": 20_000})):
        url = f"gs://bucket/export{len(first)}"
        _save_hf(ctx, params, url, **first)
        with pytest.raises(OutputExistsError, match="not empty"):
            _save_hf(ctx, trained, url, **second)  # a URL is refused like a local path unless asked
        _save_hf(ctx, trained, url, overwrite=True, **second)
        files = storage.listdir(url)
        sharded = [f for f in files if f.startswith("model-")]
        assert ("model.safetensors" in files) == (not sharded)
        assert ("model.safetensors.index.json" in files) == bool(sharded)
        _, loaded = load_pretrained(gcs / "bucket" / url.rsplit("/", 1)[1])
        np.testing.assert_array_equal(np.asarray(loaded["embedding"]), np.asarray(trained["embedding"]))


def test_metrics_writer_at_a_url_resumes_and_plots(gcs):
    url = "gs://bucket/run"
    with MetricsWriter(url, tensorboard=True, progress=False) as writer:
        for step in range(1, 5):
            writer.write(step, {"reward/mean": step / 10, "loss": 1.0 / step})
        writer.flush()
        assert [r["step"] for r in read_metrics(url)] == [1, 2, 3, 4]
    assert any(name.startswith("events") for name in os.listdir(gcs / "bucket" / "run" / "tensorboard"))
    # a run resumed from its step-2 checkpoint drops the later lines, then appends
    with MetricsWriter(url, tensorboard=False, progress=False, resume_step=2) as writer:
        writer.write(3, {"reward/mean": 0.9})
    records = read_metrics(url)
    assert [(r["step"], r["reward/mean"]) for r in records] == [(1, 0.1), (2, 0.2), (3, 0.9)]
    png = plot_metrics(url)
    assert png == "gs://bucket/run/curves.png"
    assert (gcs / "bucket" / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_training_run_writes_and_resumes_at_a_url(gcs, tmp_path, monkeypatch):
    from grpo_jax.trainer import load_run_config, loop

    handed = []

    class LocalCheckpointer(loop.Checkpointer):  # orbax's gs:// goes through tensorstore: kept local here
        def __init__(self, directory, **kwargs):
            handed.append(directory)
            super().__init__(str(tmp_path / "ckpt" / directory.replace("gs://", "")), **kwargs)

    monkeypatch.setattr(loop, "Checkpointer", LocalCheckpointer)
    url = "gs://bucket/runs/tiny"
    config = tiny_config("max_steps=2", "eval_steps=0", "save_steps=1", "sft.steps=2")
    loop.train(config, output_dir=url)
    run = gcs / "bucket" / "runs" / "tiny"
    assert handed[0] == "gs://bucket/runs/tiny/checkpoints"
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == 2
    assert [r["step"] for r in read_metrics(url)] == [0, 1, 2]
    assert [r["step"] for r in read_metrics(url + "/sft")] == [0, 1, 2]
    assert (run / "curves.png").exists() and os.listdir(run / "tensorboard")
    resumed = load_run_config(url, ["max_steps=3"])
    loop.train(resumed, output_dir=url, resume=True)
    assert [r["step"] for r in read_metrics(url)] == [0, 1, 2, 3]
