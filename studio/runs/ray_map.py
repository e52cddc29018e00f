"""Heavy stages on Ray: an actor pool that loads its models once, the driver the only writer.

Ray Data's ``map_batches`` runs one actor per worker (1 CPU each, or a share of a GPU); the driver
streams the results back and commits them itself, so SQLite sees one writer and a killed run
resumes with what is not committed yet. Without an address Ray starts locally; on a cluster
(``--address auto`` on a node of it) the workspace must be on storage every node reads at the
same path, and the studio package travels with the job.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .parallel import usable_cpus

# A local Ray the studio starts for one stage: the actors run at the priority the single-process path
# would (Ray nices its workers to 15: beside two CPU-bound processes on a 2-core machine, a stage waited
# minutes for its first item), and no idle task workers are started ahead (the work is all actors, each
# its own process).
LOCAL_RAY = {"worker_niceness": 0, "enable_worker_prestart": False}


def map_on_ray(rows: list[dict], actor: type, ctor_args: tuple, *, address: str | None = None,
               workers: int | None = None, gpus_per_worker: float = 0.0, batch_size: int = 8,
               progress: Callable[..., Iterable] | None = None, desc: str = "ray") -> Iterator[dict]:
    """Yield ``actor(batch)``'s output batches (dicts of numpy arrays) for ``rows``, as they arrive.

    ``progress`` counts input rows (one per output row).
    """
    import ray

    import studio

    started = not ray.is_initialized()
    if started:
        local = address is None  # "local": always a fresh local instance, never one left by another process
        ray.init(address="local" if local else address, num_cpus=max(workers or 0, usable_cpus()) if local else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"py_modules": [str(Path(studio.__file__).parent)]},
                 _system_config=LOCAL_RAY if local else None)
    try:
        size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Small blocks (about 16 per actor, at least a batch each): results stream back block by block
        # and the last blocks spread over every actor instead of leaving one to finish alone.
        blocks = max(1, min(-(-len(rows) // batch_size), size * 16))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        results = ds.map_batches(actor, fn_constructor_args=ctor_args, batch_size=batch_size, concurrency=size,
                                 num_cpus=1, num_gpus=gpus_per_worker or None, batch_format="numpy")
        batches = results.iter_batches(batch_size=batch_size, batch_format="numpy")
        if progress is None:
            yield from batches
            return
        bar = iter(progress(range(len(rows)), total=len(rows), desc=desc, unit="item"))
        for batch in batches:
            for _ in range(len(next(iter(batch.values())))):
                next(bar, None)
            yield batch
    finally:
        if started:
            ray.shutdown()
