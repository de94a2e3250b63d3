"""Untrusted files (issue 8, item 7): no pickle code runs, YAML loads safely, CLI paths are checked.

* weights / checkpoints whose pickle would execute code are refused by every loader that takes
  user files, with an error naming the file, and the code never runs (a marker file stays absent);
* YAML with a ``!!python/...`` tag is refused by the parameter file, label table and recipe
  readers, with an error naming the file;
* every command's path arguments: missing, or the wrong kind, is a one-line error naming the
  argument and the path, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from seg_perception import cli, cli_paths
from seg_perception.cli_paths import PathArgumentError, check_path, path_problem


# ---------------------------------------------------------------------------------- payloads
class _Payload:
    """Unpickling this runs ``exec(code)``: the code creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import builtins

        return (builtins.exec, (self.code,))


def _evil_pt(path: Path, marker: Path, layout: str) -> Path:
    payload = _Payload(marker)
    from seg_perception.train.checkpoint import CHECKPOINT_FORMAT

    content = {
        "bare": payload,
        "state_dict": {"state_dict": {"weight": payload}},
        "checkpoint": {"format": CHECKPOINT_FORMAT, "iteration": 1, "model": payload},
    }[layout]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def test_payload_is_live_when_loaded_without_weights_only(tmp_path: Path) -> None:
    """Control: the payload really runs through plain pickle (so the refusals mean something)."""
    marker = tmp_path / "ran"
    path = _evil_pt(tmp_path / "evil.pt", marker, "bare")
    torch.load(path, weights_only=False)
    assert marker.exists()


LAYOUTS = ("bare", "state_dict", "checkpoint")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.safetensors"])
def test_weight_readers_refuse_pickle_code(tmp_path: Path, layout: str, name: str) -> None:
    from seg_perception.networks.export import load_weights, read_state_dict

    marker = tmp_path / "ran"
    path = _evil_pt(tmp_path / name, marker, layout)
    with pytest.raises(ValueError, match=str(path)):
        read_state_dict(path)
    with pytest.raises(ValueError, match=str(path)):
        load_weights(nn.Linear(2, 2), path)
    assert not marker.exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_loaders_refuse_pickle_code(tmp_path: Path, layout: str) -> None:
    from seg_perception.train.checkpoint import (
        CheckpointError,
        export_weights,
        find_latest_checkpoint,
        load_checkpoint,
    )

    marker = tmp_path / "ran"
    run = tmp_path / "run"
    path = _evil_pt(run / "checkpoints" / "iter_00000001.pt", marker, layout)
    (run / "checkpoints" / "latest").write_text(path.name + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=str(path)):
        export_weights(path, tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match=str(path)):
        assert find_latest_checkpoint(run) is None
    assert not (tmp_path / "w.safetensors").exists()
    assert not marker.exists()


def test_cli_refuses_pickle_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    ckpt = _evil_pt(tmp_path / "evil.pt", marker, "checkpoint")
    rc, err = _cli(
        capsys, "train", "--export-weights", ckpt, tmp_path / "w.safetensors", patch_run=False
    )
    assert rc == 2 and str(ckpt) in err and "Traceback" not in err
    weights = _evil_pt(tmp_path / "evil_w.pt", marker, "state_dict")
    argv = ("export", "--model", "gun", "--weights", weights, "--out", tmp_path / "m.onnx")
    rc, err = _cli(capsys, *argv, patch_run=False)
    assert rc == 2 and str(weights) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "weights_only=False" not in err
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------- YAML
def _tag(marker: Path) -> str:
    return f"!!python/object/apply:os.system [\"touch '{marker}'\"]"


def test_yaml_payload_is_live_with_unsafe_loader(tmp_path: Path) -> None:
    """Control: the tag runs its command under a full (unsafe) loader."""
    marker = tmp_path / "ran"
    yaml.unsafe_load(f"x: {_tag(marker)}\n")
    assert marker.exists()


def _yaml_cases(marker: Path) -> dict[str, str]:
    tag = _tag(marker)
    return {
        "params": f"seg_node:\n  ros__parameters:\n    model: {tag}\n",
        "labels": f"labels:\n  - {tag}\n",
        "recipe": f"model:\n  name: {tag}\n",
        "top": f"{tag}\n",
    }


@pytest.mark.parametrize("case", ["params", "labels", "recipe", "top"])
def test_yaml_readers_refuse_python_tags(tmp_path: Path, case: str) -> None:
    from seg_perception.config import read_params_file
    from seg_perception.labels import load_label_table
    from seg_perception.train.recipe import load_recipe

    marker = tmp_path / "ran"
    path = tmp_path / f"{case}.yaml"
    path.write_text(_yaml_cases(marker)[case], encoding="utf-8")
    for reader in (read_params_file, load_label_table, load_recipe):
        with pytest.raises(ValueError, match=str(path)) as info:
            reader(path)
        assert "python" in str(info.value)  # the message says why: the tag
    assert not marker.exists()


@pytest.mark.parametrize(("command", "case"), [("params", "params"), ("train", "recipe")])
def test_cli_refuses_python_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, case: str
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / f"{case}.yaml"
    path.write_text(_yaml_cases(marker)[case], encoding="utf-8")
    rc, err = _cli(capsys, command, "--config", path, patch_run=False)
    assert rc == 2 and str(path) in err and "Traceback" not in err
    assert not marker.exists()


# ---------------------------------------------------------------------------- path checks
@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a bag\n", encoding="utf-8")
    fake_mcap = tmp_path / "fake.mcap"
    fake_mcap.write_text("not a bag either\n", encoding="utf-8")
    mcap = tmp_path / "real.mcap"
    mcap.write_bytes(b"\x89MCAP0\r\n" + bytes(16))
    folder = tmp_path / "folder"
    folder.mkdir()
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n", encoding="utf-8")
    bad_recipe = tmp_path / "bad_recipe.yaml"  # exists; if a path check were skipped, the
    bad_recipe.write_text("- not a mapping\n", encoding="utf-8")  # run fails on it, never trains
    return {
        "missing": tmp_path / "missing",
        "text": text,
        "fake_mcap": fake_mcap,
        "mcap": mcap,
        "folder": folder,
        "bag": bag,
        "bad_recipe": bad_recipe,
        "under_file": text / "x.onnx",
        "new": tmp_path / "new" / "deeper",
    }


@pytest.mark.parametrize(
    ("kind", "ok", "bad"),
    [
        ("file", ["text", "fake_mcap"], ["missing", "folder"]),
        ("dir", ["folder", "bag"], ["missing", "text"]),
        ("path", ["text", "folder"], ["missing"]),
        ("bag", ["bag", "mcap"], ["missing", "text", "fake_mcap", "folder"]),
        ("output_file", ["new", "text", "missing"], ["folder", "under_file"]),
        ("output_dir", ["new", "folder", "missing"], ["text", "under_file"]),
    ],
)
def test_path_kinds(paths: dict[str, Path], kind: str, ok: list[str], bad: list[str]) -> None:
    for name in ok:
        assert path_problem(str(paths[name]), kind) is None, (kind, name)
    for name in bad:
        problem = path_problem(str(paths[name]), kind)
        assert problem is not None and str(paths[name]) in problem, (kind, name, problem)
        with pytest.raises(PathArgumentError, match="^--thing: "):
            check_path(str(paths[name]), kind, "--thing")


def test_calib_keyword_or_path(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--calib", action=cli_paths.existing_path_or("synthetic"))
    parser.add_argument("--resume", nargs="?", const="", action=cli_paths.ExistingPath)
    assert parser.parse_args(["--calib", "synthetic"]).calib == "synthetic"
    assert parser.parse_args(["--calib", str(paths["folder"])]).calib == str(paths["folder"])
    assert parser.parse_args(["--resume"]).resume == ""  # the const: "the run's out_dir"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--calib", str(paths["missing"])])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"p: error: argument --calib: no such file or folder: {paths['missing']} " + (
        "(nor 'synthetic')\n"
    )


def _cli(
    capsys: pytest.CaptureFixture[str],
    *argv: object,
    patch_run: bool = True,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> tuple[int, str]:
    """Run ``seg-perception argv``; returns (exit status, stderr)."""
    args = [str(a) for a in argv]
    mp = monkeypatch or pytest.MonkeyPatch()
    try:
        if patch_run:  # a check that should stop argparse must never reach the command itself
            module = importlib.import_module(cli.COMMANDS[args[0]][0])

            def refuse(_args: argparse.Namespace) -> int:
                raise AssertionError(f"{args}: the path check let the command run")

            mp.setattr(module, "run", refuse)
        try:
            rc = cli.main(args)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        if monkeypatch is None:
            mp.undo()
    return rc, capsys.readouterr().err


# (argv with {placeholders}, argument named in the error, placeholder of the offending path)
PARSE_CASES = [
    (("eval", "--bag", "{missing}", "--out", "{new}"), "--bag", "missing"),
    (("eval", "--bag", "{text}", "--out", "{new}"), "--bag", "text"),
    (("eval", "--bag", "{fake_mcap}", "--out", "{new}"), "--bag", "fake_mcap"),
    (("eval", "--bag", "{folder}", "--out", "{new}"), "--bag", "folder"),
    (("eval", "--bag", "{bag}", "--out", "{text}"), "--out", "text"),
    (("eval", "--bag", "{bag}", "--out", "{new}", "--config", "{folder}"), "--config", "folder"),
    (
        ("export", "--model", "gun", "--weights", "{missing}", "--out", "{new}"),
        "--weights",
        "missing",
    ),
    (
        ("export", "--model", "gun", "--weights", "{folder}", "--out", "{new}"),
        "--weights",
        "folder",
    ),
    (("export", "--model", "gun", "--random-weights", "--out", "{folder}"), "--out", "folder"),
    (("export", "--model", "gun", "--random-weights", "--out", "{under_file}"), "--out", "text"),
    (("train", "--config", "{missing}"), "--config", "missing"),
    (("train", "--config", "{folder}"), "--config", "folder"),
    (("train", "--config", "{bad_recipe}", "--resume", "{missing}"), "--resume", "missing"),
    (("train", "--config", "{bad_recipe}", "--out", "{text}"), "--out", "text"),
    (("build-engine", "--weights", "{missing}"), "--weights", "missing"),
    (("build-engine", "--weights", "{folder}"), "--weights", "folder"),
    (("build-engine", "--config", "{folder}"), "--config", "folder"),
    (("build-engine", "--calib", "{missing}"), "--calib", "missing"),
    (("build-engine", "--out", "{folder}"), "--out", "folder"),
    (("build-engine", "--engine-cache", "{text}"), "--engine-cache", "text"),
    (("params", "--config", "{missing}"), "--config", "missing"),
    (("demo", "--config", "{missing}"), "--config", "missing"),
    (("demo", "--out", "{text}"), "--out", "text"),
    (("synth", "--frames", "1", "--out", "{text}"), "--out", "text"),
    (("bench", "node", "--json", "{folder}"), "--json", "folder"),
    (("bench", "engines", "--engine-cache", "{text}"), "--engine-cache", "text"),
    (("models", "--json", "{folder}"), "--json", "folder"),
]


def _fill(argv: tuple[str, ...], paths: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]


def _one_error_line(err: str, arg: str, path: Path) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err  # one line: no usage block either
    assert arg in lines[0] and str(path) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "arg", "culprit"), PARSE_CASES, ids=lambda v: str(v))
def test_cli_path_errors(
    paths: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    arg: str,
    culprit: str,
) -> None:
    rc, err = _cli(capsys, *_fill(argv, paths), monkeypatch=monkeypatch)
    assert rc == 2
    _one_error_line(err, arg, paths[culprit])


# checked when the command runs (the kind depends on other arguments, or the module is not ours)
RUN_CASES = [
    (
        ("train", "--export-weights", "{missing}", "{new}.safetensors"),
        "--export-weights",
        "missing",
    ),
    (("train", "--export-weights", "{text}", "{folder}"), "--export-weights", "folder"),
    (("play", "{missing}"), "bag", "missing"),
    (("play", "{text}"), "bag", "text"),
]


@pytest.mark.parametrize(("argv", "arg", "culprit"), RUN_CASES, ids=lambda v: str(v))
def test_cli_path_errors_at_run(
    paths: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    arg: str,
    culprit: str,
) -> None:
    rc, err = _cli(capsys, *_fill(argv, paths), patch_run=False)
    assert rc == 2
    _one_error_line(err, arg, paths[culprit])


def test_valid_paths_reach_the_command(
    paths: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs that do not exist yet, a bag folder, 'synthetic': accepted and passed unchanged."""
    seen: dict[str, argparse.Namespace] = {}

    def record(args: argparse.Namespace) -> int:
        seen[args.command] = args
        return 0

    for name in ("eval", "build-engine"):
        monkeypatch.setattr(importlib.import_module(cli.COMMANDS[name][0]), "run", record)
    assert cli.main(["eval", "--bag", str(paths["bag"]), "--out", str(paths["new"])]) == 0
    assert seen["eval"].bag == str(paths["bag"]) and seen["eval"].out == str(paths["new"])
    argv = ["build-engine", "--model", "gun", "--calib", "synthetic"]
    assert cli.main([*argv, "--out", str(paths["new"] / "e.plan")]) == 0
    assert seen["build-engine"].calib == "synthetic"
    assert not paths["new"].exists()  # checking creates nothing


PATH_DESTS = {"bag", "config", "out", "weights", "resume", "json", "cache", "engine_cache"}


def test_every_path_argument_is_checked() -> None:
    """A path option added to a command without a cli_paths check fails here."""

    def walk(parser: argparse.ArgumentParser, where: str):  # type: ignore[no-untyped-def]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif action.dest in PATH_DESTS:
                yield where, action

    unchecked = []
    for where, action in walk(cli.build_parser(), "seg-perception"):
        if not isinstance(action, cli_paths.PathAction):
            unchecked.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
    assert not unchecked, unchecked


def test_subprocess_missing_bag_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mcap"
    cmd = [sys.executable, "-m", "seg_perception.cli", "eval", "--bag", str(missing)]
    result = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr, "--bag", missing)
    assert line.startswith("seg-perception eval: error:")


def test_expected_failures_are_one_line_and_bugs_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from seg_perception.engines import EngineError
    from seg_perception.eval.live import LiveEvalError

    module = importlib.import_module(cli.COMMANDS["params"][0])
    for expected in (EngineError("engine x: broken"), LiveEvalError("seg_node exited")):
        monkeypatch.setattr(module, "run", lambda _args, e=expected: (_ for _ in ()).throw(e))
        assert cli.main(["params"]) == 2
        err = capsys.readouterr().err
        assert err == f"seg-perception params: error: {expected}\n"
    monkeypatch.setattr(module, "run", lambda _args: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # not swallowed into a one-line message
        cli.main(["params"])
