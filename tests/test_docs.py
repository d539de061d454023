"""The documentation stands on its own and stays true to the code.

README.md and the pages of the site in docs/ (mkdocs.yml) are all a user of the repository
has: they must not send anyone to a file outside it, and they must name only what exists.
Checked here: no pointer out of the repository; every relative link resolves inside it; the
site builds with `mkdocs build --strict` (a broken link or a page left out of it fails); the
README links every page; every command their shell blocks show is one the `esper` CLI, the
Makefile or the repository's scripts accept, and every `esper` flag they name exists; every
module, class, function, attribute, file and path docs/architecture.md writes as code exists;
and the import rules of its layer table are the ones the code keeps. (The Grower example of
docs/library.md runs as written in tests/test_grower.py.)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from esper.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "esper"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))  # the site's pages (mkdocs.yml)
DOCUMENTS = [ROOT / "README.md", *PAGES]

# Folders of the repository a document may name by path.
REPO_FOLDERS = ("src/", "tests/", "docs/", "benchmarks/", "examples/", "scripts/")
# Top-level packages whose dotted names are resolved by importing them.
IMPORTABLE = ("esper", "torch")


def _without_fences(text: str) -> str:
    """The text with its fenced blocks left out (diagrams and shell examples are not names)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def _code_spans(text: str) -> list[str]:
    """Inline code, its whitespace (a span may wrap onto the next line) made single spaces."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _without_fences(text))]


@cache
def _names_in_code() -> frozenset[str]:
    """Every name src/esper defines or spells (modules, classes, functions, arguments, assigned
    names and attributes, imports, and string constants: file names, JSON keys), and the
    functions and classes of tests/ (the helpers and tests a document points to)."""
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = (
            node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        )
        names.update(node.name for node in defined)
    for path in SRC.rglob("*.py"):
        names.update(path.relative_to(SRC).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            match node:
                case ast.FunctionDef(name=name) | ast.AsyncFunctionDef(name=name):
                    names.add(name)
                case ast.ClassDef(name=name) | ast.arg(arg=name) | ast.keyword(arg=str() as name):
                    names.add(name)
                case ast.Name(id=name, ctx=ast.Store()):
                    names.add(name)
                case ast.Attribute(attr=name, ctx=ast.Store()):
                    names.add(name)
                case ast.alias(name=name, asname=asname):
                    names.update([asname or name.rsplit(".", 1)[-1]])
                case ast.Constant(value=str() as value):
                    names.add(value)
    return frozenset(names)


def _resolves(dotted: str) -> bool:
    """Whether `dotted` (e.g. esper.tolaria.engine.EpochLoop) is a module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _unknown(words: list[str]) -> str | None:
    unknown = [word for word in words if word not in _names_in_code()]
    return None if not unknown else f"{', '.join(unknown)} not found in src/esper"


def _missing_file(name: str) -> str | None:
    """A file a run writes (config.json, policy.pt): its name is spelled in the code."""
    if re.search(r"[A-Z]{3,}", name):  # a placeholder such as epoch_NNNN.pt
        return None
    return None if name in _names_in_code() else "no file of that name is written by the code"


def _missing(span: str) -> str | None:
    """Why the code span `span` of docs/architecture.md names nothing real (None if it does)."""
    span = span.removeprefix("@")
    if span.startswith(REPO_FOLDERS):
        return None if (ROOT / span.rstrip("/")).exists() else "no such path in the repository"
    if span.startswith(("esper ", "--")):  # a command line: its subcommands and flags
        words = span.removeprefix("esper ").split()
        return _unknown([word for word in words if re.fullmatch(r"[a-z]+|--[\w-]+", word)])
    if re.fullmatch(r"\w+\.py", span):
        return None if any(SRC.rglob(span)) else "no such module file under src/esper"
    if re.fullmatch(r"[\w/-]*[\w-]+\.(json|jsonl|pt|html|png)", span):
        return _missing_file(span.rsplit("/", 1)[-1])
    if re.fullmatch(r"[a-z_]+/", span):  # a folder of a run folder (checkpoints/)
        return _unknown([span.rstrip("/")])
    if re.fullmatch(r"[a-z]+(-[a-z]+)+", span):  # a hyphenated value (a compare arm)
        return _unknown([span])
    # A name, possibly called (`force_alpha(0.0)`) or with a return type (`f(x) -> T`).
    name = re.fullmatch(r"([A-Za-z_][\w.]*)(\(.*\))?(\s*->.*)?", span)
    if name is None:
        return None  # flags, JSON fragments, prose in backticks: not a name
    dotted = name.group(1).rstrip(".")
    if dotted.split(".")[0] in IMPORTABLE:
        return None if _resolves(dotted) else "does not import"
    return _unknown(dotted.split("."))


def test_no_document_points_outside_the_repository() -> None:
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for pointer in ("../shared", "DESIGN.md"):
            assert pointer not in text, f"{path.name} points outside the repository: {pointer}"


def test_every_relative_link_resolves_inside_the_repository() -> None:
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor
            resolved = (path.parent / target.split("#")[0]).resolve()
            inside = resolved.is_relative_to(ROOT) and resolved.exists()
            assert inside, f"{path.name}: broken link {target}"


def test_the_readme_links_the_architecture_document() -> None:
    assert "](docs/architecture.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_links_every_page_of_the_site() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [page.name for page in PAGES if page.name != "index.md" and f"](docs/{page.name})" not in readme]
    assert not unlinked, f"README.md does not link these pages of docs/: {unlinked}"


# ------------------------------------------------------------------ the site
def _build_site(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    # Not --quiet: it hides the warnings that --strict counts, and the build would pass.
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's banner about MkDocs 2
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    built = _build_site(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stderr}"
    assert (tmp_path / "site" / "index.html").exists()


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "faults.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    built = _build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0 and "no-such-page.md" in built.stderr


# ------------------------------------------------------------------ the commands shown
def _shell_commands(text: str) -> list[str]:
    """The command lines of the text's bash blocks, continued lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    lines = (line for block in blocks for line in block.replace("\\\n", " ").splitlines())
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@cache
def _make_targets() -> frozenset[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))


def _parsers() -> list[argparse.ArgumentParser]:
    """The `esper` CLI's parser and its commands' parsers, none taking a flag abbreviated (a
    document spells each flag out: `--epoch` is no name for `--epochs`)."""
    found, pending = [], [build_parser()]
    while pending:
        parser = pending.pop()
        parser.allow_abbrev = False
        found.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return found


def _cli_refusal(args: list[str]) -> str | None:
    """What the `esper` CLI says when it refuses `args` (None if it parses them)."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            _parsers()[0].parse_args(args)
    except SystemExit as stop:
        return said.getvalue().strip().splitlines()[-1] if stop.code else None
    return None


def _command_problem(line: str) -> str | None:
    """Why a command line a document shows would not run as shown (None if it would).
    Checked: `esper` (however launched) parses it, `make` has the targets, a script exists.
    Shell variables stand for a number (`--seed $S`); other shell lines are not checked."""
    words = shlex.split(re.sub(r"\$\w+", "1", line), comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # PYENV_VERSION=3.13.0 make test
    if not words:
        return None
    program = words[0]
    if program.rsplit("/", 1)[-1] == "esper":
        return _cli_refusal(words[1:])
    if "esper" in words and words[words.index("esper") - 1] == "-m":  # torchrun / python -m esper
        return _cli_refusal(words[words.index("esper") + 1 :])
    if program == "make":
        unknown = [word for word in words[1:] if "=" not in word and word not in _make_targets()]
        return f"no make target {unknown}" if unknown else None
    scripts = [word for word in words[:2] if word.startswith(REPO_FOLDERS) or word.endswith(".py")]
    missing = [script for script in scripts if not (ROOT / script).exists()]
    return f"no such script {missing}" if missing else None


def test_every_command_the_documents_show_runs_as_shown() -> None:
    commands = [(path, line) for path in DOCUMENTS for line in _shell_commands(path.read_text(encoding="utf-8"))]
    assert len(commands) > 40, "the documents should show their commands in bash blocks"
    wrong = {f"{path.name}: {line}": why for path, line in commands if (why := _command_problem(line))}
    assert not wrong, f"commands that would not run as shown: {wrong}"


@pytest.mark.parametrize(
    ("line", "runs"),
    [
        (".venv/bin/esper train heuristic --task digits --epochs 40 --baseline", True),
        (".venv/bin/esper train heuristic --task digits --epoch 40 --baseline", False),
        (".venv/bin/esper train ppo --task digits --seed $S --rounds 2", True),
        (".venv/bin/esper train ppo --task digits --rounds two", False),
        (".venv/bin/esper evalute --policy heuristic", False),
        (".venv/bin/torchrun --standalone --nproc-per-node 2 -m esper train ppo --envs 8 --run-dir r", True),
        (".venv/bin/torchrun --standalone --nproc-per-node 2 -m esper train ppo --env 8 --run-dir r", False),
        ("PYENV_VERSION=3.13.0 make test PYTHON=python3.13", True),
        ("make tests", False),
        ("scripts/gpu_check.sh", True),
        (".venv/bin/python scripts/results_tables.py", False),
    ],
)
def test_the_command_check_tells_working_commands_from_broken_ones(line: str, runs: bool) -> None:
    assert (_command_problem(line) is None) == runs


@cache
def _cli_words() -> frozenset[str]:
    """Every command, mode and flag of the `esper` CLI."""
    words: set[str] = set()
    for parser in _parsers():
        for action in parser._actions:
            words.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                words.update(action.choices)
    return frozenset(words)


def _unknown_cli_words(span: str) -> list[str]:
    """The commands and flags of an inline `esper ...` span that the CLI does not have."""
    words = span.removeprefix("esper ").split()
    return [word for word in words if re.fullmatch(r"[a-z]+|--[\w-]+", word) and word not in _cli_words()]


def test_every_esper_command_and_flag_the_documents_name_exists() -> None:
    spans = [(path, span) for path in DOCUMENTS for span in _code_spans(path.read_text(encoding="utf-8"))]
    commands = [(path, span) for path, span in spans if span.startswith("esper ")]
    assert len(commands) > 40
    unknown = {f"{path.name}: {span}": words for path, span in commands if (words := _unknown_cli_words(span))}
    assert not unknown, f"esper commands or flags the CLI does not have: {unknown}"


def test_every_name_in_the_architecture_document_exists() -> None:
    spans = _code_spans(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(spans) > 100, "docs/architecture.md should name the code it describes"
    missing = {span: why for span in spans if (why := _missing(span)) is not None}
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


@pytest.mark.parametrize(
    ("span", "real"),
    [
        ("esper.tolaria.engine.EpochLoop", True),
        ("esper.tolaria.engine.EpochLooop", False),
        ("src/esper/tolaria/governor.py", True),
        ("src/esper/tolaria/gouvernor.py", False),
        ("SeedSlot.force_alpha", True),
        ("SeedSlot.force_alfa", False),
        ("run_epochs(loop, controller)", True),
        ("run_epoch_loop(loop)", False),
        ("summary.json", True),
        ("sumary.json", False),
        ("esper train heuristic --resume DIR", True),
        ("esper train heuristic --restart DIR", False),
        ("static-final-matched", True),
        ("static-final-unmatched", False),
    ],
)
def test_the_name_check_tells_real_names_from_invented_ones(span: str, real: bool) -> None:
    assert (_missing(span) is None) == real


# ------------------------------------------------------------------ the layer table
def _layer_table() -> dict[str, set[str]]:
    """docs/architecture.md's layer table: package -> the packages it may import."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `esper\.(\w+)` \|.*\| ([^|]+) \|$", text, re.MULTILINE)
    return {package: set(re.findall(r"`(\w+)`", allowed)) for package, allowed in rows}


def _layers() -> dict[str, list[Path]]:
    """Each package under src/esper, and each top-level module but the package root and
    `python -m esper`, with its source files."""
    packages = [path for path in SRC.iterdir() if (path / "__init__.py").exists()]
    modules = [path for path in SRC.glob("*.py") if path.stem not in ("__init__", "__main__")]
    return {path.name: sorted(path.rglob("*.py")) for path in packages} | {
        path.stem: [path] for path in modules
    }


def _imported_layers(files: list[Path], layers: set[str]) -> set[str]:
    """The Esper layers `files` import, lazily (inside functions) or not."""
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            found |= {
                module.split(".")[1]
                for module in modules
                if module.startswith("esper.") and module.split(".")[1] in layers
            }
    return found


def test_the_layer_table_lists_every_package() -> None:
    assert set(_layer_table()) == set(_layers())


def test_every_package_imports_only_what_the_layer_table_allows() -> None:
    table, layers = _layer_table(), _layers()
    for package, files in layers.items():
        imported = _imported_layers(files, set(layers)) - {package}
        allowed = table[package]
        assert imported <= allowed, (
            f"esper.{package} imports {sorted(imported - allowed)}, which the layer table of "
            f"docs/architecture.md does not allow (allowed: {sorted(allowed) or 'nothing'})"
        )
