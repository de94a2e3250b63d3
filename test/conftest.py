"""Shared fixtures: DDS isolated per test session, small deterministic inputs."""

import atexit
import os
import random
import shutil
import tempfile

import numpy as np
import pytest

from seg_perception.ros.dds import large_image_transport

# DDS traffic of the tests stays on this machine and on a domain of its own, so that parallel
# runs (or a demo running beside) never see each other's topics.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.pop("ROS_LOCALHOST_ONLY", None)
large_image_transport(os.environ)  # the transport profile the node and the tools use
if "SEG_TEST_DOMAIN_ID" not in os.environ:
    os.environ["SEG_TEST_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
os.environ["ROS_DOMAIN_ID"] = os.environ["SEG_TEST_DOMAIN_ID"]


def _run_folder(variable: str, prefix: str) -> None:
    """Point ``variable`` at a folder of this test run, removed when the run ends.

    A folder named by the caller's environment is the caller's: it is used and kept. The run's
    own folders (~160 MB of ONNX files) are removed at exit, so that runs never pile up in /tmp
    (CI shares the disk of the machine it runs on).
    """
    if variable in os.environ:
        return
    folder = tempfile.mkdtemp(prefix=prefix)
    os.environ[variable] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


# exported ONNX files of the tests go to a folder of this run, never to ~/.cache
_run_folder("SEG_TEST_ENGINE_CACHE", "seg_test_engines_")
# ... and so do the synthetic frames that datasets cache (seg_perception.data.synth_cache)
_run_folder("SEG_PERCEPTION_SYNTH_CACHE", "seg_test_synth_")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def engine_quiet() -> None:
    """onnxruntime.quantization logs at INFO through the root logger: silenced."""
    import logging

    logging.getLogger("root").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{model: weights file}``: GUN and ShelfNet-18 fitted on small frames (small_engines)."""
    from fitted import fitted_weights
    from small_engines import SWITCHES, H, K, W

    return fitted_weights(tmp_path_factory.mktemp("weights"), SWITCHES, num_classes=K, hw=(H, W))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """An export / engine cache folder shared by one test module."""
    return tmp_path_factory.mktemp("engine_cache")
