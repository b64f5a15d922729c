"""Independent parts of one job run side by side on a CPU's cores.

Much of the render pass is operations that torch runs on one thread however many it has (1-D and
column gathers by ``index_select``, ``index_copy_``, ``scatter_reduce_``) and operations too small for
torch's parallel grain (the rasterizer's per-group work). Split into parts that run in threads of one
intra-op thread each, they keep every core busy (operations release the GIL; what stays serial is
the Python between them)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import torch

Result = TypeVar("Result")

# Handing a part to a thread costs tens of microseconds: below this many items (pixels, triangles)
# a part is not worth it, as for one frame at 256².
MIN_ITEMS_PER_PART = 1 << 16


def parts_for(device: torch.device, items: int) -> int:
    """How many parts to split ``items`` independent items of work on ``device`` into: on a CPU one
    per torch thread, each of at least :data:`MIN_ITEMS_PER_PART`; on a GPU 1 (it runs each
    operation across the whole device)."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), items // MIN_ITEMS_PER_PART))


_executors: dict[int, ThreadPoolExecutor] = {}


def even_slices(count: int, parts: int) -> list[slice]:
    """``range(count)`` as up to ``parts`` consecutive slices of (nearly) equal length."""
    size = -(-count // max(1, min(parts, count))) if count else 1
    return [slice(start, min(start + size, count)) for start in range(0, count, size)] or [slice(0, 0)]


def run_concurrently(tasks: Sequence[Callable[[], Result]], workers: int) -> list[Result]:
    """The tasks' results in order; with ``workers > 1`` run in that many threads, each with one
    intra-op thread (more would oversubscribe the cores the other tasks use)."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        return [task() for task in tasks]
    if workers not in _executors:
        _executors[workers] = ThreadPoolExecutor(workers, thread_name_prefix="render")
    # Grad and inference mode are per thread: the tasks run in the caller's.
    single = partial(_single_threaded, grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled(),
                     threads=torch.get_num_threads())  # fmt: skip
    return list(_executors[workers].map(single, tasks))


def run_in_parts(task: Callable[[slice], Result], count: int, device: torch.device, items: int | None = None) -> list[Result]:
    """``task`` over ``range(count)`` cut into :func:`even_slices`, as many as :func:`parts_for`
    gives for ``items`` (``count`` unless the work per slice is counted otherwise), run concurrently."""
    workers = parts_for(device, count if items is None else items)
    return run_concurrently([partial(task, part) for part in even_slices(count, workers)], workers)


def _single_threaded(task: Callable[[], Result], grad: bool, inference: bool, threads: int) -> Result:
    # set_num_threads sets the calling thread's OpenMP team size (the caller's own stays as it was)
    # and the default that threads started later take, which is put back to the caller's count.
    torch.set_num_threads(1)
    try:
        with torch.set_grad_enabled(grad), torch.inference_mode(inference):
            return task()
    finally:
        torch.set_num_threads(threads)
