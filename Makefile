# The two commands of the README. Both set everything up on a fresh machine (scripts/bootstrap.sh).
.PHONY: demo demo-real test setup

setup:
	@scripts/bootstrap.sh

# A small PPO job on an embedded local Ray; builds the tiny demo model and data first if missing.
demo: setup
	.venv/bin/kuberlhf demo-assets examples/assets
	.venv/bin/kuberlhf run examples/ppo-tiny.yaml

# The real-model showcase (docs/real-model.md): SmolLM2-135M-Instruct from PyPI, GRPO with vLLM rollouts on chat
# prompts, DPO on pairs from its own samples, then both against the start model on held-out facts. About 25
# minutes on 2 CPUs; a finished stage is not run again.
demo-real: setup
	.venv/bin/python -m kuberlhf.tasks.arithmetic assets examples/real-assets
	test -d runs/grpo-smollm2/final || .venv/bin/kuberlhf run examples/grpo-smollm2.yaml
	test -d runs/dpo-smollm2/final || .venv/bin/kuberlhf run examples/dpo-smollm2.yaml
	.venv/bin/python -m kuberlhf.tasks.arithmetic compare --eval examples/real-assets/eval.jsonl \
		--out runs/real-comparison.json start=examples/real-assets/model grpo=runs/grpo-smollm2/final \
		dpo=runs/dpo-smollm2/final

# The whole test suite (unit + integration), as CI runs it.
test: setup
	.venv/bin/python -m pytest tests -q --durations=20
