"""Shared pytest configuration: the `slow` marker, an offline, TensorFlow-free environment, subprocesses that
import this checkout's packages, and the data fixtures several test files share (the source bank, the tiny
kit's HEAR suite, SUPERB layouts and corpus), each built once per session."""
from __future__ import annotations

import json
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
REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MAMCLAP_DATA", REPO / "data"))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests of about 20 s or more (`make test` runs them, "
                                       "`make test-fast` leaves them out)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MAMCLAP_STRICT_SKIPS=1 (`make test`, so CI) a skipped test fails: a test that skips because
    data or a package is missing would otherwise pass a run that tested nothing."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MAMCLAP_STRICT_SKIPS") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped under MAMCLAP_STRICT_SKIPS=1 (make test must run every test): {report.longrepr}"


# ------------------------------------------------------------------------------ data shared by test files


@pytest.fixture(scope="session")
def bank_dir() -> Path:
    """The source bank ($MAMCLAP_DATA/bank, default <repo>/data/bank; `mamclap data bank` builds it)."""
    bank = DATA / "bank"
    if not (bank / "index.jsonl").is_file():
        pytest.skip(f"no source bank at {bank}: build it with `mamclap data bank`")
    return bank


@pytest.fixture(scope="session")
def bank_records(bank_dir) -> list[dict]:
    """The bank's index.jsonl records (the bank contract's format)."""
    lines = (bank_dir / "index.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session")
def tiny_hear_suite(bank_dir, bank_records, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny mini HEAR suite of seed 0 and its manifest: test_hear_suite checks it, the HEAR harness
    tests embed copies of some of its tasks. Read-only: copy a task before changing it."""
    from training.kit.hear_suite import build_hear_suite

    out = tmp_path_factory.mktemp("hear") / "tasks"
    return out, build_hear_suite(bank_records, out, "tiny", seed=0, bank_dir=bank_dir)


@pytest.fixture(scope="session")
def tiny_superb(bank_dir, bank_records, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny SUPERB layouts of seed 0 (speech_commands/, voxceleb1/) and their manifest. Read-only."""
    from training.kit.superb_layouts import build_superb

    out = tmp_path_factory.mktemp("superb")
    return out, build_superb(bank_records, out, "tiny", seed=0, bank_dir=bank_dir)


@pytest.fixture(scope="session")
def tiny_corpus(bank_dir) -> Path:
    """The tiny kit's pretraining shards in $MAMCLAP_DATA (built once there, then reused across sessions,
    as `mamclap demo` reuses it)."""
    from training.kit.build import build_kit, kit_dir

    build_kit("tiny", seed=0, data_dir=DATA, bank_dir=bank_dir, progress=False)
    shards = kit_dir("tiny", 0, DATA) / "corpus"
    assert any(shards.glob("*.tar")) and (shards / "class_labels_indices.csv").exists()
    return shards
