"""Issue 23: onepeace models in MTEB (onepeace.integrations.mteb.OnePeaceEncoder).

MTEB's own mock tasks (offline) for every task type of each modality a tiny model has; the
encoder's rows against ``model.embed``; bad input (a task of a modality the model lacks, empty
input). Real-data tasks (ESC-10, COCO-MINI) through MTEB's task classes are in
tests/test_issue23_mteb_local.py.

``datasets``' ``Audio`` feature encodes and decodes through torchcodec, whose PyPI wheels need a
CUDA build of torch; the mock audio tasks are run with their audio kept as MTEB's
``{"array", "sampling_rate"}`` items (the ``cast_column(..., Audio())`` of their loaders skipped),
which is what the encoder reads either way.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

mteb = pytest.importorskip("mteb")
datasets = pytest.importorskip("datasets")

import onepeace  # noqa: E402
from onepeace.errors import InputError  # noqa: E402


@pytest.fixture
def audio_as_arrays(monkeypatch):
    """Keep audio columns as {'array', 'sampling_rate'} dicts (no torchcodec here)."""
    def keep(orig):
        def cast_column(self, column, feature, *a, **k):
            if isinstance(feature, datasets.Audio):
                return self
            return orig(self, column, feature, *a, **k)
        return cast_column

    monkeypatch.setattr(datasets.Dataset, "cast_column", keep(datasets.Dataset.cast_column))
    monkeypatch.setattr(datasets.DatasetDict, "cast_column", keep(datasets.DatasetDict.cast_column))


@pytest.fixture(scope="module")
def tri():
    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=1)


@pytest.fixture(scope="module")
def text_image():
    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 32}})


def _encoder(model, **kw):
    from onepeace.integrations.mteb import OnePeaceEncoder

    return OnePeaceEncoder(model, **kw)


def test_import_onepeace_does_not_import_harnesses():
    code = ("import sys, onepeace; bad = [m for m in ('mteb', 'sentence_transformers', 'datasets', 'transformers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_mteb_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['mteb'] = None\n"
            "try:\n    import onepeace.integrations.mteb\n"
            "except ImportError as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("MissingDependencyError the MTEB encoder (onepeace.integrations.mteb) needs the mteb "
                                "package: pip install 'onepeace[mteb]'")


def test_meta_declares_the_model_branches(tri, text_image):
    from mteb.models.models_protocols import EncoderProtocol

    enc = _encoder(tri)
    assert isinstance(enc, EncoderProtocol)
    meta = enc.mteb_model_meta
    assert sorted(meta.modalities) == ["audio", "image", "text"]
    assert meta.embed_dim == tri.config.dim and meta.n_parameters == tri.num_parameters()
    assert meta.similarity_fn_name.value == "cosine"
    assert sorted(_encoder(text_image).mteb_model_meta.modalities) == ["image", "text"]


def _loader(task, rows: dict, prompt_type=None):
    from mteb._create_dataloaders import create_dataloader

    ds = datasets.Dataset.from_dict(rows)
    return create_dataloader(ds, task_metadata=task.metadata, prompt_type=prompt_type, batch_size=3)


def test_rows_equal_model_embed(tri, audio_as_arrays):
    """Each modality through MTEB's own DataLoader (its batching and collate) gives the rows
    model.embed gives, in order; audio at 44.1 kHz is resampled as embed resamples (anything,
    rate)."""
    from mteb.mocks.mock_tasks.classification import MockAudioClassification, MockImageClassificationTask
    from mteb.mocks.mock_tasks.create_mock_samples import create_mock_images
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    enc = _encoder(tri)
    rng = np.random.default_rng(0)
    texts = ["a dog barks", "rain on a roof", "a clock ticks", "waves", "a baby cries"]
    got = enc.encode(_loader(MockRetrievalTask(), {"text": texts}), task_metadata=MockRetrievalTask().metadata,
                     hf_split="test", hf_subset="default")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (5, tri.config.dim)
    want = tri.embed(text=texts)["text"].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    images = [im.convert("RGB") for im in create_mock_images(rng, 4)]
    task = MockImageClassificationTask()
    got = enc.encode(_loader(task, {"image": images}), task_metadata=task.metadata, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(got, tri.embed(image=images)["image"].numpy(), rtol=0, atol=1e-6)

    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (44100, 30000, 70000, 50000)]
    task = MockAudioClassification()
    got = enc.encode(_loader(task, {"audio": [{"array": c, "sampling_rate": 44100} for c in clips]}),
                     task_metadata=task.metadata, hf_split="test", hf_subset="default")
    want = tri.embed(audio=[(c, 44100) for c in clips])["audio"].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # norms are 1: what cosine similarity and MTEB's dot-product metrics assume
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    sim = enc.similarity(got, got)
    np.testing.assert_allclose(np.asarray(sim), got @ got.T, atol=1e-5)
    np.testing.assert_allclose(np.asarray(enc.similarity_pairwise(got, got[::-1].copy())),
                               (got * got[::-1]).sum(1), atol=1e-5)


#: one mock task per task type and modality the tiny model has (text, image, audio; MTEB's own
#: classes from mteb.mocks); the whole grid runs in test_mock_run_every_compatible_task (slow)
FAST_MOCKS = [
    "MockClassificationTask", "MockRetrievalTask", "MockClusteringTask", "MockTextZeroShotClassification",
    "MockAny2AnyRetrievalT2I", "MockImageClassification", "MockZeroShotClassification", "MockImageClustering",
    "MockAudioZeroshotClassification", "MockAny2AnyRetrievalA2T", "MockAudioClassification",
    "MockAudioClusteringTask",
]


def _mock_tasks(names):
    from mteb.mocks import ALL_MOCK_TASK_TEST_GRID

    by_name = {t.metadata.name: t for t in ALL_MOCK_TASK_TEST_GRID}
    return [by_name[n] for n in names]


#: the cross-modal ones, fast (about 5 s): retrieval and zero-shot for image and audio
CROSS_MOCKS = ["MockAny2AnyRetrievalT2I", "MockZeroShotClassification", "MockAudioZeroshotClassification",
               "MockAny2AnyRetrievalA2T"]


@pytest.mark.parametrize("names", [pytest.param(CROSS_MOCKS, id="cross-modal"),
                                   pytest.param(FAST_MOCKS, id="every-type", marks=pytest.mark.slow)])
def test_mock_tasks_one_per_type_and_modality(tri, audio_as_arrays, names):
    tasks = _mock_tasks(names)
    res = mteb.evaluate(_encoder(tri), tasks, cache=None, raise_error=True, show_progress_bar=False)
    scored = {r.task_name: r.get_score() for r in res.task_results}
    assert sorted(scored) == sorted(names)
    assert all(np.isfinite(s) for s in scored.values()), scored


@pytest.mark.slow
def test_mock_run_every_compatible_task(tri, audio_as_arrays):
    """mteb.mock_run: every mock task whose modalities the model covers (53 on text/image/audio)."""
    res = mteb.mock_run(_encoder(tri))
    ran = {n: s for n, s in res.items() if s is not None}
    assert len(ran) >= 50
    failed = {n: s.exception.splitlines()[-1] for n, s in ran.items() if hasattr(s, "exception")}
    assert not failed, failed


def test_task_of_a_modality_the_model_lacks(text_image, audio_as_arrays):
    from onepeace.integrations.mteb import check_tasks

    enc = _encoder(text_image)
    task = _mock_tasks(["MockAudioZeroshotClassification"])[0]
    with pytest.raises(InputError, match=r"MockAudioZeroshotClassification needs audio inputs, but this model has "
                                         r"no audio branch \(it has text, image\)"):
        check_tasks(enc, [task])
    # straight into encode (a retrieval task MTEB lets through on a partial overlap): the same line
    task.load_data()
    loader = _loader(task, {"audio": [{"array": np.zeros(16000, np.float32), "sampling_rate": 16000}]})
    with pytest.raises(InputError, match="needs audio inputs, but this model has no audio branch"):
        enc.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default")
    # MTEB itself refuses it too, naming the model's modalities and the task's
    with pytest.raises(ValueError, match="audio"):
        mteb.evaluate(enc, [task], cache=None, show_progress_bar=False)


def test_empty_input(tri):
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    enc = _encoder(tri)
    task = MockRetrievalTask()
    loader = _loader(task, {"text": []})
    got = enc.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default")
    assert got.shape == (0, tri.config.dim) and got.dtype == np.float32


def test_bad_audio_items(tri):
    from onepeace.integrations.mteb import _audio_item

    with pytest.raises(InputError, match="has no 'sampling_rate'"):
        _audio_item({"array": np.zeros(10)})
    with pytest.raises(InputError, match="neither 'array'"):
        _audio_item({"foo": 1})
    enc = _encoder(tri)
    with pytest.raises(InputError, match="has no samples"):
        enc._embed({"audio": [_audio_item({"array": np.zeros(0, np.float32), "sampling_rate": 16000})]})


def test_loads_a_directory_and_registers_for_get_model(tri, tmp_path):
    from onepeace.integrations.mteb import OnePeaceEncoder, register

    d = tmp_path / "tiny-model"
    tri.save_pretrained(d)
    enc = OnePeaceEncoder(str(d))
    assert enc.mteb_model_meta.name == "onepeace/tiny-model"
    name = register(str(d), batch_size=4)
    got = mteb.get_model(name)
    assert isinstance(got, OnePeaceEncoder) and got.batch_size == 4
    assert mteb.get_model_meta(name).modalities == ["text", "image", "audio"]
    z = got.model.embed(text=["a dog"])["text"]
    torch.testing.assert_close(z, tri.embed(text=["a dog"])["text"], rtol=0, atol=1e-6)


def test_mteb_command_writes_the_standard_results_folder(tri, tmp_path, capsys):
    """`make mteb` runs `python -m onepeace.integrations.mteb`: a local ESC-10-shaped folder (two
    classes, generated clips) scored into MTEB's results folder; a task name MTEB does not know is
    one line and exit 2."""
    import json

    import soundfile as sf

    from onepeace.integrations.mteb import main

    tri.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    for cls in ("001 - Dog bark", "002 - Rain"):
        (tmp_path / "esc" / cls).mkdir(parents=True)
        for k in range(2):
            sf.write(tmp_path / "esc" / cls / f"1-{k}-A.ogg", rng.uniform(-0.3, 0.3, 22050).astype(np.float32),
                     22050, format="OGG")
    rc = main(["--model", str(tmp_path / "m"), "--esc10", str(tmp_path / "esc"), "--output", str(tmp_path / "res")])
    assert rc == 0, capsys.readouterr()
    files = list((tmp_path / "res").rglob("ESC10ZeroShotLocal.json"))
    assert len(files) == 1 and "onepeace__m" in str(files[0])
    assert 0.0 <= json.loads(files[0].read_text())["scores"]["test"][0]["accuracy"] <= 1.0
    assert main(["--model", str(tmp_path / "m"), "--tasks", "NoSuchTask"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onepeace mteb: error: --tasks NoSuchTask") and "\n" not in err
    assert main(["--model", str(tmp_path / "m")]) == 2
    assert "no task to run" in capsys.readouterr().err
