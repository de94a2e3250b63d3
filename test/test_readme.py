"""The README stays true: it documents every parameter, command and output topic."""

import re
from pathlib import Path

from seg_perception.cli import COMMANDS
from seg_perception.config import SegConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _parameter_table() -> list[list[str]]:
    """The README's table of node parameters (headed ``| parameter | default | meaning |``):
    per row, the parameter names of its first cell (one or more, comma separated)."""
    lines = README.splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"\|\s*parameter\s*\|", line)]
    assert len(heads) == 1, f"README needs one table headed '| parameter |', found {len(heads)}"
    head = heads[0]
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[head + 1].strip()), lines[head + 1]
    rows = []
    for line in lines[head + 2 :]:
        if not line.startswith("|"):
            break
        first = re.split(r"(?<!\\)\|", line.strip())[1].strip()
        assert re.fullmatch(r"`[^`]+`(\s*,\s*`[^`]+`)*", first), (
            f"first cell must be the parameter name(s) in backticks: {line}"
        )
        rows.append(re.findall(r"`([^`]+)`", first))
    assert rows, "the README's parameter table has no rows"
    return rows


def test_every_parameter_has_a_row_in_the_parameter_table():
    documented = [name for names in _parameter_table() for name in names]
    missing = [n for n in SegConfig.names() if n not in documented]
    assert not missing, f"README's parameter table lacks rows for: {missing}"
    twice = sorted({n for n in documented if documented.count(n) > 1})
    assert not twice, f"parameters in more than one row: {twice}"


def test_every_row_of_the_parameter_table_names_a_parameter():
    declared = set(SegConfig.names())
    unknown = [n for names in _parameter_table() for n in names if n not in declared]
    assert not unknown, f"README's parameter table names no such parameters: {unknown}"


def test_every_command_documented():
    missing = [c for c in COMMANDS if not re.search(rf"`{c}\b", README)]
    assert not missing, f"README lacks commands: {missing}"


def test_every_output_topic_documented():
    from seg_perception.ros.node import LABELS_TOPIC, OUTPUT_TOPICS, PANOPTIC_TOPICS

    for topic in [*OUTPUT_TOPICS, *PANOPTIC_TOPICS, LABELS_TOPIC]:
        assert f"`{topic}`" in README, topic


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci
