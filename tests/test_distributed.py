"""`inspect --cluster dask` on a local two-worker cluster this test starts: the same report as one process.

Real textile images (conformal-clip-data, MIT), the real embedded engine on every worker, the real
CLI talking to the cluster through its scheduler address, as it would to a cluster on other machines.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

pytest.importorskip("distributed", reason="Dask is not installed: pip install 'anomaly-assistant[cluster]'")
ccd = pytest.importorskip("conformal_clip_data", reason="conformal-clip-data is not installed")

from distributed import Client, LocalCluster  # noqa: E402


@pytest.fixture(scope="module")
def textile_folder(tmp_path_factory) -> tuple[Path, Path]:
    """Three normal and three locally defective textiles, in two subfolders, and one normal reference."""
    root = tmp_path_factory.mktemp("cluster_textile")
    nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
    local = sorted(Path(ccd.local_dir()).glob("*.jpg"))
    for kind, files in (("good", nominal[20:23]), ("local", local[:3])):
        (root / "images" / kind).mkdir(parents=True)
        for path in files:
            shutil.copy(path, root / "images" / kind / path.name)
    (root / "good").mkdir()
    shutil.copy(nominal[0], root / "good" / "reference.jpg")
    return root / "images", root / "good" / "reference.jpg"


def inspect_args(folder: Path, reference: Path, out: Path, profile: str | None = None) -> list[str]:
    source = ["--profile", profile] if profile else ["-r", str(reference)]
    return ["inspect", str(folder), *source, "--class-name", "textile", "--out", str(out),
            "--no-llm", "--threads", "1", "--batch", "2"]


def rows_of(html: str) -> str:
    """The HTML report without its header line (date, seconds and speed differ from run to run)."""
    return re.sub(r"<div class='meta'>.*?</div>", "", html, flags=re.S)


def test_cluster_report_is_the_single_process_report(textile_folder, tmp_path):
    folder, reference = textile_folder
    single = run_cli(*inspect_args(folder, reference, tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-2000:]
    assert "images/s" in single.stdout

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        spread = run_cli(*inspect_args(folder, reference, tmp_path / "cluster"), "--cluster", "dask",
                         "--address", cluster.scheduler_address)
        assert spread.returncode == 0, spread.stderr[-2000:]
        # each worker loads a profile of the same reference from its folder: the same report again
        made = run_cli("profile", "create", "cluster-textile", "--good", str(reference.parent), "--class-name", "textile")
        assert made.returncode == 0, made.stderr[-2000:]
        profiled = run_cli(*inspect_args(folder, reference, tmp_path / "profiled", "cluster-textile"), "--cluster", "dask",
                           "--address", cluster.scheduler_address)
        assert profiled.returncode == 0, profiled.stderr[-2000:]
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        leftover = client.run(lambda dask_worker: [name for name in dask_worker.plugins if "anomaly-assistant" in name])

    assert "2 Dask workers" in spread.stdout and "images/s" in spread.stdout
    assert sorted(executed.values())[0] >= 1, f"one worker did every batch: {executed}"  # 3 batches of 2 images
    assert not any(leftover.values()), f"the run left its models loaded on the workers: {leftover}"
    csv_single = (tmp_path / "single" / "report.csv").read_text()
    assert (tmp_path / "cluster" / "report.csv").read_text() == csv_single
    assert (tmp_path / "profiled" / "report.csv").read_text() == csv_single
    assert csv_single.count("\n") == 7 and "local/" in csv_single and "true" in csv_single
    assert rows_of((tmp_path / "cluster" / "report.html").read_text()) == rows_of((tmp_path / "single" / "report.html").read_text())
    overlays = sorted(p.name for p in (tmp_path / "single" / "overlays").glob("*.png"))
    assert overlays and sorted(p.name for p in (tmp_path / "cluster" / "overlays").glob("*.png")) == overlays
    for name in overlays:
        assert (tmp_path / "cluster" / "overlays" / name).read_bytes() == (tmp_path / "single" / "overlays" / name).read_bytes()


def test_unreachable_scheduler_is_one_line(textile_folder, tmp_path):
    folder, reference = textile_folder
    result = run_cli(*inspect_args(folder, reference, tmp_path / "out"), "--cluster", "dask",
                     "--address", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert "Traceback" not in result.stderr


def test_cluster_options_are_checked_before_loading(textile_folder, tmp_path):
    folder, reference = textile_folder
    for extra, message in ((["--address", "tcp://127.0.0.1:8786"], "--address needs --cluster dask"),
                           (["--cluster", "ray"], "invalid choice: 'ray'"),
                           (["--batch", "0"], "--batch must be between 1 and 16")):
        result = run_cli(*inspect_args(folder, reference, tmp_path / "out"), *extra, timeout=60)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
