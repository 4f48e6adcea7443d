"""`mamclap hear readout`: choose, per HEAR task and on validation data (never a test split), which encoder
layers and frequency reduction a model's embeddings are read from; `mamclap hear eval --readout` then runs
each task with its choice.

    mamclap hear readout --module hear_mamclap --model CKPT --tasks-dir DIR --out choice.json

For each scene task the module's model embeds the clips it may learn from once, keeping every layer's hidden
states (MAMCLAPEncoder.embed(..., hidden_states=True)). From that one forward, each candidate readout
(`candidates`: the last, normalised layer; the mean of the last 4 blocks' outputs; the mean of all blocks',
each with the frequency patches concatenated or averaged) is pooled over the clip exactly as
hear_mamclap.get_scene_embeddings pools it under the HearModel options the candidate names (layers, last_k,
freq_reduce; the other options, scene_pooling included, stay those of --model-options). Each candidate's
features are z-scored with the training clips' statistics, and a linear probe (softmax regression for
multiclass tasks, a logistic regression per label for multilabel ones) is fitted by full-batch L-BFGS from
zero weights, so the same inputs give the same probe, for each L2 weight decay of WEIGHT_DECAYS. A candidate's
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
Modules without a mamclap encoder (hear_mamclap.baselines.logmel, .crepe) have one readout, "default" (no
options), scored the same way and passed through.

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
WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4)  # L2 penalty on the probe's weights, fitted from largest to smallest
MAX_ITER = 300  # L-BFGS iterations per fit
BATCH_SECONDS = 256.0  # audio per forward: clips of 10 s go 25 at a time
READERS = 8  # threads reading wav files
LAST_K = 4
DEFAULT = "default"
# The options a candidate sets: every one of them, so that a choice overrides whatever --model-options says.
READOUT_OPTIONS = ("layers", "last_k", "freq_reduce")


# ------------------------------------------------------------------------------------------- candidates


def candidates(depth: int) -> list[dict]:
    """[{"name", "options"}] of the readouts tried for an encoder of `depth` blocks; the mean of the last 4
    is left out when it is the mean of all (depth <= 4)."""
    layers = [("last", {"layers": "last", "last_k": 1})]
    if depth > LAST_K:
        layers.append((f"mean_last{LAST_K}", {"layers": "mean", "last_k": LAST_K}))
    layers.append((f"mean_all{depth}", {"layers": "mean", "last_k": depth}))
    return [{"name": f"{name}/{freq}", "options": {**options, "freq_reduce": freq}}
            for name, options in layers for freq in ("concat", "mean")]


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
        features[spec["name"]] = pool_scene(x, model.scene_pooling).float().cpu()  # (B, D)
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


def fit_probe(x: torch.Tensor, y: torch.Tensor, multilabel: bool, weight_decay: float,
              start: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (D, C), b (C,)) minimising the mean cross-entropy (softmax over classes, or summed per-label logistic
    losses for multilabel) of x (n, D) against y (n, C) plus weight_decay * |W|^2, by full-batch L-BFGS from
    start (zeros by default): deterministic for the same inputs."""
    d, c = x.shape[1], y.shape[1]
    w0, b0 = start if start is not None else (x.new_zeros(d, c), x.new_zeros(c))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    classes = None if multilabel else y.argmax(1)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=MAX_ITER, history_size=10, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w + b  # (n, C)
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(x)
        else:
            loss = F.cross_entropy(logits, classes)
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_predictions(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Probabilities (n, C): sigmoid per label, or softmax over classes (heareval's predictors' outputs)."""
    logits = x @ w + b
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def probe_scores(train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
                 metric: str, multilabel: bool, device: str) -> dict[float, float]:
    """{weight decay: validation score} of probes fitted on train ((n, D) features, (n, C) targets)."""
    (xt, yt), (xv, yv) = train, valid
    xt, xv = zscore(xt.to(device), xv.to(device))
    yt = yt.to(device)
    out, start = {}, None
    for wd in WEIGHT_DECAYS:  # from the strongest penalty down, each fit starting from the previous one
        start = fit_probe(xt, yt, multilabel, wd, start)
        prediction = probe_predictions(xv, *start, multilabel).cpu().numpy()
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


def choose_readouts(module: str, model: str | Path | None, tasks_dir: Path, tasks: list[str] | None = None,
                    model_options: dict | None = None, device: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """The readout file's content (the module docstring) for the tasks of tasks_dir (or those named)."""
    import importlib

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
    hear_module = importlib.import_module(module)
    loaded = hear_module.load_model(str(Path(model).resolve()) if model is not None else "", **model_options)
    loaded = loaded.to(device).eval()
    if isinstance(loaded, HearModel):
        specs = candidates(loaded.encoder.cfg.depth)

        def embed_batch(audio: torch.Tensor) -> dict[str, torch.Tensor]:
            return candidate_features(loaded, audio, specs)
    else:  # a module of one readout: its scene embeddings as they are
        specs = [{"name": DEFAULT, "options": {}}]

        @torch.no_grad()
        def embed_batch(audio: torch.Tensor) -> dict[str, torch.Tensor]:
            return {DEFAULT: hear_module.get_scene_embeddings(audio.to(device), loaded).float().cpu()}

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
            split_labels = read_split(folder, split)
            files = list(split_labels)
            audio_dir = folder / str(loaded.sample_rate) / split  # heareval's layout: <rate>/<split>/<file>
            features[split] = embed_split(embed_batch, audio_dir, files, _batch_clips(meta))
            labels[split] = targets([split_labels[f] for f in files], vocabulary)
        chosen[key] = entry = choose(features, labels, meta, specs, device)
        others = ", ".join(f"{n} {s:.4f}" for n, s in entry["valid"].items())
        log(f"[{i}/{len(folders)}] {key}: {entry['candidate']} ({entry['metric']}; {entry['selection']}): {others}")
    return {"format": FORMAT, "module": module, "model": str(Path(model).resolve()) if model is not None else None,
            "model_options": model_options, "tasks_dir": str(tasks_dir), "candidates": specs, "tasks": chosen}


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
