"""The Ray executor: the same stage runners on a Ray cluster, one actor per GPU.

The scheduler, the store and the lock stay in the driver (the process that runs
`cpx execute --executor ray`); actors run stages and write into temporary folders of the run
folder, which must therefore be on a filesystem every node sees (the same machine, or a
shared mount). Each actor keeps its model pool warm across stages, like a local worker.

Resources are declared per stage kind (`STAGE_RESOURCES`): GPU kinds run on the GPU actors
(`num_gpus=1` each); the others also run on small CPU actors, so a scan or a report never
waits for a GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from cpx.execute._env import TORCH_KINDS
from cpx.execute._events import Event, Result, failed_result
from cpx.execute._local import PYTHON_HASH_SEED, DeviceError
from cpx.execute._task import IdleClock, LazyModelPool, free_accelerator_memory, run_task
from cpx.execute._worker import resolve_resolver

# What one stage of each kind asks of the cluster.
STAGE_RESOURCES: dict[str, dict[str, float]] = {
    kind: ({"GPU": 1.0} if kind in TORCH_KINDS else {"CPU": 1.0})
    for kind in ("generate", "dataset", "train", "sample", "represent", "scan", "analyze", "report")
}
CPU_KINDS = frozenset(k for k, r in STAGE_RESOURCES.items() if "GPU" not in r)
# CPU actors added beside the GPU actors on a GPU cluster.
CPU_ACTORS_WITH_GPUS = 2


@dataclass(frozen=True)
class RaySlot:
    label: str
    device: str
    num_gpus: float
    kinds: frozenset[str] | None = None  # None: every kind


class _StageActor:
    """One Ray actor: a device, a model pool kept across stages, and the stage runners."""

    def __init__(self, device: str, run_dir: str, resolver_ref: Any):
        self.device = device
        self.resolver = resolve_resolver(resolver_ref)
        self.models = LazyModelPool(device, run_dir)
        self.clock = IdleClock()

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        if "torch" in sys.modules:
            free_accelerator_memory()  # the previous stage's cache (Ray returns before we could)
        result = run_task(
            task, resolver=self.resolver, models=self.models, device=self.device, idle_before=self.clock.waited()
        )
        result.setdefault("worker", {})["ray_node"] = _node_id()
        self.clock.free()
        return result


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - provenance detail only
        return None


def check_devices(devices: str) -> int | None:
    """Validate `--devices` for Ray: None for auto, else the number of CPU actors."""
    if devices == "auto":
        return None
    if devices == "cpu":
        return 1
    if devices.startswith("cpu:") and devices[4:].isdigit() and int(devices[4:]) > 0:
        return int(devices[4:])
    raise DeviceError(f"--devices {devices!r}: with --executor ray use auto, cpu or cpu:N (Ray assigns the GPUs)")


def plan_slots(resources: dict[str, float], devices: str) -> list[RaySlot]:
    """Actors for a cluster with `resources` (ray.cluster_resources()) and a `--devices` value."""
    n_gpu, n_cpu = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    n = check_devices(devices)
    if n is not None:
        return [RaySlot(f"ray-cpu{i}", "cpu", 0.0) for i in range(n)]
    if n_gpu == 0:
        return [RaySlot(f"ray-cpu{i}", "cpu", 0.0) for i in range(n_cpu)]
    slots = [RaySlot(f"ray-gpu{i}", "cuda:0", 1.0) for i in range(n_gpu)]
    slots += [RaySlot(f"ray-cpu{i}", "cpu", 0.0, CPU_KINDS) for i in range(min(CPU_ACTORS_WITH_GPUS, n_cpu))]
    return slots


class RayBackend:
    """Submits tasks to actors and turns finished object refs into scheduler events."""

    name = "ray"
    # An actor's call returns once, with one result: a fleet's members could not be committed
    # one by one as each finishes, so the Ray executor trains one stage at a time.
    fleets = False

    def __init__(self, run_dir: str, resolver: Any = None, *, address: str | None = None, devices: str = "auto"):
        import ray

        self.ray = ray
        self.run_dir, self.resolver = run_dir, resolver
        self._owns_ray = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._owns_ray = True
        self.slots = plan_slots(ray.cluster_resources(), devices)
        self._actor_cls = ray.remote(_StageActor)
        self._actors: list[Any] = []
        self._refs: dict[Any, tuple[int, str]] = {}

    def _make(self, slot: RaySlot) -> Any:
        env = {k: v for k, v in os.environ.items() if k.startswith("CPX_")}
        env["PYTHONHASHSEED"] = PYTHON_HASH_SEED  # as local workers: same set order every run
        return self._actor_cls.options(
            num_gpus=slot.num_gpus,
            num_cpus=1 if slot.num_gpus == 0 else 0,
            runtime_env={"env_vars": env},
        ).remote(slot.device, self.run_dir, self.resolver)

    def start(self) -> None:
        self._actors = [self._make(s) for s in self.slots]

    def submit(self, slot: int, task: dict[str, Any]) -> None:
        ref = self._actors[slot].run.remote(task)
        self._refs[ref] = (slot, task["stage"]["id"])

    def poll(self, timeout: float) -> list[Event]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        out: list[Event] = []
        for ref in ready:
            slot, stage_id = self._refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # the actor died (or its node did)
                self._actors[slot] = self._make(self.slots[slot])
                result = failed_result(f"the Ray actor {self.slots[slot].label} failed: {type(e).__name__}: {e}")
            out.append(Result(slot, stage_id, result))
        return out

    def close(self) -> None:
        for a in self._actors:
            self.ray.kill(a)
        self._actors = []
        if self._owns_ray:
            self.ray.shutdown()

    def kill(self) -> None:
        self.close()
