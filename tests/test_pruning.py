import pytest
import torch
import torch.nn as nn

import searchprune as sp
from searchprune.errors import SearchpruneError
from searchprune.pruning import MASKS_ATTR, apply_masks, prunable_layers
from searchprune.training import train


class SmallNet(nn.Module):
    """A residual add, a depthwise-separable block and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        return self.head(self.pw(self.dw(x)))


X = torch.randn(4, 1, 8, 8)


def test_prunable_layers_skip_classifier_and_depthwise():
    layers = prunable_layers(SmallNet(), X)
    assert layers == ["stem.0", "res.0", "pw.0"]
    assert "head.2" not in prunable_layers(SmallNet(), X, "unstructured")


def test_structured_half_shrinks_expected_channels_and_costs():
    torch.manual_seed(0)
    model = SmallNet()
    before = sp.estimate(model, (1, 1, 8, 8), "stm32f746-tflm-cmsisnn")
    pruned = sp.prune(model, 0.5, example_inputs=X, round_to=4)
    assert pruned(X).shape == (4, 10)
    # stem and res are coupled by the residual add (and the depthwise follows them): 16 -> 8
    assert pruned.stem[0].out_channels == 8 and pruned.res[0].out_channels == 8
    assert pruned.dw[0].in_channels == pruned.dw[0].out_channels == pruned.dw[0].groups == 8
    assert pruned.pw[0].out_channels == 16 and pruned.head[2].in_features == 16
    assert pruned.head[2].out_features == 10  # classifier outputs never pruned
    after = sp.estimate(pruned, (1, 1, 8, 8), "stm32f746-tflm-cmsisnn")
    assert after.macs < before.macs / 2 and after.model_bytes < before.model_bytes
    assert after.arena_bytes < before.arena_bytes


def test_round_to_keeps_channel_multiples():
    model = sp.prune(SmallNet(), {"pw.0": 0.3}, example_inputs=X, round_to=4)
    assert model.pw[0].out_channels % 4 == 0 and model.pw[0].out_channels < 32


def test_unstructured_exact_fraction_survives_finetune(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sp.prune(model, 0.8, granularity="unstructured", example_inputs=torch.zeros(1, 1, 8, 8))
    assert (model[1].weight == 0).sum().item() == round(0.8 * 64 * 32)
    train(model, digits, epochs=1, after_step=apply_masks)
    assert (model[1].weight == 0).sum().item() == round(0.8 * 64 * 32)
    # the classifier is not pruned, so the whole-model sparsity is exact too
    assert sp.sparsity(model) == pytest.approx(round(0.8 * 2048) / (2048 + 320))


def test_two_four_pattern_holds_exactly(digits):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    sp.prune(model, 0.5, granularity="2:4", example_inputs=torch.zeros(1, 1, 8, 8))
    train(model, digits, epochs=1, after_step=apply_masks)
    w = model[2].weight.detach().movedim(1, -1).reshape(-1, 4)  # groups of 4 input channels
    assert ((w == 0).sum(dim=1) >= 2).all()
    assert MASKS_ATTR in vars(model)


def test_magnitude_removes_all_zero_channels_first():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0
        model[0].bias[[1, 5]] = 0
        model[0].weight[[0, 2, 3, 4, 6, 7]] += 1.0
    kept_before = model[0].weight[[0, 2, 3, 4, 6, 7]].clone()
    sp.prune(model, {"0": 0.25}, criterion="l1", example_inputs=torch.zeros(1, 1, 8, 8))
    assert model[0].out_channels == 6
    assert torch.equal(model[0].weight, kept_before)


@pytest.mark.bad_input
def test_taylor_needs_data():
    with pytest.raises(SearchpruneError, match="needs data"):
        sp.prune(SmallNet(), 0.5, criterion="taylor", example_inputs=X)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(ratios=1.0), "[0, 1)"),
    (dict(ratios=-0.1), "[0, 1)"),
    (dict(ratios={"nope": 0.2}), "unknown or unprunable"),
    (dict(ratios=0.5, granularity="4:2"), "0 < N < M"),
    (dict(ratios=0.5, criterion="random"), "valid"),
])
def test_bad_prune_arguments(kwargs, fragment):
    with pytest.raises(SearchpruneError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        sp.prune(SmallNet(), example_inputs=X, **kwargs)


def _digits_batches(digits, n=4, bs=64):
    x, y = digits.tensors("train")
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n * bs, bs)]


def test_activation_criterion_removes_dead_relu_channels_first(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():  # channels 2 and 6 never fire: weights 0, bias very negative
        model[0].weight[[2, 6]] = 0.0
        model[0].bias[[2, 6]] = -5.0
        model[0].weight[[0, 1, 3, 4, 5, 7]] = model[0].weight[[0, 1, 3, 4, 5, 7]].abs() + 0.1
        model[0].bias[[0, 1, 3, 4, 5, 7]] = 0.5
    keep = model[0].weight[[0, 1, 3, 4, 5, 7]].clone()
    sp.prune(model, {"0": 0.25}, criterion="activation", example_inputs=torch.zeros(1, 1, 8, 8),
             data=_digits_batches(digits))
    assert model[0].out_channels == 6 and torch.equal(model[0].weight, keep)


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_gradient_criteria_spare_weights_the_loss_depends_on(digits, criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x, _ = digits.tensors("train")
    dead_pixels = (x.flatten(1).abs().sum(0) == 0).nonzero().flatten()  # always-zero inputs
    assert len(dead_pixels) > 0
    sp.prune(model, {"1": 0.3}, granularity="unstructured", criterion=criterion,
             example_inputs=torch.zeros(1, 1, 8, 8), data=_digits_batches(digits))
    # weights reading always-zero pixels get zero gradient, so they are pruned first
    assert (model[1].weight[:, dead_pixels] == 0).all()


@pytest.mark.parametrize("criterion", ["l2", "taylor", "hessian", "activation"])
def test_every_criterion_prunes_structured(digits, criterion):
    torch.manual_seed(0)
    model = SmallNet()
    sp.prune(model, 0.5, criterion=criterion, example_inputs=X, data=_digits_batches(digits))
    assert model(X).shape == (4, 10) and model.pw[0].out_channels == 16


@pytest.mark.bad_input
def test_activation_is_not_an_unstructured_criterion(digits):
    with pytest.raises(SearchpruneError, match="does not score single weights"):
        sp.prune(SmallNet(), 0.5, granularity="unstructured", criterion="activation",
                 example_inputs=X, data=_digits_batches(digits))


def test_schedules_end_at_the_target():
    from searchprune.pruning import schedule_ratios
    g = schedule_ratios(0.875, 3, "geometric")
    assert g == pytest.approx([0.5, 0.75, 0.875])  # halve what is left each step
    c = schedule_ratios(0.8, 2, "cubic")
    assert c == pytest.approx([0.8 * (1 - 0.125), 0.8])


def test_iterative_structured_reaches_the_one_shot_widths():
    from searchprune.pruning import prune_iteratively
    calls = []
    torch.manual_seed(0)
    model = prune_iteratively(SmallNet(), 0.5, steps=3, finetune=lambda m, k: calls.append(k),
                              example_inputs=X, round_to=1)
    assert calls == [0, 1, 2]
    assert model.pw[0].out_channels == 16 and model.stem[0].out_channels == 8


def test_iterative_unstructured_exact_final_sparsity():
    from searchprune.pruning import prune_iteratively
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    prune_iteratively(model, 0.9, steps=3, granularity="unstructured",
                      example_inputs=torch.zeros(1, 1, 8, 8))
    assert (model[1].weight == 0).sum().item() == round(0.9 * 2048)


def test_lottery_ticket_rewinds_kept_weights(digits):
    from searchprune.pruning import lottery_ticket
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    snapshots = []

    def fake_train(m, epochs):  # records the weights each training run starts from
        snapshots.append(m[1].weight.detach().clone())
        train(m, digits, epochs=epochs, after_step=apply_masks)

    lottery_ticket(model, 0.75, rounds=2, train=fake_train, epochs=2, rewind_epoch=1,
                   example_inputs=torch.zeros(1, 1, 8, 8))
    rewound_to = snapshots[1]  # the weights after the rewind epoch
    for start in snapshots[2:]:  # each round restarts from the rewound values
        kept = start != 0
        assert torch.equal(start[kept], rewound_to[kept])
    assert (model[1].weight == 0).sum().item() == round(0.75 * 2048)
