"""The tiny local model factory and the addition task (no downloads, CPU, a few seconds)."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama, save_model_dir  # noqa: E402
from kuberlhf.tasks.addition import (  # noqa: E402
    ALPHABET,
    build_demo_assets,
    exact_match_reward,
    greedy_accuracy,
    make_addition_rows,
    make_reward_pairs,
    sampled_accuracy,
    warmup_sft,
)

TEXTS = ["23+45=68", "0+0=0", "99+99=198", "=+=+", "1234567890"]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


def test_tokenizer_special_tokens_and_vocab(tok):
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.padding_side == "left"
    assert len(tok) == 4 + len(ALPHABET)
    ids = tok("23+45=", add_special_tokens=False).input_ids
    assert len(ids) == 6 and all(i >= 4 for i in ids)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_text(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text


def test_tokenizer_left_pads(tok):
    enc = tok(["1+2=", "23+45="], padding=True, add_special_tokens=False)
    assert enc["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert enc["attention_mask"][0] == [0, 0, 1, 1, 1, 1]


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id] == [0, 1, 2, 3]
    assert loaded.padding_side == "left"
    for text in TEXTS:
        ids = loaded(text, add_special_tokens=False).input_ids
        assert ids == tok(text, add_special_tokens=False).input_ids
        assert loaded.decode(ids) == text


def test_tiny_llama_forward_shape_and_save_load(tok, tmp_path):
    model = build_tiny_llama(tok, seed=0)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.pad_token_id == 0 and model.config.eos_token_id == 2 and model.config.bos_token_id == 1
    enc = tok(["1+2=", "23+45="], padding=True, add_special_tokens=False, return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (2, 6, len(tok))

    same = build_tiny_llama(tok, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))

    path = save_model_dir(model, tok, tmp_path / "m")
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    loaded = AutoModelForCausalLM.from_pretrained(path)
    loaded_tok = AutoTokenizer.from_pretrained(path)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits)


def test_exact_match_reward_by_hand():
    prompts = ["1+2=", "1+2=", "10+5=", "10+5=", "9+9="]
    completions = ["3", " 3 ", "15", "16", ""]
    answer = ["3", "3", "15", "15", "18"]
    assert exact_match_reward(prompts, completions, answer=answer, other_column=[None] * 5) == [
        1.0, 1.0, 1.0, 0.0, 0.0,
    ]


def test_rows_are_correct_and_split_is_held_out():
    train, evals = make_addition_rows(seed=0, n_train=1000, n_eval=200)
    assert len(train) == 1000 and len(evals) == 200
    for r in train + evals:
        a, b = r["prompt"].rstrip("=").split("+")
        assert r["prompt"].endswith("=") and r["answer"] == str(int(a) + int(b))
        assert set(r["prompt"] + r["answer"]) <= set(ALPHABET)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert len({r["prompt"] for r in train}) == 1000
    assert make_addition_rows(seed=0, n_train=1000, n_eval=200) == (train, evals)
    assert make_addition_rows(seed=1, n_train=1000, n_eval=200)[0] != train


def test_reward_pairs_prefer_the_sum_over_mistakes_of_each_kind_a_model_makes():
    train, _ = make_addition_rows(seed=0, n_train=2000, n_eval=0)
    pairs = make_reward_pairs(train, seed=1)
    assert len(pairs) == 3 * len(train) and pairs == make_reward_pairs(train, seed=1)
    kinds = {"ones digit": 0, "missed carry": 0, "length": 0}
    for pair in pairs:
        a, b = pair["prompt"].rstrip("=").split("+")
        chosen, rejected = int(pair["chosen"]), int(pair["rejected"])
        assert chosen == int(a) + int(b) and rejected != chosen and pair["rejected"].isdigit()
        if len(pair["rejected"]) != len(pair["chosen"]):
            kinds["length"] += 1
        elif abs(rejected - chosen) in (10, 20):
            kinds["missed carry"] += 1
        else:
            assert abs(rejected - chosen) <= 9
            kinds["ones digit"] += 1
    shares = {kind: count / len(pairs) for kind, count in kinds.items()}
    # drawn 55 / 30 / 15; a digit off can also change the length (105 - 10 = 95), which counts as "length" here
    assert 0.50 < shares["ones digit"] < 0.57 and 0.21 < shares["missed carry"] < 0.28 and 0.17 < shares["length"] < 0.25


def test_sft_lowers_loss_and_accuracy_is_deterministic(tok):
    model = build_tiny_llama(tok, seed=0)
    train, evals = make_addition_rows(seed=0, n_train=256, n_eval=16)
    losses = warmup_sft(model, tok, train, steps=30, batch_size=32, learning_rate=3e-3)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    state = torch.get_rng_state()
    a = sampled_accuracy(model, tok, evals, samples_per_prompt=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert a == sampled_accuracy(model, tok, evals, samples_per_prompt=2, seed=3)
    assert 0.0 <= a <= 1.0 and 0.0 <= greedy_accuracy(model, tok, evals) <= 1.0


def test_build_demo_assets_is_idempotent(tmp_path):
    out = tmp_path / "assets"
    paths = build_demo_assets(out, seed=0, sft_steps=2, n_train=64, n_eval=8)
    assert set(paths) == {"model", "reward_base", "train", "eval", "sft", "pairs", "labels", "rm_pairs",
                          "chat_train", "chat_eval"}
    assert len(open(paths["rm_pairs"]).read().splitlines()) == 3 * 64
    files = [os.path.join(paths[m], "config.json") for m in ("model", "reward_base")] + [paths["train"], paths["eval"]]
    assert all(os.path.isfile(f) for f in files)
    assert len(open(paths["train"]).read().splitlines()) == 64
    assert json.loads(open(paths["eval"]).readline()).keys() == {"prompt", "answer"}
    AutoModelForCausalLM.from_pretrained(paths["model"])
    AutoTokenizer.from_pretrained(paths["model"])
    bigger = AutoModelForCausalLM.from_pretrained(paths["reward_base"])
    assert bigger.config.hidden_size > AutoModelForCausalLM.from_pretrained(paths["model"]).config.hidden_size
    assert [p.name for p in tmp_path.iterdir()] == ["assets"]  # no temporary directory left behind

    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    assert build_demo_assets(out, seed=0, sft_steps=2, n_train=64, n_eval=8) == paths
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes


def test_build_demo_assets_completes_a_partial_directory(tmp_path):
    out = tmp_path / "assets"
    (out / "model").mkdir(parents=True)  # e.g. an interrupted earlier build: no config.json
    (out / "train.jsonl").write_text("stale\n")
    paths = build_demo_assets(out, seed=0, sft_steps=1, n_train=32, n_eval=4)
    assert os.path.isfile(os.path.join(paths["model"], "config.json"))
    assert len(open(paths["train"]).read().splitlines()) == 32
    assert [p.name for p in tmp_path.iterdir()] == ["assets"]
