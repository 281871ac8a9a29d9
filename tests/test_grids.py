"""Sampling grids: shape, order, end in 0, endpoints, spacings, bad input."""

from __future__ import annotations

import pytest
import torch

from multidiff import grids as G
from multidiff import schedules as S
from multidiff.samplers import check_sigmas


@pytest.mark.parametrize("n", [1, 2, 7, 50])
@pytest.mark.parametrize("kind", ["karras", "logsnr"])
def test_grid_shape_and_ends(kind: str, n: int) -> None:
    s = G.make_grid(kind, n, sigma_min=0.01, sigma_max=80.0)
    assert s.shape == (n + 1,)
    assert s[0] == pytest.approx(80.0) and s[-1] == 0
    if n > 1:
        assert s[-2] == pytest.approx(0.01)
    check_sigmas(s)


def test_karras_is_linear_in_sigma_to_the_one_over_rho() -> None:
    s = G.karras_sigmas(10, 0.002, 80.0, rho=7.0)[:-1]
    r = s ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1:] - r[:-1]).mean().expand(9), rtol=1e-10)


def test_logsnr_grid_is_uniform_in_log_sigma() -> None:
    ls = G.logsnr_uniform_sigmas(12, 0.002, 80.0)[:-1].log()
    d = ls[1:] - ls[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-10)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        # Lin et al. 2024, table 2, for 1000 training steps and 10 sampling steps.
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_discrete_spacings_hit_trained_timesteps(spacing: str, expected: list[int]) -> None:
    sch = S.DiscreteSchedule.linear()
    s = G.uniform_t_sigmas(sch, 10, spacing)
    assert s[-1] == 0
    assert torch.equal(s[:-1], sch.sigmas()[torch.tensor(expected)])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_continuous_spacings(spacing: str) -> None:
    sch = S.CosineSchedule()
    s = G.uniform_t_sigmas(sch, 8, spacing)
    check_sigmas(s)
    assert s.shape == (9,)


def test_schedule_range_defaults() -> None:
    sch = S.EDMSchedule()
    s = G.make_grid("karras", 5, schedule=sch)
    assert s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_fewer_than_one_step_is_refused(n) -> None:
    with pytest.raises(ValueError, match="steps"):
        G.karras_sigmas(n, 0.01, 10.0)
    with pytest.raises(ValueError, match="steps"):
        G.uniform_t_sigmas(S.DiscreteSchedule.linear(), n)


def test_bad_range_and_kind() -> None:
    with pytest.raises(ValueError, match="sigma_min"):
        G.karras_sigmas(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="grid must be one of"):
        G.make_grid("cubic", 5, sigma_min=0.1, sigma_max=1.0)
    with pytest.raises(ValueError, match="spacing"):
        G.uniform_t_sigmas(S.DiscreteSchedule.linear(), 5, "middle")
