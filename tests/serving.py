"""Tools services for the tests and benchmarks: ``assistant serve-tools`` in a subprocess on a
free loopback port, and deploy/serve.yaml made fit for one local Ray on this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-1234"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(models_dir: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """This environment without its ASSISTANT_* settings, plus the test models and the token."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ASSISTANT_")}
    env.update(ASSISTANT_MODELS_DIR=str(models_dir), ASSISTANT_DEVICE="cpu",
               ASSISTANT_DB=str(tmp / "service.sqlite3"), ASSISTANT_TOOLS_TOKEN=TOKEN, **extra)
    if "ASSISTANT_CACHE_DIR" in os.environ:
        env["ASSISTANT_CACHE_DIR"] = os.environ["ASSISTANT_CACHE_DIR"]
    return env


def wait_healthy(url: str, token: str, timeout: float, tools: int = 1) -> None:
    """Until ``url``'s health answers with at least ``tools`` tools; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            if health.status_code == 200 and len(health.json()["tools"]) >= tools:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not serve the tools within {timeout:g} s")


class Server:
    """``assistant serve-tools`` in a subprocess, ready when its health answers."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve-tools", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_healthy(self.url, env["ASSISTANT_TOOLS_TOKEN"], 60)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"serve-tools did not start: {self.process.stderr.read().decode()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ray_config(models_dir: Path, folder: Path, *, detr_replicas: int | None = None,
               threads: int | None = None) -> Path:
    """deploy/serve.yaml for this machine: loopback, the test models, no GPU, CPU reservations
    that fit 2 CPUs, at most one replica of each model (``detr_replicas`` of DETR, if given),
    ``threads`` for PyTorch in each (Ray's default: one per whole CPU reserved, so one);
    written into ``folder``."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    config["http_options"]["host"] = "127.0.0.1"
    app = config["applications"][0]
    app["runtime_env"]["env_vars"].update(
        ASSISTANT_MODELS_DIR=str(models_dir), ASSISTANT_TOOLS_TOKEN=TOKEN, ASSISTANT_DEVICE="cpu",
        ASSISTANT_CACHE_DIR=os.environ.get("ASSISTANT_CACHE_DIR", str(folder / "cache")),
        PYTHONPATH=str(ROOT))
    if threads is not None:
        app["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] = str(threads)
    for deployment in app["deployments"]:
        deployment["ray_actor_options"].pop("num_gpus", None)
        deployment["ray_actor_options"]["num_cpus"] = 0.2
        if "autoscaling_config" in deployment:
            deployment["autoscaling_config"]["max_replicas"] = 1
        if deployment["name"] == "detect_video" and detr_replicas is not None:
            deployment.pop("autoscaling_config")
            deployment["num_replicas"] = detr_replicas
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_ray_serve(config: Path, timeout: float = 180) -> str:
    """One local Ray (2 CPUs, no dashboard, a small object store, loopback) and ``serve run
    config`` on it; the URL once every tool is served. :func:`stop_ray_serve` ends both."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
                       namespace="serve", log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        subprocess.run([str(Path(sys.executable).parent / "serve"), "run", "--non-blocking",
                        "--address", context.address_info["address"], str(config)],
                       cwd=ROOT, check=True, capture_output=True, timeout=120)
        url = "http://127.0.0.1:8000"  # the config file's port
        try:
            wait_healthy(url, TOKEN, timeout, tools=6)
        except RuntimeError as exc:
            from ray import serve

            raise RuntimeError(f"{exc}: {serve.status()}") from None
        return url
    except BaseException:
        stop_ray_serve()
        raise


def stop_ray_serve() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
