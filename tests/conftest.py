"""Shared pytest configuration: the `slow` marker, an offline, TensorFlow-free environment, and subprocesses
that import this checkout's packages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The same settings launchers take from training.compat.runtime_env(), kept literal here so collecting
# the tests imports nothing heavy: no test may reach a model hub, and transformers must not import TensorFlow.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_TF": "0", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# The harnesses' subprocesses (heareval, s3prl, the demo's stages) import hear_mamclap, training and
# superb_upstream as installed, whatever their working directory. The tests test this checkout, which may
# not be the one installed (a second worktree beside an editable install), so put it first on their path.
CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([CHECKOUT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p != CHECKOUT)])


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests of a minute or more (CI runs them too)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MAMCLAP_STRICT_SKIPS=1 (`make test`, so CI) a skipped test fails: a test that skips because
    data or a package is missing would otherwise pass a run that tested nothing."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MAMCLAP_STRICT_SKIPS") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped under MAMCLAP_STRICT_SKIPS=1 (make test must run every test): {report.longrepr}"
