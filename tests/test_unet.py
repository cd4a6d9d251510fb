"""Tests for the U-Net of :mod:`diffusion_core.nets`, the layer walk it shares with the text
U-Net, and its FLOP counter."""

import pytest
import torch
from torch import nn

from diffusion_core.nets import TextUNet, UNet, count_flops, count_parameters, describe

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_unet(seed=0, **changes):
    torch.manual_seed(seed)
    settings = {"channels": (8, 16), "blocks": 1, "groups": 4}
    return UNet(**(settings | changes))


def images(n=4, channels=1, size=8, seed=1):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# --- shapes and batches -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "channels", "size"),
    [
        ({}, 1, 8),
        ({"channels": (8, 16, 16)}, 1, 16),
        ({"in_channels": 3, "blocks": 2, "attention": False}, 3, 8),
        ({"channels": (8,)}, 1, 5),  # one level: no down- or upsampling, any size
    ],
)
def test_output_has_the_shape_and_dtype_of_the_input(changes, channels, size):
    net = tiny_unet(**changes)
    x = images(3, channels, size)
    out = net(x, torch.tensor([1, 500, 1000]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert net.to(torch.float64)(x.double(), torch.tensor(7)).dtype == torch.float64


def test_samples_are_processed_independently():
    # GroupNorm normalises each sample on its own, so a sample's output does not depend on the
    # rest of the batch (BatchNorm would break this).
    net, x, t = tiny_unet(), images(6), torch.arange(1, 7) * 100
    full = net(x, t)
    for i in (0, 3, 5):
        torch.testing.assert_close(net(x[i : i + 1], t[i : i + 1]), full[i : i + 1])
    permutation = torch.tensor([5, 2, 0, 1, 4, 3])
    torch.testing.assert_close(net(x[permutation], t[permutation]), full[permutation])


def test_int_and_float_times_agree_and_a_single_time_broadcasts():
    net, x = tiny_unet(), images(5)
    t = torch.full((5,), 321)
    torch.testing.assert_close(net(x, t), net(x, t.double()), rtol=0, atol=0)
    torch.testing.assert_close(net(x, torch.tensor(321)), net(x, t), rtol=0, atol=0)
    assert (net(x, t) - net(x, t + 300)).abs().max() > 1e-4


# --- skip connections -------------------------------------------------------------------------


def test_every_up_block_reads_its_skip_connection():
    # Each up block's first convolution sees [h, skip] stacked on the channel axis; the
    # gradient with respect to the weights on the skip channels is non-zero only if the skip
    # tensor actually reaches the output.
    net = tiny_unet(channels=(8, 16, 16), blocks=2)
    net(images(2, size=16), torch.tensor([10, 900])).square().sum().backward()
    up_blocks = [layer for layer in net.up if hasattr(layer, "conv1")]
    assert len(up_blocks) == 3 * (2 + 1)
    h_width = net.channels[-1]
    for block in up_blocks:
        assert block.conv1.in_channels > h_width  # the rest are the skip channels
        assert block.conv1.weight.grad[:, h_width:].abs().sum() > 0
        h_width = block.conv1.out_channels


def test_the_highest_resolution_skip_carries_fine_detail():
    # Cut the skip from the input convolution (the last up block's skip channels) and the output
    # changes: the finest features reach the output directly, not only through the bottleneck.
    net, x, t = tiny_unet(), images(3), torch.tensor([5, 50, 500])
    before = net(x, t)
    last = net.up[-1]
    skip_width = net.channels[0]
    with torch.no_grad():
        last.conv1.weight[:, -skip_width:] = 0
        last.skip.weight[:, -skip_width:] = 0
    assert (net(x, t) - before).abs().max() > 1e-3


def test_gradients_reach_every_parameter():
    net = tiny_unet(num_classes=3)
    net(images(4), torch.arange(1, 5), torch.tensor([0, 1, 2, 3])).square().sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --- class conditioning -----------------------------------------------------------------------


def test_null_class_is_the_default_and_labels_change_the_output():
    net, x, t = tiny_unet(num_classes=10), images(4), torch.tensor(200)
    assert net.null_label == 10
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 10)), rtol=0, atol=0)
    torch.testing.assert_close(net(x, t, torch.tensor(3)), net(x, t, torch.full((4,), 3)))
    outputs = [net(x, t, torch.full((4,), label)) for label in (0, 3, 10)]
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4
    assert (outputs[0] - outputs[2]).abs().max() > 1e-4
    # the class enters through one embedding row per label, null included
    assert net.class_embedding.weight.shape == (11, 4 * 8)


def test_unconditional_net_rejects_labels_and_conditional_net_checks_them():
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet()(images(2), torch.tensor(1), torch.tensor([0, 1]))
    net = tiny_unet(num_classes=3)
    assert tiny_unet().null_label is None
    with pytest.raises(ValueError, match=r"0\.\.3"):
        net(images(2), torch.tensor(1), torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="labels must be an integer"):
        net(images(2), torch.tensor(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        net(images(2), torch.tensor(1), torch.tensor([0, 1, 2]))


def test_forward_rejects_bad_inputs():
    net = tiny_unet()
    with pytest.raises(ValueError, match="divisible by 2"):
        net(images(2, size=7), torch.tensor(1))
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\)"):
        net(images(2, channels=3), torch.tensor(1))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        net(torch.zeros(2, 1, 8, 8, dtype=torch.int64), torch.tensor(1))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        net(images(2), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels": ()}, TypeError, "channels must be a non-empty tuple"),
        ({"channels": (8, 0)}, ValueError, "channels must be in 1"),
        ({"channels": (8, 10**6)}, ValueError, "channels must be in 1..4096"),
        ({"blocks": 0}, ValueError, "blocks must be in 1"),
        ({"blocks": 10**5}, ValueError, "blocks must be in 1..256"),
        ({"attention": 1}, TypeError, "attention must be True or False"),
        ({"num_classes": 0}, ValueError, "num_classes must be in 1"),
        ({"groups": 0}, ValueError, "groups must be in 1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        UNet(**kwargs)


# --- the shared walk and the text U-Net --------------------------------------------------------


def tiny_text_unet(seed=0):
    torch.manual_seed(seed)
    return TextUNet(6, heads=2, channels=(8, 16), blocks=2, groups=4)


def text_inputs(n=3, seed=2):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(n, 5, 6, generator=generator)
    mask = torch.arange(5) < torch.tensor([5, 3, 1])[:n, None]  # real tokens first
    return images(n), torch.tensor([3, 300, 900])[:n], context, mask


def block_outputs(net, *inputs):
    """The output of every residual block of one forward pass, by name, in the order run."""
    outputs = {}
    handles = [
        net.get_submodule(name).register_forward_hook(
            lambda _module, _args, out, name=name: outputs.update({name: out})
        )
        for name in net.residual_block_names()
    ]
    with torch.no_grad():
        final = net(*inputs)
    for handle in handles:
        handle.remove()
    return outputs, final


def test_residual_block_names_are_the_blocks_in_the_order_the_walk_runs_them():
    net = tiny_unet(channels=(8, 16, 16), blocks=2)
    x, t = images(2, size=16), torch.tensor([1, 700])
    outputs, final = block_outputs(net, x, t)
    assert list(outputs) == list(net.residual_block_names())
    assert len(outputs) == 3 * 2 + 2 + 3 * 3
    code = net.time_mlp(net.embedding(t.double()).float())
    with torch.no_grad():
        assert torch.equal(net.walk(x, code, lambda name, h: h), final)


def test_text_unet_with_silent_cross_attention_is_the_unet_with_the_same_weights():
    # With every cross-attention output projection zero each layer adds an exact zero, so the
    # shared walk must give the UNet's output bit for bit; the UNet takes the text U-Net's
    # weights with strict=True, so the two share every parameter name but cross.*.
    text_net, (x, t, context, mask) = tiny_text_unet(), text_inputs()
    for name in text_net.residual_block_names():
        nn.init.zeros_(text_net.cross_attention(name).out.weight)
        nn.init.zeros_(text_net.cross_attention(name).out.bias)
    shared = {k: v for k, v in text_net.state_dict().items() if not k.startswith("cross.")}
    net = UNet(channels=(8, 16), blocks=2, groups=4)
    net.load_state_dict(shared, strict=True)
    with torch.no_grad():
        assert torch.equal(text_net(x, t, context, mask), net(x, t))
        assert not torch.equal(tiny_text_unet()(x, t, context, mask), net(x, t))


def test_each_cross_attention_layer_reads_the_output_of_its_own_block():
    net, inputs = tiny_text_unet(), text_inputs()
    seen = {}
    for name in net.residual_block_names():
        net.cross_attention(name).register_forward_pre_hook(
            lambda _module, args, name=name: seen.update({name: args[0]})
        )
    outputs, _ = block_outputs(net, *inputs)
    assert list(seen) == list(outputs)
    for name, out in outputs.items():
        assert torch.equal(seen[name], out), name
    assert [net.cross_attention(n) for n in outputs] == list(net.cross)  # cross.k: k-th block
    with pytest.raises(KeyError, match="down.99"):
        net.cross_attention("down.99")


def test_perturbing_one_cross_attention_layer_changes_only_what_follows_its_block():
    net, inputs = tiny_text_unet(), text_inputs()
    names = net.residual_block_names()
    target = names.index("up.1")  # the second up block, at the lowest resolution
    before, final = block_outputs(net, *inputs)
    with torch.no_grad():
        net.cross_attention("up.1").out.weight.mul_(3.0)
    after, perturbed = block_outputs(net, *inputs)
    for name in names[: target + 1]:  # up to and including the block itself: untouched
        assert torch.equal(after[name], before[name]), name
    for name in names[target + 1 :]:
        assert (after[name] - before[name]).abs().max() > 1e-6, name
    assert (perturbed - final).abs().max() > 1e-6


# --- size ---------------------------------------------------------------------------------


def expected_parameters(in_channels, channels, blocks, attention, num_classes):
    """The parameter count, layer by layer, from the architecture in the UNet docstring."""

    def conv(c_in, c_out, k):
        return c_in * c_out * k * k + c_out

    def norm(c):
        return 2 * c

    def block(c_in, c_out, code):
        skip = 0 if c_in == c_out else conv(c_in, c_out, 1)
        return (
            norm(c_in)
            + conv(c_in, c_out, 3)
            + code * c_out
            + c_out
            + norm(c_out)
            + conv(c_out, c_out, 3)
            + skip
        )

    width, code = channels[0], 4 * channels[0]
    total = width * code + code + code * code + code  # time MLP
    total += 0 if num_classes is None else (num_classes + 1) * code
    total += conv(in_channels, width, 3)
    kept = [width]
    for level, c in enumerate(channels):
        for _ in range(blocks):
            total += block(width, c, code)
            width = c
            kept.append(width)
        if level < len(channels) - 1:
            total += conv(width, width, 3)
            kept.append(width)
    total += 2 * block(width, width, code)
    total += norm(width) + conv(width, 3 * width, 1) + conv(width, width, 1) if attention else 0
    for level in reversed(range(len(channels))):
        for _ in range(blocks + 1):
            total += block(width + kept.pop(), channels[level], code)
            width = channels[level]
        if level > 0:
            total += conv(width, width, 3)
    return total + norm(width) + conv(width, in_channels, 3)


@pytest.mark.parametrize(
    "settings",
    [
        (1, (32, 64), 1, True, None),
        (1, (32, 64), 1, True, 10),
        (3, (8, 16, 24), 2, False, None),
    ],
)
def test_parameter_count_follows_the_architecture(settings):
    in_channels, channels, blocks, attention, num_classes = settings
    net = UNet(in_channels, channels, blocks, attention, num_classes)
    assert count_parameters(net) == expected_parameters(*settings)


def test_the_book_digits_nets_are_small():
    # the networks of diffusion_core.images.DIGITS_MODELS: under 1 M parameters, 2.5 MB
    assert count_parameters(UNet(channels=(16, 32, 64))) == 636_465
    assert count_parameters(UNet(channels=(16, 32, 64), num_classes=10)) == 636_465 + 11 * 64


def test_flop_counter_counts_two_flops_per_multiply_add():
    x = torch.randn(5, 12)
    assert count_flops(nn.Linear(12, 7), x) == 2 * 5 * 12 * 7
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert count_flops(conv, torch.randn(2, 3, 8, 8)) == 2 * 2 * (8 * 8) * 4 * 3 * 3 * 3


def test_unet_flops_grow_linearly_with_the_batch_and_are_described():
    net = tiny_unet()
    one = count_flops(net, images(1), torch.tensor(3))
    assert count_flops(net, images(6), torch.tensor(3)) == 6 * one
    text = describe(net, images(2), torch.tensor(3))
    assert text.startswith(f"UNet: {count_parameters(net):,} parameters,")
    assert f"{one / 1e6:.2f} MFLOPs per sample" in text
