"""Models whose structure decomposition could break: a layer registered under two names, a
weight tied to an embedding, a parent that reads its child's weight, 5-D weights, frozen
layers and eval mode, and settings that name no layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch import svd


class SharedTwice(nn.Module):
    """One conv under two names in one parent, another under two parents."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.again = self.conv
        self.head = nn.Conv2d(16, 16, 3, padding=1)
        self.branch = nn.Sequential(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.again(torch.relu(self.conv(x)[:, :3]))
        return self.branch(y) + self.head(y)


def _all_names(model: nn.Module, kind: type) -> list[str]:
    return [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, kind)]


def test_a_layer_under_two_names_stays_one_layer_through_compaction() -> None:
    torch.manual_seed(0)
    dense = SharedTwice().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    model = svd.decompose(dense)
    assert model.again is model.conv and model.branch[0] is model.head
    assert set(_all_names(model, svd.SVDLayer)) == {"conv", "again", "head", "branch.0"}
    assert sum(p.numel() for p in model.parameters()) < 2 * sum(
        p.numel() for p in dense.parameters())  # each shared layer counted once
    torch.testing.assert_close(model(x), dense(x))
    svd.prune_by_energy(model, 0.3)
    plan = svd.compaction_plan(model, rank_multiple=1)
    assert set(plan) == {"conv", "head"}
    compact = svd.compact(model, plan)
    assert not _all_names(compact, svd.SVDLayer)
    assert compact.again is compact.conv and compact.branch[0] is compact.head
    torch.testing.assert_close(compact(x), model(x))
    rebuilt = svd.build_compact(dense, plan)
    rebuilt.load_state_dict(compact.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(x), compact(x))


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embedding(tokens))))


def test_a_weight_tied_to_another_module_stays_dense_and_tied() -> None:
    model = svd.decompose(TiedHead())
    assert isinstance(model.hidden, svd.SVDLinear)
    assert isinstance(model.head, svd.DenseLinear)
    assert model.head.weight is model.embedding.weight
    assert "weight tied to 'embedding'" in svd.summary(model)
    assert svd.decomposable(TiedHead()) == ["hidden"]


def test_layers_whose_parent_reads_their_weight_stay_dense() -> None:
    """TransformerEncoderLayer's eval fast path reads linear1.weight / linear2.weight."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True,
                                                     dropout=0.0), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 5, 16)
    model = svd.decompose(dense)
    assert isinstance(model[0].linear1, svd.DenseLinear)
    assert "TransformerEncoderLayer reads its weight directly" in svd.summary(model)
    assert svd.decomposable(dense) == ["1"]
    torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-5)
    svd.prune_by_energy(model, 0.2)
    torch.testing.assert_close(svd.compact(model)(x), model(x), atol=1e-5, rtol=1e-5)


def test_5d_weights_do_not_stop_compaction_or_inference_form() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                          nn.Unflatten(1, (1, 8)), nn.Conv3d(1, 2, 3, padding=1),
                          nn.Flatten(1, 2)).eval()
    x = torch.randn(2, 3, 6, 6)
    model = svd.decompose(dense)
    deployed = svd.for_inference(svd.compact(model, rank_multiple=1))
    conv2d = next(m for m in deployed.modules() if type(m) is nn.Conv2d)
    assert conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    assert deployed[3].weight.dim() == 5
    torch.testing.assert_close(deployed(x), dense(x), atol=1e-5, rtol=1e-5)


def test_frozen_layers_and_eval_mode_carry_over() -> None:
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()
    dense[0].requires_grad_(False)
    model = svd.decompose(dense)
    assert not any(p.requires_grad for p in model[0].parameters())
    assert all(p.requires_grad for p in model[2].parameters())
    assert not any(m.training for m in model.modules())
    svd.prune_by_energy(model, 0.3)
    assert not any(m.training for m in svd.compact(model, rank_multiple=1).modules())


@pytest.mark.parametrize("call, message", [
    (lambda m: svd.decompose(m, exclude=("clasifier",)),
     "exclude pattern 'clasifier' matches no linear or convolution layer"),
    (lambda m: svd.decomposable(m, exclude="features.9"), "exclude pattern 'features.9'"),
    (lambda m: svd.prune_by_energy(svd.decompose(m), {"feature": 0.5}),
     "'feature' names no SVD layer of the model"),
    (lambda m: svd.sparsity_loss(svd.decompose(m), "l1", {"classifier": 1.0}),
     "'classifier' names no SVD layer"),
    (lambda m: svd.ranks_at_energy(svd.decompose(m), 2.0), "must be in [0, 1], got 2.0"),
    (lambda m: svd.ranks_at_energy(svd.decompose(m), float("nan")), "must be in [0, 1]"),
])
def test_a_setting_that_names_no_layer_or_a_bad_threshold_is_an_error(call, message) -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))
    model.add_module("fc", nn.Sequential(nn.Flatten(), nn.Linear(8, 4)))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        call(model)
    # A prefix of a layer's dotted name is fine, as is a pattern matching a kept-dense layer.
    svd.prune_by_energy(svd.decompose(model, exclude="fc.*"), {"features": 0.5})


@pytest.mark.parametrize("mode", ["auto", "factored", "dense"])
def test_a_pruned_svd_model_compiles_into_one_graph(mode) -> None:
    """torch.compile through SVD training and fine-tuning: the kept rank is data (a mask),
    which no branch or tensor size of a compiled forward may depend on."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 8 * 8, 10))
    model = svd.decompose(net, forward_mode=mode)
    svd.prune_by_energy(model, 0.2)
    assert any(layer.rank < layer.full_rank for layer in svd.svd_layers(model).values())
    x = torch.randn(4, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x))
    assert model[0].U.grad is not None


def test_measuring_a_model_leaves_each_modules_mode_as_it_was() -> None:
    """Fine-tuning with frozen batch norms: the model trains, its norms stay in eval mode.
    Counting FLOPs or planning the compaction must not set the norms training again."""
    from ranksearch import measure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    model = svd.decompose(net).train()
    for norm in (model[1], model[4]):
        norm.eval()
    modes = [m.training for m in model.modules()]
    measure.flops(model, (3, 8, 8))
    svd.compaction_plan(model, example_input=torch.randn(1, 3, 8, 8))
    compact = svd.compact(model, example_input=torch.randn(1, 3, 8, 8))
    assert [m.training for m in model.modules()] == modes
    assert compact.training and not compact[1].training and not compact[4].training


def test_a_pruned_copy_keeps_each_modules_mode() -> None:
    from ranksearch import baselines

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).train()
    net[1].eval()
    pruned = baselines.prune_to_flops(net, (3, 8, 8), "l1", 1.5)
    assert pruned.training and not pruned[1].training and pruned[4].training


def test_the_orthogonality_term_is_fp32_under_a_callers_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = svd.decompose(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = svd.orthogonality_loss(model)
        inside.backward()
    assert inside.dtype == torch.float32 and inside.item() < 1e-9  # exact SVD: orthonormal
    assert model[0].U.grad.abs().max() < 1e-6


def test_the_public_modules_are_attributes_of_the_package() -> None:
    import subprocess
    import sys

    code = ("import ranksearch; ranksearch.svd.decompose; ranksearch.measure.flops; "
            "ranksearch.baselines.prune_to_flops; ranksearch.models.create")
    subprocess.run([sys.executable, "-c", code], check=True)
