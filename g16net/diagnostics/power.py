"""The decomposition of a tensor's power into three non-negative terms (this repository's own, from the law of
total variance; not the Proxy Norm paper's formulas, which are not published).

For y of shape (N, C, H, W), with population variances, mu_c the mean over (n, h, w), mu_nc and sigma2_nc the
mean and variance over (h, w):

    E[y^2] = mean_c(mu_c^2)              channel_mean:     power of the channel-wise constant part (collapse)
           + mean_c(var_n(mu_nc))        instance_mean:    how instance means vary across samples (expressivity)
           + mean_{n,c}(sigma2_nc)       within_instance:  power within each (sample, channel) map

Per channel the identity is E_{n,h,w}[y^2] = mu_c^2 + var_{n,h,w}(y) and var_{n,h,w}(y) = var_n(mu_nc) +
mean_n(sigma2_nc), because every (n, c) map has the same H x W pixels.
"""

import torch

TERMS = ("channel_mean", "instance_mean", "within_instance")


def power_terms(y: torch.Tensor, per_channel: bool = False) -> dict[str, torch.Tensor]:
    """The three terms and their sum `power` = E[y^2], in fp64: scalars, or (C,) tensors with `per_channel`.

    Two fp64-accumulated reductions per (n, c) map, its mean and mean square, give everything (sigma2_nc is their
    difference), so the terms add up to `power` to fp64 rounding and no fp64 copy of y is made."""
    if y.dim() != 4:
        raise ValueError(f"power_terms needs an (N, C, H, W) tensor, got shape {tuple(y.shape)}")
    y = y.detach()
    mu_nc = y.mean((2, 3), dtype=torch.float64)
    sq_nc = y.square().mean((2, 3), dtype=torch.float64)
    mu_c = mu_nc.mean(0)
    terms = {
        "channel_mean": mu_c ** 2,
        "instance_mean": (mu_nc - mu_c).square().mean(0),
        "within_instance": (sq_nc - mu_nc.square()).mean(0),
        "power": sq_nc.mean(0),
    }
    return terms if per_channel else {k: v.mean() for k, v in terms.items()}
