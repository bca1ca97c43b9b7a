import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FORWARD3D_NO_PROGRESS", "1")  # no progress bars in test logs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("FORWARD3D_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: the tests need ../shared beside the checkout")
    return SHARED


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: for the tiny tensors of unit tests, OpenMP hand-offs
    between threads cost far more than they save (10-100x on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------
# Device / dtype parameterisation (kornia's BaseTester habit): every test that takes ``device`` runs
# on the CPU and, when one is present, on CUDA, so a lent GPU tests the CUDA paths with no new code.
# ``FORWARD3D_TEST_DEVICES=cpu,cuda`` narrows or widens the list.
# --------------------------------------------------------------------------------------------------


def _test_devices() -> list[str]:
    import torch

    wanted = os.environ.get("FORWARD3D_TEST_DEVICES")
    if wanted:
        return [d.strip() for d in wanted.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        marks = [m for m in metafunc.definition.iter_markers("parametrize") if "device" in str(m.args[0])]
        if not marks:
            metafunc.parametrize("device", _test_devices(), scope="function")
    if "float_dtype" in metafunc.fixturenames:
        marks = [m for m in metafunc.definition.iter_markers("parametrize") if "float_dtype" in str(m.args[0])]
        if not marks:
            import torch

            metafunc.parametrize("float_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
