"""Run-time compatibility fixes for the training side: the HEAR harness (heareval 2021.1.3 under torch >= 2.6
and pytorch-lightning 1.9.5), pretraining's tensorboard log, and laion-clap's HTS-AT built offline.

Why here. Every fix for a third-party package lives in one module of ours per side: this one for training/
(harnesses, trainers, demo), superb_upstream/compat.py for the s3prl launcher, which may not import training.
hear_mamclap, the runtime users deploy, holds none but laion-clap's HTS-AT loader, which its CLAP-teacher baseline
needs (hear_mamclap.baselines.laion): its core runs on plain torch. The fixes both sides need are defined in
superb_upstream.compat and re-exported here, so code under training/ imports from this module only:

    runtime_env(), apply_runtime_env()   offline, TensorFlow-free environment (superb_upstream.compat)
    prepare_tensorboard()                torch.utils.tensorboard without TensorFlow (superb_upstream.compat)
    prepare_heareval()   heareval's predictions runner under torch >= 2.6 and pytorch-lightning 1.9.5
    prepare_heareval_embeddings()  heareval's embeddings runner for torch modules, with or without TensorFlow
    load_htsat_module()  laion-clap 1.1.7's HTS-AT audio branch, importable offline
    htsat_audio_config() one of laion-clap's HTS-AT audio configurations, as create_htsat_model takes it
                         (both defined in hear_mamclap.baselines.laion, which the teacher's HEAR module needs
                         at run time, and re-exported here)

Each fix is installed by an explicit call, never at import. Installed packages are never edited: the fixes
add or replace attributes at run time, in this process only. tests/test_environment.py runs each one
against the real package code path.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import torch

from hear_mamclap.baselines.laion import htsat_audio_config, load_htsat_module
from superb_upstream.compat import (apply_runtime_env, load_triton_before_tensorflow, prepare_tensorboard, runtime_env,
                                    trust_own_checkpoints)

__all__ = ["runtime_env", "apply_runtime_env", "prepare_tensorboard", "prepare_heareval",
           "prepare_heareval_embeddings", "load_htsat_module", "htsat_audio_config"]


# ----------------------------------------------------------------------------------------------- heareval


def prepare_heareval() -> None:
    """Make heareval 2021.1.3's predictions runner work with torch >= 2.6 and pytorch-lightning 1.9.5.

    Call it in the process that runs heareval.predictions.runner, before trainer.test() runs."""
    apply_runtime_env()
    load_triton_before_tensorflow()
    # torch >= 2.6 loads with weights_only=True by default; Lightning 1.9.5 checkpoints, which heareval
    # reloads for its test step, hold pickled Python objects (its hyper-parameters name classes such as
    # torch.optim.Adam), so torch.load raises UnpicklingError. heareval saves and reloads them in this same
    # process: only those bytes are loaded in full, anything else stays weights-only.
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    trust_own_checkpoints()
    _restore_fit_loop_current_epoch_setter()
    _nvml_device_name_as_bytes()  # the predictions runner imports heareval.gpu_max_mem too
    task_grids_for_stand_ins()


# The kit's offline stand-ins for HEAR tasks that heareval special-cases by name (training/kit/hear_suite.py).
# heareval gives DCASE 2016 task 2 its own grid entry, validation every 10 epochs instead of 3, because its
# validation runs sed_eval's event scoring, which is slow (~5-11 s per check on the medium kit's 40 validation
# clips before the predictor has learnt anything). mini_dcase has another name, so without this it validated
# every 3 epochs: the event task ran over 13 minutes per model on an H200 without finishing (call sets 5 and 6).
STAND_INS = {"mini_dcase": "dcase2016_task2"}


def task_grids_for_stand_ins() -> dict[str, dict]:
    """Give each stand-in task heareval's task-specific grid of the task it stands for (heareval's own dict,
    in this process only; a task whose metadata brings its own task_specific_param_grid still overrides it,
    as heareval applies that afterwards). Returns the entries added."""
    from heareval.predictions import task_predictions

    grids = task_predictions.TASK_SPECIFIC_PARAM_GRID
    added = {}
    for ours, theirs in STAND_INS.items():
        if theirs in grids and ours not in grids:
            grids[ours] = added[ours] = dict(grids[theirs])
    return added


def prepare_heareval_embeddings(tensorflow: bool = True) -> None:
    """Let heareval 2021.1.3's embeddings runner (and its task_embeddings) run a torch HEAR module where
    TensorFlow is absent or cannot see the GPU. Call it before importing heareval.embeddings.

    tensorflow=False: the stand-in below even where TensorFlow is installed, for a module known to be torch
    (the harness passes it for hear_mamclap and its baselines): importing TensorFlow costs ~27 s of CPU on a
    2-core machine (most of a heareval embedding start-up) and a torch module never touches it.

    The runner imports tensorflow at the top and, at import, refuses a machine where torch sees a GPU and
    TensorFlow does not ("GPUs not available in tensorflow, but found by pytorch"); task_embeddings only
    uses TensorFlow for models that are tf.Module instances. So:
    - TensorFlow not installed (the GPU machines' image: heareval's TensorFlow pin has no Python 3.12 wheel
      that fits there): a stand-in `tensorflow` module, whose Module class nothing is an instance of and
      whose tensor conversion raises, so a torch module runs and a TensorFlow model cannot be mistaken for one;
    - TensorFlow installed without GPU support on a CUDA machine (tensorflow-cpu, as the CPU machines
      install it): the check is answered for the torch module, which runs on the GPU through torch.
    """
    apply_runtime_env()
    load_triton_before_tensorflow()
    _nvml_device_name_as_bytes()
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
    elif not tensorflow or importlib.util.find_spec("tensorflow") is None:
        sys.modules["tensorflow"] = tf = _tensorflow_stand_in()
    else:
        tf = importlib.import_module("tensorflow")
    if torch.cuda.is_available() and not getattr(tf, "_mamclap_stand_in", False):
        has_gpu = bool(tf.config.list_physical_devices("GPU"))
        if not has_gpu:
            tf.test.is_gpu_available = lambda *args, **kwargs: True  # torch modules only (see docstring)


class _DecodableName(str):
    """A str that also answers .decode(), as the bytes of older pynvml releases did."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return str(self)


def _nvml_device_name_as_bytes() -> None:
    """heareval's gpu_max_mem calls nvmlDeviceGetName(handle).decode("utf-8"): pynvml returned bytes until
    nvidia-ml-py 11.515; newer releases (the GPU machines' image) return str, and both of heareval's runners
    then fail on a GPU machine with AttributeError. Make the name answer .decode() again. Call it before
    heareval.gpu_max_mem is imported (it binds the function at import)."""
    if importlib.util.find_spec("pynvml") is None:
        return
    import pynvml

    if getattr(pynvml.nvmlDeviceGetName, "_mamclap", False):
        return
    original = pynvml.nvmlDeviceGetName

    def nvmlDeviceGetName(handle):
        name = original(handle)
        return _DecodableName(name) if isinstance(name, str) else name

    nvmlDeviceGetName._mamclap = True
    pynvml.nvmlDeviceGetName = nvmlDeviceGetName


def _tensorflow_stand_in() -> types.ModuleType:
    """The few names heareval's embedding code touches, for processes without TensorFlow."""
    tf = types.ModuleType("tensorflow", "Stand-in for heareval's embedding runner (training.compat): "
                                        "TensorFlow is not installed, or not needed by a torch module.")
    tf._mamclap_stand_in = True
    # A module in sys.modules whose __spec__ is None makes importlib.util.find_spec("tensorflow") raise
    # ValueError; torch._dynamo calls it at import for its skip list (laion-clap's HTS-AT imports torchvision,
    # which imports torch._dynamo), so the CLAP teacher's HEAR module failed in heareval on the GPU machines.
    # A spec with no origin answers find_spec, and dynamo skips a module without a file.
    tf.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)

    class Module:  # no torch model is an instance of it: heareval takes its torch branch
        """Stand-in for tf.Module."""

    def convert_to_tensor(*args, **kwargs):
        raise RuntimeError("TensorFlow is not installed or not loaded: this process can run torch HEAR modules only")

    tf.Module, tf.convert_to_tensor = Module, convert_to_tensor
    tf.test = types.SimpleNamespace(is_gpu_available=lambda *args, **kwargs: torch.cuda.is_available())
    return tf


def _restore_fit_loop_current_epoch_setter() -> None:
    """heareval assigns `trainer.fit_loop.current_epoch = best_epoch` before testing, so that event tasks
    use the post-processing chosen at that epoch. Lightning 1.6 removed FitLoop.current_epoch (the trainer
    reads fit_loop.epoch_progress.current.completed), so the assignment only adds an unused attribute and
    the test step then fails with KeyError in epoch_best_postprocessing_or_default. Restore the property
    as Lightning 1.5 had it."""
    from pytorch_lightning.loops.fit_loop import FitLoop

    if isinstance(getattr(FitLoop, "current_epoch", None), property):
        return

    def get_epoch(self: FitLoop) -> int:
        return self.epoch_progress.current.completed

    def set_epoch(self: FitLoop, value: int) -> None:
        self.epoch_progress.current.completed = int(value)

    FitLoop.current_epoch = property(get_epoch, set_epoch, doc="The current epoch (settable, as in Lightning 1.5).")


# --------------------------------------------------------------------------------------------- laion-clap
# load_htsat_module and htsat_audio_config (imported above) live in the runtime package, beside the LAION
# checkpoint loader, since the teacher's HEAR module (hear_mamclap.baselines.clap) needs them at run time and
# hear_mamclap may not import training.
