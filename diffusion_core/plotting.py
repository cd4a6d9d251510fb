"""The book's figure helpers: one look for every chapter.

A leaf module (it imports matplotlib, which only the book needs); nothing in the library
imports it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

BOOK_STYLE = {
    "figure.figsize": (7.0, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


def use_book_style() -> None:
    """Apply the book's matplotlib settings (figure size, resolution, grid, frameless legends)."""
    plt.rcParams.update(BOOK_STYLE)


def image_grid(images, row_labels=None, col_labels=None, cmap="gray_r", vmin=-1.0, vmax=1.0):
    """Show a (rows, cols, H, W) stack of grey images as a grid; returns the figure.

    Pixel values are drawn on the fixed range [vmin, vmax] so that noise looks like noise at
    every time, rather than being rescaled per image.
    """
    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4:
        raise ValueError(f"images must have shape (rows, cols, H, W), got {tuple(images.shape)}")
    rows, cols = images.shape[:2]
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
    axis = torch.linspace(-limit, limit, resolution, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    density = log_prob(points).exp().reshape(resolution, resolution)
    ax.contourf(grid_x.numpy(), grid_y.numpy(), density.numpy(), levels=levels, cmap="Blues")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    return ax
