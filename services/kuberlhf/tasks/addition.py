"""The "addition" task: a tiny verifiable task on which RL visibly helps.

A prompt is ``"23+45="``; the correct completion is the decimal sum (``"68"``) followed by EOS. The reward is
exact match, so it is cheap, deterministic and needs no reward model: the right shape for testing PPO / GRPO
plumbing end to end on a CPU.

Why it suits RL tests: a tiny Llama (:func:`kuberlhf.models.tiny.build_tiny_llama`) learns the task quickly,
and a short supervised warm-up (:func:`warmup_sft`) leaves it *partially* solved: its greedy answer is often
right but sampling at temperature 1 still spreads probability over wrong digits. RL on exact-match reward
sharpens that distribution, so held-out *sampled* accuracy rises within a few dozen steps — a visible,
fast signal that the whole loop (generation, reward, advantages, policy update, weight sync) works.
Train and eval rows share no ``(a, b)`` pair, so the eval set measures generalisation, not memorisation.

``python -m kuberlhf.tasks.addition OUT_DIR`` builds the demo assets (warmed-up model directory,
``train.jsonl``, ``eval.jsonl``) and prints the held-out sampled and greedy accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import zlib
import shutil
import tempfile
import time
from pathlib import Path

import torch

ALPHABET = "0123456789+="

# Operand ranges (inclusive): a two-digit number plus a one- or two-digit number; sums go up to 198, so an
# answer is at most 3 digits + EOS = 4 new tokens.
A_RANGE = (10, 99)
B_RANGE = (0, 99)

DEFAULT_N_TRAIN = 4000
DEFAULT_N_EVAL = 256
DEFAULT_SFT_STEPS = 1200

# The reward model's starting point: a larger Llama (661k parameters) warmed up on the task like the policy.
# Judging whether a sum is right is beyond the 84k-parameter policy's size: a reward model trained from it
# stays at chance on held-out pairs; from this one it ranks 96-99% of the policy's own answers right
# (docs/architecture.md).
REWARD_BASE_SIZE = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256)


# ----------------------------------------------------------------------------------------------- data


def make_addition_rows(seed: int, n_train: int, n_eval: int) -> tuple[list[dict], list[dict]]:
    """``n_train`` training rows and ``n_eval`` held-out rows ``{"prompt": "23+45=", "answer": "68"}``.

    The two sets are drawn without replacement from all ``(a, b)`` pairs, so they share no pair.
    """
    pairs = [(a, b) for a in range(A_RANGE[0], A_RANGE[1] + 1) for b in range(B_RANGE[0], B_RANGE[1] + 1)]
    if n_train + n_eval > len(pairs):
        raise ValueError(f"n_train + n_eval = {n_train + n_eval} exceeds the {len(pairs)} distinct pairs")
    random.Random(seed).shuffle(pairs)

    def row(a: int, b: int) -> dict:
        return {"prompt": f"{a}+{b}=", "answer": str(a + b)}

    train = [row(a, b) for a, b in pairs[:n_train]]
    evals = [row(a, b) for a, b in pairs[n_train : n_train + n_eval]]
    return train, evals


def conversational(rows: list[dict]) -> list[dict]:
    """The same rows with TRL's conversational prompts: ``[{"role": "user", "content": "23+45"}]``; the chat
    template (:data:`CHAT_TEMPLATE`) renders it, with the generation prompt, as the ``"23+45="`` the model knows."""
    return [{**row, "prompt": [{"role": "user", "content": row["prompt"].removesuffix("=")}]} for row in rows]


# The addition model's chat template: a user turn is its text, an assistant turn "=" + its text + EOS, and the
# generation prompt "=". So `[user "23+45"]` + generation prompt renders "23+45=", and a conversation ending in
# the assistant's "68" renders "23+45=68<eos>", which extends it (what offline stages need).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}={{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}={%- endif -%}"
)


def make_offline_rows(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    """The same prompts as data for the offline stages: `sft` (prompt, completion: the answer), `pairs`
    (prompt, chosen: the answer, rejected: a wrong sum 1-9 away) and `labels` (prompt, completion, label:
    each prompt once, with the right answer or a wrong one at random: unpaired thumbs up / down)."""
    rng = random.Random(seed)

    def wrong(answer: str) -> str:
        return str(ones_digit_mistake(int(answer), rng))

    sft = [{"prompt": r["prompt"], "completion": r["answer"]} for r in rows]
    pairs = [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": wrong(r["answer"])} for r in rows]
    labels = []
    for r in rows:
        good = rng.random() < 0.5
        labels.append({"prompt": r["prompt"], "completion": r["answer"] if good else wrong(r["answer"]), "label": good})
    return {"sft": sft, "pairs": pairs, "labels": labels}


def make_reward_pairs(rows: list[dict], seed: int, per_prompt: int = 3) -> list[dict]:
    """Preference pairs for a reward model: each prompt's right answer over `per_prompt` wrong ones of the
    kinds a model makes on this task (:func:`model_like_mistake`), several comparisons per prompt as in
    InstructGPT's rankings. A reward model that only ever saw sums 1-9 away (`pairs`) ranks the policy's
    missed carries (10 away) no better than 64% of the time (docs/architecture.md)."""
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": model_like_mistake(r["answer"], rng)}
            for r in rows for _ in range(per_prompt)]


def model_like_mistake(answer: str, rng: random.Random) -> str:
    """A wrong sum like the warmed-up model's own: a ones digit off (1-9 away; 75% of its mistakes), a tens
    digit off (10 or 20 away, a missed carry; 19%) or a digit too many or too few (5%), drawn 55 / 30 / 15 so
    that the rarer kinds are seen often enough."""
    value, kind = int(answer), rng.random()
    if kind < 0.55:
        return str(ones_digit_mistake(value, rng))
    if kind < 0.85:
        return str(rng.choice([v for v in (value - 20, value - 10, value + 10, value + 20) if v >= 0]))
    return str(rng.choice([v for v in range(200) if len(str(v)) != len(answer)]))


def ones_digit_mistake(value: int, rng: random.Random) -> int:
    """A wrong sum 1-9 away from `value` (never negative)."""
    return rng.choice([v for v in range(value - 9, value + 10) if v >= 0 and v != value])


def write_jsonl(rows, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------- reward


def exact_match_reward(prompts: list, completions: list, answer: list[str], **columns) -> list[float]:
    """1.0 where ``completion.strip() == answer``, else 0.0 (``answer`` is the dataset column). Completions are
    strings, or TRL's conversational ``[{"role": "assistant", "content": ...}]``."""
    return [1.0 if completion_text(c).strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def random_reward(prompts: list, completions: list, **columns) -> list[float]:
    """A control: 1.0 or 0.0 at random, unrelated to the completion (seeded by the texts, so repeatable).

    Training on it must not raise accuracy; if it does, the improvement elsewhere is not from the reward."""
    return [float(zlib.crc32(f"{p}|{completion_text(c)}|{i}".encode()) % 2)
            for i, (p, c) in enumerate(zip(prompts, completions))]


def completion_text(completion: str | list[dict]) -> str:
    """A completion's text: a string as is, the content of a conversational completion's last message."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


# ----------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _generate_accuracy(
    model, tokenizer, rows, *, samples_per_prompt: int, do_sample: bool, temperature: float,
    max_new_tokens: int, seed: int, batch_size: int,
) -> float:
    if not rows:
        return 0.0
    prompts = [r["prompt"] for r in rows for _ in range(samples_per_prompt)]
    answers = [r["answer"] for r in rows for _ in range(samples_per_prompt)]
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                kwargs = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if do_sample \
                    else dict(do_sample=False)
                out = model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **kwargs,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                completions.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    rewards = exact_match_reward(prompts, completions, answer=answers)
    return sum(rewards) / len(rewards)


def sampled_accuracy(model, tokenizer, rows, samples_per_prompt: int = 4, temperature: float = 1.0,
                     max_new_tokens: int = 4, seed: int = 0, batch_size: int = 256) -> float:
    """Mean exact-match reward of ``samples_per_prompt`` samples (temperature, top_p=1) per row.

    Deterministic for a fixed ``seed``; the global torch RNG state is left untouched.
    """
    return _generate_accuracy(model, tokenizer, rows, samples_per_prompt=samples_per_prompt, do_sample=True,
                              temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                              batch_size=batch_size)


def greedy_accuracy(model, tokenizer, rows, max_new_tokens: int = 4, batch_size: int = 256, **_ignored) -> float:
    """Exact-match accuracy of greedy decoding (one completion per row)."""
    return _generate_accuracy(model, tokenizer, rows, samples_per_prompt=1, do_sample=False, temperature=1.0,
                              max_new_tokens=max_new_tokens, seed=0, batch_size=batch_size)


# ------------------------------------------------------------------------------------------- warm-up


def _sft_batch(tokenizer, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+answer+EOS ids, attention mask, labels (-100 on prompt and padding)."""
    seqs, labels = [], []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=False).input_ids
        c = tokenizer(r["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
    return ids, mask, lab


def warmup_sft(model, tokenizer, rows, steps: int, batch_size: int = 64, learning_rate: float = 1e-3,
               seed: int = 0) -> list[float]:
    """Plain supervised warm-up on prompt+answer+EOS, loss on the completion tokens only (AdamW,
    constant learning rate). Returns the per-step loss; leaves the model in eval mode."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            ids, mask, lab = _sft_batch(tokenizer, rng.sample(rows, min(batch_size, len(rows))))
            loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


# -------------------------------------------------------------------------------------- demo assets


DATA_FILES = ("train", "eval", "sft", "pairs", "labels", "rm_pairs", "chat_train", "chat_eval")
MODEL_DIRS = {"reward_base": "reward-base", "model": "model"}  # "model" last: its presence marks a complete build


def _asset_paths(out_dir: Path) -> dict:
    return {**{key: str(out_dir / name) for key, name in MODEL_DIRS.items()},
            **{name: str(out_dir / f"{name}.jsonl") for name in DATA_FILES}}


def _complete(out_dir: Path) -> bool:
    return all((out_dir / name / "config.json").is_file() for name in MODEL_DIRS.values()) and all(
        (out_dir / f"{name}.jsonl").is_file() for name in DATA_FILES)


def build_demo_assets(out_dir: str | os.PathLike, seed: int = 0, sft_steps: int = DEFAULT_SFT_STEPS,
                      n_train: int = DEFAULT_N_TRAIN, n_eval: int = DEFAULT_N_EVAL) -> dict:
    """Build (once) a warmed-up tiny model, a larger warmed-up model to start reward models from
    (``reward-base``, :data:`REWARD_BASE_SIZE`) and the JSONL files under ``out_dir``: ``train`` / ``eval``
    prompts with answers, ``sft``, ``pairs``, ``labels`` for the offline stages (`make_offline_rows`) and
    ``rm_pairs`` for reward models (`make_reward_pairs`), and ``chat_train`` / ``chat_eval``, the prompts as
    conversations (`conversational`; the model's tokenizer has a chat template).

    Idempotent: if the model and every file already exist nothing is rewritten. Everything is written to a
    temporary sibling directory and renamed into place at the end, the policy model directory last, so an
    interrupted build never looks complete.
    Returns ``{"model": dir, "reward_base": dir, "train": path, "eval": path, "sft": path, "pairs": path,
    "labels": path, "rm_pairs": path, "chat_train": path, "chat_eval": path}``.
    """
    from kuberlhf.models.tiny import build_char_tokenizer, build_tiny_llama, save_model_dir

    out_dir = Path(out_dir).absolute()
    if _complete(out_dir):
        return _asset_paths(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        train, evals = make_addition_rows(seed, n_train, n_eval)
        tok = build_char_tokenizer(ALPHABET)
        tok.chat_template = CHAT_TEMPLATE
        for key, size in (("reward_base", REWARD_BASE_SIZE), ("model", {})):
            model = build_tiny_llama(tok, seed=seed, **size)
            warmup_sft(model, tok, train, steps=sft_steps, seed=seed)
            save_model_dir(model, tok, tmp / MODEL_DIRS[key])
        write_jsonl(train, tmp / "train.jsonl")
        write_jsonl(evals, tmp / "eval.jsonl")
        write_jsonl(conversational(train), tmp / "chat_train.jsonl")
        write_jsonl(conversational(evals), tmp / "chat_eval.jsonl")
        for name, rows in make_offline_rows(train, seed).items():
            write_jsonl(rows, tmp / f"{name}.jsonl")
        write_jsonl(make_reward_pairs(train, seed + 1), tmp / "rm_pairs.jsonl")

        if _complete(out_dir):  # another process finished first
            return _asset_paths(out_dir)
        try:
            os.rename(tmp, out_dir)  # atomic when out_dir does not exist yet
        except OSError:
            if _complete(out_dir):
                return _asset_paths(out_dir)
            # out_dir exists (empty or a leftover partial build): move the pieces in, the policy model last.
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in DATA_FILES:
                os.replace(tmp / f"{name}.jsonl", out_dir / f"{name}.jsonl")
            for name in MODEL_DIRS.values():
                if (out_dir / name).exists():
                    shutil.rmtree(out_dir / name)
                os.rename(tmp / name, out_dir / name)
        return _asset_paths(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kuberlhf.tasks.addition", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="directory for model/, reward-base/ and the data files "
                                        "(train, eval, sft, pairs, labels, rm_pairs .jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=DEFAULT_SFT_STEPS)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    paths = build_demo_assets(args.out_dir, seed=args.seed, sft_steps=args.sft_steps)
    print(f"assets ready in {time.perf_counter() - t0:.1f}s: {json.dumps(paths)}")
    tok = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"])
    rows = read_jsonl(paths["eval"])
    print(f"held-out sampled accuracy (T=1, 4 samples): {sampled_accuracy(model, tok, rows, seed=args.seed):.3f}")
    print(f"held-out greedy accuracy: {greedy_accuracy(model, tok, rows):.3f}")


if __name__ == "__main__":
    main()
