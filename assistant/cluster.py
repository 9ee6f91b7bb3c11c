"""`inspect --cluster dask`: the same inspection spread over the workers of a Dask cluster.

Each worker loads the models and builds the reference set once, when the run registers its
`InspectorPlugin`; tasks then carry only file paths (a batch each), workers read the images
themselves (so the folder must be visible to them at the same path: a shared or copied mount), and
return the report rows with the overlay PNGs. The client writes the report, rows in file order, so
the CSV and HTML are the single-process ones. docs/deployment.md shows how to start a cluster.

Dask rather than Ray: `distributed` and its dependencies are pure-Python wheels that leave torch
alone, and a local cluster is a scheduler plus one process per worker (Ray adds a 79 MB wheel and a
control store, raylet and dashboard per node, too much beside the models on a 2-core box).
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from .cli_support import ModelLoadError, one_line
from .inspect_pipeline import Inspected, InspectJob, Item, batches, inspect_items, warm_references

log = logging.getLogger("assistant.inspect")

PLUGIN_PREFIX = "anomaly-assistant-inspect-"
CONNECT_TIMEOUT_S = 10
TASKS_PER_THREAD = 2  # batches queued per worker thread: one running, one waiting, none hoarded


@dataclass
class WorkerModels:
    """How each worker builds its assistant: the client's preset as data (a preset file need not exist there)."""

    preset: dict
    checkpoint: str | None
    use_llm: bool
    threads: int | None


class InspectorPlugin(WorkerPlugin):
    """Loads the assistant and the job's reference set on a worker once, before any task of the run.
    Each run registers its own (a unique name): two runs on one cluster keep their own references."""

    def __init__(self, models: WorkerModels, job: InspectJob):
        self.name = PLUGIN_PREFIX + uuid.uuid4().hex
        self.models = models
        self.job = job
        self.assistant = None

    def setup(self, worker) -> None:
        import torch

        from .assistant import Assistant

        if self.models.threads:
            torch.set_num_threads(self.models.threads)
        try:
            self.assistant = Assistant(self.models.preset, self.models.checkpoint, use_llm=self.models.use_llm)
            if self.models.use_llm:
                self.assistant.load()
        except Exception as exc:  # noqa: BLE001 - missing weights or checkpoint on that machine: one line on the client
            raise ModelLoadError(f"worker {worker.address} could not load preset "
                                 f"{self.models.preset.get('name', '?')!r}: {one_line(exc)}") from None
        warm_references(self.assistant, self.job)

    def teardown(self, worker) -> None:
        self.assistant = None  # the models go with the run, not with the (longer-lived) worker


def inspect_on_worker(plugin_name: str, items: list[Item]) -> list[Inspected]:
    plugin = get_worker().plugins[plugin_name]
    return inspect_items(plugin.assistant, plugin.job, items)


class ClusterInspector:
    """A connection to a cluster with the run's models loaded on every worker."""

    def __init__(self, client: Client, models: WorkerModels, job: InspectJob):
        self.client = client
        self.workers = len(client.scheduler_info()["workers"])
        if self.workers == 0:
            raise ValueError(f"the Dask cluster at {client.scheduler.address} has no workers")
        self.where = f"{self.workers} Dask worker{'s' if self.workers != 1 else ''} at {client.scheduler.address}"
        self.preset_name = models.preset.get("name", "")
        self.plugin = InspectorPlugin(models, job)
        client.register_plugin(self.plugin)  # returns once every worker has loaded

    def inspect(self, items: list[Item], batch_size: int) -> Iterator[Inspected]:
        window = TASKS_PER_THREAD * max(1, sum(self.client.nthreads().values()))
        yield from in_order(self.client, self.plugin.name, batches(items, batch_size), window)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a cluster already gone has nothing left to free
            self.client.unregister_worker_plugin(self.plugin.name)


def in_order(client: Client, plugin_name: str, chunks: list[list[Item]], window: int) -> Iterator[Inspected]:
    """Results of every chunk in chunk order, with at most `window` chunks submitted at a time
    (a folder of millions of images never becomes millions of waiting tasks)."""
    index_of: dict = {}
    finished: dict[int, list[Inspected]] = {}
    queue = as_completed()
    submitted = 0

    def submit_next() -> None:
        nonlocal submitted
        future = client.submit(inspect_on_worker, plugin_name, chunks[submitted], pure=False)
        index_of[future] = submitted
        queue.add(future)
        submitted += 1

    for _ in range(min(window, len(chunks))):
        submit_next()
    next_index = 0
    for future in queue:
        finished[index_of.pop(future)] = future.result()  # a worker's exception is raised here, as it was raised there
        if submitted < len(chunks):
            submit_next()
        while next_index in finished:
            yield from finished.pop(next_index)
            next_index += 1


@contextlib.contextmanager
def cluster_inspector(address: str | None, workers: int, models: WorkerModels, job: InspectJob) -> Iterator[ClusterInspector]:
    """Connect to the scheduler at `address`, or start a local cluster of `workers` processes (one
    thread each; Dask's nanny gives each process OMP_NUM_THREADS=1) for the length of the run."""
    with contextlib.ExitStack() as stack:
        if address:
            try:
                client = stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        log.info("Dask scheduler %s: loading the models on %d worker(s)", client.scheduler.address,
                 len(client.scheduler_info()["workers"]))
        inspector = ClusterInspector(client, models, job)
        stack.callback(inspector.close)
        yield inspector
