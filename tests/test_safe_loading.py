"""No launcher of ours loads a pickle in full that it did not write itself.

Each case runs in a fresh interpreter: the fixes change torch.load for the whole process they run in."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path.cwd()

# A checkpoint whose unpickling runs code: it creates the file named by MARKER.
CRAFT = textwrap.dedent("""
    import sys, torch
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({sys.argv[2]!r}, 'w').write('ran')",))
    torch.save({"Args": Payload(), "Step": 1, "Config": {}}, sys.argv[1])
""")


def _python(code: str, *args: str, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(("-m", code) if module else ("-c", code)), *args]
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # an inherited lift must not survive either
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _crafted(tmp_path: Path) -> tuple[Path, Path]:
    ckpt, marker = tmp_path / "crafted.ckpt", tmp_path / "marker"
    subprocess.run([sys.executable, "-c", CRAFT, str(ckpt), str(marker)], check=True, timeout=120)
    assert not marker.exists()
    return ckpt, marker


@pytest.mark.slow
def test_heareval_process_loads_only_its_own_checkpoints(tmp_path):
    ckpt, marker = _crafted(tmp_path)
    code = textwrap.dedent(f"""
        import io, pickle, torch
        from training.compat import prepare_heareval
        prepare_heareval()
        own = {{"hyper_parameters": {{"optim": torch.optim.Adam, "norm": torch.nn.LayerNorm}}, "epoch": 3}}
        buffer = io.BytesIO()            # Lightning 1.9.5: torch.save into a buffer, then write the bytes out
        torch.save(own, buffer)
        open({str(tmp_path / 'own.ckpt')!r}, "wb").write(buffer.getvalue())
        with open({str(tmp_path / 'own.ckpt')!r}, "rb") as f:   # ... and torch.load from an open file
            assert torch.load(f, map_location="cpu")["hyper_parameters"]["optim"] is torch.optim.Adam
        torch.save(own, {str(tmp_path / 'own2.ckpt')!r})         # heareval: torch.load(path)["epoch"]
        assert torch.load({str(tmp_path / 'own2.ckpt')!r})["epoch"] == 3
        try:
            torch.load({str(ckpt)!r})
        except pickle.UnpicklingError:
            print("refused")
    """)
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout
    assert not marker.exists()


def test_s3prl_launcher_refuses_a_crafted_checkpoint_in_one_line(tmp_path):
    ckpt, marker = _crafted(tmp_path)
    proc = _python("superb_upstream.run_downstream", "-m", "evaluate", "-e", str(ckpt), module=True)
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("run_downstream: refused to load a checkpoint"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_s3prl_checkpoints_still_load_weights_only(tmp_path):
    code = textwrap.dedent(f"""
        import argparse, torch
        from superb_upstream.compat import prepare_s3prl
        prepare_s3prl()
        states = {{"Args": argparse.Namespace(mode="train", expdir="x", seed=1), "Config": {{"a": [1, 2]}},
                   "Step": 5, "Downstream": {{"w": torch.ones(2)}}, "Optimizer": {{"state": {{}}}}}}
        torch.save(states, {str(tmp_path / 'states-5.ckpt')!r})
        back = torch.load({str(tmp_path / 'states-5.ckpt')!r}, map_location="cpu")
        assert back["Args"].seed == 1 and back["Step"] == 5
        try:                              # weights-only even where a caller asks for the full load
            torch.load({str(tmp_path / 'states-5.ckpt')!r}, weights_only=False)
        except Exception:
            pass
        import os
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
        print("ok")
    """)
    proc = _python(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
