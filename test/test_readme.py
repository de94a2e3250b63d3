"""The README stays true: it documents every parameter, command and output topic."""

import re
from pathlib import Path

from seg_perception.cli import COMMANDS
from seg_perception.config import SegConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_parameter_documented():
    missing = [n for n in SegConfig.names() if f"`{n}`" not in README and n not in README]
    assert not missing, f"README lacks parameters: {missing}"


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
