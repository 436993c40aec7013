"""bf16 autocast on CPUs that compute it natively, the fallback, and the deployed model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ranksearch import measure, models, svd, train
from ranksearch.config import Schedule
from ranksearch.data import load


@pytest.fixture
def no_native_bf16(monkeypatch):
    train.resolve_precision.cache_clear()
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    yield
    train.resolve_precision.cache_clear()


def test_bf16_without_native_support_falls_back_with_one_line(no_native_bf16) -> None:
    with pytest.warns(UserWarning, match="no native bf16; training in fp32") as record:
        assert train.resolve_precision("bf16", "cpu") == "fp32"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently: it promised nothing
        assert train.resolve_precision("auto", "cpu") == "fp32"
    assert train.resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.skipif(not train.cpu_has_bf16(), reason="this CPU has no native bf16")
def test_training_runs_in_bf16_and_regularisers_in_fp32() -> None:
    data = load("digits", val_fraction=0.2, seed=0)
    model = svd.decompose(models.create("resnet20", num_classes=10, in_channels=1),
                          exclude=("conv1", "fc"))
    seen = {}

    def regulariser(m: nn.Module) -> torch.Tensor:
        loss = svd.orthogonality_loss(m)
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtype"] = loss.dtype
        return loss

    logits_dtypes, block_dtypes = [], []
    model.fc.register_forward_hook(lambda _m, _i, out: logits_dtypes.append(out.dtype))
    # What a residual block adds and passes on: fp32 (batch norms return fp32 under bf16).
    model.layer1[0].register_forward_hook(lambda _m, _i, out: block_dtypes.append(out.dtype))
    schedule = Schedule(epochs=1, lr=1e-3, optimizer="adam", batch_size=32, max_batches=2)
    train.fit(model, train.Phase("svd", data, schedule, seed=0, regulariser=regulariser,
                                 precision="auto", channels_last=True, progress=False))
    assert logits_dtypes[0] == torch.bfloat16
    assert block_dtypes[0] == torch.float32
    assert seen == {"autocast": False, "dtype": torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # The batch norms return to what they were once the phase ends.
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.bn1(torch.randn(2, 16, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_batch_norms_untouched_outside_bf16() -> None:
    model = models.create("resnet20", num_classes=10, in_channels=1)
    with train.fp32_batch_norms(model, "fp32"):
        assert not any(m._forward_hooks for m in model.modules())
    with train.fp32_batch_norms(model, "bf16"):
        x = torch.randn(2, 16, 4, 4, dtype=torch.bfloat16)
        assert model.bn1(x).dtype == torch.float32


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_phase_optimizer_is_fused_on_the_cpu(name: str) -> None:
    data = load("digits", val_fraction=0.2, seed=0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    schedule = Schedule(epochs=1, lr=0.1, optimizer=name, momentum=0.9, batch_size=32,
                        max_batches=1)
    optimizer = train.Phase("reference", data, schedule, seed=0).optimizer(model)
    assert optimizer.defaults["fused"] is True
    before = model.fc.weight.detach().clone()
    train.fit(model, train.Phase("reference", data, schedule, seed=0, progress=False))
    assert not torch.equal(before, model.fc.weight)


def test_deployed_model_folds_batchnorm_and_is_channels_last() -> None:
    torch.manual_seed(0)
    model = svd.decompose(models.create("resnet20"), exclude=("fc",))
    svd.prune_by_energy(model, 0.2)
    model.eval()
    compact = svd.compact(model)
    assert measure.is_channels_last(compact)
    deployed = svd.for_inference(compact)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert measure.is_channels_last(deployed) and not deployed.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), atol=2e-4, rtol=1e-4)
    assert measure.flops(deployed, (3, 32, 32)) == measure.flops(compact, (3, 32, 32))
    # Every kept rank rounded up to the multiple (or to the full rank) in the fast structure.
    for name, rank in svd.compaction_plan(model).items():
        layer = svd.svd_layers(model)[name]
        multiple = 16 if layer.full_rank >= 128 else 8
        assert svd.rank_multiple_for(layer) == multiple
        assert rank is None or rank % multiple == 0 or rank == layer.full_rank


def test_fastest_passes_compares_models_on_the_same_input() -> None:
    small = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).train()
    large = nn.Sequential(nn.Conv2d(3, 256, 3), nn.Conv2d(256, 256, 3)).train()
    fast, slow = measure.fastest_passes((small, large), (3, 32, 32), batch_size=4, passes=5)
    assert 0 < fast < slow  # 2,000x the FLOPs: no load makes it faster than the small one
    assert small.training and large.training  # timed copies in eval mode, not the models
