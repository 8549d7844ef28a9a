"""Debian packages behind the demo corpus: data packages are fetched with `apt-get download` and
unpacked with `dpkg-deb -x` into a cache (no install); the synthesis programs are installed with
apt-get when missing. Each package's version and licence come from the package itself."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass

from spear_fast.errors import UserError

# Data packages (unpacked into the cache) and what each gives the corpus.
DATA_PACKAGES: dict[str, str] = {
    "hedgewars-data": "voice packs: real human speech, one speaker per pack",
    "fluid-soundfont-gm": "FluidR3_GM.sf2: General MIDI instruments (training soundfont)",
    "timgm6mb-soundfont": "TimGM6mb.sf2: General MIDI instruments (held-out probe soundfont)",
    "hydrogen-drumkits": "Hydrogen drum kits: real drum samples",
    "sonic-pi-samples": "Sonic Pi samples: real recorded sounds and loops",
    "wamerican": "American English word list (text for the synthetic speech)",
    # Real recorded speech for the spoken-content probes' test side (telephone band, 8 kHz).
    "asterisk-core-sounds-en-wav": "Asterisk prompts, US English (Allison): digits, ICAO alphabet, letters",
    "asterisk-core-sounds-es-wav": "Asterisk prompts, Mexican Spanish (Allison): ICAO alphabet",
    "asterisk-core-sounds-fr-wav": "Asterisk prompts, Canadian French (June): ICAO alphabet",
    "asterisk-core-sounds-ru-wav": "Asterisk prompts, Russian: ICAO alphabet",
    "asterisk-prompt-it-menardi-wav": "Asterisk prompts, Italian (Menardi): ICAO alphabet",
}
# Programs run during the build: (executable, Debian package).
PROGRAM_PACKAGES: dict[str, str] = {"espeak-ng": "espeak-ng", "flite": "flite", "fluidsynth": "fluidsynth"}
CACHE_ENV = "SPEAR_DEMO_CACHE"
# The licence of the files the corpus uses, summarised from each package's debian/copyright, with a
# phrase that must occur in that file (checked at build time: a package whose copyright no longer
# says so is recorded as "unverified", pointing at the copied copyright file).
LICENCE_SUMMARIES: dict[str, tuple[str, str]] = {
    "hedgewars-data": ("GFDL-1.3 (Files: share/hedgewars/Data/Sounds/*)",
                       "Files: share/hedgewars/Data/Sounds/*\nCopyright:"),
    "fluid-soundfont-gm": ("MIT", "I hereby release Fluid under the MIT license"),
    "timgm6mb-soundfont": ("GPL-2 (Files: TimGM6mb.sf2)", "Files: TimGM6mb.sf2"),
    "hydrogen-drumkits": ("per kit: GPL-2 / CC-BY-SA-3.0 / CC-BY-3.0 / CC0 (see each kit's licence)",
                          "Files: drumkits/"),
    "sonic-pi-samples": ("MIT (Files: *)", "Files: *\nCopyright: 2016 Samuel Aaron"),
    "wamerican": ("SCOWL permissive licence (use, copy, modify, distribute, sell)",
                  "Permission to use, copy, modify, distribute and sell these word"),
    # The four core-sounds packages share one debian/copyright (a section per language).
    "asterisk-core-sounds-en-wav": ("CC-BY-SA-3.0 (Files: *, recorded by Allison Smith)",
                                    "Files: *\nCopyright: 2003-2010, Allison Smith"),
    "asterisk-core-sounds-es-wav": ("CC-BY-SA-3.0 (Files: *, recorded by Allison Smith)",
                                    "Files: *\nCopyright: 2003-2010, Allison Smith"),
    "asterisk-core-sounds-fr-wav": ("CC-BY-SA-3.0 (Files: fr-*, recorded by June Wallack)",
                                    "Files: fr-*\nCopyright: 2006-2008, June Wallack\nLicense: CC-BY-SA-3.0"),
    "asterisk-core-sounds-ru-wav": ("CC-BY-3.0 (Files: ru-*, provided by Maxim Topal)",
                                    "Files: ru-*\nCopyright: 2010, Maxim"),
    "asterisk-prompt-it-menardi-wav": ("CC-BY-SA-3.0 (Italian)", "Creative Commons Attribution Share Alike 3.0 Italian"),
    "espeak-ng": ("GPL-3+", "either version 3 of the License"),
    "flite": ("CMU/Edinburgh permissive (BSD-like) licence",
              "Permission is hereby granted, free of charge, to use and distribute"),
    "fluidsynth": ("LGPL-2.1+", "License: LGPL-2.1+"),
}


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    root: str  # directory the package's files live under ("/" for installed programs)
    licences: list[str]  # License: fields of its debian/copyright, in order of first appearance
    copyright_path: str
    role: str
    licence: str  # summary for the files the corpus uses (LICENCE_SUMMARIES, checked)

    def to_json(self) -> dict:
        return asdict(self)


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "spear-fast")


def licences_of(copyright_path: str) -> list[str]:
    """The distinct `License:` short names of a machine-readable debian/copyright file."""
    if not os.path.exists(copyright_path):
        return []
    names: list[str] = []
    with open(copyright_path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^License:\s*(.*)$", line)
        if not match:
            continue
        name = match.group(1).strip()
        if name and name not in names:  # (free-form files give the licence as text: skipped)
            names.append(name)
    return names


def licence_summary(name: str, copyright_path: str) -> str:
    summary, phrase = LICENCE_SUMMARIES[name]
    text = ""
    if os.path.exists(copyright_path):
        with open(copyright_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    if phrase not in text:
        return f"unverified (debian/copyright changed): see licenses/{name}.copyright"
    return summary


def _run(command: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _download_deb(name: str, deb_dir: str) -> str:
    """The cached .deb of `name`, downloaded first when absent (into a temp dir, then moved)."""
    os.makedirs(deb_dir, exist_ok=True)
    found = sorted(glob.glob(os.path.join(deb_dir, f"{name}_*.deb")))
    if found:
        return found[-1]
    tmp = os.path.join(deb_dir, f".download-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        result = _run(["apt-get", "download", name], cwd=tmp)
        if result.returncode != 0:
            print(f"[prepare-demo] apt-get download {name} failed; running apt-get update", file=sys.stderr)
            _run(["apt-get", "update"])
            result = _run(["apt-get", "download", name], cwd=tmp)
        fetched = sorted(glob.glob(os.path.join(tmp, f"{name}_*.deb")))
        if result.returncode != 0 or not fetched:
            raise RuntimeError(f"could not download the Debian package {name!r} "
                               f"(apt-get download: {result.stderr.strip()[-400:]})")
        target = os.path.join(deb_dir, os.path.basename(fetched[-1]))
        os.replace(fetched[-1], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_data_package(name: str, cache_dir: str | None = None) -> PackageInfo:
    """Download (once) and unpack (once) a data package; returns where its files are."""
    if name not in DATA_PACKAGES:
        raise ValueError(f"unknown demo data package {name!r}; known: {sorted(DATA_PACKAGES)}")
    cache_dir = cache_dir or default_cache_dir()
    deb = _download_deb(name, os.path.join(cache_dir, "debs"))
    version = _run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    if not version:
        raise RuntimeError(f"{deb}: not a readable Debian package")
    root = os.path.join(cache_dir, "extracted", f"{name}_{version}")
    if not os.path.exists(os.path.join(root, ".complete")):
        tmp = f"{root}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        result = _run(["dpkg-deb", "-x", deb, tmp])
        if result.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()[-400:]}")
        open(os.path.join(tmp, ".complete"), "w").close()
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    copyright_path = os.path.join(root, "usr", "share", "doc", name, "copyright")
    return PackageInfo(name, version, root, licences_of(copyright_path), copyright_path,
                       DATA_PACKAGES[name], licence_summary(name, copyright_path))


def ensure_programs() -> list[PackageInfo]:
    """Install espeak-ng, flite and fluidsynth with apt-get when missing (needs root)."""
    missing = [pkg for exe, pkg in PROGRAM_PACKAGES.items() if shutil.which(exe) is None]
    if missing:
        print(f"[prepare-demo] installing missing synthesis programs: apt-get install -y "
              f"{' '.join(missing)}", file=sys.stderr)
        result = _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
        if result.returncode != 0:
            _run(["apt-get", "update"])
            result = _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
        still = [pkg for exe, pkg in PROGRAM_PACKAGES.items() if shutil.which(exe) is None]
        if still:
            raise UserError(f"the demo corpus needs the programs {still}; install them with "
                            f"`apt-get install -y {' '.join(still)}` (apt-get said: "
                            f"{result.stderr.strip()[-400:]})")
    infos = []
    for exe, pkg in PROGRAM_PACKAGES.items():
        version = _run(["dpkg-query", "-W", "-f", "${Version}", pkg]).stdout.strip() or "unknown"
        copyright_path = f"/usr/share/doc/{pkg}/copyright"
        infos.append(PackageInfo(pkg, version, "/", licences_of(copyright_path), copyright_path,
                                 f"program `{exe}` (synthesis)", licence_summary(pkg, copyright_path)))
    return infos
