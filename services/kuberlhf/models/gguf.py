"""Turn a GGUF file (llama.cpp's format; quantized models ship in it) into a Hugging Face model directory that
every role and engine loads: float32 safetensors weights, config, tokenizer and chat template.

transformers dequantizes a GGUF file when it loads one (`gguf_file=`), but marks the model as quantized and
refuses to save it; so the dequantized weights go into a fresh model built from the same config.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kuberlhf.errors import UserError


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` (a new directory, filled in a temporary sibling and renamed into place) from `gguf_file`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: no such GGUF file")
    if out_dir.exists():
        raise UserError(f"{out_dir} exists; choose another output directory (nothing was overwritten)")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise UserError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                      dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{gguf_file}: cannot load it as a causal language model: {err}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; a model directory is for everyone who may read its parent
    try:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir
