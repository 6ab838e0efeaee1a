"""README.md and docs/ as a user copies them: every example runs, or says why it cannot.

The blocks and their markers: ``tests/docs_blocks.py``. Quick blocks run from the repository
root in the quick loop; blocks marked ``after-recipe DIR`` run in that recipe after a mini-mode
run of it in a copy of the repository (slow); ``not run`` blocks carry their reason. Every file,
module, object and ``elp`` subcommand the docs name in backticks must exist.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from docs_blocks import DOC_FILES, ROOT, Block, all_blocks, blocks

BLOCKS = all_blocks()
VENV_BIN = ROOT / ".venv" / "bin"


def user_env(**extra) -> dict:
    """The environment of a shell in which the README's set-up line ran (the venv on PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, **extra)
    return env


def run_block(block: Block, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + block.code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ids(selected: list[Block]) -> list[str]:
    return [block.where for block in selected]


# ------------------------------------------------------------------------------ the markers
def test_blocks_are_found():
    assert len(BLOCKS) >= 10 and {"sh", "python", "yaml", "text"} <= {b.language for b in BLOCKS}


@pytest.mark.parametrize("block", BLOCKS, ids=ids(BLOCKS))
def test_every_block_is_run_or_says_why(block):
    assert block.mode in ("run", "parse", "text", "after-recipe", "not run"), (
        f"{block.where}: a ```{block.language} block with marker {block.marker!r}: use sh, python, yaml or text, "
        "and mark a block the suite cannot run with <!-- docs-test: not run: REASON -->")
    if block.mode == "not run":
        assert len(block.reason) > 10, f"{block.where}: say why it is not run"
    if block.mode == "after-recipe":
        assert (ROOT / block.recipe / "run.sh").is_file(), f"{block.where}: no recipe {block.recipe}"


def test_marker_parsing(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```sh\necho hi\n```\n<!-- docs-test: not run: needs the real corpus -->\n```sh\nrun\n```\n"
                   "```bash\nx\n```\n")
    found = blocks(doc)
    assert [(b.mode, b.reason) for b in found] == [("run", ""), ("not run", "needs the real corpus"),
                                                   ("unknown language", "")]


# ------------------------------------------------------------------------------ running them
class _AnyTag(yaml.SafeLoader):
    pass


_AnyTag.add_multi_constructor("!", lambda loader, suffix, node: None)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mode == "parse"], ids=ids([b for b in BLOCKS if b.mode == "parse"]))
def test_yaml_blocks_parse(block):
    assert isinstance(yaml.load(block.code, Loader=_AnyTag), dict), block.where


QUICK = [b for b in BLOCKS if b.mode == "run"]


@pytest.mark.parametrize("block", QUICK, ids=ids(QUICK))
def test_quick_blocks_run_as_written(block, tmp_path):
    result = run_block(block, ROOT, user_env(), timeout=300)
    assert result.returncode == 0, f"{block.where} failed:\n{block.code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


AFTER_RECIPE = [b for b in BLOCKS if b.mode == "after-recipe"]


def copy_repository(target: Path) -> Path:
    """The tracked files of the checkout (what a clone holds), with the checkout's .venv."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    return target


@pytest.fixture(scope="module")
def trained_recipes(tmp_path_factory):
    """A copy of the repository in which each recipe the docs name ran stages 0-5 in mini mode,
    with a quickly built stand-in backbone (its build options say so, so a real run never
    reuses it) and one epoch."""
    root = copy_repository(tmp_path_factory.mktemp("clone"))
    env = user_env(ELP_STANDIN_STEPS="30", ELP_STANDIN_CORPORA="1")
    for recipe in sorted({b.recipe for b in AFTER_RECIPE}):
        result = subprocess.run(["./run.sh", "--", "--number_of_epochs", "1"], cwd=root / recipe, env=env,
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, f"{recipe}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return root


@pytest.mark.slow
@pytest.mark.parametrize("block", AFTER_RECIPE, ids=ids(AFTER_RECIPE))
def test_blocks_after_a_recipe_run_run_as_written(block, trained_recipes):
    result = run_block(block, trained_recipes / block.recipe, user_env(), timeout=600)
    assert result.returncode == 0, f"{block.where} failed:\n{block.code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


# ------------------------------------------------------------------------------ names that resolve
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^(?:elp|recipes|tools|egs|docs|tests)/[\w./-]*$|^[\w-]+\.(?:md|sh|py)$")
_DOTTED = re.compile(r"^elp(?:\.\w+)+$")


#: files a run writes (not in a checkout)
_OUTPUTS = ("exp/", "data/", "corpus/", "RESULTS.md")
#: a line naming another toolkit names that toolkit's files
_OTHER_TOOLKITS = re.compile(r"SpeechBrain|ESPnet|s3prl|NeMo|icefall|lhotse|Kaldi's|PEFT")


def named(kind) -> list[tuple[str, str]]:
    found = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if kind is _PATH and _OTHER_TOOLKITS.search(line):
                continue
            for token in _BACKTICKED.findall(line):
                token = token.strip()
                if kind.match(token):
                    found.append((f"{path.relative_to(ROOT)}:{number}", token))
    return found


def resolve_path(token: str) -> bool:
    if "<" in token or "*" in token:  # a pattern: some file must match it
        pattern = re.sub(r"<[^>]+>", "*", token)
        return any(ROOT.glob(pattern))
    if "/" not in token:  # a bare file name: somewhere in the tree
        return any(ROOT.glob(f"**/{token}"))
    return (ROOT / token).exists() or (ROOT / token.rstrip("/")).exists()


def test_named_files_exist():
    missing = [f"{where}: {token}" for where, token in named(_PATH)
               if not token.startswith(_OUTPUTS) and not resolve_path(token)]
    assert missing == []


def resolve_dotted(token: str) -> bool:
    parts = token.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_named_modules_and_objects_import():
    missing = [f"{where}: {token}" for where, token in named(_DOTTED) if not resolve_dotted(token)]
    assert missing == []


def test_named_elp_subcommands_exist():
    from elp.cli import COMMANDS

    commands = [line for b in BLOCKS if b.language == "sh" for line in b.code.splitlines()]
    commands += [token for path in DOC_FILES for token in _BACKTICKED.findall(path.read_text(encoding="utf-8"))
                 if " --" in token]  # `elp infer --package ...`, not a method name such as `elp full`
    used = {m.group(1) for line in commands for m in re.finditer(r"^\s*(?:[A-Z_]+=\S*\s+)*elp ([a-z][\w-]*)", line)}
    assert used, "the docs name no elp subcommand"
    assert sorted(used - set(COMMANDS)) == []


def test_name_check_fails_on_a_missing_name():
    assert not resolve_dotted("elp.core.model.NoSuchThing") and resolve_dotted("elp.core.model.AdaptedSSL")
    assert not resolve_path("recipes/no_such_script.py") and resolve_path("recipes/run_task.sh")


def test_every_run_option_is_documented_with_the_recipes():
    from elp.train.recipe import RUN_DEFAULTS

    text = (ROOT / "docs" / "RECIPES.md").read_text(encoding="utf-8")
    assert [key for key in RUN_DEFAULTS if f"`{key}`" not in text] == []


def test_elp_help_describes_the_tool_in_a_whole_sentence(capsys):
    from elp.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    description = " ".join(out.split("\n\n")[1].split())
    assert description.endswith(".") and "``" not in description, description
    assert "elp <command> --help" in out
