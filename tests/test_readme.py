"""The README's quick commands, extracted from README.md and run as written.

A fenced shell block preceded by ``<!-- quick -->`` is run whole; one preceded by
``<!-- quick: PREFIX, ... -->`` runs only its commands that start with one of the prefixes (the
training blocks: ``multidiff sample``, not the minutes of training before it). Blocks run in
README order in one temporary folder laid out like the repository root (``configs/``,
``examples/`` and ``benchmarks/`` linked in), so a command may use what an earlier one wrote
(the plots use the quick demo's runs). A command naming ``runs/NAME`` whose folder does not exist
yet gets a tiny run of ``configs/NAME.yaml`` first (a few steps of a small model, the README's
own convention: that config's ``out_dir`` is ``runs/NAME``); the command text itself is never
changed. ``multidiff`` commands run in this process (``multidiff`` is ``multidiff.cli:main``),
``python`` ones in a subprocess. Each must exit 0, every file it says it wrote must exist, and
so must its ``--out``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multidiff import cli

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*quick(?::\s*(?P<prefixes>.*?))?\s*-->$")
FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
LINKED = ("configs", "examples", "benchmarks")
# --set overrides that turn a configs/*.yaml run into a tiny one, by modality
TINY = {
    "image": ["model.channels=8"],
    "audio": ["model.channels=4", "model.channel_mult=[1, 2, 2, 2]"],
    "voxel": ["model.channels=4", "model.channel_mult=[1, 2]", "model.attention_levels=[1]"],
}
TINY_TRAIN = ["train.steps=2", "train.batch_size=4", "train.progress=false", "train.sample_every=0"]
TINY_TRAIN += ["train.checkpoint_every=0", "train.device=cpu", "train.threads=1"]


def quick_commands(readme: Path = ROOT / "README.md") -> list[tuple[int, str]]:
    """``(line number, command)`` for every command the markers select, in README order."""
    lines = readme.read_text().splitlines()
    out: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1].strip()):
            raise AssertionError(f"README.md:{i + 1}: a quick marker must stand right above a ```bash block")
        prefixes = [p.strip() for p in (m["prefixes"] or "").split(",") if p.strip()]
        j, start, pending = i + 2, i + 3, ""
        while not lines[j].startswith("```"):
            text = lines[j].rstrip()
            start = start if pending else j + 1
            pending += text[:-1] + " " if text.endswith("\\") else text
            if not text.endswith("\\"):
                cmd = shlex.join(shlex.split(pending, comments=True))  # quoted arguments stay whole
                if cmd and (not prefixes or any(cmd.startswith(p) for p in prefixes)):
                    out.append((start, cmd))
                pending = ""
            j += 1
    return out


def make_tiny_runs(argv: list[str], cwd: Path) -> None:
    """A tiny run of ``configs/NAME.yaml`` for every ``runs/NAME`` argument with no folder yet."""
    for arg in argv:
        m = re.match(r"^runs/([\w.-]+)", arg)
        if not m or (cwd / "runs" / m[1]).exists():
            continue
        config = cwd / "configs" / f"{m[1]}.yaml"
        assert config.is_file(), f"{arg}: no configs/{m[1]}.yaml to make a tiny run from"
        modality = yaml.safe_load(config.read_text())["modality"]
        sets = [x for s in TINY[modality] + TINY_TRAIN for x in ("--set", s)]
        assert cli.main(["train", str(config), "--out-dir", str(cwd / "runs" / m[1]), *sets]) == 0


def said_files(output: str) -> list[tuple[Path, int | None]]:
    """The files a command says it wrote: ``wrote PATH``, ``wrote N KIND files in DIR``, ``open PATH``."""
    found: list[tuple[Path, int | None]] = []
    for line in output.splitlines():
        if m := re.match(r"^wrote (\d+) \w+ files in (.+)$", line):
            found.append((Path(m[2]), int(m[1])))
        elif m := re.match(r"^(?:wrote|open) (\S+)", line):
            found.append((Path(m[1]), None))
    return found


def run(cmd: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = shlex.split(cmd)
    capsys.readouterr()
    if argv[0] == "multidiff":
        try:
            code = cli.main(argv[1:])
        except SystemExit as e:  # argparse refusing the command line
            code = e.code if isinstance(e.code, int) else 2
        out = capsys.readouterr()
        return code, out.out + out.err
    if argv[0] == "python":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True)
        return r.returncode, r.stdout + r.stderr
    raise AssertionError(f"{cmd!r}: a quick block may hold only multidiff and python commands")


def test_the_markers_select_the_quick_commands() -> None:
    cmds = [c for _, c in quick_commands()]
    assert "multidiff demo --quick" in cmds
    assert sum(c.startswith("multidiff plot ") for c in cmds) >= 5
    assert sum(c.startswith("multidiff sample runs/") for c in cmds) >= 3
    assert not [c for c in cmds if c.startswith(("multidiff train", "pip", "torchrun"))]


def test_quick_commands_run_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for line, cmd in quick_commands():
        make_tiny_runs(shlex.split(cmd), tmp_path)
        code, output = run(cmd, tmp_path, capsys)
        where = f"README.md:{line}: {cmd}"
        assert code == 0, f"{where} exited {code}:\n{output[-2000:]}"
        said = said_files(output)
        argv = shlex.split(cmd)
        if "--out" in argv:
            said.append((Path(argv[argv.index("--out") + 1]), None))
        for path, count in said:
            assert (tmp_path / path).exists(), f"{where} said it wrote {path}, which does not exist"
            if count is not None:
                assert len(list((tmp_path / path).iterdir())) >= count, f"{where}: fewer than {count} files in {path}"


def fault_table_tests(readme: Path = ROOT / "README.md") -> list[tuple[str, str, str | None]]:
    """``(fault, test file, test function or None)`` for every test the README's fault table names;
    ``::name`` after a file continues that file, a bare ``::name`` the previous file."""
    text = readme.read_text()
    table = text[text.index("| fault | what happens | test |") :].split("\n\n")[0]
    out: list[tuple[str, str, str | None]] = []
    for row in table.splitlines()[2:]:
        fault, _, tests = [c.strip() for c in row.strip("|").split(" | ")]
        file = None
        for ref in re.findall(r"`([^`]+)`", tests):
            name, _, func = ref.partition("::")
            file = name or file
            assert file, (fault, ref)
            out.append((fault, file, func or None))
    return out


def test_every_test_the_fault_table_names_exists() -> None:
    named = fault_table_tests()
    assert len({fault for fault, _, _ in named}) >= 12  # every row names one
    for fault, file, func in named:
        path = ROOT / "tests" / file
        assert path.is_file(), f"the fault table's row {fault!r} names {file}, which does not exist"
        if func:
            assert re.search(rf"^def {re.escape(func)}\(", path.read_text(), re.M), (
                f"the fault table's row {fault!r} names {file}::{func}, which does not exist"
            )
