"""Issue 23: a local MTEB task from real data (ESC-10 zero-shot audio classification, through MTEB's
AbsTaskZeroShotClassification), scored by MTEB and by onepeace's own zero-shot (what `onepeace
zeroshot` runs): the same accuracy. Skips when ../shared/data/esc10 is absent."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mteb")

import onepeace  # noqa: E402
from conftest import SHARED  # noqa: E402
from onepeace.errors import InputError  # noqa: E402

ESC10 = SHARED / "data" / "esc10"


def test_not_an_esc10_folder(tmp_path):
    from onepeace.integrations.mteb_tasks import esc10_zeroshot

    with pytest.raises(InputError, match="is not an ESC-10 folder"):
        esc10_zeroshot(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not ESC10.is_dir(), reason="ESC-10 is not at ../shared/data/esc10 (developer and CI machines only)")
def test_esc10_zeroshot_mteb_agrees_with_onepeace_zeroshot():
    import mteb

    from onepeace.integrations.mteb import OnePeaceEncoder
    from onepeace.integrations.mteb_tasks import esc10_files, esc10_zeroshot
    from onepeace.tasks.zeroshot import zero_shot

    torch.manual_seed(0)
    model = onepeace.create_model("tiny", layers=1)
    task = esc10_zeroshot(ESC10, folds=(1,), per_class=2)
    res = mteb.evaluate(OnePeaceEncoder(model), [task], cache=None, raise_error=True, show_progress_bar=False)
    scores = res.task_results[0].scores["test"][0]
    names, paths, labels = esc10_files(ESC10, (1,), 2)
    assert len(paths) == 20 and names[0] == "dog bark"
    probs = zero_shot(model, names, audio=paths)["audio"]
    pred = probs.argmax(1)
    ours = (pred == torch.tensor(labels)).double().mean().item()
    # the same argmax over the same cosines: equal accuracies (a tie at the top would be the only way apart)
    top2 = probs.topk(2, dim=1).values
    assert bool((top2[:, 0] > top2[:, 1]).all()), "a tie at the top: the two protocols may pick differently"
    assert scores["accuracy"] == pytest.approx(ours, abs=1e-9)
