"""Shared fixtures: the repository paths, the bad-input corpus, and ONE running web app per session.

Set ANOMALY_APP_URL=http://127.0.0.1:PORT/ to run the app tests against a server you started yourself.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from eval.memory_benchmark import free_port

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
APP_START_TIMEOUT_S = 420
# As the CLI and the app set them, before any test imports huggingface_hub (it reads them once): a hub
# name that is not cached fails at once instead of after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Profiles the tests make (and the app and CLI subprocesses, which inherit this) stay out of the user's folder.
os.environ["ANOMALY_ASSISTANT_HOME"] = tempfile.mkdtemp(prefix="anomaly-assistant-tests-")


def cli_command(*args: str) -> list[str]:
    """The installed console script when present, else `python -m assistant.cli`."""
    script = Path(sys.executable).with_name("anomaly-assistant")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "assistant.cli", *args]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("ANOMALY_ASSISTANT_DEBUG", None)
    return subprocess.run(cli_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory):
    from make_bad_inputs import make_corpus

    return make_corpus(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="session")
def textile(tmp_path_factory):
    """Normal textile images, the same with a painted defect, and one normal reference (MIT licence)."""
    pytest.importorskip("conformal_clip_data", reason="conformal-clip-data is not installed")
    from make_bad_inputs import make_textile_set

    return make_textile_set(tmp_path_factory.mktemp("textile"))


def shared_dataset(name: str) -> Path:
    folder = SHARED_DATASETS / name
    if not (folder / "test").is_dir() or not (folder / "train" / "good").is_dir():
        pytest.skip(f"{name} dataset not found at {folder} (shared data is not shipped with the project)")
    return folder


@pytest.fixture(scope="session")
def tire_dir() -> Path:
    return shared_dataset("tire")


@pytest.fixture(scope="session")
def magnetic_tile_dir() -> Path:
    return shared_dataset("magnetic_tile")


@dataclass
class AppServer:
    url: str
    log: Path | None
    process: subprocess.Popen | None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """`python app.py` (default preset, language model on) on a free port, shared by all app tests."""
    if os.environ.get("ANOMALY_APP_URL"):
        yield AppServer(os.environ["ANOMALY_APP_URL"], None, None)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO,
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + APP_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if "Running on local URL" in log.read_text(errors="replace"):  # printed once it serves
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
            if time.time() > deadline:
                pytest.fail(f"app.py did not answer within {APP_START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield AppServer(url, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
