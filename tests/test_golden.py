"""Behaviour kept through the redesign of the process protocol and the samplers' step rules.

``tests/golden/samplers_and_laws.pt`` holds outputs recorded with the library as it was before
the redesign (every sampler on fixed float64 starts, grids and noise; the stability chapter's
exact affine laws and perturbation gains; an eps network through the wrapper; the exact-flow
reference). The same quantities are computed here with today's API and must agree to float64
round-off: the grids bit for bit, everything else to a relative 1e-12 of the output's scale
(the step arithmetic was regrouped, which moves the last bits and nothing more).
"""

import pathlib

import pytest
import torch

from diffusion_core import samplers, schedules
from diffusion_core import stability as st
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.parameterization import as_denoiser, exact_denoiser

GOLDEN = torch.load(pathlib.Path(__file__).parent / "golden" / "samplers_and_laws.pt")
MIX = default_mixture_2d()


def grids():
    lin = schedules.linear_schedule(1000)
    zero = schedules.rescale_zero_terminal_snr(schedules.cosine_schedule(1000))
    vp, ve = schedules.VPSDE(), schedules.VESDE(0.01, 50.0)
    return {
        "linear_trailing_20": lin.grid(20, "trailing"),
        "linear_leading_7": lin.grid(7, "leading"),
        "zero_snr_cosine_12": zero.grid(12, "trailing"),
        "vpsde_uniform_15": vp.grid(15),
        "vpsde_karras_9": vp.grid(9, "karras"),
        "vesde_karras_10": ve.grid(10, "karras"),
    }


GRIDS = grids()
OPTIONS = {
    "ddim": [({}, ""), ({"eta": 0.5}, "_eta0.5"), ({"eta": 1.0}, "_eta1")],
    "ddpm": [({}, ""), ({"variance": "beta"}, "_beta")],
}


def assert_close(new, old):
    assert new.dtype == old.dtype and new.shape == old.shape
    tolerance = 1e-12 * max(1.0, float(old.abs().max()))
    assert float((new - old).abs().max()) <= tolerance


@pytest.mark.parametrize("name", list(GRIDS))
def test_grids_are_unchanged_bit_for_bit(name):
    grid = GRIDS[name]
    for field in ("t", "scale", "std"):
        assert torch.equal(getattr(grid, field), GOLDEN[f"grid/{name}/{field}"]), field


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
def test_every_sampler_gives_its_recorded_output(grid_name, sampler):
    grid = GRIDS[grid_name]
    if grid.points[0].scale == 0 and sampler in ("euler_maruyama", "predictor_corrector"):
        pytest.skip("reverse-SDE samplers refuse zero terminal SNR")
    x = samplers.prior_sample(grid, (64, 2), torch.Generator().manual_seed(0))
    for options, suffix in OPTIONS.get(sampler, [({}, "")]):
        out = samplers.SAMPLERS[sampler](
            exact_denoiser(MIX), x.clone(), grid, torch.Generator().manual_seed(1), **options
        )
        assert_close(out, GOLDEN[f"sample/{grid_name}/{sampler}{suffix}"])


@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_stability_laws_and_gains_are_unchanged(grid_name):
    grid = GRIDS[grid_name]
    p, q = st.gaussian_denoiser_coefficients(grid, 0.7, 0.5)
    recorded = {key.split("/")[2] for key in GOLDEN if key.startswith(f"law/{grid_name}/")}
    assert recorded and recorded <= set(st.AFFINE_SAMPLERS)
    for name in recorded:
        options = {"eta": 0.5} if name == "ddim" else {}
        affine = st.affine_map(name, grid, p, q, **options)
        mean, var = st.output_law(affine, 0.3, 1.2)
        assert_close(mean, GOLDEN[f"law/{grid_name}/{name}/mean"])
        assert_close(var, GOLDEN[f"law/{grid_name}/{name}/var"])
        assert_close(st.perturbation_gain(affine), GOLDEN[f"law/{grid_name}/{name}/gain"])
        mean, var = st.gaussian_sampler_law(name, grid, 0.7, 0.5, **options)
        assert_close(mean, GOLDEN[f"exactlaw/{grid_name}/{name}/mean"])
        assert_close(var, GOLDEN[f"exactlaw/{grid_name}/{name}/var"])


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_solver_pp_2m", "unipc", "ddim"])
def test_an_eps_network_through_the_wrapper_is_unchanged(name):
    schedule = schedules.linear_schedule(1000)
    grid = GRIDS["linear_trailing_20"]

    def eps_net(x, t):
        return MIX.eps_pred(x, *schedule.marginal(t))

    x = samplers.prior_sample(grid, (64, 2), torch.Generator().manual_seed(0))
    out = samplers.SAMPLERS[name](as_denoiser(eps_net, "eps"), x.clone(), grid)
    assert_close(out, GOLDEN[f"eps_wrapper/{name}"])


def test_the_exact_flow_reference_is_unchanged():
    """Recorded in the variance-exploding view (scale 1, model time sigma); today the same
    path is solved on the EDM process, whose clock is sigma."""
    schedule = schedules.linear_schedule(1000)
    x = samplers.prior_sample(schedule.grid(10), (16, 2), torch.Generator().manual_seed(3))
    scale, std = (float(v) for v in schedule.marginal(500))
    x = x * scale / float(schedule.marginal(1000)[1])
    sigma = std / scale
    out = samplers.flow_endpoint(
        exact_denoiser(MIX), x / scale, schedules.EDM(1e-4, sigma), sigma, steps=200
    )
    assert_close(out, GOLDEN["flow_endpoint"])
