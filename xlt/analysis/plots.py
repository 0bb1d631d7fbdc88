"""The paper's distance figure: related vs unrelated histograms per model state.

One panel per state, related and unrelated word-pair distances overlaid as
densities (the two populations have different sizes).  All panels of a
figure share their x and y axes and their bins, so that moving mass, not
rescaled axes, is what the eye compares between states; a grid puts
languages in rows and states in columns, like the paper's appendix figure.
Written as PNG (for docs) and PDF (for papers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xlt.evaluation.distances import shared_bins  # noqa: E402

# state name -> (related distances, unrelated distances)
StateDistances = Mapping[str, tuple[np.ndarray, np.ndarray]]
COLORS = {"related": "#1f77b4", "unrelated": "#d62728"}


def plot_grid(
    grid: Mapping[str, StateDistances],
    stem: str | Path,
    labels: Optional[Mapping[str, str]] = None,
    bins: int = 50,
    dpi: int = 120,
) -> list[Path]:
    """Rows = languages (keys of ``grid``), columns = states; writes
    ``<stem>.png`` and ``<stem>.pdf`` and returns their paths."""
    rows = list(grid)
    columns = list(dict.fromkeys(state for lang in rows for state in grid[lang]))
    if not rows or not columns:
        raise ValueError("nothing to plot: no language or no state")
    edges = shared_bins([d for lang in rows for pair in grid[lang].values() for d in pair], bins)
    fig, axes = plt.subplots(
        len(rows), len(columns), sharex=True, sharey=True, squeeze=False,
        figsize=(2.8 * len(columns) + 0.6, 2.3 * len(rows) + 0.6),
    )
    for r, lang in enumerate(rows):
        for c, state in enumerate(columns):
            draw_panel(axes[r][c], grid[lang].get(state), edges)
            if r == 0:
                axes[r][c].set_title((labels or {}).get(state, state), fontsize=10)
            if c == 0:
                axes[r][c].set_ylabel(f"en-{lang}\ndensity" if len(rows) > 1 else "density")
            if r == len(rows) - 1:
                axes[r][c].set_xlabel("L2 distance")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return save(fig, stem, dpi)


def plot_states(distances: StateDistances, stem: str | Path, lang: str = "",
                labels: Optional[Mapping[str, str]] = None, bins: int = 50) -> list[Path]:
    """One row of panels, one per state (the paper's main figure for one language)."""
    return plot_grid({lang: distances}, stem, labels, bins)


def draw_panel(ax, pair: Optional[tuple[np.ndarray, np.ndarray]], edges: np.ndarray) -> None:
    """Overlaid related/unrelated density histograms, or 'missing'."""
    if pair is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    for name, values in zip(("related", "unrelated"), pair):
        if len(values):
            ax.hist(values, bins=edges, density=True, alpha=0.5, color=COLORS[name], label=name)
            ax.axvline(float(np.mean(values)), color=COLORS[name], linewidth=1, linestyle="--")
    ax.tick_params(labelsize=8)


def save(fig, stem: str | Path, dpi: int) -> list[Path]:
    """Write PNG and PDF next to each other and close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths
