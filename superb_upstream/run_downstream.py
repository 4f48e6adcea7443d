"""s3prl 0.4.18's run_downstream with the mamclap upstreams, with no file of s3prl copied or edited.

    python -m superb_upstream.run_downstream -m train -u mamclap -k CKPT -d speech_commands \\
        -c superb_upstream/configs/speech_commands.yaml -p runs/superb/ks \\
        -o "config.downstream_expert.datarc.speech_commands_root='DATA/speech_commands/train',,..."

Takes exactly s3prl's flags. Before s3prl is imported it installs superb_upstream.compat's layer for torchaudio
2.11 and Python 3.11, then registers the entries of superb_upstream.hubconf on s3prl.hub (s3prl picks the
upstream with getattr(s3prl.hub, name)) and runs s3prl's own main(). Two conveniences: without -c (and
without -e) our config for the downstream is used when we have one, and without --device the device is
cpu when no GPU is visible (s3prl's default is cuda, and -m evaluate does not take it from the checkpoint).
"""
from __future__ import annotations

import importlib
import pickle
import sys
import types
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data, installed with this module


def default_config(downstream: str) -> Path | None:
    """Our config for an s3prl downstream, if we have one."""
    path = CONFIG_DIR / f"{downstream}.yaml"
    return path if path.is_file() else None


def _flag_value(argv: list[str], *names: str) -> str | None:
    """The value of the last of names in argv (`-d x`, `--downstream x` or `--downstream=x`)."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif name.startswith("--") and arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def complete_argv(argv: list[str]) -> list[str]:
    """argv with the two conveniences above added where the flags are absent."""
    import torch

    argv = list(argv)
    resuming = _flag_value(argv, "-e", "--past_exp") is not None
    downstream = _flag_value(argv, "-d", "--downstream")
    if not resuming and downstream and _flag_value(argv, "-c", "--config") is None:
        config = default_config(downstream)
        if config is not None:
            argv += ["-c", str(config)]
    if _flag_value(argv, "--device") is None and not torch.cuda.is_available():
        argv += ["--device", "cpu"]
    return argv


class LazyHub(types.ModuleType):
    """Stands in for s3prl.hub. s3prl's own hub imports every upstream's hubconf, transformers and
    scikit-learn among them: tens of seconds per process, for a name lookup. This one holds our entries and
    imports s3prl's hub only when another upstream is asked for (then ours are set on it too)."""

    def __init__(self, entries: dict) -> None:
        super().__init__("s3prl.hub", self.__doc__)
        self._entries, self._real = dict(entries), None
        for name, entry in entries.items():
            setattr(self, name, entry)

    def _load_real(self) -> types.ModuleType:
        if self._real is None:
            import s3prl

            del sys.modules["s3prl.hub"]  # let the import system load s3prl's file, then put this one back
            try:
                self._real = importlib.import_module("s3prl.hub")
            finally:
                sys.modules["s3prl.hub"] = s3prl.hub = self
            for name, entry in self._entries.items():
                setattr(self._real, name, entry)
        return self._real

    def __getattr__(self, name: str):  # only for names not set on this module
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._load_real(), name)

    def __dir__(self) -> list[str]:
        """Our entries only (s3prl lists dir(hub) in its --help; listing all would import them all)."""
        return sorted(self._entries)


def prepare() -> None:
    """Install the compatibility layer, then register our upstreams as s3prl.hub."""
    from superb_upstream import compat

    compat.prepare_s3prl()
    import s3prl

    from superb_upstream.hubconf import ENTRIES

    current = sys.modules.get("s3prl.hub")
    if current is None:
        sys.modules["s3prl.hub"] = s3prl.hub = LazyHub(ENTRIES)
    else:  # s3prl's hub is imported already (by the caller): add ours to it
        for name, entry in ENTRIES.items():
            setattr(current, name, entry)


def main(argv: list[str] | None = None) -> int:
    argv = complete_argv(sys.argv[1:] if argv is None else argv)
    prepare()
    from s3prl import run_downstream

    sys.argv = ["run_downstream.py", *argv]  # s3prl's main parses sys.argv itself
    try:
        run_downstream.main()
    except pickle.UnpicklingError as e:  # weights-only loading refused a checkpoint (compat.allow_s3prl_checkpoints)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"run_downstream: refused to load a checkpoint that holds more than an s3prl checkpoint does "
              f"(tensors, numbers, strings, dicts, argparse.Namespace): {first}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
