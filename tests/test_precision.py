"""bf16 autocast on CPUs that compute it natively, the fallback, and the deployed model."""

from __future__ import annotations

import contextlib
import copy
import platform
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ranksearch import measure, models, precision, svd, train
from ranksearch.config import Schedule
from ranksearch.data import load


@pytest.fixture
def no_native_bf16(monkeypatch):
    precision.resolve_precision.cache_clear()
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    yield
    precision.resolve_precision.cache_clear()


def test_bf16_without_native_support_falls_back_with_one_line(no_native_bf16) -> None:
    with pytest.warns(UserWarning, match="no native bf16; training in fp32") as record:
        assert precision.resolve_precision("bf16", "cpu") == "fp32"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently: it promised nothing
        assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize(("cpuinfo", "name", "native"), [
    ({"model name": "AMD EPYC 9R14", "flags": "fpu avx512f avx512_bf16"}, "AMD EPYC 9R14", True),
    ({"model name": "Intel Xeon", "flags": "fpu sse avx512f"}, "Intel Xeon", False),
    ({"Features": "fp asimd sve bf16"}, None, True),  # Arm names no model
    ({}, None, False),  # no /proc/cpuinfo: not Linux
])
def test_the_cpu_is_named_and_its_bf16_read_from_cpuinfo(monkeypatch, cpuinfo, name, native):
    monkeypatch.setattr(precision, "_cpuinfo", lambda: cpuinfo)
    precision.cpu_has_bf16.cache_clear()
    try:
        assert precision.cpu_has_bf16() is native
        assert precision.cpu_name() == (name or platform.processor() or platform.machine())
    finally:
        precision.cpu_has_bf16.cache_clear()


@pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no native bf16")
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
    with precision.fp32_batch_norms(model, "fp32"):
        assert not any(m._forward_hooks for m in model.modules())
    with precision.fp32_batch_norms(model, "bf16"):
        x = torch.randn(2, 16, 4, 4, dtype=torch.bfloat16)
        assert model.bn1(x).dtype == torch.float32


def _bf16_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def _every_norm_in_fp32(model: nn.Module):
    handles = [m.register_forward_hook(lambda _m, _a, out: out.float()) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d)]
    yield
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("decomposed", [False, True])
def test_norms_that_only_feed_convolutions_keep_bf16_and_change_nothing(decomposed: bool) -> None:
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    if decomposed:
        model = svd.decompose(model, exclude=("conv1", "fc"))
    every = copy.deepcopy(model)
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    hooked = []  # the norms that return fp32, as each pass ends
    watch = model.fc.register_forward_hook(lambda *_: hooked.append(
        {name for name in norms if model.get_submodule(name)._forward_hooks}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with precision.fp32_batch_norms(model, "bf16"):
        _bf16_step(model, optimizer)
        _bf16_step(model, optimizer)
    watch.remove()
    # The first pass (and so its backward) returns fp32 from every norm. From the second,
    # only the stem's and the norms summed in a stage's first block (with the stem's or the
    # projection's output) do: later blocks add theirs to the fp32 residual stream.
    assert hooked[0] == norms
    assert hooked[1] == {"bn1", "layer1.0.bn2", "layer2.0.bn2", "layer2.0.downsample.1",
                         "layer3.0.bn2", "layer3.0.downsample.1"}
    optimizer = torch.optim.SGD(every.parameters(), lr=0.1, momentum=0.9)
    with _every_norm_in_fp32(every):
        _bf16_step(every, optimizer)
        _bf16_step(every, optimizer)
    # Bit for bit what returning fp32 from every norm trains: the convolution rounds the
    # fp32 values back to the same bf16 ones, forward and backward.
    expected = every.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_norms_reaching_anything_but_a_convolution_return_fp32() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # -> conv: bf16
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),  # -> average pool: fp32
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8),  # output
    )
    dtypes = {}
    # No graph (as when batch norms are recalibrated): no backward for the decision to wait for.
    with (precision.fp32_batch_norms(model, "bf16"), torch.autocast("cpu", dtype=torch.bfloat16),
          torch.no_grad()):
        for name in ("1", "5", "10"):  # after the context's hooks: sees what they return
            model.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, name=name: dtypes.__setitem__(name, out.dtype))
        model(torch.randn(4, 3, 16, 16))
        assert set(dtypes.values()) == {torch.float32}  # the first pass: every norm in fp32
        model(torch.randn(4, 3, 16, 16))
    assert dtypes == {"1": torch.bfloat16, "5": torch.float32, "10": torch.float32}


class _Sum(nn.Module):
    """A norm's output summed with an fp32 tensor or a convolution's bf16 output."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv, self.norm, self.other = (nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3),
                                            nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(self.conv(x))
        if self.how == "fp32 + norm":
            return x + n
        if self.how == "fp32 += norm":
            out = x.clone()
            out += n
            return out
        if self.how == "fp32 + norm, read twice":  # its gradients would add up in bf16
            return x + n + F.relu(n)
        if self.how == "norm += fp32":
            n += x
            return n
        return self.other(x) + n  # "conv + norm"


@pytest.mark.parametrize("how, norm_dtype", [
    ("fp32 + norm", torch.bfloat16), ("fp32 += norm", torch.bfloat16),
    ("fp32 + norm, read twice", torch.float32), ("norm += fp32", torch.float32),
    ("conv + norm", torch.float32)])
def test_a_norm_summed_with_an_fp32_tensor_keeps_bf16_and_the_sum_stays_fp32(
        how: str, norm_dtype: torch.dtype) -> None:
    model = _Sum(how)
    seen = []
    with (precision.fp32_batch_norms(model, "bf16"), torch.autocast("cpu", dtype=torch.bfloat16),
          torch.no_grad()):
        model.norm.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
        for _ in range(2):
            assert model(torch.randn(2, 3, 8, 8)).dtype == torch.float32
    assert seen == [torch.float32, norm_dtype]


class _Fp32Head(nn.Module):
    """A convolution a model runs with autocast off, after a batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        with torch.autocast("cpu", enabled=False):
            return self.conv(x)


def test_a_norm_feeding_a_convolution_outside_autocast_stays_fp32() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _Fp32Head())
    with precision.fp32_batch_norms(model, "bf16"), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):  # the second pass would fail on a bf16 input to the fp32 conv
            assert model(torch.randn(2, 3, 8, 8)).dtype == torch.float32


def test_a_pass_that_raises_leaves_no_tracing_behind() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with (precision.fp32_batch_norms(model, "bf16"), torch.autocast("cpu", dtype=torch.bfloat16),
          torch.no_grad()):
        with pytest.raises(RuntimeError):
            model(torch.randn(4, 5, 16, 16))  # 5 channels into a 3-channel convolution
        assert torch._C._len_torch_function_stack() == 0
        model(torch.randn(4, 3, 16, 16))  # the next pass is followed instead
        model(torch.randn(4, 3, 16, 16))
        assert not model[1]._forward_hooks


class _CheckpointedBlock(nn.Module):
    """A residual block whose activations the backward pass recomputes."""

    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed:
            return F.relu(x + checkpoint(self.body, x, use_reentrant=False))
        return F.relu(x + self.body(x))


@pytest.mark.parametrize("passes_per_step", [1, 2])
def test_a_model_that_recomputes_activations_trains_as_without(passes_per_step: int) -> None:
    trained, hooked = {}, {}
    for checkpointed in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                              _CheckpointedBlock(checkpointed), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(8, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with precision.fp32_batch_norms(model, "bf16"):
            for step in range(3):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    # Each backward recomputes its pass's block. Had the first pass's
                    # decision taken effect before the backward of every pass run with all
                    # norms in fp32, a recomputation would see other dtypes than its forward
                    # produced, and checkpoint would refuse it.
                    losses = [model(torch.randn(4, 3, 10, 10, generator=torch.Generator()
                                                .manual_seed(10 * step + i))).float().square()
                              .mean() for i in range(passes_per_step)]
                for loss in losses:
                    loss.backward()
                optimizer.step()
            # The block's first norm feeds a convolution only: its casts are gone by now.
            hooked[checkpointed] = bool(model[3].body[1]._forward_hooks)
        trained[checkpointed] = dict(model.named_parameters())
    assert hooked == {True: False, False: False}
    for name, value in trained[True].items():
        assert torch.equal(value, trained[False][name]), name


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
