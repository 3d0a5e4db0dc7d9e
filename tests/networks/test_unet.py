"""Tests of networks.UNet: shapes, parameter count, argument checks, TorchScript, dropout."""

from __future__ import annotations

import pytest
import torch

from networks import UNet


def _expected_parameters(channels_in: int, n_classes: int, depth: int, n_filters: int) -> int:
    """Weights plus biases of every convolution, written out from the architecture."""

    def conv3(cin: int, cout: int) -> int:
        return 9 * cin * cout + cout

    def transposed(cin: int, cout: int) -> int:
        return 4 * cin * cout + cout

    filters = [2 ** (n_filters + i) for i in range(depth)]
    total = 0
    cin = channels_in
    for f in filters:  # encoder blocks, the last one is the bottleneck
        total += conv3(cin, f) + conv3(f, f)
        cin = f
    for i in range(depth - 1):  # decoder: upsample, then a block on the concatenation
        total += transposed(filters[i + 1], filters[i])
        total += conv3(2 * filters[i], filters[i]) + conv3(filters[i], filters[i])
    total += filters[0] * n_classes + n_classes  # 1x1 head
    return total


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"n_filters": 2, "depth": 3}, (2, 3, 16, 24)),
        ({"n_filters": 1, "depth": 1, "channels_in": 1}, (1, 1, 7, 5)),
        ({"n_filters": 2, "depth": 4, "n_classes": 3, "channels_in": 2}, (1, 2, 32, 8)),
    ],
)
def test_output_shape(kwargs: dict, shape: tuple[int, ...]) -> None:
    model = UNet(**kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (shape[0], model.n_classes, shape[2], shape[3])


def test_parameter_count_at_defaults() -> None:
    n = _count(UNet())
    assert n == _expected_parameters(3, 1, 5, 6)
    assert 30_900_000 < n < 31_100_000
    assert n == 31_031_745


@pytest.mark.parametrize(
    "kwargs", [{"n_filters": 2, "depth": 3}, {"n_filters": 3, "depth": 2, "n_classes": 2}]
)
def test_parameter_count_small(kwargs: dict) -> None:
    model = UNet(**kwargs)
    assert _count(model) == _expected_parameters(3, model.n_classes, model.depth, model.n_filters)


def test_outputs_are_logits() -> None:
    torch.manual_seed(0)
    model = UNet(n_filters=2, depth=2).eval()
    with torch.no_grad():
        model.head.bias.fill_(-5.0)
        out = model(torch.randn(1, 3, 8, 8))
    assert out.max() < 0  # a sigmoid could never give negative values


def test_spatial_size_not_divisible() -> None:
    model = UNet(n_filters=1, depth=5)
    with pytest.raises(ValueError, match=r"divisible by 16.*\[1, 3, 40, 32\]"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 32, 24))


def test_bad_input_rank_and_channels() -> None:
    model = UNet(n_filters=1, depth=2)
    with pytest.raises(ValueError, match=r"3-D shape \[3, 8, 8\]"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("channels_in", 0),
        ("n_classes", 0),
        ("depth", 0),
        ("depth", 2.5),
        ("n_filters", -1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("init", "xavier"),
    ],
)
def test_bad_constructor_arguments(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{name} .*{value}"):
        UNet(**{name: value})


def test_torchscript_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = UNet(n_filters=2, depth=3).eval()
    scripted = torch.jit.script(model)
    path = tmp_path / "unet.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(torch.jit.Error, match="divisible by 4"):
        loaded(torch.randn(1, 3, 18, 16))


def test_dropout_in_train_mode_only() -> None:
    torch.manual_seed(0)
    model = UNet(n_filters=2, depth=2, dropout=0.5)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)


def test_zero_dropout_is_deterministic_in_train_mode() -> None:
    model = UNet(n_filters=2, depth=2, dropout=0.0).train()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = UNet(n_filters=2, depth=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_backward_reaches_every_parameter() -> None:
    model = UNet(n_filters=1, depth=3)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_and_eval_reach_every_submodule() -> None:
    """UNet.train skips the recursive walk when nothing would change: the modes must still flip,
    including when only one submodule is out of step (set directly, as a user might)."""
    model = UNet(n_filters=2, depth=3, dropout=0.5)
    assert model.train() is model and all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    model.head.eval()  # one submodule out of step
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    model.down[0].train()  # the reverse
    model.eval()
    assert not any(m.training for m in model.modules())


def _weights(model: UNet, kind: type) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) is kind and m is not model.head]


@pytest.mark.parametrize("dropout", [0.0, 0.6])
def test_he_init_draws_the_unet_papers_gaussians(dropout: float) -> None:
    """Default init: N(0, 2 / (9 in_channels)) for the 3x3 convolutions, times (1 - p) for the
    second one of a block (it follows Dropout(p)), N(0, 1 / in_channels) for the transposed
    ones, zero biases; checked on layers large enough for a 5% std estimate."""
    torch.manual_seed(0)
    model = UNet(n_filters=4, depth=4, dropout=dropout)
    after_dropout = {id(block[3]) for block in [*model.down, *model.up]}
    assert all(isinstance(block[2], torch.nn.Dropout) for block in [*model.down, *model.up])

    def conv_std(m: torch.nn.Module) -> float:
        keep = 1 - dropout if id(m) in after_dropout else 1.0
        return (2 * keep / (9 * m.in_channels)) ** 0.5

    checked = 0
    for kind, expected in (
        (torch.nn.Conv2d, conv_std),
        (torch.nn.ConvTranspose2d, lambda m: (1 / m.in_channels) ** 0.5),
    ):
        for module in _weights(model, kind):
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            if module.weight.numel() < 4000:
                continue
            w = module.weight.detach().double()
            assert abs(float(w.mean())) < 0.1 * expected(module)
            assert float(w.std()) == pytest.approx(expected(module), rel=0.05)
            checked += 1
    assert checked >= 8
    # the head keeps PyTorch's default (uniform within 1 / sqrt(fan_in), non-zero bias)
    bound = 1 / model.head.in_channels**0.5
    head = model.head.weight.detach()
    assert float(head.abs().max()) <= bound and float(model.head.bias.detach().abs()) > 0


def test_pytorch_init_keeps_torchs_default_uniform() -> None:
    """init="pytorch": kaiming_uniform(a=sqrt(5)), i.e. U(-b, b) with b = 1 / sqrt(fan_in), whose
    standard deviation b / sqrt(3) is sqrt(6) times smaller than the he init's for a 3x3 conv."""
    torch.manual_seed(0)
    model = UNet(n_filters=4, depth=4, dropout=0.0, init="pytorch")
    for module in _weights(model, torch.nn.Conv2d):
        bound = 1 / (9 * module.in_channels) ** 0.5
        w = module.weight.detach().double()
        assert float(w.abs().max()) <= bound
        if w.numel() >= 4000:
            assert float(w.std()) == pytest.approx(bound / 3**0.5, rel=0.05)


@pytest.mark.parametrize("dropout", [0.0, 0.6])
def test_he_init_keeps_the_signal_through_the_encoder(dropout: float) -> None:
    """What the init is for, in training mode: the bottleneck's activations keep their scale
    with "he" (each ReLU conv keeps E[x^2], dropout included) and shrink with PyTorch's default
    (its weights divide E[x^2] by about 6 per ReLU conv; its non-zero biases put some back).
    Uncompensated dropout 0.6 would instead raise E[x^2] 2.5x per block, about 100x over five
    blocks."""
    x = torch.rand(2, 3, 64, 64)
    x_rms = float(x.pow(2).mean().sqrt())

    def bottleneck_rms(init: str) -> float:
        torch.manual_seed(0)
        model = UNet(n_filters=5, depth=5, dropout=dropout, init=init).train()
        h = x
        with torch.no_grad():
            for level, block in enumerate(model.down):
                h = block(h if level == 0 else model.pool(h))
        return float(h.pow(2).mean().sqrt())

    he, default = bottleneck_rms("he"), bottleneck_rms("pytorch")
    assert x_rms / 10 < he < x_rms * 10, (he, x_rms)  # uncompensated dropout: about 10x over
    assert default < he / 20, (he, default)
