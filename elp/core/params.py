"""Learnable-parameter counts per method and backbone, computed from a config alone.

The backbone is built on PyTorch's ``meta`` device: shapes without memory or weights, so
counting WavLM Large takes well under a second and needs no download.

Examples
--------
>>> count_learnable("wavlm_plus", "el")["total"]
9127436
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from elp.core.backbones import SSLBackbone, backbone_config
from elp.core.methods import METHODS
from elp.core.model import AdaptedSSL


def count_learnable(backbone: str, method: str, config_overrides: dict | None = None,
                    options: Mapping | None = None, **more_options) -> dict:
    """Learnable parameters of ``method`` on ``backbone`` (the task head excluded).

    Built on the meta device: nothing is allocated or downloaded.

    Parameters
    ----------
    backbone
        Short backbone name (:data:`elp.core.backbones.BACKBONES`).
    method
        Method name (:data:`elp.core.methods.METHODS`).
    config_overrides
        Architecture config fields to change (e.g. a tiny test architecture).
    options
        Method options (:func:`elp.core.methods.default_options` for the defaults).
    **more_options
        Method options as keywords (``e_dim``, ``l_dim``, ...), on top of ``options``.

    Returns
    -------
    dict
        ``total`` and ``groups`` (group name -> count).

    Examples
    --------
    >>> from elp.testing import TINY_CONFIG
    >>> counts = count_learnable("wavlm", "weighted_sum", config_overrides=TINY_CONFIG)
    >>> counts["total"] == sum(counts["groups"].values())
    True

    Full-size counts (what ``elp params`` prints) need no download either:

    >>> count_learnable("wavlm_plus", "elp")["total"], count_learnable("wavlm_plus", "lora")["total"]
    (9132556, 294912)
    """
    config = backbone_config(backbone, **(config_overrides or {}))
    with torch.device("meta"):
        model = AdaptedSSL(SSLBackbone.from_config(backbone, config), method, options, **more_options)
    groups: dict[str, int] = {}
    for group, params in model.parameter_groups().items():
        groups[group] = sum(p.numel() for p in params)
    return {"total": sum(groups.values()), "groups": groups}


def parameter_table(backbones: list[str], methods: list[str] | None = None, **options) -> list[dict]:
    """One row (``backbone``, ``method``, ``total``, ``groups``) per backbone and method, backbones outermost.

    ``methods`` None counts every method of :data:`elp.core.methods.METHODS`; ``options`` are
    keyword arguments of :func:`count_learnable`.

    Examples
    --------
    >>> from elp.testing import TINY_CONFIG
    >>> rows = parameter_table(["wavlm"], ["weighted_sum", "p_only"], config_overrides=TINY_CONFIG)
    >>> [(row["method"], row["total"]) for row in rows]
    [('weighted_sum', 4), ('p_only', 320)]
    """
    rows = []
    for backbone in backbones:
        for method in methods or list(METHODS):
            rows.append({"backbone": backbone, "method": method, **count_learnable(backbone, method, **options)})
    return rows
