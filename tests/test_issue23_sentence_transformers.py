"""Issue 23: a onepeace model in sentence-transformers (onepeace.integrations.sentence_transformers):
texts, images and audio through SentenceTransformer.encode give model.embed's rows; a model
directory with modules.json loads with SentenceTransformer(path, trust_remote_code=True); a directory
it cannot read is one line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sentence_transformers")

import onepeace  # noqa: E402
from onepeace.errors import CheckpointError, InputError  # noqa: E402


@pytest.fixture(scope="module")
def om():
    torch.manual_seed(0)
    return onepeace.create_model("tiny", layers=1)


@pytest.fixture(scope="module")
def model_dir(om, tmp_path_factory):
    d = tmp_path_factory.mktemp("st") / "tiny"
    om.save_pretrained(d)
    return d


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    texts = ["a dog barks", "rain falls on a tin roof", "seven"]
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)]
    clips = [rng.uniform(-0.3, 0.3, n).astype(np.float32) for n in (44100, 30000)]
    return texts, images, clips


def _check(st, om):
    texts, images, clips = _inputs()
    got = st.encode(texts)
    assert got.shape == (3, om.config.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, om.embed(text=texts)["text"].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(st.encode(images), om.embed(image=images)["image"].numpy(), rtol=0, atol=1e-6)
    audio = [{"array": c, "sampling_rate": 44100} for c in clips]
    np.testing.assert_allclose(st.encode(audio), om.embed(audio=[(c, 44100) for c in clips])["audio"].numpy(),
                               rtol=0, atol=1e-6)
    # sentence-transformers 6.3 itself refuses a batch mixing modalities (one call per modality)
    with pytest.raises(ValueError, match="mixes multiple modalities"):
        st.encode([texts[0], images[1]])
    assert st.get_embedding_dimension() == om.config.dim


def test_load_encodes_like_embed(om):
    from onepeace.integrations.sentence_transformers import load

    st = load(om)
    assert st.modalities == ["text", "image", "audio"]
    _check(st, om)


def test_directory_loads_with_sentence_transformer(om, model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from onepeace.integrations.sentence_transformers import load, write_modules_json

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    write_modules_json(d)
    st = SentenceTransformer(str(d), trust_remote_code=True)
    _check(st, om)
    # saved by sentence-transformers, read back by both
    st2 = load(str(d))
    st2.save(str(tmp_path / "saved"))
    back = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    _check(back, om)
    onepeace.OnePeace.from_pretrained(tmp_path / "saved")


def test_unreadable_directory_is_one_line(tmp_path):
    from onepeace.integrations.sentence_transformers import load, write_modules_json

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"^sentence-transformers cannot read .*empty as a onepeace model: "):
        write_modules_json(tmp_path / "empty")
    assert not (tmp_path / "empty" / "modules.json").exists()
    with pytest.raises(CheckpointError) as e:
        load(str(tmp_path / "empty"))
    assert "\n" not in str(e.value)
    # through SentenceTransformer itself: a modules.json naming onepeace's module over a broken model
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "modules.json").write_text(
        '[{"idx": 0, "name": "0", "path": "", "type": "onepeace.integrations.sentence_transformers.OnePeaceModule"}]')
    from sentence_transformers import SentenceTransformer

    with pytest.raises(CheckpointError, match="sentence-transformers cannot read .*broken as a onepeace model") as e:
        SentenceTransformer(str(tmp_path / "broken"), trust_remote_code=True)
    assert "\n" not in str(e.value)


def test_modality_the_model_lacks():
    from onepeace.integrations.sentence_transformers import load

    torch.manual_seed(0)
    st = load(onepeace.create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 32}}))
    with pytest.raises((InputError, ValueError), match="audio"):
        st.encode([{"array": np.zeros(16000, np.float32), "sampling_rate": 16000}])
    with pytest.raises(ValueError, match="must also include 'sampling_rate'"):  # InputError is a ValueError
        load(onepeace.create_model("tiny", layers=1)).encode([{"array": np.zeros(16000, np.float32)}])


def test_missing_package_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['sentence_transformers'] = None\n"
            "try:\n    import onepeace.integrations.sentence_transformers\n"
            "except ImportError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("needs the sentence_transformers package: pip install 'onepeace[st]'"), r.stderr
