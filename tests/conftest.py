"""Shared pytest configuration: the `slow` marker, an offline, TensorFlow-free environment, subprocesses that
import this checkout's packages, and the data fixtures several test files share (the source bank, the tiny
kit's HEAR suite, SUPERB layouts and corpus), each built once per session."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
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


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves os.environ as it found it. A test that applies a compatibility fix in this process
    (prepare_s3prl sets TORCH_FORCE_WEIGHTS_ONLY_LOAD) would otherwise hand it to the fresh interpreters of
    the tests that run after it in the same process, whose order depends on how pytest-xdist deals them."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


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


def _run_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the parent of the workers' own base folders);
    without xdist, the session's base folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _exclusive(lock: Path):
    """Hold an exclusive lock on the file `lock`: two workers that need the same shared data build it once,
    the second waits and then reads what the first built."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_once(tmp_path_factory, name: str, build) -> tuple[Path, dict]:
    """build(folder) -> manifest, run once per test run whatever the number of workers: the first worker
    builds <run dir>/<name>/ and writes its manifest beside it; the others read that manifest."""
    shared = _run_dir(tmp_path_factory)
    folder, done = shared / name, shared / f"{name}.manifest.json"
    with _exclusive(shared / f"{name}.lock"):
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(build(folder)))
    return folder, json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_hear_suite(bank_dir, bank_records, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny mini HEAR suite of seed 0 and its manifest: test_hear_suite checks it, the HEAR harness
    tests embed copies of some of its tasks. Read-only: copy a task before changing it."""
    from training.kit.hear_suite import build_hear_suite

    folder, manifest = _build_once(tmp_path_factory, "hear", lambda out: build_hear_suite(
        bank_records, out / "tasks", "tiny", seed=0, bank_dir=bank_dir))
    return folder / "tasks", manifest


@pytest.fixture(scope="session")
def tiny_superb(bank_dir, bank_records, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny SUPERB layouts of seed 0 (speech_commands/, voxceleb1/) and their manifest. Read-only."""
    from training.kit.superb_layouts import build_superb

    return _build_once(tmp_path_factory, "superb", lambda out: build_superb(
        bank_records, out, "tiny", seed=0, bank_dir=bank_dir))


@pytest.fixture(scope="session")
def tiny_corpus(bank_dir, tmp_path_factory) -> Path:
    """The tiny kit's pretraining shards in $MAMCLAP_DATA (built once there, then reused across sessions,
    as `mamclap demo` reuses it). build_kit runs once per test run, under a lock in the data folder, so
    two workers (or two test runs) never write the kit at once."""
    from training.kit.build import build_kit, kit_dir

    kit = kit_dir("tiny", 0, DATA)
    checked = _run_dir(tmp_path_factory) / "kit-tiny-s0.checked"
    with _exclusive(DATA / ".kit-tiny-s0.lock"):
        if not checked.is_file():
            build_kit("tiny", seed=0, data_dir=DATA, bank_dir=bank_dir, progress=False)
            checked.write_text(str(kit))
    shards = kit / "corpus"
    assert any(shards.glob("*.tar")) and (shards / "class_labels_indices.csv").exists()
    return shards
