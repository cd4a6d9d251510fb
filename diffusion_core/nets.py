"""Small denoising networks: a sinusoidal time embedding, an MLP for low-dimensional data, a
U-Net for images and its text-conditioned variant.

A denoiser takes a noised batch ``x`` of shape (n, d) or (n, C, H, W) and the time ``t`` of each
sample and returns one prediction per sample, shaped like ``x``: the noise eps, the clean data x0
or the velocity v, depending on the loss it is trained with (:mod:`diffusion_core.losses`). Time
enters through a sinusoidal embedding, so that nearby times get similar codes while distant ones
stay distinguishable; the U-Net can also take a class label, with a "null" class for
classifier-free guidance. :func:`count_flops` and :func:`describe` give a network's cost.

Trained by :func:`diffusion_core.train.train`; the 2-D chapters use :class:`MLPDenoiser`, the
image chapters :class:`UNet`. :class:`TextUNet`, the latent diffusion chapter's denoiser, is the
same U-Net with a :class:`CrossAttention` layer on a prompt after every residual block; both run
one layer walk, :meth:`UNet.walk`, so the skip connections are written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core._validation import check_positive_int

MAX_WIDTH = 4096  # the widest layer (channels, features) a network may ask for
MAX_DEPTH = 256  # the most blocks or levels

__all__ = [
    "CrossAttention",
    "MLPDenoiser",
    "SinusoidalEmbedding",
    "TextUNet",
    "UNet",
    "count_flops",
    "count_parameters",
    "describe",
]


class SinusoidalEmbedding(nn.Module):
    """Map times t of shape (n,) to features of shape (n, dim) at geometrically spaced frequencies.

    With half = dim / 2 and frequencies omega_i = max_period^(-i / half), i = 0..half-1,

        emb(t) = [sin(omega_0 t), ..., sin(omega_{half-1} t), cos(omega_0 t), ..., cos(...)],

    the positional encoding of Vaswani et al. (2017, Sec. 3.5) with the sines and cosines in two
    blocks, as in DDPM (Ho et al. 2020). The periods range from 2 pi to about 2 pi max_period,
    so ``t`` should be on the scale of the step index: the integer step t = 0..T as a float,
    or a continuous time in [0, 1] multiplied by 1000. The arithmetic runs in float64 (sin of a
    large argument loses digits in float32); the result has the default dtype, or ``t``'s dtype
    if ``t`` is floating point.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        check_positive_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even (sines and cosines come in pairs), got {dim}")
        if isinstance(max_period, bool) or not isinstance(max_period, int | float):
            raise TypeError(f"max_period must be a number, got {type(max_period).__name__}")
        if not math.isfinite(max_period) or max_period <= 1:
            raise ValueError(f"max_period must be a finite number > 1, got {max_period}")
        self.dim = dim
        self.max_period = float(max_period)

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        """The angular frequencies omega_i = max_period^(-i / half), shape (dim / 2,), float64."""
        half = self.dim // 2
        exponents = torch.arange(half, dtype=torch.float64, device=device) / half
        return torch.exp(-math.log(self.max_period) * exponents)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"t must have shape (n,), got {tuple(t.shape)}")
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        angles = t.to(torch.float64)[:, None] * self.frequencies(t.device)[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class _ResidualBlock(nn.Module):
    """h -> h + W2 silu(W1 silu(h) + c): a pre-activation residual block, conditioned on c."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(hidden, hidden)
        self.linear2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return h + self.linear2(F.silu(self.linear1(F.silu(h)) + condition))


class MLPDenoiser(nn.Module):
    """A residual MLP denoiser for data of shape (n, data_dim), conditioned on the time step.

    Architecture (SiLU activations throughout):

        c = W_t2 silu(W_t1 emb(t))                          time embedding -> hidden
        h = W_in x
        h <- h + W2 silu(W1 silu(h) + c)                    ``depth`` residual blocks
        output = W_out silu(h)

    The time code c is added inside every block, as the time embedding is in the residual
    blocks of the DDPM U-Net. The parameter count is

        (data_dim + 1) hidden                               input layer
        + (time_dim + 1) hidden + (hidden + 1) hidden       time MLP
        + depth * 2 (hidden + 1) hidden                     residual blocks
        + (hidden + 1) data_dim                             output layer

    (124,546 for the defaults). Weights use PyTorch's default initialisation, so they are
    determined by the global seed (:func:`diffusion_core.device.seed_everything`).

    ``forward(x, t)``: ``x`` is (n, data_dim) floating point; ``t`` holds the integer steps (an
    int tensor) or float times on the same scale (see :class:`SinusoidalEmbedding`), shape (n,)
    or a single value for the whole batch. The output has ``x``'s shape and dtype; the
    computation runs in the parameters' dtype.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64):
        super().__init__()
        self.data_dim = check_positive_int("data_dim", data_dim, maximum=MAX_WIDTH)
        check_positive_int("hidden", hidden, maximum=MAX_WIDTH)
        check_positive_int("depth", depth, minimum=0, maximum=MAX_DEPTH)
        check_positive_int("time_dim", time_dim, minimum=2, maximum=MAX_WIDTH)
        if time_dim % 2:
            raise ValueError(f"time_dim must be even (sines and cosines in pairs), got {time_dim}")
        self.embedding = SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.input = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, t = self._check_inputs(x, t)
        dtype = self.input.weight.dtype
        condition = self.time_mlp(self.embedding(t.to(torch.float64)).to(dtype))
        h = self.input(x.to(dtype))
        for block in self.blocks:
            h = block(h, condition)
        return self.output(F.silu(h)).to(x.dtype)

    def _check_inputs(self, x, t) -> tuple[torch.Tensor, torch.Tensor]:
        _check_floating("x", x)
        if x.ndim != 2 or x.shape[1] != self.data_dim or x.shape[0] < 1:
            raise ValueError(
                f"x must have shape (n, {self.data_dim}) with n >= 1, got {tuple(x.shape)}"
            )
        return x, _per_sample("t", t, x.shape[0]).to(x.device)  # the time grid may be on the CPU


def _check_floating(name: str, value) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        kind = f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {kind}")


def _per_sample(name: str, value, n: int) -> torch.Tensor:
    """A tensor of shape (n,), from one holding n values or a single value."""
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        kind = f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be an integer or floating-point torch.Tensor, got {kind}")
    if value.numel() == 1:
        return value.reshape(1).expand(n)
    if value.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) (one per sample) or hold a single value, "
            f"got {tuple(value.shape)}"
        )
    return value


def count_parameters(module: nn.Module) -> int:
    """The number of scalar parameters of ``module`` (trainable or not)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())


# --- U-Net for images -----------------------------------------------------------------------


def _check_channels(channels) -> tuple[int, ...]:
    if not isinstance(channels, tuple | list) or not channels:
        raise TypeError(f"channels must be a non-empty tuple of ints, got {channels!r}")
    if len(channels) > MAX_DEPTH:
        raise ValueError(f"channels must list at most {MAX_DEPTH} levels, got {len(channels)}")
    for width in channels:
        check_positive_int("channels", width, maximum=MAX_WIDTH)
    if channels[0] % 2 or channels[0] < 2:
        raise ValueError(
            f"channels[0] must be even and >= 2 (it is the width of the time embedding's sines "
            f"and cosines), got {channels[0]}"
        )
    return tuple(channels)


class _TimeResidualBlock(nn.Module):
    """h -> skip(h) + conv2(silu(norm2(conv1(silu(norm1(h))) + W silu(c) + b))), c the time/class
    code.

    The residual block of the DDPM U-Net (Ho et al. 2020, App. B), after the wide ResNets of
    Zagoruyko & Komodakis (2016): GroupNorm and SiLU before each 3x3 convolution, the condition
    added as a per-channel bias between the two, and a 1x1 convolution on the skip path when the
    number of channels changes.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.condition = nn.Linear(embedding_dim, out_channels)
        self.norm2 = nn.GroupNorm(math.gcd(groups, out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.condition(F.silu(code))[:, :, None, None]
        out = self.conv2(F.silu(self.norm2(out)))
        return self.skip(h) + out


class _SelfAttention(nn.Module):
    """h -> h + W_o softmax(Q K^T / sqrt(c)) V over the H W positions (one head, residual).

    Q, K, V are 1x1 convolutions of GroupNorm(h), as in the DDPM U-Net at 16x16 resolution; here
    it runs at the lowest resolution only, where the positions are few.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, c, height, width = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(n, 3, c, height * width).transpose(2, 3).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (n, H W, c)
        return h + self.out(attended.transpose(1, 2).reshape(n, c, height, width))


class UNet(nn.Module):
    """A small U-Net denoiser for images of shape (n, C, H, W), conditioned on the time step and,
    optionally, on a class label.

    The encoder-decoder with skip connections of Ronneberger et al. (2015), in the form the DDPM
    paper gave it (Ho et al. 2020, App. B; Dhariwal & Nichol 2021 for the class embedding):

        code = MLP(emb(t)) [+ E[label]]                       time (and class) embedding, 4 c_0
        h = conv3x3(x)                                        c_0 channels at H x W
        down level i = 0..L-1:  ``blocks`` residual blocks to c_i channels, each output kept
                                for a skip connection; then a stride-2 3x3 convolution (not
                                after the last level), its output kept as well
        middle:                 residual block, self-attention (optional), residual block
        up level i = L-1..0:    ``blocks + 1`` residual blocks, each fed the concatenation of h
                                and the latest kept output; then nearest-neighbour upsampling
                                and a 3x3 convolution (not after level 0)
        output = conv3x3(silu(GroupNorm(h)))                  back to C channels

    Every residual block receives the code (:class:`_TimeResidualBlock`). H and W must be
    divisible by 2^(L-1), with L = len(channels).

    Classes. With ``num_classes = K`` the labels 0..K-1 are the classes and the label K is the
    "null" class, meaning "no condition" (:attr:`null_label`). Training with a fraction of
    labels replaced by the null class (label dropout) makes one network both conditional and
    unconditional, which is what classifier-free guidance needs (Ho & Salimans 2022). Without
    ``num_classes`` the network is unconditional and takes no labels.

    ``forward(x, t, labels=None)``: ``t`` as for :class:`MLPDenoiser` (integer steps or float
    times on that scale, shape (n,) or one value); ``labels`` an integer tensor of shape (n,) or
    one value, in 0..K (None: the null class). The output has ``x``'s shape and dtype.
    Weights use PyTorch's default initialisation (determined by the global seed).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels=(32, 64),
        blocks: int = 1,
        attention: bool = True,
        num_classes: int | None = None,
        groups: int = 8,
    ):
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels, maximum=MAX_WIDTH)
        self.channels = _check_channels(channels)
        self.blocks = check_positive_int("blocks", blocks, maximum=MAX_DEPTH)
        check_positive_int("groups", groups, maximum=MAX_WIDTH)
        if not isinstance(attention, bool):
            raise TypeError(f"attention must be True or False, got {type(attention).__name__}")
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        self.num_classes = num_classes
        width, code_dim = self.channels[0], 4 * self.channels[0]
        # Built in this order, so that the global seed draws the weights in this order.
        self.embedding = SinusoidalEmbedding(width)
        self.time_mlp = nn.Sequential(
            nn.Linear(width, code_dim), nn.SiLU(), nn.Linear(code_dim, code_dim)
        )
        self.class_embedding = (
            None if num_classes is None else nn.Embedding(num_classes + 1, code_dim)
        )
        self.input = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down, kept = self._build_down(code_dim, groups)
        self.middle = self._build_middle(code_dim, groups, attention)
        self.up = self._build_up(code_dim, groups, kept)
        self.output_norm = nn.GroupNorm(math.gcd(groups, width), width)
        self.output = nn.Conv2d(width, in_channels, 3, padding=1)

    def _build_down(self, code_dim: int, groups: int) -> tuple[nn.ModuleList, list[int]]:
        """The encoder's layers, and the channels of every output kept for a skip connection
        (the input convolution's first)."""
        width = self.channels[0]
        kept, down = [width], nn.ModuleList()
        for level, out_width in enumerate(self.channels):
            for _ in range(self.blocks):
                down.append(_TimeResidualBlock(width, out_width, code_dim, groups))
                width = out_width
                kept.append(width)
            if level < len(self.channels) - 1:
                down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                kept.append(width)
        return down, kept

    def _build_middle(self, code_dim: int, groups: int, attention: bool) -> nn.ModuleList:
        """Residual block, self-attention (or the identity), residual block."""
        width = self.channels[-1]
        return nn.ModuleList(
            [
                _TimeResidualBlock(width, width, code_dim, groups),
                _SelfAttention(width, groups) if attention else nn.Identity(),
                _TimeResidualBlock(width, width, code_dim, groups),
            ]
        )

    def _build_up(self, code_dim: int, groups: int, kept: list[int]) -> nn.ModuleList:
        """The decoder's layers; each residual block reads one kept output, the latest first."""
        width, up = self.channels[-1], nn.ModuleList()
        for level in reversed(range(len(self.channels))):
            out_width = self.channels[level]
            for _ in range(self.blocks + 1):
                up.append(_TimeResidualBlock(width + kept.pop(), out_width, code_dim, groups))
                width = out_width
            if level > 0:
                upsample = nn.Upsample(scale_factor=2, mode="nearest")
                up.append(nn.Sequential(upsample, nn.Conv2d(width, width, 3, padding=1)))
        return up

    @property
    def null_label(self) -> int | None:
        """The label that means "no condition" (``num_classes``), or None if unconditional."""
        return self.num_classes

    def residual_block_names(self) -> tuple[str, ...]:
        """The module names of the residual blocks ("down.0", ..., "middle.2", ..., "up.k"), in
        the order the forward pass runs them: the names :meth:`walk` passes to its hook."""
        return tuple(
            f"{part}.{i}"
            for part in ("down", "middle", "up")
            for i, layer in enumerate(getattr(self, part))
            if isinstance(layer, _TimeResidualBlock)
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        x, t, labels = self._check_inputs(x, t, labels)
        code = self._time_code(t)
        if self.class_embedding is not None:
            code = code + self.class_embedding(labels)
        return self.walk(x, code)

    def _time_code(self, t: torch.Tensor) -> torch.Tensor:
        """MLP(emb(t)), in the parameters' dtype (the embedding is computed in float64)."""
        return self.time_mlp(self.embedding(t.to(torch.float64)).to(self.input.weight.dtype))

    def walk(
        self,
        x: torch.Tensor,
        code: torch.Tensor,
        after_block: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The network from the input convolution to the output one, given the code (n, 4 c_0).

        ``after_block(name, h)``, if given, maps the output h of every residual block to the
        tensor the next layer reads, ``name`` being the block's module name (one of
        :meth:`residual_block_names`): the one place where a subclass adds per-block
        conditioning, as :class:`TextUNet` adds cross-attention, without its own copy of the
        skip connections. Without it the walk is the plain :class:`UNet`.
        """
        h = self.input(x.to(self.input.weight.dtype))
        kept = [h]
        for i, layer in enumerate(self.down):
            h = self._run(f"down.{i}", layer, h, code, after_block)
            kept.append(h)
        for i, layer in enumerate(self.middle):
            h = self._run(f"middle.{i}", layer, h, code, after_block)
        for i, layer in enumerate(self.up):
            if isinstance(layer, _TimeResidualBlock):
                h = torch.cat([h, kept.pop()], dim=1)
            h = self._run(f"up.{i}", layer, h, code, after_block)
        return self.output(F.silu(self.output_norm(h))).to(x.dtype)

    @staticmethod
    def _run(name: str, layer: nn.Module, h, code, after_block) -> torch.Tensor:
        """One layer of the walk: residual blocks get the code and then the hook."""
        if not isinstance(layer, _TimeResidualBlock):
            return layer(h)
        h = layer(h, code)
        return h if after_block is None else after_block(name, h)

    def _check_inputs(self, x, t, labels):
        _check_floating("x", x)
        factor = 2 ** (len(self.channels) - 1)
        if (
            x.ndim != 4
            or x.shape[1] != self.in_channels
            or x.shape[2] % factor
            or x.shape[3] % factor
        ):
            raise ValueError(
                f"x must have shape (n, {self.in_channels}, H, W) with H and W divisible by "
                f"{factor}, got {tuple(x.shape)}"
            )
        t = _per_sample("t", t, x.shape[0]).to(x.device)  # the time grid may be on the CPU
        return x, t, self._check_labels(labels, x)

    def _check_labels(self, labels, x: torch.Tensor) -> torch.Tensor | None:
        """Labels of shape (n,), int64, on x's device; the null class if None."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("this UNet is unconditional (num_classes=None): pass no labels")
            return None
        if labels is None:
            labels = torch.tensor(self.num_classes, device=x.device)
        if (
            not isinstance(labels, torch.Tensor)
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            kind = (
                f"dtype {labels.dtype}"
                if isinstance(labels, torch.Tensor)
                else type(labels).__name__
            )
            raise TypeError(f"labels must be an integer torch.Tensor, got {kind}")
        labels = _per_sample("labels", labels, x.shape[0]).to(device=x.device, dtype=torch.int64)
        if bool(((labels < 0) | (labels > self.num_classes)).any()):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes} ({self.num_classes} is the null class)"
            )
        return labels


def count_flops(module: nn.Module, *inputs) -> int:
    """Floating-point operations of one call ``module(*inputs)``, counted by PyTorch.

    :class:`torch.utils.flop_counter.FlopCounterMode` counts the matrix products and
    convolutions (2 FLOPs per multiply-add) and attention; normalisations, activations and
    additions, a few percent of the total in a convolutional network, are not counted.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def describe(module: nn.Module, *inputs) -> str:
    """One line: parameter count and FLOPs per sample of ``module(*inputs)`` (batch first)."""
    batch = inputs[0].shape[0]
    flops = count_flops(module, *inputs) / batch
    return (
        f"{type(module).__name__}: {count_parameters(module):,} parameters, "
        f"{flops / 1e6:.2f} MFLOPs per sample ({flops / 2e6:.2f} M multiply-adds)"
    )


# --- text conditioning through cross-attention ----------------------------------------------


class CrossAttention(nn.Module):
    """h -> h + W_o softmax(Q K^T / sqrt(d) + mask) V, queries from the image, keys from text.

    The conditioning layer of latent diffusion (Rombach et al. 2022, Sec. 3.3, Eq. 3): the H W
    positions of the feature map h (n, c, H, W) ask, through Q = W_q GroupNorm(h), which of the
    L tokens of the context (n, L, context_dim) to read, K = W_k context and V = W_v context,
    with ``heads`` heads of c / heads channels. Padded tokens (``mask`` False) get weight
    exactly zero, so the output does not depend on what the padded rows of the context hold.
    Residual, like :class:`_SelfAttention`.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4, groups: int = 8):
        super().__init__()
        check_positive_int("channels", channels, maximum=MAX_WIDTH)
        check_positive_int("context_dim", context_dim, maximum=MAX_WIDTH)
        self.heads = check_positive_int("heads", heads, maximum=MAX_WIDTH)
        check_positive_int("groups", groups, maximum=MAX_WIDTH)
        if channels % heads:
            raise ValueError(f"channels must be divisible by heads ({heads}), got {channels}")
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(context_dim, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c, height, width = h.shape
        split = (n, -1, self.heads, c // self.heads)  # (n, length, heads, d) -> heads first
        q = self.query(self.norm(h).flatten(2).transpose(1, 2)).reshape(split).transpose(1, 2)
        k, v = self.key_value(context.to(h.dtype)).chunk(2, dim=-1)
        k, v = (z.reshape(split).transpose(1, 2) for z in (k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = self.out(attended.transpose(1, 2).reshape(n, height * width, c))
        return h + out.transpose(1, 2).reshape(n, c, height, width)


class TextUNet(UNet):
    """A :class:`UNet` conditioned on a text context through cross-attention.

    The same encoder-decoder, time embedding and residual blocks; after every residual block
    (down, middle and up) a :class:`CrossAttention` layer lets each position read the prompt's
    token embeddings, as in the denoiser of Stable Diffusion (Rombach et al. 2022, App. E.2),
    whose transformer blocks sit beside the residual blocks at every level. No class labels.

    The layer that follows the block named ``name`` (see :meth:`UNet.residual_block_names`) is
    :meth:`cross_attention` ``(name)``, found by that name, so the pairing does not rest on the
    order in which modules were registered; ``cross.k`` is the layer of the k-th block of the
    forward pass. The rest of the forward pass is :meth:`UNet.walk`, so with every
    cross-attention layer's output projection zero the network is exactly the :class:`UNet`
    with the same weights.

    ``forward(x, t, context, mask)``: ``x`` and ``t`` as for :class:`UNet`, ``context`` the
    (n, L, context_dim) output of :class:`diffusion_core.text.TextEncoder` and ``mask`` its
    (n, L) bool mask (True at real tokens).
    """

    def __init__(self, context_dim: int, heads: int = 4, **unet_options):
        if unet_options.get("num_classes") is not None:
            raise ValueError("TextUNet is conditioned on text: num_classes must be None")
        super().__init__(**unet_options)
        self.context_dim = check_positive_int("context_dim", context_dim)
        groups = unet_options.get("groups", 8)
        names = self.residual_block_names()
        self._cross_index = {name: k for k, name in enumerate(names)}
        self.cross = nn.ModuleList(
            CrossAttention(self.get_submodule(name).conv2.out_channels, context_dim, heads, groups)
            for name in names
        )

    def cross_attention(self, name: str) -> CrossAttention:
        """The cross-attention layer applied to the output of the residual block ``name``."""
        if name not in self._cross_index:
            raise KeyError(f"no residual block named {name!r}; see residual_block_names()")
        return self.cross[self._cross_index[name]]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x, t, _ = self._check_inputs(x, t, None)
        self._check_context(context, mask, x.shape[0])

        def attend(name: str, h: torch.Tensor) -> torch.Tensor:
            return self.cross_attention(name)(h, context, mask)

        return self.walk(x, self._time_code(t), attend)

    def _check_context(self, context, mask, n: int) -> None:
        if not isinstance(context, torch.Tensor) or not context.is_floating_point():
            raise TypeError("context must be a floating-point torch.Tensor of shape (n, L, d)")
        if context.ndim != 3 or context.shape[0] != n or context.shape[2] != self.context_dim:
            raise ValueError(
                f"context must have shape ({n}, L, {self.context_dim}), got {tuple(context.shape)}"
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool torch.Tensor of shape (n, L)")
        if mask.shape != context.shape[:2]:
            raise ValueError(
                f"mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}"
            )
