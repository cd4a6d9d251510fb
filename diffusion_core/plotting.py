"""The book's figure helpers: one look for every chapter.

A leaf module (it imports matplotlib, which only the book needs); nothing in the library
imports it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import uuid

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML
from matplotlib.axes import Axes

from diffusion_core._validation import (
    as_tensor,
    check_callable,
    check_finite,
    check_increasing,
    check_number,
    check_positive_int,
)

__all__ = [
    "BOOK_STYLE",
    "COLUMN_INCHES",
    "animate_images",
    "animate_points",
    "density_panel",
    "image_grid",
    "use_book_style",
]

COLUMN_INCHES = 7.5
"""The width of the book's text column (757 CSS pixels) in inches at 100 dpi: a figure at most
this wide is shown at its natural size, so 10-point text is about 14 px on the page."""

BOOK_STYLE = {
    "figure.figsize": (7.0, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


MAX_GRID = 100  # rows or columns of an image grid
MAX_RESOLUTION = 2000  # grid points per axis of a density panel, and contour levels
MAX_LIMIT = 1e6  # half-width of a plotted square


def use_book_style() -> None:
    """Apply the book's matplotlib settings (figure size, resolution, grid, frameless legends).

    In a notebook, figures are also stored as "retina" PNGs: rendered at twice the resolution
    and shown at their natural size (the output records the width), so text stays sharp on
    high-density screens. A figure drawn no wider than :data:`COLUMN_INCHES` fits the column
    without being shrunk.
    """
    plt.rcParams.update(BOOK_STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: nothing is displayed inline
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def image_grid(images, row_labels=None, col_labels=None, cmap="gray_r", vmin=-1.0, vmax=1.0):
    """Show a (rows, cols, H, W) stack of grey images as a grid; returns the figure.

    Pixel values are drawn on the fixed range [vmin, vmax] so that noise looks like noise at
    every time, rather than being rescaled per image.
    """
    images = check_finite("images", as_tensor("images", images).detach().cpu())
    if images.ndim != 4 or not (
        1 <= images.shape[0] <= MAX_GRID and 1 <= images.shape[1] <= MAX_GRID
    ):
        raise ValueError(
            f"images must have shape (rows, cols, H, W) with 1..{MAX_GRID} rows and columns, "
            f"got {tuple(images.shape)}"
        )
    rows, cols = images.shape[:2]
    _check_labels("row_labels", row_labels, rows)
    _check_labels("col_labels", col_labels, cols)
    check_increasing("vmin", vmin, "vmax", vmax, minimum=-math.inf)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.0 * cols + 0.6, 1.0 * rows + 0.3), squeeze=False
    )
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(images[i, j].numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col_labels is not None and i == 0:
                ax.set_title(col_labels[j], fontsize=9)
            if row_labels is not None and j == 0:
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    return fig


def density_panel(ax, log_prob, limit: float, resolution: int = 160, levels: int = 12):
    """Filled contours of exp(log_prob) on the square [-limit, limit]^2.

    ``log_prob`` maps an (n, 2) float64 tensor of points to their (n,) log-densities.
    """
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    check_callable("log_prob", log_prob, "log_prob(points) -> log-densities")
    limit = check_number("limit", limit, 0, MAX_LIMIT, low_open=True)
    resolution = check_positive_int("resolution", resolution, minimum=2, maximum=MAX_RESOLUTION)
    levels = check_positive_int("levels", levels, maximum=MAX_RESOLUTION)
    axis = torch.linspace(-limit, limit, resolution, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    density = log_prob(points).exp().reshape(resolution, resolution)
    ax.contourf(grid_x.numpy(), grid_y.numpy(), density.numpy(), levels=levels, cmap="Blues")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    return ax


# Animations embed every frame as a PNG in the notebook (and the book's page), so they are kept
# short and small: frames are drawn at 100 dpi, as the book's figures, and stored as palette PNGs
# of at most 64 colours (a plot has few colours; a frame is several times smaller than an RGBA
# PNG from matplotlib).
MAX_FRAMES = 60
MAX_INTERVAL = 10_000  # milliseconds between frames
MAX_SIZE = 30.0  # inches (a point size is at most its square)
ANIMATION_DPI = 100
PALETTE_COLORS = 64


def _as_frames(frames) -> torch.Tensor:
    frames = check_finite("frames", as_tensor("frames", frames).detach().cpu().to(torch.float64))
    n_frames = frames.shape[0] if frames.ndim else 0
    if not 1 <= n_frames <= MAX_FRAMES:
        raise ValueError(
            f"an animation takes 1 to {MAX_FRAMES} frames, got {n_frames}"
            " (subsample a long trajectory, e.g. frames[::4])"
        )
    return frames


def _check_titles(titles, n_frames: int):
    if titles is not None and len(titles) != n_frames:
        raise ValueError(f"titles must give one title per frame ({n_frames}), got {len(titles)}")


def _check_labels(name: str, labels, n: int) -> None:
    if labels is None:
        return
    if isinstance(labels, str) or not hasattr(labels, "__len__"):
        raise TypeError(f"{name} must be a sequence of {n} labels or None, got {labels!r}")
    if len(labels) != n:
        raise ValueError(f"{name} must give one label per image ({n}), got {len(labels)}")


def _check_animation(interval, size) -> tuple[int, float]:
    interval = check_positive_int("interval", interval, maximum=MAX_INTERVAL)
    return interval, check_number("size", size, 0, MAX_SIZE, low_open=True)


def _layout(fig, ax, titles) -> None:
    """Lay the figure out around the first frame's title, so that every title fits inside it."""
    if titles is not None:
        ax.set_title(titles[0], fontsize=10)
    fig.tight_layout()


def _png_frames(fig, update, n_frames: int) -> list[bytes]:
    """Draw every frame and store it as a small palette PNG."""
    from PIL import Image

    pngs = []
    for i in range(n_frames):
        update(i)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=ANIMATION_DPI)
        image = Image.open(buffer).convert("RGB")
        palette = image.quantize(PALETTE_COLORS, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        palette.save(buffer, format="PNG", optimize=True)
        pngs.append(buffer.getvalue())
    return pngs


# The player's buttons, drawn as SVG (16 x 16) so that they need no icon or emoji font.
_ICONS = {
    "first": "M2 3h2v10H2zM9 3v10L4 8zM15 3v10l-5-5z",
    "previous": "M3 3h2v10H3zM13 3v10L6 8z",
    "play": "M4 2.5v11L13.5 8z",
    "pause": "M3.5 3h3v10h-3zM9.5 3h3v10h-3z",
    "next": "M11 3h2v10h-2zM3 3v10l7-5z",
    "last": "M12 3h2v10h-2zM7 3v10l5-5zM1 3v10l5-5z",
}
_BUTTONS = [
    ("first", "First frame"),
    ("previous", "Previous frame"),
    ("play", "Play"),
    ("next", "Next frame"),
    ("last", "Last frame"),
]
_PLAYER_STYLE = (
    ".book-animation{width:fit-content;max-width:100%}"
    ".book-animation img{display:block;max-width:100%;height:auto}"
    ".book-animation .controls{display:flex;flex-wrap:wrap;align-items:center;gap:4px;"
    "margin-top:4px}"
    ".book-animation button{display:inline-flex;align-items:center;justify-content:center;"
    "width:32px;height:28px;padding:0;border:1px solid #999;border-radius:4px;"
    "background:transparent;color:inherit;cursor:pointer}"
    ".book-animation svg{width:16px;height:16px;fill:currentColor}"
    ".book-animation input{flex:1 1 120px;min-width:80px}"
)
_PLAYER_SCRIPT = """(function () {
  var root = document.getElementById("%(id)s");
  var frames = %(frames)s;
  var img = root.querySelector("img"), slider = root.querySelector("input");
  var play = root.querySelector("[data-action=play]");
  var frame = 0, timer = null;
  function show(i) {
    frame = (i + frames.length) %% frames.length;
    img.src = "data:image/png;base64," + frames[frame];
    slider.value = frame;
  }
  function playing(on) {
    play.querySelector(".icon-play").style.display = on ? "none" : "";
    play.querySelector(".icon-pause").style.display = on ? "" : "none";
    play.setAttribute("aria-label", on ? "Pause" : "Play");
    play.title = on ? "Pause" : "Play";
  }
  function stop() { clearInterval(timer); timer = null; playing(false); }
  var actions = {
    first: function () { stop(); show(0); },
    previous: function () { stop(); show(frame - 1); },
    next: function () { stop(); show(frame + 1); },
    last: function () { stop(); show(frames.length - 1); },
    play: function () {
      if (timer) { stop(); return; }
      timer = setInterval(function () { show(frame + 1); }, %(interval)d);
      playing(true);
    }
  };
  root.querySelectorAll("button").forEach(function (button) {
    button.addEventListener("click", actions[button.dataset.action]);
  });
  slider.addEventListener("input", function () { stop(); show(+slider.value); });
})();"""


def _svg(path: str, name: str, hidden: bool = False) -> str:
    style = ' style="display:none"' if hidden else ""
    return (
        f'<svg class="icon-{name}" viewBox="0 0 16 16" aria-hidden="true"{style}>'
        f'<path d="{path}"/></svg>'
    )


def _player(pngs: list[bytes], interval: int, alt: str) -> str:
    """A small self-contained player: the frames, five buttons and a slider."""
    element_id = f"book-animation-{uuid.uuid4().hex}"
    frames = [base64.b64encode(png).decode("ascii") for png in pngs]
    width, height = _png_size(pngs[0])
    buttons = []
    for action, label in _BUTTONS:
        icon = _svg(_ICONS[action], action)
        if action == "play":
            icon += _svg(_ICONS["pause"], "pause", hidden=True)
        buttons.append(
            f'<button type="button" data-action="{action}" aria-label="{label}" '
            f'title="{label}">{icon}</button>'
        )
    script = _PLAYER_SCRIPT % {
        "id": element_id,
        "frames": json.dumps(frames),
        "interval": interval,
    }
    return (
        f"<style>{_PLAYER_STYLE}</style>\n"
        f'<div class="book-animation" id="{element_id}">\n'
        f'<img src="data:image/png;base64,{frames[0]}" width="{width}" height="{height}" '
        f'alt="{html.escape(alt)}">\n'
        f'<div class="controls">{"".join(buttons)}'
        f'<input type="range" min="0" max="{len(frames) - 1}" value="0" step="1" '
        'aria-label="Frame"></div>\n'
        f"</div>\n<script>\n{script}\n</script>\n"
    )


def _png_size(png: bytes) -> tuple[int, int]:
    # The IHDR chunk: width and height as big-endian 32-bit integers at bytes 16..24.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _describe(what: str, titles, n_frames: int) -> str:
    text = f"Animation of {what} over {n_frames} frame{'s' if n_frames > 1 else ''}"
    if titles is not None:
        text += f", from {titles[0]} to {titles[-1]}" if n_frames > 1 else f", {titles[0]}"
    return text


def _to_html(fig, update, n_frames: int, interval: int, alt: str) -> HTML:
    pngs = _png_frames(fig, update, n_frames)
    plt.close(fig)  # the animation replaces the figure: do not show a static copy as well
    return HTML(_player(pngs, interval, alt))


def animate_points(
    frames,
    titles=None,
    background=None,
    interval: int = 80,
    limit: float | None = None,
    size: float = 4.0,
    point_size: float = 4.0,
    color: str = "C3",
) -> HTML:
    """Animate a cloud of 2-D points, e.g. samples moving along a sampler's time grid.

    ``frames`` has shape (n_frames, n_points, 2), with at most ``MAX_FRAMES`` frames.
    ``background(ax)``, if given, draws a static backdrop once (for example
    ``lambda ax: density_panel(ax, model.log_prob, limit)``). The view is the square
    [-limit, limit]^2, by default just large enough for every frame.

    Returns an ``IPython.display.HTML``: the frames are embedded as small palette PNG images
    with a small JavaScript player (buttons drawn as SVG, a slider), so the animation plays in
    the rendered book without a kernel and without any font of the reader's. Each frame's title
    is laid out inside the frame. The player's element id is random and changes on every run,
    so a notebook cell that shows it needs the tag ``nbval-ignore-output``.
    """
    frames = _as_frames(frames)
    if frames.ndim != 3 or frames.shape[-1] != 2:
        raise ValueError(
            f"frames must have shape (n_frames, n_points, 2), got {tuple(frames.shape)}"
        )
    _check_titles(titles, frames.shape[0])
    interval, size = _check_animation(interval, size)
    point_size = check_number("point_size", point_size, 0, MAX_SIZE**2, low_open=True)
    if background is not None:
        check_callable("background", background, "background(ax)")
    if limit is None:
        limit = 1.05 * float(frames.abs().max()) or 1.0
    limit = check_number("limit", limit, 0, MAX_LIMIT, low_open=True)

    fig, ax = plt.subplots(figsize=(size, size), dpi=ANIMATION_DPI)
    if background is not None:
        background(ax)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    scatter = ax.scatter(frames[0, :, 0], frames[0, :, 1], s=point_size, color=color)
    _layout(fig, ax, titles)

    def update(i):
        scatter.set_offsets(frames[i].numpy())
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
        return (scatter,)

    alt = _describe(f"{frames.shape[1]} points moving in the plane", titles, frames.shape[0])
    return _to_html(fig, update, frames.shape[0], interval, alt)


def animate_images(
    frames,
    titles=None,
    interval: int = 120,
    cmap: str = "gray_r",
    vmin: float = -1.0,
    vmax: float = 1.0,
    size: float = 3.0,
) -> HTML:
    """Animate a sequence of images, e.g. one sample being denoised step by step.

    ``frames`` has shape (n_frames, H, W) for grey images or (n_frames, C, H, W) with C = 1 or
    3 (PyTorch's channel-first layout), with at most ``MAX_FRAMES`` frames. Pixel values are
    drawn on the fixed range [vmin, vmax], as in ``image_grid``, so that noise looks like noise
    in every frame.

    Returns an ``IPython.display.HTML`` that plays without a kernel; as for
    ``animate_points``, its HTML ids change on every run, so the notebook cell that shows it
    needs the tag ``nbval-ignore-output``.
    """
    frames = _as_frames(frames)
    interval, size = _check_animation(interval, size)
    check_increasing("vmin", vmin, "vmax", vmax, minimum=-math.inf)
    if frames.ndim == 4 and frames.shape[1] == 1:
        frames = frames[:, 0]
    if frames.ndim == 4 and frames.shape[1] == 3:
        # Colour: map [vmin, vmax] to [0, 1] and put the channels last for imshow.
        frames = ((frames - vmin) / (vmax - vmin)).clamp(0, 1).permute(0, 2, 3, 1)
        style = {}
    elif frames.ndim == 3:
        style = {"cmap": cmap, "vmin": vmin, "vmax": vmax}
    else:
        raise ValueError(
            "frames must have shape (n_frames, H, W) or (n_frames, C, H, W) with C = 1 or 3,"
            f" got {tuple(frames.shape)}"
        )
    _check_titles(titles, frames.shape[0])

    fig, ax = plt.subplots(figsize=(size, size), dpi=ANIMATION_DPI)
    image = ax.imshow(frames[0].numpy(), interpolation="nearest", **style)
    ax.set_axis_off()
    _layout(fig, ax, titles)

    def update(i):
        image.set_data(frames[i].numpy())
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
        return (image,)

    alt = _describe("an image changing", titles, frames.shape[0])
    return _to_html(fig, update, frames.shape[0], interval, alt)
