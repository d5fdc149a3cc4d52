# The two commands of the README. Both set everything up on a fresh machine (scripts/bootstrap.sh).
.PHONY: demo test setup

setup:
	@scripts/bootstrap.sh

# A small PPO job on an embedded local Ray; builds the tiny demo model and data first if missing.
demo: setup
	.venv/bin/kuberlhf demo-assets examples/assets
	.venv/bin/kuberlhf run examples/ppo-tiny.yaml

# The whole test suite (unit + integration), as CI runs it.
test: setup
	.venv/bin/python -m pytest tests -q --durations=20
