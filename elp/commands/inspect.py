"""Show what a model package learned: method, learnable tensors per group, layer weights.

Usage::

    elp inspect --package exp/er_l_only/adapters [--plot layer_weights.png]
    elp inspect --check exp/er_l_only/adapters            # integrity and consistency, every problem
    elp inspect --check --write-manifest exp/old_package  # add the manifest an earlier elp did not write

``--check`` verifies the package without loading it (:func:`elp.serve.package.check_package`):
the SHA-256 of every file against ``manifest.json``, links, ``package.json``'s fields and head,
tensor types, the inventory and where the backbone is; it prints one line per problem and
exits 1 when there is any.

Reads only the package files (no backbone is loaded). For L-adapters (``l_only``, ``el``,
``elp``) and ``weighted_sum`` it prints the softmax layer weights (index 0 = the first layer's
output for L-adapters, the CNN/input embedding for weighted_sum) and writes their bar plot
(default ``<package>/layer_weights.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LAYER_WEIGHT_KEYS = {"model.layer_adapters.layer_weights": "L-adapters (layer 1..L outputs)",
                     "model.weighted_sum.layer_weights": "weighted sum (input embedding + layers 1..L)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp inspect`` to ``parser``."""
    parser.add_argument("--package", metavar="DIR", help="model package (or adapter export) directory")
    parser.add_argument("directory", nargs="?", metavar="DIR", help="the package (same as --package)")
    parser.add_argument("--plot", help="PNG for the layer weights (default: <package>/layer_weights.png)")
    parser.add_argument("--check", action="store_true",
                        help="verify the package (file hashes, fields, head, tensors) and report every problem")
    parser.add_argument("--write-manifest", action="store_true",
                        help="with --check: write manifest.json for a package that has none (earlier elp)")


def check(directory: Path, write: bool = False) -> int:
    """Print every problem of a package (one line each); return 0 when there is none, else 1.

    With ``write``, ``manifest.json`` is written first when the package has none.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> directory = make_tiny_package(tempfile.mkdtemp(), task="sv")
    >>> check(directory)  # doctest: +ELLIPSIS
    /...: ok (... files match manifest.json)
    0
    >>> _ = (directory / "package.json").write_text("{")
    >>> check(directory)  # doctest: +ELLIPSIS
    /.../package.json: content differs from manifest.json (SHA-256 ...); the file was changed or damaged after packaging
    /.../package.json: not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2); ...
    1
    """
    from elp.serve.integrity import MANIFEST_FILE, read_manifest, write_manifest
    from elp.serve.package import check_package

    if write and not (directory / MANIFEST_FILE).exists():
        try:
            write_manifest(directory)
        except (OSError, ValueError) as err:
            raise SystemExit(f"elp inspect: {err}")
        print(f"wrote {directory / MANIFEST_FILE}")
    problems = check_package(directory)
    for problem in problems:
        print(problem)
    if not problems:
        manifest, _ = read_manifest(directory)
        print(f"{directory}: ok ({len(manifest['sha256'])} files match {MANIFEST_FILE})")
    return 1 if problems else 0


def group_of(name: str, method: str = "") -> str:
    """Return the learning-rate group of an exported ``AdaptedSSL`` parameter name.

    The group is read from the name only (relative to the ``AdaptedSSL``, without the
    ``model.`` prefix), so that no model needs to be built: ``e``, ``l``, ``p``, ``prefix``,
    ``lora``, ``ln`` or ``backbone``. With ``method="full"`` every backbone tensor is
    ``backbone`` (the whole encoder trains).

    Examples
    --------
    >>> group_of("layer_adapters.layer_weights"), group_of("encoder_adapters.3.up.weight")
    ('l', 'e')
    >>> group_of("backbone.model.encoder.layers.0.layer_norm.weight")
    'ln'
    >>> group_of("backbone.model.encoder.layers.0.attention.q_proj.weight", method="full")
    'backbone'
    """
    top = name.split(".", 1)[0]
    if top == "backbone" and method == "full":
        return "backbone"
    named = {"encoder_adapters": "e", "layer_adapters": "l", "weighted_sum": "l", "prompt": "p", "prefix": "prefix"}
    if top in named:
        return named[top]
    if ".parametrizations." in name and name.rsplit(".", 1)[-1].startswith("lora_"):
        return "lora"
    if ".layers." in name and name.endswith(("layer_norm.weight", "layer_norm.bias")):
        return "ln"
    return "backbone"


def summarize(directory: Path) -> dict:
    """Return method, learnable counts per group and softmax layer weights of a package or adapter export.

    Returns
    -------
    dict
        ``method``, ``backbone``, ``task`` (None for a bare export), ``options``, ``groups``
        (group -> number of learnable values, the head as ``head``), ``layer_weights``
        (description -> softmax weights) and ``task_lines`` (what the package's task says
        about its own entries, e.g. the SV threshold).

    Raises
    ------
    SystemExit
        If the export's config or weights file is missing.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> info = summarize(make_tiny_package(tempfile.mkdtemp(), method="el"))
    >>> info["method"], sorted(info["groups"]), info["task"]
    ('el', ['e', 'head', 'l', 'ln'], 'classify')
    """
    import torch
    from safetensors.torch import load_file

    from elp.core.export import CONFIG_FILE, WEIGHTS_FILE

    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise SystemExit(f"elp inspect: {directory / name} is missing: pass a package directory written by stage 3")
    export = json.loads((directory / CONFIG_FILE).read_text())
    package = json.loads((directory / "package.json").read_text()) if (directory / "package.json").exists() else {}
    state = load_file(directory / WEIGHTS_FILE)
    groups: dict[str, int] = {}
    for key, tensor in state.items():
        group = "head" if key.startswith("head.") else group_of(key[len("model."):], export["method"])
        groups[group] = groups.get(group, 0) + tensor.numel()
    layer_weights = {label: torch.softmax(state[key].double(), 0).tolist()
                     for key, label in LAYER_WEIGHT_KEYS.items() if key in state}
    task_lines = []
    if package:
        from elp.serve.package import PackageError, package_task

        try:
            task_lines = package_task(package, directory).package_summary(package)
        except PackageError as err:
            raise SystemExit(f"elp inspect: {err}")
    return {"method": export["method"], "backbone": export["backbone"], "task": package.get("task"),
            "options": export["options"], "groups": groups, "layer_weights": layer_weights,
            "task_lines": task_lines}


def run(args: argparse.Namespace) -> int:
    """Print the package summary, write the layer-weight plot (see the module docstring), return 0.

    Raises
    ------
    SystemExit
        If the package directory or its files are missing.

    Examples
    --------
    >>> import tempfile
    >>> from elp.cli import main
    >>> from elp.testing import make_tiny_package
    >>> package = make_tiny_package(Path(tempfile.mkdtemp()) / "er_l_only", method="l_only")
    >>> main(["inspect", "--package", str(package), "--plot", str(package / "weights.png")])
    ... # doctest: +ELLIPSIS
    package   .../er_l_only
    task      classify
    method    l_only  on backbone wavlm
    learnable parameters per group:
      head              163
      l               1,683
      total           1,846
    layer weights, L-adapters (layer 1..L outputs):
        1 0.3322 ####################
        2 0.3658 ######################
        3 0.3019 ##################
    wrote .../er_l_only/weights.png
    0
    """
    from elp.eval.plots import plot_layer_weights

    if (args.package is None) == (args.directory is None):
        raise SystemExit("elp inspect: name the package once: --package DIR or DIR")
    directory = Path(args.package or args.directory)
    if args.write_manifest and not args.check:
        raise SystemExit("elp inspect: --write-manifest goes with --check")
    if args.check:
        return check(directory, args.write_manifest)
    if not directory.is_dir():
        raise SystemExit(f"elp inspect: {directory}: no such package directory")
    info = summarize(directory)
    print(f"package   {directory}")
    print(f"task      {info['task'] or '(adapter export without package.json)'}")
    print(f"method    {info['method']}  on backbone {info['backbone']}")
    print("learnable parameters per group:")
    for group, count in sorted(info["groups"].items()):
        print(f"  {group:8s} {count:>12,d}")
    print(f"  {'total':8s} {sum(info['groups'].values()):>12,d}")
    for line in info["task_lines"]:
        print(line)
    if not info["layer_weights"]:
        print("no learned layer weights (the method has no L-adapters or weighted sum)")
        return 0
    for label, weights in info["layer_weights"].items():
        print(f"layer weights, {label}:")
        first = 0 if label.startswith("weighted") else 1
        for index, weight in enumerate(weights, first):
            print(f"  {index:3d} {weight:.4f} {'#' * round(weight * 60)}")
    plot = Path(args.plot) if args.plot else directory / "layer_weights.png"
    name = directory.parent.name if directory.name in ("adapters", "package") else directory.name
    first_layer = 0 if any(key.startswith("weighted") for key in info["layer_weights"]) else 1
    plot_layer_weights(info["layer_weights"], plot, title=f"{name}: {info['method']} layer weights",
                       first_layer=first_layer)
    print(f"wrote {plot}")
    return 0
