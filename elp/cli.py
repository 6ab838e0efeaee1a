"""The elp command line: parameter counts, benchmarks, inference with model packages, data dirs.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args)``;
this file only dispatches.

Usage::

    elp params --backbone wavlm_plus
    elp infer --package exp/mini_elp/adapters a.wav b.wav
    elp params --backbone wavlm_plus wav2vec2 hubert --methods el elp --prompt-frames 20
    elp data perturb-speed data/train data/train_sp --factors 0.9 1.0 1.1
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> module implementing it
COMMANDS = {
    "params": "elp.commands.params",
    "bench": "elp.commands.bench",
    "infer": "elp.commands.infer",
    "verify": "elp.commands.verify",
    "inspect": "elp.commands.inspect",
    "bench-multitask": "elp.commands.bench_multitask",
    "data": "elp.commands.data",
    "cache": "elp.commands.cache",
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    Subcommands whose module cannot be imported (an optional part not installed) are left
    out of the parser.

    Parameters
    ----------
    argv
        Arguments after the program name; None reads ``sys.argv[1:]``.

    Raises
    ------
    SystemExit
        On bad arguments (from argparse) or a user error the subcommand reports.

    Examples
    --------
    >>> main(["params", "--backbone", "wavlm", "--methods", "lora", "elp"])
    | backbone | method | learnable | lora | ln | e | l | p |
    |---|---|---|---|---|---|---|---|
    | wavlm | lora | 294,912 | 294,912 |  |  |  |  |
    | wavlm | elp | 9,132,556 |  | 36,864 | 4,353,536 | 4,737,036 | 5,120 |
    0
    """
    parser = argparse.ArgumentParser(prog="elp", description=__doc__.split("\n")[0],
                                     epilog="elp <command> --help describes a command.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        modules[name] = module
        sub = subparsers.add_parser(name, help=module.__doc__.split("\n")[0],
                                    description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return modules[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
