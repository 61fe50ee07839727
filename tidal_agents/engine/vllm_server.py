"""Start a ``vllm serve`` process with the same settings as the in-process engine.

Used by the tests (real servers on loopback), by ``bench engine --remote auto``
and by anyone who wants a local replica: ``tidal-agents vllm-serve --port 8001``.
A fleet on other machines is started with vLLM's own ``vllm serve``; the flags
that :func:`server_command` prints are the ones to reuse there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from tidal_agents.engine.config import EngineConfig
from tidal_agents.errors import TidalConfigError, TidalEngineError
from tidal_agents.models import resolve_model


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    config: EngineConfig, model_path: str, host: str, port: int, served_name: str
) -> list[str]:
    """The ``vllm serve`` command line for `config` (flags in vLLM's CLI spelling)."""
    args = config.vllm_engine_args(model_path)
    args.pop("model")
    args.pop("disable_log_stats", None)  # keep /metrics: queue depth is worth watching
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path, "--host", host, "--port", str(port),
        "--served-model-name", served_name,
        "--enable-prompt-tokens-details",  # cached-token counts in `usage`
        "--disable-uvicorn-access-log",
    ]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + key.replace("_", "-"))
        elif hasattr(value, "__dataclass_fields__") or isinstance(value, dict):
            cmd += [flag, json.dumps(_plain(value))]
        elif value is not None:
            cmd += [flag, str(value)]
    return cmd


def _plain(value: Any) -> Any:
    """A vLLM config dataclass as the JSON its CLI accepts (only non-default fields)."""
    from dataclasses import fields, is_dataclass

    if not is_dataclass(value) or isinstance(value, type):
        return value
    default = type(value)()
    return {
        f.name: getattr(value, f.name) for f in fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    }


class VLLMServer:
    """One ``vllm serve`` child process on `host`:`port` (loopback by default).

    The process runs in its own session so that :meth:`kill` takes down the API
    server and its engine-core children together.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_name: str | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.host = host
        self.port = port or free_port(host)
        self.served_name = served_name or self.config.model or "smollm2-135m-instruct"
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, wait_s: float = 300.0) -> VLLMServer:
        """Launch and block until ``/health`` answers (or raise with the log tail)."""
        import httpx

        if self.process is not None:
            return self
        model_path = resolve_model(self.config.model)
        env = os.environ.copy()
        self.config.apply_environment()  # vLLM's CPU settings, inherited by the child
        env.update({k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "TOKENIZERS"))})
        cmd = server_command(self.config, model_path, self.host, self.port, self.served_name)
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            cmd, env=env, stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                raise TidalEngineError(
                    f"vllm serve exited with code {self.process.returncode} while starting "
                    f"(command: {' '.join(cmd)}); log: {self.log_path or 'not kept'}"
                    + _tail(self.log_path)
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.startup_s = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TidalEngineError(
            f"vllm serve did not become healthy at {self.url} within {wait_s:.0f} s"
            + _tail(self.log_path)
        )

    def kill(self) -> None:
        """SIGKILL the server and its children at once (a crash, for fault tests)."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)
        self._close_log()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            self._close_log()
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_servers(count: int, log_dir: str | Path | None = None,
                  config: EngineConfig | None = None) -> list[VLLMServer]:
    """`count` servers on loopback, started side by side; all or none."""
    import concurrent.futures

    logs = Path(log_dir) if log_dir else None
    servers = [
        VLLMServer(config, log_path=logs / f"vllm-serve-{i}.log" if logs else None)
        for i in range(count)
    ]
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        errors = [f.exception() for f in [pool.submit(s.start) for s in servers]]
    failed = [e for e in errors if e is not None]
    if failed:
        for s in servers:
            s.stop()
        raise failed[0]
    return servers


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log tail ---\n" + "\n".join(text)


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse to bind beyond loopback unless the caller said so."""
    if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        raise TidalConfigError(
            f"host={host!r} would expose the server beyond this machine; pass "
            "--allow-remote (and set an API key) to do that on purpose."
        )
