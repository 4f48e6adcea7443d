"""`mamclap convert`: AudioMAE / timm ViT checkpoints to encoder exports, and back (hear_mamclap.convert).

    mamclap convert audiomae pretrained.pth --out runs/audiomae       # then --model runs/audiomae anywhere
    mamclap convert to-timm runs/supmam_clap/encoder --out vit.safetensors   # + vit.json: timm's kwargs
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from hear_mamclap import convert
from hear_mamclap.checkpoint import export_encoder, load_encoder


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _from_audiomae(args: argparse.Namespace) -> int:
    cfg = replace(convert.AUDIOMAE, heads=args.heads, target_frames=args.target_frames, n_mels=args.n_mels)
    encoder, notes = convert.load_audiomae(args.checkpoint, cfg)
    meta = {"variant": "audiomae", "converted_from": str(Path(args.checkpoint).resolve()), "notes": notes}
    export_encoder(encoder, args.out, metadata=meta)
    for note in notes:
        print(f"note: {note}")
    c = encoder.cfg
    print(f"wrote {args.out}: ViT width {c.width}, depth {c.depth}, heads {c.heads}, grid {c.grid}")
    return 0


def _to_timm(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    encoder = load_encoder(args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(convert.to_timm(encoder), str(out))
    kwargs = convert.timm_kwargs(encoder.cfg)
    out.with_suffix(".json").write_text(json.dumps({"timm.VisionTransformer": kwargs}, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')} (timm VisionTransformer kwargs; input (B, 1, "
          f"{encoder.cfg.target_frames}, {encoder.cfg.n_mels}) normalised log-mel)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="AudioMAE/timm ViT checkpoints <-> encoder exports",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="convert_command", required=True, metavar="KIND")
    a = sub.add_parser("audiomae", help="an AudioMAE (timm ViT, one input channel) checkpoint -> encoder export",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("checkpoint", help="AudioMAE .pth ({'model': state_dict}), a timm state dict, or .safetensors")
    a.add_argument("--out", required=True, help="export folder to write (encoder.safetensors + encoder.json)")
    a.add_argument("--heads", type=_positive, default=convert.AUDIOMAE.heads,
                   help="attention heads (the weights do not say)")
    a.add_argument("--target-frames", type=_positive, default=convert.AUDIOMAE.target_frames,
                   help="input frames the model was trained on (image height)")
    a.add_argument("--n-mels", type=_positive, default=convert.AUDIOMAE.n_mels, help="mel bins (image width)")
    a.set_defaults(func=_from_audiomae)
    t = sub.add_parser("to-timm", help="an encoder export or checkpoint -> timm ViT state dict (.safetensors)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("model", help="encoder export folder, its encoder.safetensors, or a pretraining checkpoint.pt")
    t.add_argument("--out", required=True, help="the .safetensors file to write (its .json beside it)")
    t.set_defaults(func=_to_timm)
