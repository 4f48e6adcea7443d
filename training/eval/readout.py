"""`mamclap hear readout`: choose, per HEAR task and on validation data (never a test split), which encoder
layers and frequency reduction a model's embeddings are read from; `mamclap hear eval --readout` then runs
each task with its choice.

    mamclap hear readout --module hear_mamclap --model CKPT --tasks-dir DIR --out choice.json

For each scene task the module's model embeds the clips it may learn from once, keeping every layer's hidden
states (MAMCLAPEncoder.embed(..., hidden_states=True)). From that one forward, each candidate readout
(`candidates`: the last, normalised layer; the mean of the last 4 blocks' outputs; the mean of all blocks',
each with the frequency patches concatenated or averaged, each pooled over the clip by the mean or by the mean
and standard deviation) is what hear_mamclap.get_scene_embeddings gives under the HearModel options the
candidate names (layers, last_k, freq_reduce, scene_pooling; the other options stay those of
--model-options). Mean+std is the log-mel baseline's pooling: with it among the candidates an encoder is
scored under the pooling that helps log-mel most, and its mean-pooled readouts keep their old names. Each candidate's
features are z-scored with the training clips' statistics, and a linear probe, ridge regression onto the
one-hot (multiclass: the ridge classifier) or multi-hot targets, is solved in closed form for each L2 weight
decay of WEIGHT_DECAYS (one eigendecomposition serves them all: the same inputs give the same probe, and a
task's grid costs about one solve; an iterative logistic probe took minutes per task on a shared GPU). A candidate's
score is its best over the weight decays of the task's primary metric (heareval's, training.eval.intervals;
accuracy or mAP when heareval's is none of those) on the validation clips; the task takes the candidate of
the best score, the earlier one on a tie (the HEAR default, last layer concatenated, first).

Which clips: a trainvaltest task trains the probe on "train" and scores it on "valid". A k-fold task
(presplit_kfold, new_split_kfold) has no split that is never tested, since heareval tests on every fold in
turn: there the choice is made by leave-one-fold-out cross-validation over all folds (train on all folds but
one, score on that one, mean over the folds). The choice therefore sees clips that heareval later tests on
(through other probes than heareval's predictors), alike for every model evaluated.

Event (timestamp) tasks keep the module's default readout, recorded with the reason: their predictors are
trained on frame embeddings by heareval, which this linear probe on clip embeddings does not stand for.
Modules without a mamclap encoder (hear_mamclap.baselines.logmel, .crepe, .clap) have one readout, "default"
(no options: the module's own scene embedding), scored the same way and passed through.

The output, a JSON file:

    {"module", "model", "model_options", "tasks_dir", "candidates": [{"name", "options"}],
     "tasks": {task key: {"options": {...}, "candidate", "metric", "selection", "valid": {candidate: score},
                          "weight_decay": {candidate: weight decay}, "clips": {split: n}}}}
"""
from __future__ import annotations

import json
import math
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hear_mamclap import HearModel, check_audio, pool_scene
from training.eval import hear, intervals, results

FORMAT = "mamclap-readout"
WEIGHT_DECAYS = (1e1, 1e0, 1e-1, 1e-2, 1e-3)  # the ridge probe's L2 penalties (per clip), strongest first
BATCH_SECONDS = 256.0  # audio per forward: clips of 10 s go 25 at a time
READERS = 8  # threads reading wav files
LAST_K = 4
DEFAULT = "default"
# The options a candidate sets: every one of them, so that a choice overrides whatever --model-options says.
READOUT_OPTIONS = ("layers", "last_k", "freq_reduce", "scene_pooling")
POOLINGS = ("mean", "meanstd")  # the candidates' scene poolings; mean first, so a tie keeps it


# ------------------------------------------------------------------------------------------- candidates


def candidates(depth: int) -> list[dict]:
    """[{"name", "options"}] of the readouts tried for an encoder of `depth` blocks: every layer choice x
    frequency reduction, first mean-pooled ("last/concat", ...), then mean+std-pooled ("last/concat/meanstd",
    ...); the mean of the last 4 is left out when it is the mean of all (depth <= 4)."""
    layers = [("last", {"layers": "last", "last_k": 1})]
    if depth > LAST_K:
        layers.append((f"mean_last{LAST_K}", {"layers": "mean", "last_k": LAST_K}))
    layers.append((f"mean_all{depth}", {"layers": "mean", "last_k": depth}))
    return [{"name": f"{name}/{freq}" + ("" if pooling == "mean" else f"/{pooling}"),
             "options": {**options, "freq_reduce": freq, "scene_pooling": pooling}}
            for pooling in POOLINGS for name, options in layers for freq in ("concat", "mean")]


@torch.no_grad()
def candidate_features(model: HearModel, audio: torch.Tensor, specs: list[dict]) -> dict[str, torch.Tensor]:
    """{candidate name: (B, D) clip features} of a (B, N) batch from one forward of the encoder: each what
    get_scene_embeddings gives with the candidate's options."""
    encoder = model.encoder
    check_audio(audio, encoder.cfg.window_samples)
    device = next(model.parameters()).device
    out = encoder.embed(audio.to(device, torch.float32), layers="last", freq_reduce="concat", hidden_states=True,
                        windows_per_forward=model.options["windows_per_forward"])
    n_freq = encoder.cfg.grid[1]
    features = {}
    for spec in specs:
        o = spec["options"]
        x = out.features if o["layers"] == "last" else torch.stack(out.hidden_states[-o["last_k"]:]).mean(0)
        if o["freq_reduce"] == "mean":  # concat keeps frequency-major blocks of width values: average them
            x = x.reshape(*x.shape[:2], n_freq, -1).mean(2)  # (B, P, width)
        features[spec["name"]] = pool_scene(x, o.get("scene_pooling", model.scene_pooling)).float().cpu()  # (B, D)
    return features


# ------------------------------------------------------------------------------------------------ data


def read_split(task_dir: Path, split: str) -> dict:
    """{filename: labels} of a split (heareval's <split>.json)."""
    return json.loads((Path(task_dir) / f"{split}.json").read_text())


def audio_batches(audio_dir: Path, files: list[str], clips: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, (B, N) audio) batches of up to `clips` files read as heareval reads them (soundfile,
    float32), a batch cut where the length changes, so no clip is padded."""
    import soundfile as sf

    def read(name: str) -> np.ndarray:
        return sf.read(str(audio_dir / name), dtype=np.float32)[0]

    with ThreadPoolExecutor(READERS) as pool:
        for start in range(0, len(files), clips):
            chunk = list(pool.map(read, files[start:start + clips]))
            run = [0]
            for i in range(1, len(chunk)):
                if len(chunk[i]) != len(chunk[i - 1]):
                    run.append(i)
            for a, b in zip(run, run[1:] + [len(chunk)]):
                yield list(range(start + a, start + b)), torch.from_numpy(np.stack(chunk[a:b]))


def embed_split(embed_batch: Callable[[torch.Tensor], dict[str, torch.Tensor]], audio_dir: Path,
                files: list[str], clips: int) -> dict[str, torch.Tensor]:
    """{candidate: (n_files, D)} features of the files of audio_dir (a split's), in the order of files."""
    pieces: dict[str, list[torch.Tensor]] = {}
    for _, audio in audio_batches(audio_dir, files, clips):
        for name, x in embed_batch(audio).items():
            pieces.setdefault(name, []).append(x)
    return {name: torch.cat(xs) for name, xs in pieces.items()}


def targets(labels: list[list], vocabulary: dict[str, int]) -> torch.Tensor:
    """Multi-hot (n, n_labels) targets of each clip's label list (one-hot for multiclass tasks)."""
    out = torch.zeros(len(labels), len(vocabulary))
    for i, clip in enumerate(labels):
        for label in clip:
            out[i, vocabulary[str(label)]] = 1.0
    return out


# ----------------------------------------------------------------------------------------------- probe


def zscore(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """train and others standardised with train's per-feature mean and standard deviation (a constant feature
    is only centred)."""
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def fit_probes(x: torch.Tensor, y: torch.Tensor, weight_decays=None) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """{weight decay: (W (D, C), b (C,))} of the ridge probes that minimise mean((x W + b - y)^2) + wd * |W|^2
    for x (n, D) centred features (z-scored on train) and y (n, C) one-hot or multi-hot targets.

    Closed form, from one eigendecomposition (in float64) of x^T x, or of x x^T when there are fewer clips than
    features, shared by every weight decay: deterministic, and a task's whole grid costs about one solve."""
    weight_decays = WEIGHT_DECAYS if weight_decays is None else weight_decays
    n, d = x.shape
    x64, y64 = x.double(), y.double()
    b = y64.mean(0)
    yc = y64 - b
    if n >= d:  # primal: (x^T x + n wd I) W = x^T y
        s, v = torch.linalg.eigh(x64.T @ x64)
        rhs = v.T @ (x64.T @ yc)
        solve = lambda lam: v @ (rhs / (s.clamp_min(0) + lam)[:, None])  # noqa: E731
    else:  # dual: W = x^T (x x^T + n wd I)^-1 y
        s, u = torch.linalg.eigh(x64 @ x64.T)
        rhs = u.T @ yc
        solve = lambda lam: x64.T @ (u @ (rhs / (s.clamp_min(0) + lam)[:, None]))  # noqa: E731
    return {wd: (solve(n * wd).to(x.dtype), b.to(x.dtype)) for wd in weight_decays}


def probe_predictions(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Scores (n, C) of a ridge probe: the regression outputs per label (multilabel: ranked by the metric), or
    their softmax over classes (multiclass: the argmax is the ridge classifier's class)."""
    out = x @ w + b
    return out if multilabel else torch.softmax(out, dim=1)


def probe_scores(train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
                 metric: str, multilabel: bool, device: str) -> dict[float, float]:
    """{weight decay: validation score} of ridge probes fitted on train ((n, D) features, (n, C) targets)."""
    (xt, yt), (xv, yv) = train, valid
    xt, xv = zscore(xt.to(device), xv.to(device))
    out = {}
    for wd, (w, b) in fit_probes(xt, yt.to(device)).items():
        prediction = probe_predictions(xv, w, b, multilabel).float().cpu().numpy()
        out[wd] = intervals.scene_score(metric, prediction, yv.numpy())
    return out


def selection_metric(metadata: dict) -> str:
    """The task's primary metric when it is a scene metric computed here, else accuracy or mAP."""
    metric = metadata["evaluation"][0]
    if metric in intervals.SCENE_METRICS:
        return metric
    return "mAP" if metadata.get("prediction_type") == "multilabel" else "top1_acc"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def choose(features: dict[str, dict[str, torch.Tensor]], labels: dict[str, torch.Tensor], metadata: dict,
           specs: list[dict], device: str) -> dict:
    """A task's entry of the readout file from {split: {candidate: (n, D)}} and {split: (n, C)} targets."""
    metric, multilabel = selection_metric(metadata), metadata.get("prediction_type") == "multilabel"
    if metadata["split_mode"] == "trainvaltest":
        pairs = [(["train"], "valid")]
        selection = "probe trained on train, scored on valid"
    else:
        folds = sorted(metadata["splits"])
        pairs = [([f for f in folds if f != held], held) for held in folds]
        selection = f"leave-one-fold-out cross-validation over the {len(folds)} folds (mean of the held-out scores)"
    valid, decay = {}, {}
    for spec in specs:
        name = spec["name"]
        per_wd = {wd: [] for wd in WEIGHT_DECAYS}
        for train_splits, held in pairs:
            train = (torch.cat([features[s][name] for s in train_splits]), torch.cat([labels[s] for s in train_splits]))
            for wd, score in probe_scores(train, (features[held][name], labels[held]), metric, multilabel,
                                          device).items():
                per_wd[wd].append(score)
        means = {wd: float(np.mean(v)) for wd, v in per_wd.items()}
        best = max(WEIGHT_DECAYS, key=lambda wd: _finite(means[wd]))  # the first (strongest) on a tie
        valid[name], decay[name] = means[best], best
    chosen = max(specs, key=lambda s: _finite(valid[s["name"]]))  # the first on a tie
    return {"options": dict(chosen["options"]), "candidate": chosen["name"], "metric": metric,
            "selection": selection, "valid": valid, "weight_decay": decay,
            "clips": {s: int(len(y)) for s, y in labels.items()}}


# ------------------------------------------------------------------------------------------------ tasks


def _batch_clips(metadata: dict) -> int:
    duration = metadata.get("sample_duration") or 1.0
    return max(1, int(BATCH_SECONDS / float(duration)))


def _loaded(module: str, model: str | Path | None, model_options: dict, device: str, names: list[str] | None = None):
    """(the module's model, candidate specs, embed_batch: audio -> {candidate: (B, D)}) of a HEAR module;
    names: only those candidates."""
    import importlib

    hear_module = importlib.import_module(module)
    loaded = hear_module.load_model(str(Path(model).resolve()) if model is not None else "", **model_options)
    loaded = loaded.to(device).eval()
    if isinstance(loaded, HearModel):
        specs = candidates(loaded.encoder.cfg.depth)
        if names is not None:
            specs = [spec for spec in specs if spec["name"] in names]

        def embed_batch(audio: torch.Tensor) -> dict[str, torch.Tensor]:
            return candidate_features(loaded, audio, specs)
    else:  # a module of one readout: its scene embeddings as they are
        specs = [{"name": DEFAULT, "options": {}}]

        @torch.no_grad()
        def embed_batch(audio: torch.Tensor) -> dict[str, torch.Tensor]:
            return {DEFAULT: hear_module.get_scene_embeddings(audio.to(device), loaded).float().cpu()}
    return loaded, specs, embed_batch


def _split_data(folder: Path, split: str, loaded, embed_batch, meta: dict, vocabulary: dict) -> tuple[dict, torch.Tensor]:
    """({candidate: (n, D)} features, (n, C) targets) of one split of a task folder."""
    split_labels = read_split(folder, split)
    files = list(split_labels)
    audio_dir = folder / str(loaded.sample_rate) / split  # heareval's layout: <rate>/<split>/<file>
    return (embed_split(embed_batch, audio_dir, files, _batch_clips(meta)),
            targets([split_labels[f] for f in files], vocabulary))


def choose_readouts(module: str, model: str | Path | None, tasks_dir: Path, tasks: list[str] | None = None,
                    model_options: dict | None = None, device: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """The readout file's content (the module docstring) for the tasks of tasks_dir (or those named)."""

    tasks_dir = Path(tasks_dir).resolve()
    folders = hear.task_folders(tasks_dir) if tasks_dir.is_dir() else []
    if tasks is not None:
        folders = hear._select(folders, tasks, tasks_dir)
    if not folders:
        raise ValueError(f"{tasks_dir} holds no HEAR task folder (a folder with task_metadata.json)")
    metadata = {f.name: json.loads((f / "task_metadata.json").read_text()) for f in folders}
    for f in folders:
        hear.check_metadata(f, metadata[f.name])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_options = dict(model_options or {})
    loaded, specs, embed_batch = _loaded(module, model, model_options, device)

    chosen = {}
    for i, folder in enumerate(folders, 1):
        meta, key = metadata[folder.name], hear.task_key(folder, metadata[folder.name])
        if meta.get("embedding_type") != "scene":
            chosen[key] = {"options": {}, "candidate": None, "valid": {},
                           "note": "event task: the module's default readout is kept (heareval trains its predictors "
                                   "on frame embeddings; a probe on clip embeddings does not choose for them)"}
            log(f"[{i}/{len(folders)}] {key}: event task, default readout kept")
            continue
        splits = ["train", "valid"] if meta["split_mode"] == "trainvaltest" else sorted(meta["splits"])
        vocabulary = intervals.label_vocabulary(folder)
        features, labels = {}, {}
        for split in splits:
            features[split], labels[split] = _split_data(folder, split, loaded, embed_batch, meta, vocabulary)
        chosen[key] = entry = choose(features, labels, meta, specs, device)
        others = ", ".join(f"{n} {s:.4f}" for n, s in entry["valid"].items())
        log(f"[{i}/{len(folders)}] {key}: {entry['candidate']} ({entry['metric']}; {entry['selection']}): {others}")
    return {"format": FORMAT, "module": module, "model": str(Path(model).resolve()) if model is not None else None,
            "model_options": model_options, "tasks_dir": str(tasks_dir), "candidates": specs, "tasks": chosen}


def probe_test(module: str, model: str | Path | None, tasks_dir: Path, choice: Path,
               model_options: dict | None = None, device: str | None = None,
               log: Callable[[str], None] = print) -> dict:
    """`mamclap hear probe`: the test scores of the readout file's own ridge probes, a diagnostic beside
    heareval (not its predictors): per scene task, the chosen candidate's probe with its chosen weight decay is
    fitted on train (k-fold tasks: on all folds but one, tested on that one, as heareval tests) and scored on
    test with a bootstrap 95 % interval (training.eval.intervals.bootstrap_scene). The choice was made before,
    on validation data; this reads the test clips."""
    model_options = dict(model_options or {})
    load_choice(choice, module, model, model_options)  # refused for another model
    doc = json.loads(Path(choice).read_text())
    tasks_dir = Path(tasks_dir).resolve()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folders = {hear.task_key(f, json.loads((f / "task_metadata.json").read_text())): f
               for f in hear.task_folders(tasks_dir)}
    out, items = {}, []
    for key, entry in doc["tasks"].items():
        if entry.get("candidate") is None or key not in folders:
            continue
        folder = folders[key]
        meta = json.loads((folder / "task_metadata.json").read_text())
        name, wd = entry["candidate"], entry["weight_decay"][entry["candidate"]]
        loaded, specs, embed_batch = _loaded(module, model, model_options, device, names=[name])
        vocabulary = intervals.label_vocabulary(folder)
        multilabel = meta.get("prediction_type") == "multilabel"
        if meta["split_mode"] == "trainvaltest":
            pairs = [(["train"], "test")]
        else:
            folds = sorted(meta["splits"])
            pairs = [([f for f in folds if f != held], held) for held in folds]
        data = {split: _split_data(folder, split, loaded, embed_batch, meta, vocabulary)
                for split in sorted({s for train, held in pairs for s in [*train, held]})}
        tested = []
        for train_splits, held in pairs:
            xt = torch.cat([data[s][0][name] for s in train_splits])
            yt = torch.cat([data[s][1] for s in train_splits])
            xt, xh = zscore(xt.to(device), data[held][0][name].to(device))
            w, b = fit_probes(xt, yt.to(device), (wd,))[wd]
            tested.append((probe_predictions(xh, w, b, multilabel).float().cpu().numpy(), data[held][1].numpy()))
        metric = entry["metric"]
        score, ci = intervals.bootstrap_scene(metric, tested)
        n_test = int(sum(len(t) for _, t in tested))
        out[key] = {"metric": metric, "score": score, "ci95": ci, "candidate": name, "weight_decay": wd,
                    "n_test": n_test, "group": results.task_group(meta.get("task_name", key), meta,
                                                                  default=results.OTHER)}
        items.append((out[key]["group"], score, ci["half_width"]))
        log(f"{key}: {metric} = {score:.4f} +- {ci['half_width']:.4f} ({name}, wd {wd:g}, n_test {n_test})")
    mean = float(np.mean([s for _, s, _ in items])) if items else None
    half = intervals.combine_half_widths([h for _, _, h in items]) if items else None
    return {"format": "mamclap-probe", "module": module, "model": doc.get("model"), "model_options": model_options,
            "readout": str(Path(choice).resolve()), "tasks_dir": str(tasks_dir), "tasks": out,
            "mean": mean, "mean_half_width": half,
            "note": "ridge probes of `mamclap hear readout` scored on test: a diagnostic, not heareval's protocol"}


def load_choice(path: Path, module: str, model: str | Path | None, model_options: dict | None) -> dict[str, dict]:
    """{task key: chosen options} of a readout file, refused (ValueError) unless it was made for this module,
    model and --model-options: a readout chosen for one model says nothing about another."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--readout {path}: not a readable JSON file ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("tasks"), dict):
        raise ValueError(f"--readout {path}: not a {FORMAT} file (written by `mamclap hear readout`)")
    model_path = str(Path(model).resolve()) if model is not None else None
    for what, theirs, ours in (("module", doc.get("module"), module), ("model", doc.get("model"), model_path),
                               ("model options", doc.get("model_options") or {}, model_options or {})):
        if theirs != ours:
            raise ValueError(f"--readout {path} was chosen for {what} {theirs!r}, this run has {ours!r}: run "
                             "`mamclap hear readout` for this one")
    for key, entry in doc["tasks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("options"), dict):
            raise ValueError(f"--readout {path}: task {key!r} has no 'options' object")
    return {key: entry["options"] for key, entry in doc["tasks"].items()}


# ---------------------------------------------------------------------------------------------- command


def _command(args) -> int:
    from training.eval.hear import parse_model_options
    options = parse_model_options(args.model_options)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("mamclap hear readout: --device cuda, but torch sees no CUDA device")
    torch.manual_seed(0)
    try:
        doc = choose_readouts(args.module, args.model, args.tasks_dir, tasks=args.tasks, model_options=options,
                              device=args.device, log=lambda line: print(line, flush=True))
    except ValueError as err:
        raise SystemExit(f"mamclap hear readout: {err}") from None
    command = ["mamclap", "hear", "readout", "--module", args.module, "--tasks-dir", str(args.tasks_dir),
               "--out", str(args.out)]
    command += ["--model", str(args.model)] if args.model is not None else []
    command += ["--model-options", args.model_options] if options else []
    command += ["--tasks", *args.tasks] if args.tasks else []
    command += ["--device", args.device] if args.device else []
    doc["command"] = shlex.join(command)
    results.write_json_atomic(doc, args.out)
    print(f"wrote {args.out}: readouts of {len(doc['tasks'])} tasks")
    return 0


def _probe_command(args) -> int:
    from training.eval.hear import parse_model_options
    options = parse_model_options(args.model_options)
    torch.manual_seed(0)
    try:
        doc = probe_test(args.module, args.model, args.tasks_dir, args.readout, model_options=options,
                         device=args.device, log=lambda line: print(line, flush=True))
    except ValueError as err:
        raise SystemExit(f"mamclap hear probe: {err}") from None
    results.write_json_atomic(doc, args.out)
    mean = "no scene task" if doc["mean"] is None else f"mean {doc['mean']:.4f} +- {doc['mean_half_width']:.4f}"
    print(f"wrote {args.out}: probe test scores of {len(doc['tasks'])} tasks ({mean})")
    return 0


def register(sub) -> None:
    """`mamclap hear readout`, under `mamclap hear` (training.eval.hear.register)."""
    from training.args import existing_dir, existing_path, out_file
    s = sub.add_parser("readout", help="choose each task's layers / frequency readout on validation data "
                                       "(for hear eval --readout)", description=__doc__.splitlines()[0])
    s.add_argument("--module", default="hear_mamclap", help="HEAR module (as for hear eval)")
    s.add_argument("--model", type=existing_path, default=None, help="weights passed to load_model (none for baselines)")
    s.add_argument("--model-options", default="{}", help="JSON object of load_model keyword arguments")
    s.add_argument("--tasks-dir", type=existing_dir, required=True, help="folder of HEAR task folders")
    s.add_argument("--tasks", nargs="+", default=None, help="only these tasks (names or folder names)")
    s.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when there is one")
    s.add_argument("--out", type=out_file, required=True, help="the readout JSON to write")
    s.set_defaults(func=_command)
    p = sub.add_parser("probe", help="score the readout's ridge probes on test (a diagnostic beside heareval)",
                       description=probe_test.__doc__.splitlines()[0])
    p.add_argument("--module", default="hear_mamclap", help="HEAR module (as for hear readout)")
    p.add_argument("--model", type=existing_path, default=None, help="weights passed to load_model (none for baselines)")
    p.add_argument("--model-options", default="{}", help="JSON object of load_model keyword arguments")
    p.add_argument("--tasks-dir", type=existing_dir, required=True, help="folder of HEAR task folders")
    p.add_argument("--readout", type=existing_path, required=True, help="the readout JSON of `mamclap hear readout`")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when there is one")
    p.add_argument("--out", type=out_file, required=True, help="the probe scores JSON to write")
    p.set_defaults(func=_probe_command)
