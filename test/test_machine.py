"""The machine module: detection, the hardware-dependent choices on fake feature sets,
``seg-perception info`` and the machine every benchmark names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg_perception.cli import main
from seg_perception.machine import (
    FEATURES,
    INT8_MODES,
    MachineInfo,
    choose_amp,
    choose_int8_mode,
    cpu_bf16_refusal,
    detect,
    has_bf16,
    has_vnni,
    library_versions,
    machine_header,
    machine_record,
    parse_cpuinfo,
)

#: the kinds of machine seen so far, as feature sets
ZEN3 = frozenset({"avx2", "fma"})  # AVX2-only EPYC: no AVX-512, VNNI or BF16
ZEN4 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"})
SKYLAKE_X = frozenset({"avx2", "fma", "avx512f"})  # AVX-512 without VNNI
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
ALDER_LAKE = frozenset({"avx2", "fma", "avx_vnni"})  # AVX-VNNI without AVX-512


# ------------------------------------------------------------------------------ detection
def test_detect_is_consistent_and_cached() -> None:
    info = detect()
    assert isinstance(info, MachineInfo) and detect() is info
    assert isinstance(info.cpu_model, str) and info.cpu_model
    assert info.features <= set(FEATURES)
    assert 1 <= info.physical_cores <= info.logical_cores
    assert info.usable_cores >= 1
    assert info.torch_dispatch == torch.backends.cpu.get_cpu_capability()
    assert len(info.cuda_devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if info.architecture in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() in (
        "AVX2",
        "AVX512",
    ):
        assert "avx2" in info.features  # ATen dispatches AVX2 kernels only where AVX2 is
    record = json.loads(json.dumps(info.as_dict()))
    assert record["features"] == [f for f in FEATURES if f in info.features]  # display order
    assert record["physical_cores"] == info.physical_cores


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC 7B13\nstepping\t: 0\nflags\t\t: fpu sse2 avx2 fma bmi2\n\n"
        "processor\t: 1\nmodel name\t: something else\nflags\t\t: avx512f\n"
    )
    got = parse_cpuinfo(text)
    assert got["model"] == "AMD EPYC 7B13"
    assert got["id"] == "family 25 model 1 stepping 0"
    assert got["flags"] == {"fpu", "sse2", "avx2", "fma", "bmi2"}
    assert parse_cpuinfo("") == {"model": "", "id": "", "flags": frozenset()}


def test_machine_record_and_header_name_cpu_features_and_versions() -> None:
    info = detect()
    record = json.loads(json.dumps(machine_record()))
    assert record["cpu_model"] == info.cpu_model
    assert record["features"] == info.as_dict()["features"]
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["python"].count(".") == 2
    header = machine_header()
    assert header.splitlines()[0].startswith(f"machine: {info.cpu_model}")
    assert f"{info.physical_cores} physical" in header
    assert all(f in header for f in info.features)
    assert f"torch {torch.__version__}" in header and "onnxruntime " in header
    assert library_versions()["onnxruntime"]  # installed here: its version is named


# ------------------------------------------------------------------------------ choices
def test_feature_predicates() -> None:
    assert not has_bf16(ZEN3) and not has_vnni(ZEN3)
    assert has_bf16(ZEN4) and has_vnni(ZEN4)
    assert has_bf16({"amx_bf16"}) and not has_bf16(SKYLAKE_X) and not has_vnni(SKYLAKE_X)
    assert has_vnni(ALDER_LAKE) and not has_bf16(ALDER_LAKE)


@pytest.mark.parametrize(
    ("setting", "device", "features", "dtype", "warns"),
    [
        ("auto", "cpu", ZEN3, None, False),  # emulated bf16 is ~4x slower: fp32
        ("auto", "cpu", ZEN4, "bf16", False),
        ("auto", "cpu", SAPPHIRE_RAPIDS, "bf16", False),
        ("auto", "cuda", ZEN3, "fp16", False),
        (True, "cpu", ZEN3, "bf16", True),  # asked for: done, with the cost named
        (True, "cpu", ZEN4, "bf16", False),
        (True, "cuda", ZEN4, "fp16", False),
        (False, "cpu", ZEN4, None, False),
        (False, "cuda", ZEN4, None, False),
    ],
)
def test_choose_amp(setting, device, features, dtype, warns) -> None:
    choice = choose_amp(setting, device, features)
    assert choice.value == dtype and choice.reason
    assert bool(choice.warning) == warns
    if warns:
        assert "5.3 s vs 1.2 s" in choice.warning and "auto or false" in choice.warning


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "bf16"])
def test_choose_amp_refuses_other_settings(bad) -> None:
    with pytest.raises(ValueError, match="optim.amp must be auto, true or false"):
        choose_amp(bad, "cpu", ZEN4)


def test_cpu_bf16_refusal() -> None:
    assert cpu_bf16_refusal(ZEN4) is None and cpu_bf16_refusal(SAPPHIRE_RAPIDS) is None
    message = cpu_bf16_refusal(ZEN3, "AMD EPYC 7B13")
    assert message is not None
    assert "AMD EPYC 7B13 lacks" in message and "features: avx2 fma" in message
    assert "use precision fp32" in message and "5.3 s vs 1.2 s" in message


@pytest.mark.parametrize(
    ("features", "arch", "mode"),
    [
        (ZEN3, "x86_64", "u8s8_reduce_range"),  # VPMADDUBSW saturates: 7-bit weights
        (SKYLAKE_X, "x86_64", "u8s8_reduce_range"),  # AVX-512 alone does not help
        (ZEN4, "x86_64", "u8s8"),
        (ALDER_LAKE, "x86_64", "u8s8"),
        (SAPPHIRE_RAPIDS, "x86_64", "u8s8"),
        (frozenset(), "aarch64", "u8s8"),
    ],
)
def test_choose_int8_mode_auto(features, arch, mode) -> None:
    choice = choose_int8_mode("auto", features, arch)
    assert choice.value == mode and choice.reason


def test_choose_int8_mode_explicit_overrides_the_machine() -> None:
    for mode in INT8_MODES:
        assert choose_int8_mode(mode, ZEN4, "x86_64").value == mode
        assert choose_int8_mode(mode, ZEN3, "x86_64").value == mode
    with pytest.raises(ValueError, match="int8 mode 'u8u8'; valid: auto, u8s8"):
        choose_int8_mode("u8u8", ZEN4, "x86_64")


# ------------------------------------------------------------------------------ info
def test_info_json_matches_detect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "info.json"
    assert main(["info", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    info = detect()
    assert report["machine"]["features"] == info.as_dict()["features"]
    assert report["machine"]["cpu_model"] == info.cpu_model
    assert report["versions"]["torch"] == torch.__version__
    # the choices as they fall here, derived from the detected features
    int8 = choose_int8_mode("auto", info.features, info.architecture).value
    assert report["choices"]["int8"]["mode"] == int8
    device = "cuda" if info.cuda_devices else "cpu"
    assert report["choices"]["training_amp"]["dtype"] == (
        choose_amp("auto", device, info.features).value or "fp32"
    )
    policy = "allowed" if has_bf16(info.features) else "refused"
    assert report["choices"]["node_cpu_bf16"]["policy"] == policy
    assert report["ros"]["rmw_implementation"]
    text = capsys.readouterr().out
    assert f"int8 mode:      {int8}" in text and info.cpu_model in text
    assert f"torch:          {torch.__version__}" in text


def test_info_ros_environment_names_rmw_and_dds_profile(tmp_path: Path) -> None:
    from seg_perception.commands.info import ros_environment

    ros = ros_environment({})
    assert ros["rmw_implementation"] == "rmw_fastrtps_cpp" and ros["rmw_source"] == "default"
    assert ros["dds_profile"] and ros["dds_profile"].endswith("fastdds_large_images.xml")
    mine = str(tmp_path / "mine.xml")
    ros = ros_environment({"FASTDDS_DEFAULT_PROFILES_FILE": mine, "ROS_DISTRO": "kilted"})
    assert (
        ros["dds_profile"] == mine and "FASTDDS_DEFAULT_PROFILES_FILE" in ros["dds_profile_reason"]
    )
    assert ros["ros_distro"] == "kilted"
    ros = ros_environment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    assert ros["dds_profile"] is None and ros["rmw_source"] == "RMW_IMPLEMENTATION"
    assert ros_environment({"SEG_PERCEPTION_DDS_PROFILE": "0"})["dds_profile"] is None


# ------------------------------------------------------------------------------ benchmarks
def test_benchmark_tables_name_their_machine(capsys: pytest.CaptureFixture[str]) -> None:
    from seg_perception.commands.bench import NODE_STAGES, print_node_table
    from seg_perception.commands.bench_engines import print_table
    from seg_perception.eval.fusion_bench import print_fusion_table

    record = machine_record()
    stages = dict.fromkeys(NODE_STAGES, 1.0)
    node = {
        "camera_hw": [8, 16],
        "network_hw": [8, 16],
        "frames": 1,
        "median_ms": stages,
        "p95_ms": stages,
        "overhead_ms": 5.0,
        "overhead_ratio": 5.0,
        "machine": record,
    }
    engines = {
        "input_hw": [8, 16],
        "threads": 1,
        "int8_mode": "u8s8",
        "ceiling_gflops": 1.0,
        "rows": [],
        "batch4": {},
        "machine": record,
    }
    fusion = {"size": [8, 16], "frames": 1, "fusion_ms": {}, "machine": record}
    for show, result in ((print_node_table, node), (print_table, engines)):
        show(result)
        out = capsys.readouterr().out
        assert out.startswith(f"machine: {record['cpu_model']}"), out
        assert "versions: python " in out and "features: " in out
    print_fusion_table(fusion)
    assert capsys.readouterr().out.startswith(f"machine: {record['cpu_model']}")
