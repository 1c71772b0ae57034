"""Model chains: merged adapters against peft's own (unmerged) forward, exact restore."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from cpx.models import ChainError, ModelPool, load_model, lora_scale

# peft 0.21 reads a property that transformers 5 deprecated; nothing to fix on our side.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _make_adapter(model, folder, *, r, alpha, rslora, seed):
    """A peft adapter with random (non-zero) A and B on a copy of `model`, saved to `folder`."""
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    peft_model.save_pretrained(folder)


def _ids(tok):
    return tok("<|im_start|>user\nHow do airplanes stay in the air?<|im_end|>\n", return_tensors="pt").input_ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("rslora", [False, True])
def test_chain_matches_peft_and_restores_exactly(tiny_ref, run_dir, tmp_path, rslora):
    base, tok = load_model(tiny_ref, run_dir)
    ids = _ids(tok)
    out1, out2 = tmp_path / "t1", tmp_path / "t2"
    _make_adapter(base, out1 / "checkpoints" / "1", r=4, alpha=8, rslora=rslora, seed=1)
    # The second adapter was trained on the first one's merged model, as in Arm B.
    ref1 = PeftModel.from_pretrained(copy.deepcopy(base), out1 / "checkpoints" / "1").merge_and_unload()
    _make_adapter(ref1, out2 / "checkpoints" / "0.6", r=8, alpha=16, rslora=rslora, seed=2)
    ref1_logits = _logits(PeftModel.from_pretrained(copy.deepcopy(base), out1 / "checkpoints" / "1"), ids)
    ref2_logits = _logits(PeftModel.from_pretrained(ref1, out2 / "checkpoints" / "0.6"), ids)
    base_logits = _logits(base, ids)

    pool = ModelPool("cpu", run_dir)
    inputs = {"train/a": out1, "train/b": out2}
    a1 = {"stage": "train/a", "checkpoint": 1.0}
    a2 = {"stage": "train/b", "checkpoint": 0.6}
    model, _ = pool.get({"base": tiny_ref, "adapters": []}, inputs)
    pristine = _snapshot(model)
    assert torch.equal(_logits(model, ids), base_logits)

    model, _ = pool.get({"base": tiny_ref, "adapters": [a1]}, inputs)
    got1 = _logits(model, ids)
    # The adapter changes the logits far more than the tolerance, so a wrong scale would show.
    assert (ref1_logits - base_logits).abs().max() > 0.05
    torch.testing.assert_close(got1, ref1_logits, atol=1e-4, rtol=0)

    model, _ = pool.get({"base": tiny_ref, "adapters": [a1, a2]}, inputs)
    assert (ref2_logits - ref1_logits).abs().max() > 0.05
    torch.testing.assert_close(_logits(model, ids), ref2_logits, atol=1e-4, rtol=0)

    model, _ = pool.get({"base": tiny_ref, "adapters": []}, inputs)
    after = _snapshot(model)
    assert all(torch.equal(after[k], pristine[k]) for k in pristine)
    assert torch.equal(_logits(model, ids), base_logits)

    # Back to a shorter chain after a longer one: restored, then re-merged.
    pool.get({"base": tiny_ref, "adapters": [a1, a2]}, inputs)
    model, _ = pool.get({"base": tiny_ref, "adapters": [a1]}, inputs)
    torch.testing.assert_close(_logits(model, ids), got1, atol=0, rtol=0)


def test_rslora_scale():
    assert lora_scale(64, 32, True) == 64 / math.sqrt(32)
    assert lora_scale(64, 32, False) == 2.0
    # The study's bug: ignoring rsLoRA left the adapter sqrt(32)=5.66x too weak.
    assert lora_scale(64, 32, True) / lora_scale(64, 32, False) == pytest.approx(math.sqrt(32))


def test_chain_errors(tiny_ref, run_dir, tmp_path):
    pool = ModelPool("cpu", run_dir)
    with pytest.raises(ChainError, match="not among this stage's inputs"):
        pool.get({"base": tiny_ref, "adapters": [{"stage": "train/x", "checkpoint": 1.0}]}, {})
    with pytest.raises(ChainError, match="checkpoint 0 is the starting model"):
        pool.get({"base": tiny_ref, "adapters": [{"stage": "t", "checkpoint": 0}]}, {"t": tmp_path})
    with pytest.raises(ChainError, match="no adapter in"):
        pool.get({"base": tiny_ref, "adapters": [{"stage": "t", "checkpoint": 0.2}]}, {"t": tmp_path})


def test_bad_adapter_leaves_base_intact(tiny_ref, run_dir, tmp_path):
    base, tok = load_model(tiny_ref, run_dir)
    good, bad = tmp_path / "good", tmp_path / "bad"
    _make_adapter(base, good / "checkpoints" / "1", r=4, alpha=8, rslora=True, seed=1)
    # An adapter for a wider model: its shapes do not fit.
    wide = copy.deepcopy(tiny_ref)
    wide["tiny"]["hidden_size"] = 32
    other, _ = load_model(wide, run_dir)
    _make_adapter(other, bad / "checkpoints" / "1", r=4, alpha=8, rslora=True, seed=1)
    pool = ModelPool("cpu", run_dir)
    inputs = {"g": good, "b": bad}
    model, _ = pool.get({"base": tiny_ref, "adapters": []}, inputs)
    pristine = _snapshot(model)
    chain = [{"stage": "g", "checkpoint": 1}, {"stage": "b", "checkpoint": 1}]
    with pytest.raises(ChainError, match="do not fit the weight"):
        pool.get({"base": tiny_ref, "adapters": chain}, inputs)
    after = _snapshot(model)
    assert all(torch.equal(after[k], pristine[k]) for k in pristine)


def test_export_writes_the_merged_model(tiny_ref, run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tok = load_model(tiny_ref, run_dir)
    out = tmp_path / "t"
    _make_adapter(base, out / "checkpoints" / "1", r=4, alpha=8, rslora=True, seed=4)
    pool = ModelPool("cpu", run_dir)
    chain = {"base": tiny_ref, "adapters": [{"stage": "t", "checkpoint": 1.0}]}
    dest = pool.export(chain, {"t": out}, tmp_path / "merged")
    merged, _ = pool.get(chain, {"t": out})
    loaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32)
    ids = _ids(AutoTokenizer.from_pretrained(dest))
    assert torch.equal(_logits(loaded, ids), _logits(merged, ids))
    assert not torch.equal(_logits(loaded, ids), _logits(base, ids))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: where the backup lives on a GPU")
def test_gpu_backup_stays_on_the_gpu_and_restores_exactly(tiny_ref, run_dir, tmp_path):
    """On a GPU with room, the originals are copied on the GPU, and restore is still bit for bit."""
    from cpx.models import MergedModel, read_adapter

    model, _ = load_model(tiny_ref, run_dir, "cuda:0")
    _make_adapter(model.cpu(), tmp_path / "a", r=4, alpha=8, rslora=True, seed=3)
    model.to("cuda:0")
    before = _snapshot(model)
    merged = MergedModel(model, "cuda:0")
    merged.merge(read_adapter(tmp_path / "a"))
    assert set(merged.backups()) == {"cuda:0"}
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    merged.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cpu_backup_on_the_cpu():
    from cpx.models import MergedModel

    assert MergedModel(torch.nn.Linear(2, 2), "cpu").backup_device(1 << 40) == "cpu"
