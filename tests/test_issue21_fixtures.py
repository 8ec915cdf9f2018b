"""The official-output fixtures are in the repository (tests/fixtures/upstream-tiny), small, and
what their README says they are; the trimmed checkpoints keep every row the references read."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from conftest import ASSETS, DICT, FIX, TINY
from onepeace.checkpoints.official import read_fairseq_dict, vocab_permutation
from onepeace.processing.tokenizer import SPECIAL_SYMBOLS

EMBED = "encoder_wrapper.text_adapter.embed_tokens.weight"
LIMIT = 10 * 1000**2  # the bound on the fixtures carried in the repository


def _referenced_rows() -> set[int]:
    ref = np.load(TINY / "reference_inputs.npz")
    return {int(r) for k in ("text_src_tokens", "fused_src_tokens", "grounding_src_tokens") for r in ref[k].ravel()}


def test_fixtures_are_small_and_match_their_readme():
    files = sorted(p for p in FIX.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert sum(p.stat().st_size for p in files) <= LIMIT
    listed = dict((path, digest) for digest, path in
                  re.findall(r"^([0-9a-f]{64})  (\S+)$", (FIX / "README.md").read_text(), re.M))
    data = {str(p.relative_to(FIX)) for p in files} - {"README.md", "trim.py"}
    assert set(listed) == data, "README.md's sha256 list and the files in the folder differ"
    for path, digest in listed.items():
        assert hashlib.sha256((FIX / path).read_bytes()).hexdigest() == digest, f"{path} is not the file README.md describes"


@pytest.mark.parametrize("name", ["one-peace-tiny", "one-peace-tiny-grounding-refcocog"])
def test_trimmed_embedding_keeps_every_row_the_references_read(name):
    table = torch.load(TINY / f"{name}.pt", weights_only=True)["model"][EMBED]
    kept = (table != 0).any(dim=1).nonzero().ravel().tolist()
    # every row an input selects holds its (random, nowhere zero-filled) official values, and only those
    assert set(kept) == _referenced_rows() | {0, 1, 2, 3}


def test_dict_rows_agree_with_the_official_tokenization():
    rows = json.loads((TINY / "dict_rows.json").read_text())
    assert {r for r in rows.values()} == _referenced_rows() - {0, 1, 2, 3}
    tok = json.loads((TINY / "tokenization.json").read_text())
    for s in tok["sentences"]:
        assert [rows[g] for g in s["gpt2_bpe_ids"].split()] == s["dict_ids_untruncated"], s["text"]


def test_fixture_dict_orders_the_rows_as_the_official_one():
    symbols = read_fairseq_dict(DICT)
    perm = vocab_permutation(symbols)  # the converter's checks: size, specials, every GPT-2 id present
    assert sorted(perm[: len(perm) - len(SPECIAL_SYMBOLS)].tolist()) == list(range(4, 4 + len(perm) - len(SPECIAL_SYMBOLS)))
    for g, r in json.loads((TINY / "dict_rows.json").read_text()).items():
        assert perm[int(g)] == r


@pytest.mark.skipif(not (ASSETS / "dict.txt").exists(),
                    reason="the official dict.txt (real data beside the repository, developer/CI machines only) is absent")
def test_fixture_dict_rows_are_those_of_the_official_dict():
    official = ASSETS / "dict.txt"
    md5 = json.loads((TINY / "tokenization.json").read_text())["bpe_files_md5"]["dict.txt"]
    assert hashlib.md5(official.read_bytes()).hexdigest() == md5
    ours, theirs = vocab_permutation(read_fairseq_dict(DICT)), vocab_permutation(read_fairseq_dict(official))
    used = [int(g) for g in json.loads((TINY / "dict_rows.json").read_text())] + list(SPECIAL_SYMBOLS)
    assert torch.equal(ours[used], theirs[used])
