"""`kuberlhf serve-policy`: a run's final model behind vLLM's OpenAI-compatible server answers the `openai`
client's completion and chat requests with what the model itself generates (greedy, the chat template applied
for chat), under the job's name."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import openai
import pytest

pytestmark = pytest.mark.slow
PROMPT = "12+3="


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def greedy(model, tokenizer, ids: list[int], tokens: int) -> str:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def wait_until_up(client: openai.OpenAI, server: subprocess.Popen, seconds: float = 300) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            return [model.id for model in client.models.list()]
        except openai.APIConnectionError:
            time.sleep(2)
    pytest.fail("the server did not come up")


def test_the_policy_server_answers_completions_and_chat_as_the_model_does(assets, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "run"
    shutil.copytree(assets["model"], run_dir / "final")
    (run_dir / "summary.json").write_text(json.dumps({"job": "grpo-tiny", "status": "succeeded"}))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kuberlhf.cli", "serve-policy", str(run_dir), "--port", str(port),
                               "--max-model-len", "64"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert wait_until_up(client, server) == ["grpo-tiny"]
        model, tokenizer = AutoModelForCausalLM.from_pretrained(assets["model"]), AutoTokenizer.from_pretrained(
            assets["model"])
        completion = client.completions.create(model="grpo-tiny", prompt=PROMPT, max_tokens=3, temperature=0)
        assert completion.choices[0].text == greedy(model, tokenizer, tokenizer(PROMPT)["input_ids"], 3)
        messages = [{"role": "user", "content": PROMPT}]
        chat = client.chat.completions.create(model="grpo-tiny", messages=messages, max_tokens=3, temperature=0)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rendered = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template holds its own tokens
        assert chat.choices[0].message.content == greedy(model, tokenizer, rendered, 3)
        assert text != PROMPT  # the chat request went through the model's chat template
    finally:
        server.terminate()
        server.wait(60)
