#!/usr/bin/env python3
"""Run a comparison protocol (protocols/<name>.yaml) step by step; ./run_protocol.sh drives it.

Usage::

    python recipes/protocol.py plan   --protocol protocols/mini.yaml          # the dry run
    python recipes/protocol.py prep   --protocol protocols/mini.yaml          # stages 0-2 of every recipe
    python recipes/protocol.py jobs   --protocol protocols/mini.yaml --phase grid    # job ids still to run
    python recipes/protocol.py run-job --protocol protocols/mini.yaml --job grid:slurp/ic:elp:0:1986:-
    python recipes/protocol.py select --protocol protocols/mini.yaml          # exp/protocols/<name>/selection.json
    python recipes/protocol.py jobs   --protocol protocols/mini.yaml --phase final
    python recipes/protocol.py report --protocol protocols/mini.yaml          # comparison.{md,json,png}

Common options: ``--root DIR`` (where egs/ and exp/ are; default: this repository),
``--data_roots "corpus=DIR ..."`` (the real corpora of a ``data: real`` protocol),
``--recipes "corpus/task ..."`` (a subset of the protocol's recipes), ``--ngpu N``.

The trials, their bookkeeping and the selection are in recipes/protocol_trials.py, the protocol
file in recipes/protocol_spec.py, the table in recipes/protocol_report.py; docs/PROTOCOLS.md
describes the whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from protocol_spec import Protocol, ProtocolError, load_protocol
from protocol_trials import (STATUS_CHANGED, Job, check_recipes, final_jobs, grid_jobs, job_command, mark_prepared,
                             output_dir, pending, plan_text, prep_command, prepared, recipe_dir, run_logged,
                             selected_points, selection, trial_tag)

from elp.runtime import atomic_write_text, configure_logging, run_main

ROOT = Path(__file__).resolve().parents[1]


def parse_data_roots(text: str) -> dict[str, str]:
    """``"corpus=DIR ..."`` -> {corpus: DIR}.

    Examples
    --------
    >>> parse_data_roots("librispeech=/corpora voxceleb=/corpora/vox1")
    {'librispeech': '/corpora', 'voxceleb': '/corpora/vox1'}
    """
    roots = {}
    for pair in text.split():
        if "=" not in pair:
            raise ProtocolError(f"--data_roots: '{pair}' is not corpus=DIR")
        key, directory = pair.split("=", 1)
        roots[key] = directory
    return roots


def load(args) -> Protocol:
    return load_protocol(args.protocol).only(args.recipes.split())


def standin_needed(protocol: Protocol) -> bool:
    """Whether the recipes train on mini mode's stand-in backbone (mini data, no source or arch)."""
    return protocol.mini and not protocol.backbone.get("source") and not protocol.backbone.get("arch")


def command_prep(args, protocol: Protocol) -> int:
    check_recipes(args.root, protocol)
    logs = output_dir(args.root, protocol) / "logs"
    roots = parse_data_roots(args.data_roots)
    for spec in protocol.recipes:
        command = prep_command(args.root, protocol, spec, roots)
        data_dir = recipe_dir(args.root, spec.recipe) / "data"
        if prepared(data_dir, command):
            print(f"prepared already: {spec.recipe} (data/.protocol_prep.json)", file=sys.stderr)
            continue
        log_file = logs / f"{spec.recipe.replace('/', '_')}_prep.log"
        print(f"preparing {spec.recipe} (stages 0-2; log: {log_file})", file=sys.stderr)
        if run_logged(command, log_file) != 0:
            raise ProtocolError(f"data preparation of {spec.recipe} failed: see {log_file}")
        mark_prepared(data_dir, command)
    if standin_needed(protocol):
        standin = Path(os.environ.get("ELP_ROOT", ROOT))
        name = protocol.backbone["name"]
        log_file = logs / "standin_backbone.log"
        print(f"building the stand-in backbone if needed (log: {log_file})", file=sys.stderr)
        if run_logged([str(standin / "tools" / "standin_backbone.sh"), "--backbone", name,
                       "--out", str(standin / "exp" / f"backbone_{name}_small")], log_file) != 0:
            raise ProtocolError(f"building the stand-in backbone failed: see {log_file}")
    return 0


def selection_file(args, protocol: Protocol) -> Path:
    return output_dir(args.root, protocol) / "selection.json"


def command_jobs(args, protocol: Protocol) -> int:
    if args.phase == "grid":
        jobs = grid_jobs(protocol)
    else:
        jobs = final_jobs(protocol, selected_points(selection(args.root, protocol)))
    todo = pending(args.root, protocol, jobs)
    for job, status, changed in todo:
        note = f" (recorded with other hparams: {'; '.join(changed[:4])}; the old run is moved aside)" \
            if status == STATUS_CHANGED else ""
        print(f"{args.phase}: {job.id} is {status}{note}", file=sys.stderr)
        print(job.id)
    print(f"{args.phase}: {len(todo)} of {len(jobs)} job(s) to run, {len(jobs) - len(todo)} done and reused",
          file=sys.stderr)
    return 0


def command_run_job(args, protocol: Protocol) -> int:
    job = Job.parse(args.job)
    port = os.environ.get("ELP_MASTER_PORT")
    command = job_command(args.root, protocol, job, parse_data_roots(args.data_roots), ngpu=args.ngpu,
                          master_port=int(port) if port else None)
    name = f"{job.recipe.replace('/', '_')}_{trial_tag(protocol, job.method, job.point, job.seed)}" \
        + (f"_fold{job.fold}" if job.fold else "")
    log_file = output_dir(args.root, protocol) / "logs" / f"{name}.log"
    status = run_logged(command, log_file)
    print(f"{'done' if status == 0 else 'FAILED'}: {job.id} (log: {log_file})", file=sys.stderr)
    return status


def command_select(args, protocol: Protocol) -> int:
    from protocol_report import trial_summary

    data = selection(args.root, protocol)
    path = selection_file(args, protocol)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    sys.stdout.write(trial_summary(args.root, protocol, data))
    print(f"selection: {path}", file=sys.stderr)
    return 0


def command_report(args, protocol: Protocol) -> int:
    from protocol_report import build_comparison, write_comparison

    unfinished = pending(args.root, protocol, final_jobs(protocol, selected_points(selection(args.root, protocol))))
    if unfinished:
        raise ProtocolError(f"{len(unfinished)} final run(s) not evaluated yet (e.g. {unfinished[0][0].id}): "
                            "run the protocol (./run_protocol.sh) first")
    comparison = build_comparison(args.root, protocol, selection(args.root, protocol))
    paths = write_comparison(output_dir(args.root, protocol), comparison)
    sys.stdout.write(paths[0].read_text(encoding="utf-8"))
    print(f"comparison: {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


def command_plan(args, protocol: Protocol) -> int:
    check_recipes(args.root, protocol)
    sys.stdout.write(plan_text(args.root, protocol, parse_data_roots(args.data_roots)))
    return 0


COMMANDS = {"plan": command_plan, "prep": command_prep, "jobs": command_jobs, "run-job": command_run_job,
            "select": command_select, "report": command_report}


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--protocol", required=True, type=Path, help="protocols/<name>.yaml")
    parser.add_argument("--root", type=Path, default=ROOT, help="where egs/ and exp/ are (default: this repository)")
    parser.add_argument("--data_roots", default="", help="'corpus=DIR ...' for a protocol on real corpora")
    parser.add_argument("--recipes", default="", help="'corpus/task ...': only these recipes of the protocol")
    parser.add_argument("--ngpu", type=int, default=0, help="GPUs per job (0: CPU)")
    parser.add_argument("--phase", choices=["grid", "final"], help="jobs: which phase")
    parser.add_argument("--job", help="run-job: a job id printed by 'jobs'")
    args = parser.parse_args(argv)
    configure_logging("protocol.py")
    args.root = args.root.resolve()
    if args.command == "jobs" and not args.phase:
        parser.error("jobs needs --phase grid|final")
    if args.command == "run-job" and not args.job:
        parser.error("run-job needs --job ID")
    return COMMANDS[args.command](args, load(args))


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
