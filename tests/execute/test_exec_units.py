"""Small pieces of the executor: device parsing, Ray actor layout, seeds, model keys, checksums."""

from __future__ import annotations

import hashlib

import pytest

from cpx.execute import DeviceError, parse_devices
from cpx.execute._env import stage_seed
from cpx.execute._ray import CPU_KINDS, plan_slots
from cpx.execute._scheduler import model_key
from cpx.execute._store import checksum_tree
from cpx.plan import Stage


def test_parse_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [(s.device, s.visible) for s in parse_devices("cpu")] == [("cpu", None)]
    assert len(parse_devices("cpu:3")) == 3
    assert [(s.device, s.visible, s.label) for s in parse_devices("0,1")] == [
        ("cuda:0", "0", "gpu0"),
        ("cuda:0", "1", "gpu1"),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert [s.visible for s in parse_devices("1,0")] == ["6", "4"]
    assert [s.visible for s in parse_devices("auto")] == ["4", "6"]
    with pytest.raises(DeviceError, match="shows 2 GPU"):
        parse_devices("2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [s.device for s in parse_devices("auto")] == ["cpu"]
    for bad in ("gpu", "cpu:0", "cpu:x", "0,0", "", "1,a"):
        with pytest.raises(DeviceError):
            parse_devices(bad)


def test_ray_actor_layout():
    assert [s.label for s in plan_slots({"CPU": 2.0}, "auto")] == ["ray-cpu0", "ray-cpu1"]
    slots = plan_slots({"CPU": 16.0, "GPU": 2.0}, "auto")
    assert [(s.label, s.num_gpus, s.kinds) for s in slots] == [
        ("ray-gpu0", 1.0, None),
        ("ray-gpu1", 1.0, None),
        ("ray-cpu0", 0.0, CPU_KINDS),
        ("ray-cpu1", 0.0, CPU_KINDS),
    ]
    assert CPU_KINDS == {"dataset", "scan", "analyze", "report"}
    assert len(plan_slots({"CPU": 8.0, "GPU": 4.0}, "cpu:3")) == 3
    for bad in ("0,1", "cpu:0", "gpu"):
        with pytest.raises(DeviceError, match="Ray assigns the GPUs"):
            plan_slots({"GPU": 2.0}, bad)


def test_stage_seed_sources():
    h = hashlib.sha256(b"x").hexdigest()
    assert stage_seed({"seed": 42}, h) == (42, "params.seed")
    assert stage_seed({"sampler": {"seed": 3}}, h) == (3, "params.sampler.seed")
    assert stage_seed({"seed": True}, h)[1] == "stage hash"
    assert stage_seed({}, h) == (int(h[:8], 16), "stage hash")
    other = hashlib.sha256(b"y").hexdigest()
    assert stage_seed({}, h)[0] != stage_seed({}, other)[0]
    assert stage_seed({}, h) == stage_seed({}, h)


def test_model_key_ignores_adapters_and_key_order():
    base = {"kind": "tiny", "id": "t", "dtype": "auto"}
    a = Stage(
        "a", "sample", "0" * 64, params={"model": {"base": base, "adapters": [{"stage": "x", "checkpoint": 1.0}]}}
    )
    b = Stage("b", "sample", "1" * 64, params={"model": {"adapters": [], "base": dict(reversed(base.items()))}})
    c = Stage("c", "sample", "2" * 64, params={"model": {"base": {**base, "id": "other"}, "adapters": []}})
    assert model_key(a) == model_key(b) != model_key(c)
    assert model_key(Stage("d", "scan", "3" * 64, params={})) is None


def test_checksum_tree_lists_nested_files(tmp_path):
    (tmp_path / "checkpoints" / "0.5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "0.5" / "adapter.bin").write_bytes(b"\x00" * 3000)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "manifest.json").write_text("{}")
    got = checksum_tree(tmp_path)
    assert got == {
        "a.txt": {"sha256": hashlib.sha256(b"hello").hexdigest(), "bytes": 5},
        "checkpoints/0.5/adapter.bin": {"sha256": hashlib.sha256(b"\x00" * 3000).hexdigest(), "bytes": 3000},
    }


def test_lazy_model_pool_is_the_real_pool_once_touched(tmp_path):
    from cpx.execute._task import LazyModelPool
    from cpx.models import ModelPool

    lazy = LazyModelPool("cpu", str(tmp_path))
    assert not lazy._created()
    # Every public name is the pool's: `get(chain, inputs)` is ModelPool.get, not the proxy's.
    assert lazy.get.__func__ is ModelPool.get
    assert lazy._created() and isinstance(lazy._instance(), ModelPool)
    assert lazy.device == "cpu" and lazy._instance() is lazy._instance()
    with pytest.raises(AttributeError):
        lazy.no_such_attribute  # noqa: B018 - the attribute access is what is tested
