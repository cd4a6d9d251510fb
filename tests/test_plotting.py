"""The animation helpers of diffusion_core.plotting: self-contained HTML, one image per frame."""

import base64
import io
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from IPython.display import HTML
from PIL import Image

from diffusion_core import plotting

# Characters that a browser without an emoji or symbol font shows as empty boxes.
NEEDS_SYMBOL_FONT = re.compile("[\u23e9-\u23fa\u2700-\u27bf\U0001f300-\U0001faff]")


def frames_of(html: HTML) -> list[Image.Image]:
    """The frames that the player's script holds, decoded."""
    match = re.search(r"var frames = (\[.*?\]);", html.data)
    assert match, "no frames in the player's script"
    return [Image.open(io.BytesIO(base64.b64decode(f))) for f in json.loads(match.group(1))]


def embedded_frames(html: HTML) -> int:
    return len(frames_of(html))


def ink(image: Image.Image) -> np.ndarray:
    """Per pixel, whether it is darker than the white background."""
    return np.asarray(image.convert("L")) < 200


def test_animate_points_embeds_one_png_per_frame_and_closes_its_figure():
    frames = torch.randn(5, 30, 2, generator=torch.Generator().manual_seed(0))
    open_before = plt.get_fignums()
    html = plotting.animate_points(frames, titles=[f"t = {t}" for t in range(5)])
    assert isinstance(html, HTML)
    assert embedded_frames(html) == 5
    assert "<script" in html.data  # the player: it plays in the page, no kernel needed
    assert plt.get_fignums() == open_before


def test_animate_points_draws_the_background_once():
    calls = []
    plotting.animate_points(torch.zeros(3, 4, 2), background=calls.append, limit=2.0)
    assert len(calls) == 1


@pytest.mark.parametrize("shape", [(5, 30), (5, 30, 3), (30, 2)])
def test_animate_points_rejects_frames_that_are_not_2d_point_clouds(shape):
    with pytest.raises(ValueError, match="n_frames, n_points, 2"):
        plotting.animate_points(torch.zeros(shape))


def test_animations_reject_too_many_frames_and_mismatched_titles():
    with pytest.raises(ValueError, match="frames"):
        plotting.animate_points(torch.zeros(plotting.MAX_FRAMES + 1, 4, 2))
    with pytest.raises(ValueError, match="one title per frame"):
        plotting.animate_images(torch.zeros(3, 8, 8), titles=["a", "b"])


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 1, 8, 8), (4, 3, 8, 8)])
def test_animate_images_accepts_grey_and_channel_first_images(shape):
    html = plotting.animate_images(torch.rand(shape) * 2 - 1)
    assert embedded_frames(html) == 4


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (4, 8), (4, 8, 8, 3)])
def test_animate_images_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match="n_frames, H, W"):
        plotting.animate_images(torch.zeros(shape))


@pytest.mark.parametrize(
    "make",
    [
        lambda: plotting.animate_points(torch.zeros(3, 4, 2), limit=1.0),
        lambda: plotting.animate_images(torch.zeros(3, 8, 8)),
    ],
)
def test_animations_need_nothing_from_the_internet_nor_any_font(make):
    html = make().data
    assert "http://" not in html and "https://" not in html  # no CDN stylesheet or script
    assert 'class="fa ' not in html  # no icon font
    assert not NEEDS_SYMBOL_FONT.search(html)  # no media-control or emoji glyphs either
    for label in ("First frame", "Previous frame", "Play", "Next frame", "Last frame"):
        assert f'aria-label="{label}"' in html  # each button named for screen readers
    assert html.count("<svg") == 6  # and drawn as SVG (play and pause share a button)


@pytest.mark.parametrize(
    "make",
    [
        lambda titles: plotting.animate_points(torch.zeros(2, 4, 2), titles=titles, limit=1.0),
        lambda titles: plotting.animate_images(-torch.ones(2, 8, 8), titles=titles),  # white
    ],
)
def test_frame_titles_are_drawn_inside_the_frame(make):
    titled = frames_of(make(["t = 975", "t = 0"]))[0]
    plain = frames_of(make(None))[0]
    assert titled.size == plain.size
    titled_ink = ink(titled)
    assert not titled_ink[0].any(), "something is cut off at the top edge of the frame"
    # The title adds ink above the plot, within the frame.
    band = titled_ink.shape[0] // 8
    assert titled_ink[:band].sum() > ink(plain)[:band].sum() + 20


def test_frames_are_small_palette_pngs():
    generator = torch.Generator().manual_seed(0)
    html = plotting.animate_points(torch.randn(4, 200, 2, generator=generator), limit=3.0)
    for frame in frames_of(html):
        assert frame.format == "PNG" and frame.mode == "P"
        assert len(frame.getcolors()) <= plotting.PALETTE_COLORS
    assert len(html.data) < 4 * 20_000  # a 288-pixel scatter frame: well under 20 kB


def test_the_first_frame_is_shown_with_a_description():
    html = plotting.animate_images(torch.zeros(3, 8, 8), titles=["t = 2", "t = 1", "t = 0"]).data
    alt = re.search(r'<img [^>]*alt="([^"]*)"', html).group(1)
    assert alt == "Animation of an image changing over 3 frames, from t = 2 to t = 0"


def test_bad_arguments_are_refused_by_name():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="row_labels must give one label per image"):
        plotting.image_grid(images, row_labels=[])
    with pytest.raises(ValueError, match=r"images must have shape \(rows, cols, H, W\)"):
        plotting.image_grid(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="vmax must exceed vmin"):
        plotting.image_grid(images, vmin=1.0, vmax=-1.0)
    frames = torch.zeros(3, 5, 2)
    with pytest.raises(ValueError, match="interval must be in 1"):
        plotting.animate_points(frames, interval=0)
    with pytest.raises(ValueError, match="point_size must be a finite number"):
        plotting.animate_points(frames, point_size=1e308)
    with pytest.raises(ValueError, match="frames must be finite"):
        plotting.animate_points(torch.full((3, 5, 2), float("nan")))
    with pytest.raises(ValueError, match="size must be a finite number"):
        plotting.animate_images(torch.zeros(3, 4, 4), size=0.0)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="resolution must be in 2"):
        plotting.density_panel(ax, lambda p: torch.zeros(len(p)), 1.0, resolution=10**7)
    with pytest.raises(TypeError, match="log_prob must be callable"):
        plotting.density_panel(ax, None, 1.0)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plotting.density_panel(fig, lambda p: torch.zeros(len(p)), 1.0)
    plt.close(fig)
