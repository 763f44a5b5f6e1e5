"""requirements.lock (what `scripts/install` installs through by default) is in sync with
pyproject.toml: every dependency, of the package and of each extra, is pinned to one exact version
that its specifier admits. A failure here means: run `scripts/lock` and commit the result."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock line {n} is not NAME==VERSION: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"requirements.lock pins {name} twice"
        pins[key] = Version(version)
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(f"extra {extra!r}", Requirement(r)) for r in items]
    return reqs


def test_every_dependency_is_pinned_within_its_specifier() -> None:
    pins = _pins()
    problems = []
    for where, req in _requirements():
        if canonicalize_name(req.name) == "vlmsweep":  # an extra that names other extras
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} ({where}) is not in requirements.lock")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req} ({where}) does not admit the locked {req.name}=={pin}")
    assert not problems, "run scripts/lock: " + "; ".join(problems)


def test_the_lock_keeps_the_cpu_torch_that_installs_here() -> None:
    assert _pins()["torch"] <= Version("2.13.0")
