"""``seg-perception fuzz`` and ``soak`` against a real seg_node subprocess (loopback DDS)."""

import json
import os
from collections import Counter

import numpy as np
import pytest

from seg_perception.cli import main
from seg_perception.stress import common
from seg_perception.stress.fuzz_messages import KINDS, plan, to_ros

CACHE = ["--engine-cache", os.environ["SEG_TEST_ENGINE_CACHE"]]


# ------------------------------------------------------------------------------- pure parts
def test_plan_is_seeded_and_covers_every_kind():
    a = plan(60, seed=3, max_pixels=16384)
    b = plan(60, seed=3, max_pixels=16384)
    c = plan(60, seed=4, max_pixels=16384)
    assert [m.kind for m in a] == [m.kind for m in b]
    assert all(x.fields == y.fields for x, y in zip(a, b, strict=True))
    assert [m.kind for m in a] != [m.kind for m in c]
    assert set(m.kind for m in a) == set(KINDS)
    assert [m.index for m in a] == list(range(60))
    assert len(plan(5, seed=0, max_pixels=16384)) == 5


def test_planned_messages_fail_offline_for_their_stated_reason():
    """The codec the node uses agrees with every kind: good ones decode to their size, bad ones
    raise ImageDecodeError with the reason the fuzz expects the node to count."""
    from builtin_interfaces.msg import Time

    from seg_perception.codec import ImageDecodeError, check_image_fields, msg_to_rgb8

    max_pixels = 16384
    seen = Counter()
    for m in plan(150, seed=11, max_pixels=max_pixels):
        msg = to_ros(m, stamp=Time(sec=5), frame_id="f")
        try:
            check_image_fields(msg, max_pixels)
            rgb = msg_to_rgb8(msg)
        except ImageDecodeError as exc:
            assert not m.good, (m.kind, str(exc))
            assert exc.reason == m.reason, (m.kind, exc.reason)
        else:
            assert m.good, m.kind
            assert rgb.shape == (*m.size, 3) and rgb.dtype == np.uint8
        seen[m.good] += 1
    assert seen[True] > 20 and seen[False] > 20


def test_common_helpers():
    assert common.nest({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    assert common.read_rss_kib(os.getpid()) > 1000
    assert common.read_rss_kib(2**22 + 12345) is None
    table = common.format_table(("a", "bb"), [(1, "xyz")]).splitlines()
    assert table[0].split() == ["a", "bb"] and table[2].split() == ["1", "xyz"]
    assert common.report_goals(["x failed"], "t") == 1 and common.report_goals([], "t") == 0
    assert common.counter({"frames_received": "7"}, "frames_received") == 7
    assert common.bad_reasons({"bad_frames": "3", "bad_frames.empty": "2"}) == {"empty": 2}


def test_params_file_rejects_unknown_and_invalid_names(tmp_path):
    with pytest.raises(ValueError, match="network_hieght"):
        common.write_params_file(tmp_path / "p.yaml", {"network_hieght": 64})
    with pytest.raises(ValueError, match="overlay_alpha"):
        common.write_params_file(tmp_path / "p.yaml", {"overlay_alpha": 3.0})
    path = common.write_params_file(tmp_path / "p.yaml", common.SMALL_NODE_PARAMS)
    from seg_perception.config import read_params_file

    assert read_params_file(path)["panoptic.enabled"] is False


def test_bad_arguments_are_errors_naming_the_option(capsys):
    assert main(["soak", "--cameras", "0", "--minutes", "0.01"]) == 2
    assert "--cameras" in capsys.readouterr().err
    assert main(["fuzz", "--messages", "5", "--max-pixels", "100"]) == 2
    assert "--max-pixels" in capsys.readouterr().err


# ------------------------------------------------------------------------------- real node
def test_fuzz_100_messages_meets_its_goal(tmp_path):
    out = tmp_path / "fuzz.json"
    rc = main(["fuzz", "--messages", "100", "--seed", "7", "--json", str(out), *CACHE])
    res = json.loads(out.read_text())
    assert rc == 0, (res["failed_goals"], res["problems"], res["crash_details"])
    assert res["crashes"] == 0 and res["tracebacks"] == 0
    assert res["node_exit_code"] == {"raw": 0, "compressed": 0}
    assert res["good_sent"] + res["bad_sent"] == 100 and res["good_sent"] > 10
    assert res["good_answered"] == res["good_sent"]
    assert res["bad_counted"] == res["bad_counted_with_expected_reason"] == res["bad_sent"]
    assert set(res["per_kind"]) == set(KINDS)
    # the node's own counters agree with what was sent to each node
    sent_bad = Counter()
    for kind, v in res["per_kind"].items():
        if not v["good"]:
            sent_bad[v["transport"]] += v["sent"]
            assert v["reasons"] == {v["expected_reason"]: v["sent"]}, kind
    for transport, counters in res["node_counters"].items():
        assert counters["bad_frames"] == sent_bad[transport]
        assert counters["engine_errors"] == 0


def test_soak_two_cameras_answers_each_with_its_own_header(tmp_path):
    out = tmp_path / "soak.json"
    rc = main(
        [
            "soak",
            "--cameras",
            "2",
            "--fps",
            "10",
            "--minutes",
            "0.1",
            "--camera",
            "64x128",
            "--rss-period",
            "2",
            "--json",
            str(out),
            *CACHE,
        ]
    )
    res = json.loads(out.read_text())
    assert rc in (0, 1)  # the timing goals are not asserted
    assert res["crashes"] == 0 and res["node_exit_code"] == 0
    assert set(res["drop_ratio_per_camera"]) == {"cam0", "cam1"}
    for cam, v in res["cameras"].items():
        assert v["answered"] > 0, cam  # answered with its own stamp and frame_id ...
        assert v["foreign_answers"] == 0, cam  # ... and never with another camera's
        assert 0 < v["answered"] <= v["sent"]
        assert v["drop_ratio"] == pytest.approx(1 - v["answered"] / v["sent"], abs=1e-4)
        assert v["node"]["frames_received"] >= v["answered"]
        assert 0 <= v["lost_before_node"] <= v["sent"] - v["answered"]
    assert 0.0 <= res["drop_ratio"] <= 1.0
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    samples = res["rss_samples"]
    assert len(samples) >= 3 and all(s["rss_kib"] > 10_000 for s in samples)
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    base, last = res["rss_baseline"]["rss_kib"], samples[-1]["rss_kib"]
    assert res["rss_growth_ratio"] == pytest.approx((last - base) / base, abs=1e-4)
    assert res["goal_met"] == (rc == 0) == (not res["failed_goals"])
