"""Every displayed equation of the book is labelled and checked by running code.

The inventory test reads every page of the table of contents (chapter notebooks and prose pages),
finds each display (``$$ ... $$ (label)``) and fails on a display without a label, and on a label
that no check names. A check names an equation in a comment, ``# eq. (label) ...``, inside a
notebook code cell that asserts something, or in the docstring of a test function under
``tests/`` that begins "eq. (label)" or "eqs. (a), (b) and (c)". The prose pages'
displays (the notation page, the preface) are checked below, each against a computation that
does not go through the library function it describes: a simulated chain, Gaussian conditioning
done by hand, an autograd gradient, a formula written out in float64.

Monte Carlo checks use a fixed seed and a tolerance of k = 4 standard errors
(:func:`diffusion_core.metrics.assert_within`): a correct implementation fails with probability
about 6e-5.
"""

from __future__ import annotations

import ast
import json
import math
import pathlib
import re

import pytest
import torch
import yaml

from diffusion_core import analytic, forward, metrics, parameterization, schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]
DISPLAY = re.compile(r"\$\$(.+?)\$\$[ \t]*(?:\((?P<label>[^)\s]+)\))?", re.S)
MATH_DIRECTIVE = re.compile(r"^(```|:::)\{math\}[^\n]*\n(?P<options>(?::[^\n]*\n)*)", re.M)
ASSERTS = re.compile(r"\bassert\b|assert_within\(|assert_close\(|assert_allclose\(|\.testing\.")


def toc_pages() -> list[pathlib.Path]:
    """The source file of every page listed in ``_toc.yml``, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]]
    for part in toc.get("parts", []):
        names += [chapter["file"] for chapter in part.get("chapters", [])]
    pages = []
    for name in names:
        for suffix in (".ipynb", ".md"):
            if (ROOT / (name + suffix)).exists():
                pages.append(ROOT / (name + suffix))
                break
        else:
            raise AssertionError(f"_toc.yml lists {name}, which has no .ipynb or .md file")
    return pages


def cells(page: pathlib.Path) -> list[tuple[str, str]]:
    """(cell type, source) of a notebook's cells; a markdown page is one markdown cell."""
    if page.suffix == ".md":
        return [("markdown", page.read_text())]
    notebook = json.loads(page.read_text())
    return [(cell["cell_type"], "".join(cell["source"])) for cell in notebook["cells"]]


def displays(page: pathlib.Path) -> list[tuple[str | None, str]]:
    """(label or None, first line of the formula) of every display on a page."""
    found = []
    for kind, source in cells(page):
        if kind != "markdown":
            continue
        for match in DISPLAY.finditer(source):
            found.append((match.group("label"), match.group(1).strip().splitlines()[0][:60]))
        for match in MATH_DIRECTIVE.finditer(source):
            label = re.search(r"^:label:\s*(\S+)", match.group("options"), re.M)
            found.append((label.group(1) if label else None, "{math} directive"))
    return found


def checked_labels() -> set[str]:
    """Labels named in a comment of a notebook code cell that asserts, or in a test module."""
    named = set()
    for page in toc_pages():
        for kind, source in cells(page):
            if kind == "code" and ASSERTS.search(source):
                for line in source.splitlines():
                    if "#" in line:
                        named.update(re.findall(r"\(([a-z0-9][a-z0-9-]*)\)", line.split("#", 1)[1]))
    for module in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                docstring = ast.get_docstring(node) or ""
                if re.search(r"\beqs?\. \(", docstring):
                    named.update(re.findall(r"\(([a-z0-9][a-z0-9-]*)\)", docstring))
    return named


def test_every_display_is_labelled_and_checked():
    checked = checked_labels()
    unlabelled, unchecked, seen = [], [], {}
    for page in toc_pages():
        name = page.relative_to(ROOT)
        for label, formula in displays(page):
            if label is None:
                unlabelled.append(f"{name}: {formula}")
                continue
            assert label not in seen, f"label {label} is used on {seen[label]} and on {name}"
            seen[label] = name
            if label not in checked:
                unchecked.append(f"{name}: ({label}) {formula}")
    assert not unlabelled, "displays without a label:\n" + "\n".join(unlabelled)
    assert not unchecked, "displays that no check names:\n" + "\n".join(unchecked)
    assert len(seen) >= 50, f"found only {len(seen)} labelled displays: is the parser broken?"


def test_inventory_sees_a_missing_check(tmp_path):
    """The inventory's parser finds labels and tells labelled from unlabelled displays."""
    page = tmp_path / "page.md"
    page.write_text("Text\n\n$$\na = b\n$$ (eq-one)\n\nand\n\n$$\nc = d\n$$\n")
    assert displays(page) == [("eq-one", "a = b"), (None, "c = d")]


# ------------------------------------------------------------------ the notation page


def vp_schedule() -> schedules.Schedule:
    return schedules.linear_schedule(T=40, beta_start=1e-3, beta_end=0.2)


def test_vp_step_and_closed_form():
    """eqs. (notation-vp-step) and (notation-closed-form): the one-step chain, simulated for
    all T steps, has the moments the closed form gives, and a unit-variance input keeps unit
    variance through one step."""
    schedule = vp_schedule()
    betas = schedule.betas.double()
    generator = torch.Generator().manual_seed(0)
    n, x0 = 40_000, 1.5
    x = torch.full((n, 1), x0, dtype=torch.float64)
    for t in range(1, schedule.T + 1):
        noise = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        stepped = forward.q_step(schedule, x, t, noise)
        written = (1 - betas[t - 1]).sqrt() * x + betas[t - 1].sqrt() * noise
        torch.testing.assert_close(stepped, written, rtol=1e-15, atol=1e-15)
        x = stepped
    alpha_bar = float(torch.prod(1 - betas))
    mean, se = metrics.mean_and_standard_error(x[:, 0])
    metrics.assert_within(mean, math.sqrt(alpha_bar) * x0, se, what="mean of x_T")
    squares, se2 = metrics.mean_and_standard_error((x[:, 0] - math.sqrt(alpha_bar) * x0) ** 2)
    metrics.assert_within(squares, 1 - alpha_bar, se2, what="variance of x_T")
    unit = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    mean_square, se3 = metrics.mean_and_standard_error(
        forward.q_step(schedule, unit, 7, noise)[:, 0] ** 2
    )
    metrics.assert_within(mean_square, 1.0, se3, what="E[x_t^2] after a step from unit variance")


def test_posterior_by_gaussian_conditioning():
    """eq. (notation-posterior) against the conditional of the joint Gaussian of
    (x_{t-1}, x_t) given x_0, computed from its covariance."""
    schedule = vp_schedule()
    betas = schedule.betas.double()
    alpha_bars = torch.cumprod(1 - betas, 0)
    x0 = torch.tensor([[0.7], [-1.2]], dtype=torch.float64)
    x_t = torch.tensor([[0.3], [2.0]], dtype=torch.float64)
    for t in (2, 17, schedule.T):
        beta, ab, ab_prev = betas[t - 1], alpha_bars[t - 1], alpha_bars[t - 2]
        # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) e1;  x_t = sqrt(1 - beta) x_{t-1} + ...
        var_prev, var_t = 1 - ab_prev, 1 - ab
        covariance = (1 - beta).sqrt() * var_prev
        mean_cond = ab_prev.sqrt() * x0 + covariance / var_t * (x_t - ab.sqrt() * x0)
        var_cond = var_prev - covariance**2 / var_t
        mean, variance = forward.q_posterior(schedule, x0, x_t, t)
        torch.testing.assert_close(mean, mean_cond, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(variance, var_cond, rtol=1e-12, atol=1e-14)
        tilde_mu = (
            ab_prev.sqrt() * beta / (1 - ab) * x0
            + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        )
        torch.testing.assert_close(mean_cond, tilde_mu, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var_cond, (1 - ab_prev) / (1 - ab) * beta, rtol=1e-12, atol=0)


PROCESSES = {
    "linear": vp_schedule(),
    "vp-sde": schedules.VPSDE(),
    "ve-sde": schedules.VESDE(),
    "edm": schedules.EDM(),
    "rectified-flow": schedules.RectifiedFlow(),
}


@pytest.mark.parametrize("name", PROCESSES)
def test_general_form_and_snr(name):
    """eqs. (notation-general-form), (notation-snr-def) and (notation-half-log-snr): on every
    process, x / s = x0 + sigma eps with sigma = std / scale; SNR = 1 / sigma^2; a grid's
    lambda is -2 log sigma, its half log(s / (s sigma))."""
    process = PROCESSES[name]
    grid = process.grid(12)
    for point in grid:
        scale, std = point.scale, point.std
        if scale == 0 or std == 0:
            continue  # the ends of a grid: pure noise (rectified flow) or the clean data
        sigma = std / scale
        assert point.sigma == pytest.approx(sigma, rel=1e-12)
        x0, eps = 0.37, -1.3
        x = scale * x0 + std * eps
        assert x / scale == pytest.approx(x0 + sigma * eps, rel=1e-12, abs=1e-12)
        assert point.log_snr == pytest.approx(math.log(scale**2 / std**2), rel=1e-12, abs=1e-12)
        assert point.log_snr == pytest.approx(-2 * math.log(sigma), rel=1e-12, abs=1e-12)
        assert point.log_snr / 2 == pytest.approx(math.log(scale / std), rel=1e-12, abs=1e-12)
        t = process.time_at(torch.tensor([sigma], dtype=torch.float64))
        back_scale, back_std = process.marginal(t)
        assert float(back_std / back_scale) == pytest.approx(sigma, rel=1e-9)


def test_snr_of_a_vp_schedule():
    """eq. (notation-snr-vp): SNR = abar / (1 - abar) and abar = 1 / (1 + exp(-lambda)), with
    abar the running product of 1 - beta."""
    schedule = vp_schedule()
    alpha_bars = torch.cumprod(1 - schedule.betas.double(), 0)
    snr = alpha_bars / (1 - alpha_bars)
    torch.testing.assert_close(schedule.snr[1:], snr, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.log_snr[1:], snr.log(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        schedules.log_snr_to_alpha_bar(snr.log()),
        1 / (1 + torch.exp(-snr.log())),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(snr / (1 + snr), alpha_bars, rtol=1e-12, atol=0)


def test_conversions_between_predictions():
    """eqs. (notation-x0-from-eps), (notation-v) and (notation-from-v), written out for a VP
    point and applied to an x_t made from known x0 and eps: each recovers them."""
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    for alpha_bar in (0.999, 0.5, 1e-3):
        scale, std = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        sigma = std / scale
        x = scale * x0 + std * eps
        torch.testing.assert_close(x / scale - sigma * eps, x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(parameterization.x0_from_eps(x, eps, scale, std), x0)
        v = math.sqrt(alpha_bar) * eps - math.sqrt(1 - alpha_bar) * x0
        torch.testing.assert_close(parameterization.v_from_eps_x0(eps, x0, scale, std), v)
        x0_back = math.sqrt(alpha_bar) * x - math.sqrt(1 - alpha_bar) * v
        eps_back = math.sqrt(1 - alpha_bar) * x + math.sqrt(alpha_bar) * v
        torch.testing.assert_close(x0_back, x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(eps_back, eps, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(parameterization.x0_from_v(x, v, scale, std), x0)
        torch.testing.assert_close(parameterization.eps_from_v(x, v, scale, std), eps)


def test_tweedie_on_a_mixture():
    """eq. (notation-tweedie): on a Gaussian mixture, the score from autograd of the exact
    log-density gives E[x0 | x_t] and E[eps | x_t] as the mixture's posterior means do (their
    own computation goes through responsibilities, not through the score)."""
    mixture = analytic.default_mixture_2d()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    for scale, std in ((0.9, 0.4), (0.3, 1.1), (1.0, 2.5)):
        y = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(mixture.log_prob(y, scale, std).sum(), y)
        x0_mean = (x + std**2 * score) / scale
        torch.testing.assert_close(mixture.x0_pred(x, scale, std), x0_mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            -std * score, mixture.eps_pred(x, scale, std), rtol=1e-9, atol=1e-9
        )


def test_seed_walk_variance():
    """eq. (preface-seed-walk): x_{t+1} = x_t + sqrt(t) eps_t from t = 0, simulated here step by
    step, has variance T(T - 1)/2 after T steps, as the preface says and the library's
    ``seed_article_variance`` returns."""
    generator = torch.Generator().manual_seed(3)
    n, T = 40_000, 30
    x = torch.zeros(n, dtype=torch.float64)
    for t in range(T):
        x = x + math.sqrt(t) * torch.randn(n, generator=generator, dtype=torch.float64)
    squares, se = metrics.mean_and_standard_error(x**2)
    metrics.assert_within(squares, T * (T - 1) / 2, se, what="variance after T steps")
    assert float(forward.seed_article_variance(T)) == T * (T - 1) / 2
