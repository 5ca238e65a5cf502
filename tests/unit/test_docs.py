"""The docs tell the truth about the repository: every command they show runs, every ``--conf`` key exists,
every relative link and anchor resolves, every repository path they name is there.

Documents: README.md, docs/**/*.md and results/**/*.md. Commands are the shell lines of fenced code blocks
(```bash, ```sh, ```console or unlabelled) and the inline code spans that start with ``scripts/``,
``./scripts/`` or ``samlabel-``. Each program must exist (``scripts/<name>`` executable; ``samlabel-<name>`` is
the entry point of ``scripts/<name with underscores>``) and, except ``serve`` and ``test`` (the e2e tests and
CI run those), answer ``--help`` with exit 0 and list every option the docs give it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "results").rglob("*.md"))]
APP_YAML = ROOT / "lib" / "samlabel" / "configs" / "app.yaml"
SHELL_LANGUAGES = {"", "bash", "sh", "console", "shell"}
# ./scripts/serve and ./scripts/test: the e2e tests and CI run them; scripts/build_ohif: a node build, which CI runs
NOT_RUN_HERE = {"serve", "test", "_env.sh", "build_ohif"}
# --conf keys that MONAI Label itself reads from a MONAILabelApp's conf (monailabel 0.8.5,
# monailabel/interfaces/app.py: MONAILabelApp.__init__); samlabel leaves unknown keys to MONAI Label
MONAI_LABEL_CONF = {"server_mode"}
PROGRAM = re.compile(r"^(?:\./)?scripts/[\w.-]+$|^samlabel-[a-z][a-z-]*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_markdown(text: str) -> tuple[list[tuple[str, list[str]]], str]:
    """The fenced blocks as (language, dedented lines) and the prose outside them, in one string."""
    blocks, prose, current, fence = [], [], None, None
    for line in text.splitlines():
        match = FENCE.match(line)
        if current is None and match:
            fence, indent = match.group(2), len(match.group(1))
            current = (match.group(3).lower(), [])
        elif current is not None and line.strip().startswith(fence) and not line.strip().lstrip(fence[0]):
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line[indent:] if line[:indent].isspace() else line.lstrip())
        else:
            prose.append(line)
    assert current is None, "an unclosed code fence"
    return blocks, "\n".join(prose)


def shell_lines(lines: list[str]) -> list[str]:
    """Command lines of a shell block: continuations joined, console prompts dropped."""
    joined, pending = [], ""
    for line in lines:
        line = line.rstrip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [line.strip() for line in joined if line.strip()]


def command_words(line: str) -> list[str] | None:
    """The words of a command that runs a program of this repository, from the program on; else None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words if words and PROGRAM.match(words[0]) else None


def inline_code(prose: str) -> list[str]:
    return [span.strip() for span in re.findall(r"`([^`]+)`", re.sub(r"\s*\n\s*", " ", prose))]


def script_of(program: str) -> Path:
    if program.startswith("samlabel-"):
        return ROOT / "scripts" / program.removeprefix("samlabel-").replace("-", "_")
    return ROOT / program.removeprefix("./")


@cache
def documents() -> dict[Path, tuple[list, str]]:
    return {path: split_markdown(path.read_text()) for path in DOCUMENTS}


@cache
def commands() -> list[tuple[str, list[str]]]:
    """(document, words) of every command the docs show."""
    found = []
    for path, (blocks, prose) in documents().items():
        where = str(path.relative_to(ROOT))
        for language, lines in blocks:
            if language in SHELL_LANGUAGES:
                found += [(where, w) for line in shell_lines(lines) if (w := command_words(line))]
        found += [(where, w) for span in inline_code(prose) if (w := command_words(span))]
    return found


def programs() -> list[str]:
    names = {words[0].removeprefix("./") for _, words in commands()}
    return sorted(name for name in names if script_of(name).name not in NOT_RUN_HERE)


def test_the_collector_reads_commands_as_a_reader_would():
    text = """
```console
$ SAMLABEL_PORT=8001 ./scripts/serve --conf model medsam   # a comment
```

   ```bash
   scripts/evaluate --server http://127.0.0.1:8000 \\
       --model sam_2d    # indented, continued
   python -c 'print(1)'
   ```

```text
scripts/    not a command
```
and `scripts/train --studies DIR` inline, `scripts/<name>` a placeholder.
"""
    blocks, prose = split_markdown(text)
    shell = [
        w
        for lang, lines in blocks
        if lang in SHELL_LANGUAGES
        for line in shell_lines(lines)
        if (w := command_words(line))
    ]
    assert shell == [
        ["./scripts/serve", "--conf", "model", "medsam"],
        ["scripts/evaluate", "--server", "http://127.0.0.1:8000", "--model", "sam_2d"],
    ]
    spans = [w for s in inline_code(prose) if (w := command_words(s))]
    assert spans == [["scripts/train", "--studies", "DIR"]]


def test_the_docs_show_the_two_commands_and_tools():
    shown = {words[0] for _, words in commands()}
    assert {"./scripts/serve", "./scripts/test"} <= shown, "the README's quick start was not found"
    assert len(programs()) >= 5, f"only {programs()} found: is the collector broken?"


def test_every_program_in_the_docs_exists():
    missing = sorted({f"{w[0]} ({where})" for where, w in commands() if not os.access(script_of(w[0]), os.X_OK)})
    assert not missing, f"not an executable scripts/<name>: {missing}"


def test_no_doc_runs_a_script_through_python():
    """``scripts/<name>`` sets up the venv itself; ``python scripts/x`` would skip that (and x is no longer Python)."""
    stale = [
        f"{path.relative_to(ROOT)}: {line}"
        for path, (blocks, prose) in documents().items()
        for line in [line for lang, lines in blocks if lang in SHELL_LANGUAGES for line in shell_lines(lines)]
        + inline_code(prose)
        if re.search(r"\bpython3?\s+(\./)?scripts/", line)
    ]
    assert not stale, stale


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_help(program: str) -> str:
    """``program --help``, in this process: the wrapper ``scripts/<name>`` must exec the entry point
    ``samlabel-<name>``, which must be on the venv's PATH and name ``samlabel.tools.commands.<name>:main``;
    that ``main`` then runs with ``--help``. (One wrapper is run for real by
    :func:`test_a_wrapper_runs_its_command_from_the_callers_directory`.) Returns the help text."""
    name = script_of(program).name
    entry_point = "samlabel-" + name.replace("_", "-")
    wrapper = ROOT / "scripts" / name
    assert os.access(wrapper, os.X_OK) and f"exec {entry_point} " in wrapper.read_text(), f"{wrapper} is not a wrapper"
    target = PYPROJECT["project"]["scripts"].get(entry_point)
    assert target == f"samlabel.tools.commands.{name}:main", f"pyproject.toml: {entry_point} = {target}"
    assert shutil.which(entry_point, path=str(Path(sys.executable).parent)), f"{entry_point} is not installed"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as done:
        importlib.import_module(f"samlabel.tools.commands.{name}").main(["--help"])
    assert done.value.code in (0, None), f"{program} --help exited {done.value.code}:\n{out.getvalue()}"
    return out.getvalue()


def test_a_wrapper_runs_its_command_from_the_callers_directory(tmp_path):
    """A wrapper for real, run from outside the repository: it prepares the venv and runs its entry point."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "evaluate"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and "--server" in done.stdout, done.stderr


def help_text(program: str) -> str:
    return run_help(program)


@pytest.mark.parametrize("program", programs())
def test_program_answers_help_and_knows_the_options_the_docs_give_it(program):
    known = set(re.findall(r"--[a-z][\w-]*", help_text(program)))
    given = {
        (re.match(r"--[a-z][\w-]*", word.strip("[](),;")).group(), where)
        for where, words in commands()
        if words[0].removeprefix("./") == program
        for word in words[1:]
        if re.match(r"--[a-z][\w-]*", word.strip("[](),;"))
    }
    unknown = sorted(f"{option} ({where})" for option, where in given if option not in known)
    assert not unknown, f"{program} --help does not list {unknown}"


def test_repository_paths_given_to_commands_exist():
    missing = sorted(
        {
            f"{word} ({where})"
            for where, words in commands()
            for word in words[1:]
            if word.startswith(("tests/", "lib/", "apps/samlabel/main.py")) and not (ROOT / word).exists()
        }
    )
    assert not missing, missing


def test_every_path_named_in_inline_code_exists():
    """After a layout change, a stale ``configs/...`` or ``tests/test_x.py`` in the prose misleads a reader."""
    missing = sorted(
        {
            f"{span} ({path.relative_to(ROOT)})"
            for path, (_, prose) in documents().items()
            for span in inline_code(prose)
            if re.fullmatch(r"(lib|tests|scripts|docs|results|configs|\.ci)/[\w./-]*", span)
            and not re.search(r"\b[A-Z]{2,}\b", span)  # NAME, DIR: placeholders
            and not (ROOT / span).exists()
        }
    )
    assert not missing, missing


@cache
def app_yaml() -> dict:
    return yaml.safe_load(APP_YAML.read_text())


def conf_keys() -> list[tuple[str, str]]:
    """(key, document) of every ``--conf KEY`` and every key of a ``--server-conf KEY VALUE ...`` list."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text().replace("`", " ")
        where = str(path.relative_to(ROOT))
        found += [(key, where) for key in re.findall(r"(?<![\w-])--conf\s+([A-Za-z_][\w.]*)", text)]
        for pairs in re.findall(r"--server-conf((?:[ \t]+(?!--)\S+)+)", text):  # KEY VALUE pairs to its line's end
            words = pairs.split()
            found += [(key, where) for key in words[0 : len(words) - len(words) % 2 : 2]]
    return [(key, where) for key, where in found if not key.split(".")[-1].isupper()]  # KEY, train.KEY: placeholders


def test_conf_keys_in_the_docs_exist():
    keys = conf_keys()
    assert len(keys) >= 10, f"only {keys}: is the pattern broken?"
    top, train = set(app_yaml()) - {"train"}, set(app_yaml()["train"])
    unknown = sorted(
        f"{key} ({where})"
        for key, where in keys
        if key not in top | MONAI_LABEL_CONF and not (key.startswith("train.") and key.removeprefix("train.") in train)
    )
    assert not unknown, f"not a key of {APP_YAML.relative_to(ROOT)} (a typo is silently left to MONAI Label): {unknown}"


def test_configuration_page_lists_every_key_of_app_yaml():
    _, prose = documents()[ROOT / "docs" / "configuration.md"]
    tables = [block.strip() for block in prose.split("\n\n")]
    rows = [re.findall(r"^\| `([\w.]+)` \|", table, re.M) for table in tables if table.startswith("| key |")]
    assert len(rows) == 2, "docs/configuration.md should hold the app.yaml table and the train table"
    assert set(rows[0]) == set(app_yaml()) - {"train"}, "the --conf table and app.yaml differ"
    assert set(rows[1]) == set(app_yaml()["train"]), "the train table and app.yaml's train section differ"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"<[^>]+>|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", documents()[path][1], re.M):
        base = slug(heading)
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def test_relative_links_and_anchors_resolve():
    broken, checked = [], 0
    for path, (_, prose) in documents().items():
        without_code = re.sub(r"`[^`]*`", "", prose)
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            checked += 1
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and resolved in documents() and anchor not in anchors(resolved):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert checked >= 20, f"only {checked} links found: is the pattern broken?"
    assert not broken, "\n".join(broken)
