"""`mamclap demo`: stage stamps, skipping, redoing what depends on a redone stage, continuing an interrupted
stage, clear failures; and the whole pipeline end to end in its tiniest configuration.

The runner's tests use stages that are small real Python commands (each appends its name to a file, so the
test counts what ran). The end-to-end test needs the source bank (`mamclap data bank`; $MAMCLAP_DATA/bank).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.demo import DemoConfig, Stage, StageFailed, plan, run_stages
from training.eval.results import load_results

REPO = Path(__file__).resolve().parents[1]
BANK = Path(os.environ.get("MAMCLAP_DATA", REPO / "data")) / "bank"

# Appends its name (and --resume when given) to ran.txt, then writes its output file.
SCRIPT = ("import sys, pathlib; name, ran, out = sys.argv[1:4]; "
          "open(ran, 'a').write(name + (' --resume' if '--resume' in sys.argv else '') + '\\n'); "
          "pathlib.Path(out).write_text(name)")


def stage(tmp: Path, name: str, deps: tuple[str, ...] = (), tag: str = "", **kw) -> Stage:
    out = tmp / "out" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return Stage(name, f"make {name}", ("-c", SCRIPT, name, str(tmp / "ran.txt"), str(out), tag), deps=deps,
                 outputs=(out,), **kw)


def ran(tmp: Path) -> list[str]:
    path = tmp / "ran.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def chain(tmp: Path, tag_a: str = "") -> list[Stage]:
    """a -> b -> c, and d on its own."""
    return [stage(tmp, "a", tag=tag_a), stage(tmp, "b", ("a",)), stage(tmp, "c", ("b",)), stage(tmp, "d")]


def test_second_run_skips_and_a_removed_stamp_redoes_that_stage_and_its_dependents(tmp_path):
    work = tmp_path / "work"
    console = io.StringIO()
    report = run_stages(chain(tmp_path), work, console)
    assert ran(tmp_path) == ["a", "b", "c", "d"] and {r["status"] for r in report} == {"ran"}
    assert "[1/4] make a ... running" in console.getvalue() and "[4/4] make d: done in" in console.getvalue()
    stamp = json.loads((work / "stamps" / "b.json").read_text())
    assert stamp["settings"]["inputs"] == {"a": json.loads((work / "stamps" / "a.json").read_text())["run_id"]}
    assert not list((work / "stamps").glob("*.attempt.json"))

    console = io.StringIO()
    report = run_stages(chain(tmp_path), work, console)
    assert ran(tmp_path) == [] and [r["status"] for r in report] == ["skipped"] * 4
    assert console.getvalue().count("skipped: done") == 4

    (work / "stamps" / "b.json").unlink()
    run_stages(chain(tmp_path), work, io.StringIO())
    assert ran(tmp_path) == ["b", "c"]

    # A changed setting redoes the stage and what reads from it; a lost output redoes its stage.
    run_stages(chain(tmp_path, tag_a="changed"), work, io.StringIO())
    assert ran(tmp_path) == ["a", "b", "c"]
    (tmp_path / "out" / "d.txt").unlink()
    run_stages(chain(tmp_path, tag_a="changed"), work, io.StringIO())
    assert ran(tmp_path) == ["d"]


def test_a_changed_fingerprint_redoes_the_stage(tmp_path):
    identity = {"value": "one"}
    stages = lambda: [stage(tmp_path, "a", fingerprint=lambda: identity["value"]), stage(tmp_path, "b", ("a",))]
    run_stages(stages(), tmp_path / "work", io.StringIO())
    run_stages(stages(), tmp_path / "work", io.StringIO())
    assert ran(tmp_path) == ["a", "b"]
    identity["value"] = "two"  # the kit was rebuilt with other contents
    run_stages(stages(), tmp_path / "work", io.StringIO())
    assert ran(tmp_path) == ["a", "b"]


def test_a_failing_stage_stops_the_run_naming_itself_and_its_log(tmp_path):
    work = tmp_path / "work"
    bad = Stage("bad", "train the thing", ("-c", "print('loss went to nan'); raise SystemExit(3)"), deps=("a",))
    with pytest.raises(StageFailed) as err:
        run_stages([stage(tmp_path, "a"), bad, stage(tmp_path, "c", ("bad",))], work, io.StringIO())
    message = str(err.value)
    assert "[2/3] 'train the thing' failed (exit status 3)" in message
    assert str(work / "logs" / "bad.log") in message and "loss went to nan" in message
    assert ran(tmp_path) == ["a"]
    assert (work / "stamps" / "a.json").exists() and not (work / "stamps" / "bad.json").exists()

    silent = Stage("silent", "forget the output", ("-c", "pass"), outputs=(tmp_path / "never.txt",))
    with pytest.raises(StageFailed, match=r"exited 0 but did not write .*never\.txt"):
        run_stages([silent], work, io.StringIO())


def test_an_interrupted_stage_is_continued_with_the_same_settings_and_restarted_with_others(tmp_path):
    """A stage killed mid-way keeps its folder and gets its resume arguments on the next run; had its settings
    changed meanwhile, its folder is emptied and it starts over."""
    work, folder = tmp_path / "work", tmp_path / "run"
    script = ("import os, sys, pathlib; folder = pathlib.Path(sys.argv[1]); folder.mkdir(exist_ok=True); "
              "open(sys.argv[2], 'a').write(' '.join(sys.argv[3:]) + '\\n'); "
              "done = '--resume' in sys.argv and (folder / 'checkpoint').exists(); "
              "(folder / 'checkpoint').write_text('half'); "
              "(folder / 'final').write_text('all') if done else os.kill(os.getpid(), 9)")

    def train(setting: str) -> Stage:
        return Stage("train", "train", ("-c", script, str(folder), str(tmp_path / "ran.txt"), setting),
                     outputs=(folder / "final",), folder=folder,
                     resume=lambda: ("--resume",) if (folder / "checkpoint").exists() else None)

    with pytest.raises(StageFailed, match="was killed by SIGKILL"):
        run_stages([train("x")], work, io.StringIO())
    assert (work / "stamps" / "train.attempt.json").exists() and (folder / "checkpoint").exists()
    console = io.StringIO()
    run_stages([train("x")], work, console)
    assert ran(tmp_path) == ["x", "x --resume"] and (folder / "final").read_text() == "all"
    assert "continuing the interrupted run" in console.getvalue()
    commands = [line for line in (work / "logs" / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and commands[1].endswith("x --resume")  # the continued run appends to the log

    (work / "stamps" / "train.json").unlink()  # redo on purpose: starts over, emptied folder, no --resume
    with pytest.raises(StageFailed):
        run_stages([train("x")], work, io.StringIO())
    assert not (folder / "final").exists()
    (folder / "stale").write_text("")
    with pytest.raises(StageFailed):
        run_stages([train("y")], work, io.StringIO())
    assert ran(tmp_path) == ["x", "y"] and not (folder / "stale").exists()


def test_a_second_demo_in_the_same_work_dir_is_refused(tmp_path):
    import fcntl

    work = tmp_path / "work"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StageFailed, match="another `mamclap demo` is running"):
            run_stages([stage(tmp_path, "a")], work, io.StringIO())


def test_plan_wires_the_pipeline(tmp_path):
    stages = {s.name: s for s in plan(DemoConfig(work=tmp_path))}
    assert list(stages) == [
        "data", "captions", "teacher", "pretrain-mam", "pretrain-mam_clap", "pretrain-supmam",
        "pretrain-supmam_clap", "hear-mam", "hear-mam-clap", "hear-supmam", "hear-supmam-clap", "hear-logmel",
        "superb-mam", "superb-mam-clap", "superb-supmam", "superb-supmam-clap", "tables"]
    assert stages["pretrain-mam_clap"].deps == ("data", "teacher") and stages["pretrain-mam"].deps == ("data",)
    assert "--teacher" in stages["pretrain-supmam_clap"].args and "--teacher" not in stages["pretrain-supmam"].args
    assert set(stages["tables"].deps) == {n for n in stages if n.split("-")[0] in ("pretrain", "hear", "superb")}
    assert "--grid" in stages["hear-mam"].args and "--tasks" not in stages["hear-mam"].args
    # Pretraining continues with --resume only when its run left a checkpoint.
    resume = stages["pretrain-mam"].resume
    assert resume() is None
    (tmp_path / "pretrain" / "mam").mkdir(parents=True)
    (tmp_path / "pretrain" / "mam" / "checkpoint.pt").write_bytes(b"")
    assert resume() == ("--resume",)
    # Without a CLAP variant there is no teacher to train.
    names = [s.name for s in plan(DemoConfig(work=tmp_path, variants=("mam",), baseline=False, superb_tasks=()))]
    assert names == ["data", "pretrain-mam", "hear-mam", "tables"]


def test_a_release_is_scored_on_a_quick_hear_task_per_group_beside_log_mel(tmp_path):
    from hear_mamclap.checkpoint import export_encoder
    from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
    from training.demo import RELEASE_HEAR_TASKS

    release = export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path / "models" / "rel",
                             dtype=torch.bfloat16)
    stages = {s.name: s for s in plan(DemoConfig(work=tmp_path / "work", variants=("mam",), superb_tasks=(),
                                                 release=release))}
    assert list(stages) == ["data", "pretrain-mam", "hear-mam", "hear-rel", "hear-random_init", "hear-logmel",
                            "tables"]
    scored = stages["hear-rel"].args
    assert scored[scored.index("--module") + 1] == "hear_mamclap" and str(release) in scored
    # beside it, its architecture with random weights on the same tasks (the module takes the release's config)
    rand = stages["hear-random_init"].args
    assert rand[rand.index("--module") + 1:rand.index("--module") + 4] == (
        "hear_mamclap.baselines.random_init", "--model", str(release))
    assert rand[rand.index("--tasks") + 1:][:len(RELEASE_HEAR_TASKS)] == RELEASE_HEAR_TASKS
    assert stages["hear-random_init"].fingerprint is not None and "hear-random_init" in stages["tables"].deps
    # The release (a ViT-S, slow on a CPU) runs only its few tasks; the demo's own models run the whole suite.
    assert scored[scored.index("--tasks") + 1:scored.index("--tasks") + 1 + len(RELEASE_HEAR_TASKS)] == \
        RELEASE_HEAR_TASKS and "--tasks" not in stages["hear-mam"].args + stages["hear-logmel"].args
    assert "hear-rel" in stages["tables"].deps
    assert str(tmp_path / "work" / "results" / "rel.hear.json") in stages["tables"].args
    # A replaced release redoes its stage: the fingerprint is its encoder.json, which holds its weights' digests.
    before = stages["hear-rel"].fingerprint()
    assert before is not None and stages["hear-logmel"].fingerprint is None and stages["hear-mam"].fingerprint is None
    export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny", depth=2)), release, dtype=torch.bfloat16)
    assert stages["hear-rel"].fingerprint() != before
    # Without baselines the release is still scored; --hear-tasks applies to it too.
    stages = plan(DemoConfig(work=tmp_path / "work", variants=(), baseline=False, superb_tasks=(), release=release,
                             hear_tasks=("mini_esc",)))
    assert [s.name for s in stages] == ["data", "hear-rel", "tables"]
    assert stages[1].args[stages[1].args.index("--tasks"):] == ("--tasks", "mini_esc")


def test_the_demo_finds_the_release_in_results_models_unless_told_not_to(tmp_path, monkeypatch, capsys):
    from hear_mamclap.checkpoint import export_encoder
    from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
    from training import demo
    from training.cli import main

    seen = []
    monkeypatch.setattr(demo, "run_stages", lambda stages, work: seen.append([s.name for s in stages]) or [])
    monkeypatch.setattr(demo, "summarize", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--work", str(tmp_path / "w"), "--variants", "mam", "--superb-tasks", "--no-baseline"]
    assert main(argv) == 0
    release = export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path / "results" / "models" / "r1")
    assert main(argv) == 0 and main([*argv, "--no-release"]) == 0
    assert seen == [["data", "pretrain-mam", "hear-mam", "tables"],
                    ["data", "pretrain-mam", "hear-mam", "hear-r1", "tables"],
                    ["data", "pretrain-mam", "hear-mam", "tables"]]
    assert f"scoring the release {release.relative_to(tmp_path)} on HEAR" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not an encoder export") as refused:
        main([*argv, "--release", str(tmp_path / "nothing")])
    assert refused.value.code == 2


@pytest.mark.slow
def test_the_demo_runs_end_to_end_skips_when_done_and_redoes_a_stage_and_what_follows(tmp_path):
    """One CLAP variant, one HEAR task, one SUPERB task, a few steps: every stage of `make demo` runs for real."""
    if not (BANK / "index.jsonl").is_file():
        pytest.skip(f"no source bank at {BANK}: build it with `mamclap data bank`")
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "training.cli", "demo", "--work", str(work), "--variants", "mam_clap",
           "--no-baseline", "--hear-tasks", "mini_speaker_id", "--superb-tasks", "speech_commands",
           "--teacher-steps", "1", "--pretrain-steps", "2", "--superb-steps", "2", "--no-release"]

    def demo() -> str:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = demo()
    for i, title in enumerate(["data: build the tiny kit", "teacher: caption embeddings (MiniLM)",
                               "teacher: train the CLAP teacher", "pretrain mam_clap", "HEAR mam-clap",
                               "SUPERB mam-clap", "tables and plots"], 1):
        assert f"[{i}/7] {title}: done in" in out
    board = work / "tables" / "leaderboard.md"
    assert f"leaderboard: {board}" in out and "| mam-clap |" in board.read_text()
    hear, superb = load_results(work / "results" / "mam-clap.hear.json"), load_results(
        work / "results" / "mam-clap.superb.json")
    assert list(hear["tasks"]) == ["mini_speaker_id"] and list(superb["tasks"]) == ["speech_commands"]
    assert hear["pretraining"]["variant"] == "mam_clap" and hear["pretraining"]["step"] == 2
    teacher_arg = json.loads((work / "stamps" / "pretrain-mam_clap.json").read_text())["settings"]["args"]
    assert str(work / "teacher" / "clap.pt") in teacher_arg
    summary = json.loads((work / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["ran"] * 7 and summary["total_s"] > 0

    out = demo()
    assert out.count("skipped: done") == 7 and " ... running" not in out

    (work / "stamps" / "superb-mam-clap.json").unlink()
    out = demo()
    assert out.count("skipped: done") == 5
    assert "[6/7] SUPERB mam-clap: done in" in out and "[7/7] tables and plots: done in" in out
