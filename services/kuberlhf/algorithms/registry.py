"""The algorithms users pick from, one descriptor each: the one place that says what an algorithm is.

Preflight, launch, capacity and the operator ask `roles(spec)` which workers a job starts; the spec asks a
descriptor for its defaults (KL, clip range) and its settings block; the trainers ask it which advantage
estimator and which policy loss (by name, in `kuberlhf.algorithms`) to use. Adding an algorithm = its functions in
`kuberlhf.algorithms`, its settings model (if any) in `spec_online`/`spec_offline`, and one entry here.

Light on purpose (pydantic models and the standard library; no torch): the operator imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kuberlhf.spec_base import SpecModel
from kuberlhf.spec_offline import DPOSpec, KTOSpec, SFTSpec
from kuberlhf.spec_online import DAPOSpec

if TYPE_CHECKING:
    from kuberlhf.spec import RLHFJobSpec

Kind = Literal["online", "offline"]
Role = Literal["policy", "rollout", "reward", "reference", "critic"]


@dataclass(frozen=True)
class Algorithm:
    """What one algorithm needs and how it trains.

    Online algorithms sample their own completions: `advantage` names the estimator (`gae`, `grpo`, `rloo`,
    `reinforce_pp`) and `policy_loss` the loss (`ppo`, `gspo`, `cispo`: `algorithms.POLICY_LOSSES`). Offline ones
    learn from a dataset in `data_format` with the loss `policy_loss` names (`trainers/offline_loop.py`)."""

    name: str
    kind: Kind
    summary: str  # one line: what it does, for the spec's description and the docs
    data_format: str  # what a row of data.train holds (docs/data.md)
    policy_loss: str
    advantage: str | None = None  # online only
    critic: bool = False  # trains a value model
    groups: bool = False  # compares the samples of one prompt: needs rollout.samplesPerPrompt >= 2
    reference: Literal["never", "always", "kl"] = "never"  # "kl": only when a KL term is asked for
    kl_coef: float = 0.0  # default training.kl.coef
    kl_penalty: Literal["reward", "loss"] = "reward"  # default training.kl.penalty
    clip: tuple[float | None, float] = (0.2, 0.2)  # default training.clipRatioLow / clipRatioHigh
    dual_clip: bool = False  # training.dualClip applies
    settings: type[SpecModel] | None = None  # its own settings block: spec.<name>
    source: str = ""  # where the defaults come from

    @property
    def online(self) -> bool:
        return self.kind == "online"

    def roles(self, spec: RLHFJobSpec) -> tuple[Role, ...]:
        """The roles a job of this algorithm starts: exactly these are launched, counted by the capacity check and
        reserved by the operator. Offline: `policy` is the Ray Train workers, `reference` the actor that scores
        the reference log-probs before training."""
        uses_reference = self.reference == "always" or (self.reference == "kl" and spec.uses_kl)
        if not self.online:
            return ("policy", "reference") if uses_reference else ("policy",)
        roles: list[Role] = ["policy", "rollout"]
        if spec.reward is not None and spec.reward.model:
            roles.append("reward")
        if uses_reference:
            roles.append("reference")
        if self.critic:
            roles.append("critic")
        return tuple(roles)


PROMPTS = "prompt (+ the columns a reward function reads, e.g. answer)"
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ppo", "online", "clipped policy loss, GAE advantages from a critic, KL reward penalty",
              PROMPTS, "ppo", advantage="gae", critic=True, reference="kl", kl_coef=0.05, dual_clip=True,
              source="TRL PPOConfig (kl_coef 0.05, cliprange 0.2); Ouyang et al. 2022"),
    Algorithm("grpo", "online", "group-normalised rewards, no critic; KL only when asked for",
              PROMPTS, "ppo", advantage="grpo", groups=True, reference="kl", kl_penalty="loss", dual_clip=True,
              source="TRL GRPOConfig (beta 0: no reference model, epsilon 0.2); Shao et al. 2024"),
    Algorithm("rloo", "online", "leave-one-out baseline within each prompt's samples",
              PROMPTS, "ppo", advantage="rloo", groups=True, reference="kl", kl_coef=0.05, dual_clip=True,
              source="TRL RLOOConfig (beta 0.05, KL in the reward); Ahmadian et al. 2024"),
    Algorithm("reinforce_pp", "online", "REINFORCE++: discounted returns normalised over the batch",
              PROMPTS, "ppo", advantage="reinforce_pp", reference="kl", kl_coef=0.05, dual_clip=True,
              source="Hu 2025 (KL in the reward); KubeRLHF's earlier default 0.05"),
    Algorithm("gspo", "online", "GRPO advantages with one clipped importance ratio per sequence",
              PROMPTS, "gspo", advantage="grpo", groups=True, reference="kl", kl_penalty="loss",
              clip=(3e-4, 4e-4), source="Zheng et al. 2025 (clip 3e-4 / 4e-4, no KL); TRL's GSPO recipe"),
    Algorithm("dapo", "online", "GRPO with clip-higher, token-mean loss, overlong shaping, dynamic sampling",
              PROMPTS, "ppo", advantage="grpo", groups=True, reference="kl", kl_penalty="loss",
              clip=(0.2, 0.28), dual_clip=True, settings=DAPOSpec,
              source="Yu et al. 2025 (clip 0.2 / 0.28, no KL)"),
    Algorithm("cispo", "online", "REINFORCE with clipped, detached importance weights (no token loses its gradient)",
              PROMPTS, "cispo", advantage="grpo", groups=True, reference="kl", kl_penalty="loss",
              clip=(None, 4.0), source="MiniMax 2025 (MiniMax-M1); weight cap 5 from ScaleRL, TRL's recipe"),
    Algorithm("sft", "offline", "supervised fine-tuning on demonstrations",
              "prompt + completion, messages or text", "sft", settings=SFTSpec, source="TRL SFTTrainer"),
    Algorithm("rm", "offline", "a reward model (scalar head) from preference pairs",
              "prompt + chosen + rejected", "rm", source="TRL RewardTrainer (Bradley-Terry)"),
    Algorithm("dpo", "offline", "preference pairs, no reward model",
              "prompt + chosen + rejected", "dpo", reference="always", settings=DPOSpec,
              source="TRL DPOConfig (beta 0.1); Rafailov et al. 2023"),
    Algorithm("kto", "offline", "single completions labelled good or bad",
              "prompt + completion + label", "kto", reference="always", settings=KTOSpec,
              source="TRL KTOConfig (beta 0.1); Ethayarajh et al. 2024"),
)}
NAMES: tuple[str, ...] = tuple(ALGORITHMS)
ONLINE: tuple[str, ...] = tuple(name for name, a in ALGORITHMS.items() if a.online)
OFFLINE: tuple[str, ...] = tuple(name for name, a in ALGORITHMS.items() if not a.online)
SETTINGS_BLOCKS: dict[str, type[SpecModel]] = {name: a.settings for name, a in ALGORITHMS.items() if a.settings}


def algorithm(name: str) -> Algorithm:
    """The descriptor of `name` (a valid spec names one of `NAMES`)."""
    return ALGORITHMS[name]


def roles(spec: RLHFJobSpec) -> tuple[Role, ...]:
    """The roles a single-stage job starts (see `Algorithm.roles`)."""
    assert spec.algorithm is not None, "a chained job's stages each have their own roles"
    return ALGORITHMS[spec.algorithm].roles(spec)


DOCS_BEGIN, DOCS_END = "<!-- generated from kuberlhf.algorithms.registry -->", "<!-- end generated -->"


def render_algorithms_markdown() -> str:
    """The table of docs/algorithms.md, from the descriptors (tests check the page holds exactly this)."""
    def clip(a: Algorithm) -> str:
        low, high = a.clip
        return f"{'none' if low is None else f'{low:g}'} / {high:g}" if a.online else "-"

    lines = [DOCS_BEGIN, "| algorithm | kind | data (a row of data.train) | workers it starts | KL default | "
             "clip low / high | policy loss | settings | defaults from |", "|---|---|---|---|---|---|---|---|---|"]
    for a in ALGORITHMS.values():
        roles = "policy, rollout, reward (with reward.model)" if a.online else "policy (Ray Train workers)"
        roles += {"kl": ", reference (with KL)", "always": ", reference", "never": ""}[a.reference]
        roles += ", critic" if a.critic else ""
        kl = f"{a.kl_coef:g} ({a.kl_penalty})" if a.online else "-"
        loss = f"{a.policy_loss}, {a.advantage} advantages" if a.online else a.policy_loss
        settings = f"`spec.{a.name}`" if a.settings else "-"
        lines.append(f"| `{a.name}` | {a.kind}: {a.summary} | {a.data_format} | {roles} | {kl} | {clip(a)} | "
                     f"{loss} | {settings} | {a.source} |")
    return "\n".join(lines + [DOCS_END]) + "\n"
