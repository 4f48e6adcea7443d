"""The s3prl upstream `mamclap`, its launcher, and `mamclap superb eval`.

Unit tests use the tiny encoder preset. The end-to-end tests train s3prl's own speech_commands and voxceleb1
downstreams for a few steps on the kit's tiny layouts, which need the source bank (`mamclap data bank`;
$MAMCLAP_DATA/bank, default <repo>/data/bank).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from superb_upstream.expert import HOP_SAMPLES, UpstreamExpert
from superb_upstream.hubconf import mamclap, mamclap_local
from superb_upstream.run_downstream import complete_argv, prepare
from training.eval.superb import best_checkpoint, data_overrides, read_test_accuracy

REPO = Path(__file__).resolve().parents[1]


def tiny_encoder() -> MAMCLAPEncoder:
    torch.manual_seed(0)
    return MAMCLAPEncoder(EncoderConfig.preset("tiny")).eval()  # 64 mels, 1.28 s windows, width 64, depth 3


@pytest.fixture(scope="module")
def expert() -> UpstreamExpert:
    return UpstreamExpert(encoder=tiny_encoder())


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return export_encoder(tiny_encoder(), tmp_path_factory.mktemp("export"))


def waves(*lengths: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [0.1 * torch.randn(n, generator=g) for n in lengths]


def test_hidden_states_shapes_and_rate(expert):
    cfg = expert.encoder.cfg
    wavs = waves(16000, 8000, 3000)
    with torch.no_grad():
        out = expert(wavs)
    hidden = out["hidden_states"]
    assert len(hidden) == cfg.depth + 1
    for h in [*hidden, out["last_hidden_state"]]:
        assert h.shape == (3, round(16000 / HOP_SAMPLES), cfg.width * cfg.grid[1])  # concat of 4 freq patches
        assert torch.isfinite(h).all()
    assert expert.get_downsample_rates("hidden_states") == HOP_SAMPLES == 640
    assert not torch.equal(hidden[0], hidden[-1])


def test_s3prl_featurizer_accepts_the_upstream(expert):
    """s3prl's own Featurizer: weighted sum over all layers, lengths from get_downsample_rates within its
    tolerance, each utterance cut to round(len / 640) frames."""
    from superb_upstream import compat

    compat.prepare_s3prl()
    from s3prl.upstream.interfaces import Featurizer

    featurizer = Featurizer(expert, upstream_device="cpu")
    assert featurizer.layer_num == expert.encoder.cfg.depth + 1
    assert featurizer.downsample_rate == HOP_SAMPLES
    wavs = waves(24000, 16000, 5000, 700)
    with torch.no_grad():
        features = featurizer(wavs, expert(wavs))
    assert [f.shape for f in features] == [(round(len(w) / HOP_SAMPLES), featurizer.output_dim) for w in wavs]


def test_features_do_not_depend_on_the_batch(expert):
    """A clip alone and beside longer (chunked: > 1.28 s windows) and shorter clips gives the same frames.
    15000 and 2800 samples end just after their last patch centre, so their last frames hold that patch."""
    wavs = waves(40000, 15000, 9000, 2800, 1000)
    with torch.no_grad():
        batch = expert(wavs)
        for i, w in enumerate(wavs):
            alone = expert([w])
            n = alone["hidden_states"][0].shape[1]
            assert n == round(len(w) / HOP_SAMPLES)
            for a, b in zip([*alone["hidden_states"], alone["last_hidden_state"]],
                            [*batch["hidden_states"], batch["last_hidden_state"]]):
                torch.testing.assert_close(a[0], b[i, :n], atol=2e-5, rtol=1e-4)


def test_long_utterances_in_groups_of_windows_match_one_pass():
    """windows_per_forward only bounds memory: one window at a time gives the same features."""
    encoder = tiny_encoder()
    wavs = waves(70000, 30000)  # 4.4 s: four 1.28 s encoder windows
    with torch.no_grad():
        one = UpstreamExpert(encoder=encoder, windows_per_forward=1)(wavs)
        all_at_once = UpstreamExpert(encoder=encoder, windows_per_forward=8)(wavs)
    for a, b in zip(one["hidden_states"], all_at_once["hidden_states"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_patch_features_are_interpolated_between_patch_centres(expert):
    """Output frames at patch centres equal the patch features; between them they lie on the segment."""
    wav = waves(15000)  # its last output frames lie past its last patch centre
    with torch.no_grad():
        per_patch = expert.encoder.embed(wav[0][None], torch.tensor([15000]))
        n_patches = per_patch.n_patches
        out = expert(wav)["last_hidden_state"][0]  # (T, D')
    patches = per_patch.features[0]  # (P, D')
    centres = expert.encoder.frame_times(patches.shape[0]).numpy() * 16000  # samples
    times = (torch.arange(out.shape[0]) + 0.5).numpy() * HOP_SAMPLES
    held = 0
    for t, frame in zip(times, out):
        k = (centres <= t).sum()
        if k == 0:
            torch.testing.assert_close(frame, patches[0])  # before the first centre: held
        elif k == int(n_patches):
            torch.testing.assert_close(frame, patches[k - 1])  # after the last valid centre: held
            held += 1
        else:
            w = float((t - centres[k - 1]) / (centres[k] - centres[k - 1]))
            torch.testing.assert_close(frame, (1 - w) * patches[k - 1] + w * patches[k], atol=1e-5, rtol=1e-4)
    assert held > 0


@pytest.mark.parametrize("freq_reduce, windows_per_forward", [("concat", 8), ("mean", 1)])
def test_the_expert_is_embed_at_its_hop(freq_reduce, windows_per_forward):
    """The expert's features are embed()'s on the zero-padded batch: every layer at 40 ms, round(longest /
    640) steps; an utterance shorter than one analysis window counts as one window."""
    encoder = tiny_encoder()
    expert = UpstreamExpert(encoder=encoder, freq_reduce=freq_reduce, windows_per_forward=windows_per_forward)
    wavs = waves(40000, 9000, 100)
    lengths = torch.tensor([40000, 9000, 400])
    audio = torch.zeros(3, 40000)
    for i, w in enumerate(wavs):
        audio[i, :len(w)] = w
    with torch.no_grad():
        out = expert(wavs)
        ref = encoder.embed(audio, lengths, freq_reduce=freq_reduce, hidden_states=True, hop_ms=40.0,
                            n_steps=round(40000 / HOP_SAMPLES), windows_per_forward=windows_per_forward)
    assert len(out["hidden_states"]) == len(ref.hidden_states) == encoder.cfg.depth + 1
    for a, b in zip([*out["hidden_states"], out["last_hidden_state"]], [*ref.hidden_states, ref.features]):
        assert torch.equal(a, b)


def test_gradients_reach_the_encoder_when_fine_tuning(expert):
    out = expert(waves(8000, 4000))
    sum(h.square().mean() for h in out["hidden_states"]).backward()
    assert expert.encoder.patch_embed.weight.grad is not None
    assert expert.encoder.patch_embed.weight.grad.abs().sum() > 0
    expert.zero_grad(set_to_none=True)


def test_checkpoint_entries_and_model_config(export, tmp_path):
    by_path = mamclap(str(export))
    assert by_path.freq_reduce == "concat"
    config = tmp_path / "upstream.yaml"
    config.write_text("freq_reduce: mean\nwindows_per_forward: 2\n")
    local = mamclap_local(str(export / "encoder.safetensors"), str(config), refresh=False)
    assert (local.freq_reduce, local.windows_per_forward) == ("mean", 2)
    with torch.no_grad():
        h = local(waves(8000))["hidden_states"]
    assert h[0].shape == (1, round(8000 / HOP_SAMPLES), local.encoder.cfg.width)
    torch.testing.assert_close(by_path.encoder.patch_embed.weight, local.encoder.patch_embed.weight)


def test_bad_checkpoints_and_options(export, tmp_path):
    with pytest.raises(ValueError, match="-k"):
        mamclap(None)
    with pytest.raises(FileNotFoundError, match="local checkpoint"):
        mamclap_local(str(tmp_path / "missing"))
    config = tmp_path / "bad.yaml"
    config.write_text("layers: last\n")
    with pytest.raises(ValueError, match="unknown upstream options"):
        mamclap(str(export), str(config))
    with pytest.raises(ValueError, match="freq_reduce"):
        UpstreamExpert(encoder=tiny_encoder(), freq_reduce="max")
    with pytest.raises(ValueError, match="not both"):
        UpstreamExpert(str(export), encoder=tiny_encoder())


@pytest.mark.parametrize("wavs, message", [
    ([], "empty list"),
    ([torch.zeros(0)], "zero-length"),
    ([torch.zeros(16000), torch.zeros(2, 8000)], r"wavs\[1\]: expected a 1-D waveform"),
    ([torch.zeros(1, 16000)], "1-D waveform"),
    ([torch.zeros(16000, dtype=torch.int16)], "floating-point"),
    ([torch.full((16000,), float("nan"))], "NaN"),
    (torch.zeros(2, 16000), "list of 1-D waveform tensors"),
])
def test_bad_inputs_give_clear_errors(expert, wavs, message):
    with pytest.raises(ValueError, match=message):
        expert(wavs)


def test_a_clip_shorter_than_one_analysis_window_still_gives_a_frame(expert):
    with torch.no_grad():
        out = expert(waves(100))
    assert out["hidden_states"][0].shape[:2] == (1, 1)


def test_launcher_fills_in_config_and_device():
    argv = complete_argv(["-m", "train", "-u", "mamclap", "-k", "x", "-d", "speech_commands", "-p", "e"])
    assert argv[argv.index("-c") + 1].endswith("superb_upstream/configs/speech_commands.yaml")
    if not torch.cuda.is_available():
        assert argv[argv.index("--device") + 1] == "cpu"
    resumed = complete_argv(["-m", "evaluate", "-e", "e/states-2.ckpt", "--device", "cuda"])
    assert "-c" not in resumed and resumed.count("--device") == 1
    assert "-c" not in complete_argv(["-m", "train", "-d", "asr"])  # no config of ours: s3prl's default
    explicit = complete_argv(["-m", "train", "-d", "voxceleb1", "--config=mine.yaml"])
    assert "-c" not in explicit


def test_launcher_registers_our_upstreams_without_importing_every_other():
    """s3prl picks the upstream with getattr(s3prl.hub, name); ours resolve without s3prl's full hub
    (which imports transformers and every other upstream)."""
    code = ("import sys\n"
            "from superb_upstream.run_downstream import prepare\n"
            "prepare()\n"
            "from s3prl import hub\n"
            "import s3prl.downstream.runner\n"
            "from superb_upstream.hubconf import mamclap, mamclap_local\n"
            "assert hub.mamclap is mamclap and getattr(hub, 'mamclap_local') is mamclap_local\n"
            "assert sys.modules['s3prl.hub'] is hub and 'transformers' not in sys.modules\n"
            "print('registered')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr[-2000:]


def test_results_helpers(tmp_path):
    (tmp_path / "test_predict.txt").write_text("a yes\nb no\nc up\n")
    (tmp_path / "test_truth.txt").write_text("a yes\nb yes\nc up\n")
    assert read_test_accuracy(tmp_path) == (pytest.approx(2 / 3), 3)
    (tmp_path / "test_truth.txt").write_text("a yes\n")
    with pytest.raises(ValueError, match="different utterances"):
        read_test_accuracy(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        best_checkpoint(tmp_path)
    for step in (2, 10, 4):
        (tmp_path / f"states-{step}.ckpt").touch()
    assert best_checkpoint(tmp_path).name == "states-10.ckpt"
    (tmp_path / "dev-best.ckpt").touch()
    assert best_checkpoint(tmp_path).name == "dev-best.ckpt"
    with pytest.raises(FileNotFoundError, match="iden_split.txt"):
        data_overrides("voxceleb1", tmp_path)
    with pytest.raises(FileNotFoundError, match="train"):
        data_overrides("speech_commands", tmp_path)


# ---- end to end on the kit's tiny layouts ----


@pytest.fixture
def layouts(tiny_superb) -> Path:
    """The session's tiny SUPERB layouts (conftest.py)."""
    return tiny_superb[0]


def test_voxceleb1_file_lists_follow_the_data(layouts, tmp_path, monkeypatch):
    """s3prl caches voxceleb1's split lists; the launcher keys that cache by data, so changed data is reread."""
    monkeypatch.setenv("MAMCLAP_CACHE", str(tmp_path / "cache"))
    prepare()
    from s3prl.downstream.voxceleb1.dataset import SpeakerClassifiDataset

    root = layouts / "voxceleb1"
    lines = (root / "iden_split.txt").read_text().splitlines()
    full = SpeakerClassifiDataset("test", root, str(root / "iden_split.txt"))
    assert len(full) == sum(line.startswith("3 ") for line in lines)
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("\n".join(line for line in lines if not line.startswith("3 "))
                     + "\n" + next(line for line in lines if line.startswith("3 ")) + "\n")
    assert len(SpeakerClassifiDataset("test", root, str(fewer))) == 1
    assert len(list((tmp_path / "cache" / "s3prl_voxceleb1").iterdir())) == 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["speech_commands", "voxceleb1"])
def test_superb_eval_trains_evaluates_and_writes_results(task, layouts, export, tmp_path, monkeypatch):
    """`mamclap superb eval`: s3prl -m train for a few steps, then -m evaluate on the chosen checkpoint; the
    test accuracy we read from s3prl's prediction files is the one s3prl logged."""
    from training.cli import main
    from training.eval.results import load_results

    monkeypatch.setenv("MAMCLAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results" / "tiny.json"
    expdir = tmp_path / "runs"
    args = ["superb", "eval", "--model", str(export), "--data-root", str(layouts), "--name", "tiny-random",
            "--out", str(out), "--task", task, "--steps", "2", "--expdir", str(expdir),
            "-o", "config.downstream_expert.datarc.num_workers=0"]
    assert main(args) == 0
    doc = load_results(out)
    assert doc["harness"] == "superb" and doc["model"] == "tiny-random" and list(doc["tasks"]) == [task]
    if task == "speech_commands":
        n_test = len(list((layouts / task / "test").glob("*/*.wav")))
    else:
        n_test = sum(line.startswith("3 ") for line in (layouts / task / "iden_split.txt").read_text().splitlines())
    entry = doc["tasks"][task]
    assert entry["metric"] == "top1_acc" and entry["n_test"] == n_test and entry["group"] == "speech"
    assert 0.0 <= entry["score"] <= 1.0
    log = (expdir / task / "log.log").read_text()
    assert re.search(r"^train at step 2: ", log, re.M) and re.search(r"^dev at step 2: ", log, re.M)
    logged = float(re.search(r"^test at step 0: (\S+)$", log, re.M).group(1))
    assert entry["score"] == pytest.approx(logged)
    assert (expdir / task / entry["extra"]["checkpoint_evaluated"]).is_file()
    # A second run into the same folder is refused rather than mixing checkpoints of two runs.
    assert main(args) == 2
    shutil.rmtree(expdir)


def test_superb_eval_records_failing_tasks(export, tmp_path):
    """A task whose data is missing gets an error entry, the next task still runs, the file is written."""
    from training.cli import main
    from training.eval.results import load_results

    (tmp_path / "data").mkdir()
    out = tmp_path / "r.json"
    rc = main(["superb", "eval", "--model", str(export), "--data-root", str(tmp_path / "data"), "--name", "t",
               "--out", str(out), "--task", "voxceleb1", "speech_commands", "--expdir", str(tmp_path / "runs")])
    assert rc == 1
    tasks = load_results(out)["tasks"]
    assert tasks["voxceleb1"]["score"] is None and "iden_split.txt" in tasks["voxceleb1"]["error"]
    assert tasks["speech_commands"]["score"] is None and "test" in tasks["speech_commands"]["error"]
