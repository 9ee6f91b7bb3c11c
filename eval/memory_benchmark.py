"""Peak memory of the two long-running ways to use the assistant: the web app, and `inspect`.

    python -m eval.memory_benchmark --data ../shared/datasets/tire --json docs/eval/memory_benchmark.json

The app is started as a user starts it (`app.py`, language model on), measured once it serves its
page and again after one answer with a reference, which loads the language model and builds a
reference set. `inspect` runs over `DATA/test` against the first `DATA/train/good` image, with the
language model's answers, and its peak resident memory is what the kernel reports for the finished
process. Figures are resident set sizes in MiB (VmRSS now, VmHWM the peak so far).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a running process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return {key: round(int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024, 1)
            for key in ("VmRSS", "VmHWM")}


def wait_for_page(url: str, process: subprocess.Popen) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < STARTUP_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - began
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"app.py did not serve {url} within {STARTUP_TIMEOUT_S} s")


def app_memory(image: Path, reference: Path, class_name: str, threads: int) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        started_s = wait_for_page(url, process)
        time.sleep(2)  # let start-up allocations settle before reading
        after_start = memory_mib(process.pid)
        client = Client(url, verbose=False)
        began = time.perf_counter()
        client.predict(handle_file(str(image)), "Is there any anomaly in the image?", [handle_file(str(reference))],
                       [], class_name, 0, 40, api_name="/ask")
        answer_s = time.perf_counter() - began
        after_answer = memory_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"app_start_s": round(started_s, 1), "app_after_start_mib": after_start["VmRSS"],
            "app_first_answer_s": round(answer_s, 1), "app_after_answer_mib": after_answer["VmRSS"],
            "app_peak_mib": after_answer["VmHWM"]}


def inspect_memory(folder: Path, reference: Path, class_name: str, threads: int) -> dict:
    """`inspect` as a child process; its own peak from wait4, the kernel's account of that child."""
    with tempfile.TemporaryDirectory(prefix="inspect-memory-") as out, tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, "-m", "assistant.cli", "inspect", str(folder), "--reference", str(reference),
                   "--class-name", class_name, "--out", out, "--threads", str(threads)]
        began = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.DEVNULL,
                                   env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        seconds = time.perf_counter() - began
        log.seek(0)
        output = log.read()
    if process.returncode != 0:
        raise RuntimeError(f"inspect failed ({process.returncode}): {output.strip()[-300:]}")
    speed = re.search(r"speed:\s+([\d.]+) images/s", output)
    images = re.search(r"inspected (\d+) of", output)
    return {"inspect_images": int(images.group(1)) if images else None,
            "inspect_images_per_second": float(speed.group(1)) if speed else None,
            "inspect_wall_s": round(seconds, 1), "inspect_peak_mib": round(usage.ru_maxrss / 1024, 1)}  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Peak memory of app.py and of inspect.")
    parser.add_argument("--data", type=Path, required=True, help="an MVTec-layout category folder, e.g. ../shared/datasets/tire")
    parser.add_argument("--class-name", default="tire")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    test, good = args.data / "test", args.data / "train" / "good"
    if not test.is_dir() or not good.is_dir():
        parser.error(f"{args.data} needs test/ and train/good/ (MVTec layout)")
    reference = sorted(good.iterdir())[0]
    image = sorted(p for p in test.rglob("*") if p.is_file())[0]
    report = {"command": "python -m eval.memory_benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": str(args.data), "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                                  "load_average_1min": round(os.getloadavg()[0], 2), "threads": args.threads}}
    report.update(app_memory(image, reference, args.class_name, args.threads))
    report.update(inspect_memory(test, reference, args.class_name, args.threads))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
