"""grpo_jax.data.tfds_source: GSM8K from a prepared tfds ``gsm8k`` dataset, read without TensorFlow.

The fixture is a real prepared dataset: tfds' own ``Gsm8k`` builder runs ``download_and_prepare`` in the
array_record file format, with its download step pointed at small local JSONL files in the GSM8K format
(made-up problems). So the files on disk (dataset_info.json, features.json, array_record shards) are
what ``tfds build gsm8k --file_format=array_record`` writes, and no network or TensorFlow is involved.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
from etils import epath  # noqa: E402  (a tensorflow-datasets dependency)
from tensorflow_datasets.text.gsm8k import Gsm8k  # noqa: E402

from grpo_jax.data.jsonl import DataFormatError, load_gsm8k_jsonl  # noqa: E402
from grpo_jax.data.tfds_source import load_gsm8k_tfds  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Made-up problems in the openai/grade-school-math format: a worked solution with <<calculator>> notes,
# ending in "#### N" (N may carry thousands separators; the socratic variant asks sub-questions "Q ** A").
TRAIN = [
    {"question": "A baker makes 1,200 rolls a day and packs them in bags of 6. How many bags does he fill in 7 days?",
     "answer": "Each day he fills 1200/6 = <<1200/6=200>>200 bags.\nIn 7 days he fills 200*7 = <<200*7=1400>>1400 bags."
               "\n#### 1,400"},
    {"question": "Maya has 12 stickers and gives a third of them to her brother. How many stickers does she keep?",
     "answer": "She gives away 12/3 = <<12/3=4>>4 stickers.\nShe keeps 12-4 = <<12-4=8>>8 stickers.\n#### 8"},
    {"question": "A library owns 987 novels and buys 247 more. How many novels does it own now?",
     "answer": "It owns 987+247 = <<987+247=1234>>1234 novels.\n#### 1,234"},
    {"question": "A pen costs $1.25. How many dollars do 2 pens cost?",
     "answer": "Two pens cost 2*1.25 = <<2*1.25=2.5>>2.5 dollars.\n#### 2.5"},
]
TEST = [
    {"question": "Tom reads 15 pages each day. How many pages does he read in 30 days?",
     "answer": "He reads 15*30 = <<15*30=450>>450 pages.\n#### 450"},
    {"question": "A farm's 3,000 hens each lay 2 eggs a week. How many eggs do they lay in 4 weeks?",
     "answer": "They lay 3000*2 = <<3000*2=6000>>6000 eggs a week.\n"
               "In 4 weeks they lay 6000*4 = <<6000*4=24000>>24000 eggs.\n#### 24,000"},
]
TRAIN_SOCRATIC = [
    {"question": TRAIN[1]["question"],
     "answer": "How many stickers does she give away? ** She gives away 12/3 = <<12/3=4>>4 stickers.\n"
               "How many stickers does she keep? ** She keeps 12-4 = <<12-4=8>>8 stickers.\n#### 8"},
]
TEST_SOCRATIC = [
    {"question": TEST[0]["question"],
     "answer": "How many pages does he read in 30 days? ** He reads 15*30 = <<15*30=450>>450 pages.\n#### 450"},
]
SPLITS = {"train": TRAIN, "test": TEST, "train_socratic": TRAIN_SOCRATIC, "test_socratic": TEST_SOCRATIC}
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{}.jsonl"


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def prepare_gsm8k(data_dir, source_dir, splits):
    """Run tfds' real ``gsm8k`` builder into ``data_dir`` (array_record) with downloads served from JSONL."""
    os.makedirs(source_dir, exist_ok=True)
    for name, records in splits.items():
        write_jsonl(os.path.join(source_dir, f"{name}.jsonl"), records)

    def download_and_extract(self, urls):
        assert urls == {name: GSM8K_URL.format(name) for name in splits}, urls  # the builder's real URLs
        return {name: os.path.join(source_dir, f"{name}.jsonl") for name in urls}

    # tfds 4.9.10 computes the builder's `code_path` with `importlib_resources`, which it does not declare
    # as a dependency: set the same path directly (a class attribute, as reading the property would fail).
    assert "code_path" not in vars(Gsm8k)
    Gsm8k.code_path = epath.Path(inspect.getfile(Gsm8k))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
            builder = Gsm8k(data_dir=str(data_dir), file_format="array_record")
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
        del Gsm8k.code_path
    return os.path.join(str(data_dir), "gsm8k", "1.0.0")


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """A tfds data_dir with a prepared ``gsm8k`` dataset; also holds the source JSONL files in ``src/``."""
    root = tmp_path_factory.mktemp("tfds")
    prepare_gsm8k(root / "data", root / "src", SPLITS)
    return root


def by_question(examples):
    return sorted(examples, key=lambda example: example["question"])


def test_fixture_is_a_real_prepared_array_record_dataset(gsm8k_dir):
    version_dir = gsm8k_dir / "data" / "gsm8k" / "1.0.0"
    shards = [f"gsm8k-{name}.array_record-00000-of-00001" for name in SPLITS]
    assert sorted(os.listdir(version_dir)) == sorted(["dataset_info.json", "features.json", *shards])
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record" and info["name"] == "gsm8k"
    assert {s["name"]: s["shardLengths"] for s in info["splits"]} == {
        name: [str(len(records))] for name, records in SPLITS.items()}
    features = json.loads((version_dir / "features.json").read_text())["featuresDict"]["features"]
    assert sorted(features) == ["annotation", "answer", "question", "short_answer"]

    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(version_dir / "gsm8k-train.array_record-00000-of-00001"))
    try:
        assert reader.num_records() == len(TRAIN)
    finally:
        reader.close()


def test_train_split_equals_the_jsonl_loader_on_the_same_records(gsm8k_dir):
    examples = load_gsm8k_tfds("train", data_dir=gsm8k_dir / "data")
    assert by_question(examples) == by_question(load_gsm8k_jsonl(gsm8k_dir / "src" / "train.jsonl"))
    assert {e["prompt"]: e["final_answer"] for e in examples} == {
        TRAIN[0]["question"]: "1400",
        TRAIN[1]["question"]: "8",
        TRAIN[2]["question"]: "1234",
        TRAIN[3]["question"]: "2.5",
    }
    for example in examples:
        assert sorted(example) == ["answer", "final_answer", "prompt", "question"]
        assert all(type(value) is str for value in example.values())
        assert example["prompt"] == example["question"]
    assert {e["answer"] for e in examples} == {r["answer"] for r in TRAIN}


def test_test_and_socratic_splits_are_separate(gsm8k_dir):
    data_dir = str(gsm8k_dir / "data")  # str and os.PathLike both accepted
    test = load_gsm8k_tfds("test", data_dir=data_dir)
    assert by_question(test) == by_question(load_gsm8k_jsonl(gsm8k_dir / "src" / "test.jsonl"))
    assert sorted(e["final_answer"] for e in test) == ["24000", "450"]
    assert not {e["question"] for e in test} & {r["question"] for r in TRAIN}

    (socratic,) = load_gsm8k_tfds("train_socratic", data_dir=data_dir)
    assert socratic["prompt"] == TRAIN[1]["question"] and socratic["final_answer"] == "8"
    assert socratic["answer"] == TRAIN_SOCRATIC[0]["answer"]
    (socratic,) = load_gsm8k_tfds("test_socratic", data_dir=data_dir)
    assert socratic["answer"] == TEST_SOCRATIC[0]["answer"] and socratic["final_answer"] == "450"


def test_split_slices_and_unions(gsm8k_dir):
    data_dir = gsm8k_dir / "data"
    train = load_gsm8k_tfds("train", data_dir=data_dir)
    assert load_gsm8k_tfds("train", data_dir=data_dir) == train  # a fixed order
    assert load_gsm8k_tfds("train[:2]", data_dir=data_dir) == train[:2]
    assert load_gsm8k_tfds("train[2:]", data_dir=data_dir) == train[2:]
    assert load_gsm8k_tfds("train+test", data_dir=data_dir) == train + load_gsm8k_tfds("test", data_dir=data_dir)


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_unprepared_data_dir_says_how_to_prepare(tmp_path, where):
    data_dir = tmp_path / "nowhere" if where == "missing" else tmp_path
    with pytest.raises(FileNotFoundError) as info:
        load_gsm8k_tfds("test", data_dir=data_dir)
    message = str(info.value)
    assert f"data_dir={str(data_dir)!r}" in message and "split='test'" in message
    assert "no prepared tfds 'gsm8k' dataset" in message
    assert "tfds build gsm8k --data_dir=DATA_DIR --file_format=array_record" in message


def test_unknown_split_names_the_available_ones(gsm8k_dir):
    with pytest.raises(ValueError, match=r"split='validation'.*\['test', 'test_socratic', 'train', 'train_socratic'\]"):
        load_gsm8k_tfds("validation", data_dir=gsm8k_dir / "data")
    with pytest.raises(TypeError, match=r"`split` must be a str such as 'train', got list"):
        load_gsm8k_tfds(["train"], data_dir=gsm8k_dir / "data")


def test_dataset_prepared_in_another_file_format_is_refused(gsm8k_dir, tmp_path):
    # The same files relabelled as tfrecord: what `tfds build gsm8k` writes by default, readable only via TF.
    shutil.copytree(gsm8k_dir / "data" / "gsm8k", tmp_path / "gsm8k")
    info_path = tmp_path / "gsm8k" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"prepared in file format 'tfrecord'.*needs 'array_record'"):
        load_gsm8k_tfds("train", data_dir=tmp_path)


def test_malformed_record_names_split_and_record(tmp_path):
    bad = [{"question": "How many?", "answer": "A guess.\n#### about ten"}]
    prepare_gsm8k(tmp_path / "data", tmp_path / "src", {**SPLITS, "test": bad})
    with pytest.raises(DataFormatError, match=r"split='test'.*record 0: GSM8K 'answer' does not end with"):
        load_gsm8k_tfds("test", data_dir=tmp_path / "data")


def test_reads_without_tensorflow_or_network(gsm8k_dir, tmp_path):
    # A clean interpreter where `tensorflow` is importable but only leaves a mark and fails: any attempt to
    # import it (even one tfds would catch) shows up. Sockets fail too. data_dir=None: the TFDS_DATA_DIR default.
    fake = tmp_path / "fake_site" / "tensorflow"
    fake.mkdir(parents=True)
    marker = tmp_path / "tensorflow_imported"
    (fake / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported')\nraise ImportError('fake tensorflow')\n")
    script = textwrap.dedent("""
        import json, socket, sys
        def no_network(*args, **kwargs):
            raise OSError("network access in a test")
        socket.socket.connect = socket.getaddrinfo = socket.create_connection = no_network
        from grpo_jax.data.tfds_source import load_gsm8k_tfds
        examples = load_gsm8k_tfds("train") + load_gsm8k_tfds("test")
        print(json.dumps({"final_answers": sorted(e["final_answer"] for e in examples),
                          "tensorflow_loaded": "tensorflow" in sys.modules}))
    """)
    env = {**os.environ, "TFDS_DATA_DIR": str(gsm8k_dir / "data"),
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, str(fake.parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "final_answers": sorted(["1400", "8", "1234", "2.5", "450", "24000"]), "tensorflow_loaded": False}
    assert not marker.exists()
