"""The Debian sources of the source bank: synthesizers installed with apt-get, data packages fetched and
unpacked into the cache (never installed); and the Debian programs the test suite drives (TEST_TOOLS).

    cache/debs/<package>_<version>_all.deb      `apt-get download`
    cache/debroot/<package>/usr/share/...       `dpkg-deb -x`, then a marker file .mamclap.json (version,
                                                licence, deb size) written last, so a half-unpacked tree
                                                is never taken for a finished one

setup() is idempotent: when every tool is installed and every package unpacked it reads a few small files
and returns (it runs on every `make test`); otherwise it fetches what is missing (running `apt-get update`
first when apt has no package lists or a download fails). When another apt or dpkg holds the lock (an
unattended upgrade, a second terminal), apt-get fails at once: setup waits for it, up to LOCK_TIMEOUT_S, and
then names the process that holds it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from hear_mamclap import atomic
from hear_mamclap.errors import UserError

log = logging.getLogger(__name__)

SETUP_HINT = "run `make setup` or `mamclap data setup`"
MARKER = ".mamclap.json"

# Debian package -> what the bank uses it for. Installed with apt-get (they are programs and libraries).
SYSTEM_TOOLS: dict[str, str] = {
    "espeak-ng": "formant speech synthesis: keyword and _unknown_ words in many voices, variants and pitches",
    "flite": "diphone/cluster voices kal16, awb, rms, slt (16 kHz)",
    "libfluidsynth3": "renders soundfont notes through pyfluidsynth (built with libinstpatch/libsndfile: "
                      "reads .sf3)",
}

# Debian package -> what the tests use it for. Installed with the tools, but not recorded in a bank's
# provenance (tool_versions() defaults to SYSTEM_TOOLS): they make no sound.
TEST_TOOLS: dict[str, str] = {
    "chromium": "headless browser: tests/test_leaderboard_html.py renders the HTML leaderboard, clicks it",
    "texlive-latex-base": "pdflatex: tests/test_table_formats.py compiles the LaTeX tables",
    "texlive-latex-recommended": "booktabs, which the LaTeX tables use",
}

# Data-only Debian package -> (licence as its debian/copyright states it, what the bank takes from it).
# fluid-soundfont-gm is left out on purpose: fluidr3mono-gm-soundfont carries the same FluidR3 samples
# (mono) at a sixth of the download, and two near-identical soundfonts would leak across a soundfont split.
DATA_PACKAGES: dict[str, tuple[str, str]] = {
    "ktuberling-data": ("GPL-2+", "words read by one real speaker per language (26 languages)"),
    "tuxpaint-stamps-default": ("GPL-2+", "stamp descriptions read by real speakers (9 languages); animal, "
                                          "tool and household recordings"),
    "hedgewars-data": ("GPL-2 / various free", "15 recorded voice packs (phrases); game effects"),
    "timgm6mb-soundfont": ("GPL-2", "TimGM6mb.sf2 General MIDI soundfont"),
    "musescore-general-soundfont-small": ("MIT", "MuseScore_General_Lite.sf3 General MIDI soundfont"),
    "fluidr3mono-gm-soundfont": ("MIT", "FluidR3Mono_GM.sf3 General MIDI soundfont"),
    "hydrogen-drumkits": ("GPL-2+ / CC-BY / CC0 per kit", "14 drum kits, drumkit.xml names every sample"),
    "hydrogen-data": ("GPL-2+", "GMRockKit and TR808EmulationKit drum kits"),
    "minetest-data": ("CC-BY-SA-3.0 / CC0 per file", "footsteps by material, doors, glass, fire, water, "
                                                     "digging, explosions"),
    "wesnoth-1.16-data": ("GPL-2+", "ambient loops (birds, night, campfire, ship), animals, weapons"),
    "sound-theme-freedesktop": ("GPL-2+ / CC-BY-SA / CC-BY", "bells, alarms, phone and desktop sounds"),
}


LOCK_TIMEOUT_S = 600.0  # how long apt commands wait for another apt or dpkg to release its lock
LOCK_POLL_S = 5.0


class SetupError(UserError, RuntimeError):
    """A tool or package the bank needs is missing and cannot be fetched here (a UserError: `mamclap` reports
    it in one line)."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _lock_holder(stderr: str) -> str | None:
    """"<lock file> is held by process N (name)" when apt-get failed because another process holds its lock."""
    if "Could not get lock" not in stderr:
        return None
    lock = re.search(r"Could not get lock (\S+?)\.?(?:\s|$)", stderr)
    held = re.search(r"held by process (\d+) \(([^)]*)\)", stderr)
    return (f"{lock.group(1) if lock else 'the apt lock'} is held by "
            + (f"process {held.group(1)} ({held.group(2)})" if held else "another process"))


def _apt(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an apt-get command; while another process holds the apt or dpkg lock, try again every LOCK_POLL_S
    seconds, up to LOCK_TIMEOUT_S, then a SetupError naming the holder."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waiting = False
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        holder = _lock_holder(r.stderr) if r.returncode != 0 else None
        if holder is None:
            return r
        if time.monotonic() >= deadline:
            raise SetupError(f"`{' '.join(cmd)}`: {holder}, still after {LOCK_TIMEOUT_S:.0f} s; let it finish "
                             f"(or stop it), then {SETUP_HINT} again")
        if not waiting:
            log.info("%s: waiting up to %.0f s for it to finish", holder, LOCK_TIMEOUT_S)
            waiting = True
        time.sleep(LOCK_POLL_S)


def tool_versions(names=tuple(SYSTEM_TOOLS)) -> dict[str, str | None]:
    """Installed version of each Debian package (None when not installed)."""
    out = _run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status} ${Version}\n", *names])
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "installed":
            found[parts[0].split(":")[0]] = parts[2]
    return {n: found.get(n) for n in names}


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_update() -> None:
    log.info("apt-get update")
    r = _apt(["apt-get", "update"])
    if r.returncode != 0:
        raise SetupError(f"`apt-get update` failed:\n{r.stderr.strip()[-2000:]}")


def _apt_has_lists() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(p.name.endswith(("_Packages", "_Packages.lz4", "_Packages.gz", "_Packages.xz"))
                                  for p in lists.iterdir())


def ensure_tools(names=tuple(SYSTEM_TOOLS)) -> dict[str, str]:
    """apt-get install the missing tools; without root, a SetupError naming the command to run."""
    versions = tool_versions(names)
    missing = [n for n, v in versions.items() if v is None]
    if missing:
        cmd = "apt-get install -y --no-install-recommends " + " ".join(missing)
        if not _is_root():
            raise SetupError(f"missing Debian packages {missing}: run `sudo {cmd}` (or {SETUP_HINT} as root)")
        if not _apt_has_lists():
            _apt_update()
        log.info(cmd)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = _apt(cmd.split(), env=env)
        if r.returncode != 0:  # stale lists are the usual cause: update once and retry
            _apt_update()
            r = _apt(cmd.split(), env=env)
        if r.returncode != 0:
            raise SetupError(f"`{cmd}` failed:\n{r.stderr.strip()[-2000:]}")
        versions = tool_versions(names)
    return {n: v for n, v in versions.items() if v is not None}


def _download(name: str, debs: Path) -> Path:
    """The cached .deb of a package, downloaded with `apt-get download` when absent."""
    def cached() -> list[Path]:
        return sorted(debs.glob(f"{name}_*.deb"))
    if not cached():
        debs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:  # no half .deb in debs/
            r = _run(["apt-get", "download", name], cwd=Path(tmp))
            if r.returncode != 0 and _is_root():
                _apt_update()
                r = _run(["apt-get", "download", name], cwd=Path(tmp))
            if r.returncode != 0:
                raise SetupError(f"`apt-get download {name}` failed ({SETUP_HINT} on a machine that "
                                 f"reaches a Debian mirror):\n{r.stderr.strip()[-2000:]}")
            for p in Path(tmp).glob("*.deb"):
                p.rename(debs / p.name)
    found = cached()
    if not found:
        raise SetupError(f"`apt-get download {name}` left no .deb in {debs}")
    return found[-1]


def _unpack(name: str, deb: Path, debroot: Path) -> dict:
    field = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if field.returncode != 0:
        raise SetupError(f"{deb} is not a readable .deb ({field.stderr.strip()}): delete it and {SETUP_HINT}")
    info = {"package": name, "version": field.stdout.strip(), "license": DATA_PACKAGES[name][0],
            "deb": deb.name, "deb_bytes": deb.stat().st_size}
    atomic.remove_stale(debroot / name)
    with atomic.directory(debroot / name) as tmp:
        r = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if r.returncode != 0:
            raise SetupError(f"`dpkg-deb -x {deb}` failed: {r.stderr.strip()}")
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
    return info


def package_info(name: str, cache_dir: Path) -> dict:
    """The marker of an unpacked package: version, licence, deb file and size."""
    marker = Path(cache_dir) / "debroot" / name / MARKER
    if not marker.is_file():
        raise SetupError(f"Debian package {name} is not unpacked under {Path(cache_dir) / 'debroot'}: "
                         f"{SETUP_HINT}")
    return json.loads(marker.read_text())


def package_root(name: str, cache_dir: Path) -> Path:
    """The extracted tree of a data package (its files lie under usr/share/...)."""
    package_info(name, cache_dir)
    return Path(cache_dir) / "debroot" / name


def setup(cache_dir: Path, install_tools: bool = True, packages=tuple(DATA_PACKAGES)) -> dict:
    """Install the tools and the test tools (install_tools=True) and fetch and unpack the data packages into
    cache_dir.

    Returns {"tools": {package: version}, "packages": {package: marker}, "downloaded_bytes",
    "seconds"}; when everything is present it returns in well under a second without the network.
    """
    t0 = time.time()
    cache_dir = Path(cache_dir)
    names = (*SYSTEM_TOOLS, *TEST_TOOLS)
    tools = ensure_tools(names) if install_tools else {n: v for n, v in tool_versions(names).items() if v is not None}
    debs, debroot = cache_dir / "debs", cache_dir / "debroot"
    debroot.mkdir(parents=True, exist_ok=True)
    infos, downloaded = {}, 0
    for name in packages:
        if name not in DATA_PACKAGES:
            raise ValueError(f"unknown data package {name!r}; known: {sorted(DATA_PACKAGES)}")
        if (debroot / name / MARKER).is_file():
            infos[name] = package_info(name, cache_dir)
            continue
        had = {p.name for p in debs.glob(f"{name}_*.deb")} if debs.is_dir() else set()
        t = time.time()
        deb = _download(name, debs)
        if deb.name not in had:
            downloaded += deb.stat().st_size
            log.info("downloaded %s (%.1f MB, %.1f s)", deb.name, deb.stat().st_size / 1e6, time.time() - t)
        infos[name] = _unpack(name, deb, debroot)
        log.info("unpacked %s %s", name, infos[name]["version"])
    return {"tools": tools, "packages": infos, "downloaded_bytes": downloaded, "seconds": round(time.time() - t0, 2)}
