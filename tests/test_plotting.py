"""The animation helpers of diffusion_core.plotting: self-contained HTML, one image per frame."""

import matplotlib.pyplot as plt
import pytest
import torch
from IPython.display import HTML

from diffusion_core import plotting

EMBEDDED_FRAME = "data:image/png;base64,"


def embedded_frames(html: HTML) -> int:
    return html.data.count(EMBEDDED_FRAME)


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
def test_animations_need_nothing_from_the_internet(make):
    html = make().data
    assert "http://" not in html and "https://" not in html  # no CDN stylesheet or script
    assert 'class="fa ' not in html  # every icon became a glyph: no icon font needed
    assert "\u25b6" in html and "\u23f8" in html  # play and pause buttons still labelled


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
