"""multidiff: one diffusion math for tensors of any rank.

The core knows no modality. Its pieces, each a module:

* :mod:`multidiff.schedules`: training noise schedules as log-SNR of continuous time;
* :mod:`multidiff.grids`: sampling grids (sigmas ending in 0);
* :mod:`multidiff.parameterization`: eps / x0 / v / score conversions and the scalings table;
* :mod:`multidiff.denoiser`: the contract ``D(x, sigma, **cond) -> x0_hat`` and the network wrapper;
* :mod:`multidiff.losses`: noise-level distributions, weightings, the denoising and hybrid losses;
* :mod:`multidiff.samplers`: every sampler as a plain function, found by name;
* :mod:`multidiff.guidance`: classifier-free and classifier guidance as denoiser transforms;
* :mod:`multidiff.testing`: the exact Gaussian-mixture denoiser for closed-form checks.
* :mod:`multidiff.autoencoder`: the rank-generic KL autoencoder of latent diffusion (``task: autoencoder``);
* :mod:`multidiff.reconstruction`: its reconstruction losses (L1/L2, multi-resolution STFT, the
  error near a surface, hinge GAN) and figures (PSNR, SNR, log-spectral distance).

``import multidiff`` stays light: it imports torch and nothing of torchaudio, torchvision or trimesh.
"""

from . import grids, guidance, losses, parameterization, samplers, schedules, testing
from .denoiser import Denoiser
from .grids import karras_sigmas, logsnr_uniform_sigmas, make_grid, uniform_t_sigmas
from .samplers import NFECounter, available_samplers, get_sampler, sample

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "NFECounter",
    "available_samplers",
    "get_sampler",
    "grids",
    "guidance",
    "karras_sigmas",
    "logsnr_uniform_sigmas",
    "losses",
    "make_grid",
    "parameterization",
    "sample",
    "samplers",
    "schedules",
    "testing",
    "uniform_t_sigmas",
]
