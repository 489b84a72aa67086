"""deploy/: the systemd units of each process kind and the sample environment.

Each unit is verified by systemd itself (``systemd-analyze verify``, with the
install paths pointed at this checkout) when it is there, and read here in any
case: its command runs an entry point that exists, and every variable a unit or
an environment file names is one the units set or the settings read."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
KINDS = {"pacs-web.service", "pacs-listener@.service", "pacs-worker@.service", "pacs-beat.service"}
# The instance environment files of each template unit.
INSTANCES = {"pacs-listener@.service": "listener", "pacs-worker@.service": "worker"}
UNIT_ONLY_HEADER = "# --- Read by the units' command lines"


def _unit(path: Path) -> dict[str, list[str]]:
    """The unit's ``Section.Key`` → values (a key may repeat, as EnvironmentFile does)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}: {line!r}"
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{path.name}: {line!r} is not Key=value in a section"
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def _env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """The file's variables, and those of them after the unit-only header."""
    variables, unit_only, after = {}, set(), False
    for line in path.read_text().splitlines():
        if line.startswith(UNIT_ONLY_HEADER):
            after = True
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}: {line!r}"
        variables[name] = value
        if after:
            unit_only.add(name)
    return variables, unit_only


def _settings_read() -> tuple[set[str], set[str]]:
    """The variables pacs/settings.py reads, and those it reads as secrets (``NAME_FILE`` too)."""
    text = (REPO / "pacs" / "settings.py").read_text()
    names = set(re.findall(r'env_[a-z]+\("([A-Z][A-Z0-9_]*)"', text))
    secrets = set(re.findall(r'env_secret\("([A-Z][A-Z0-9_]*)"', text))
    # _archive_storage(kind) reads PACS_<KIND>_... for the long-term and preservation tiers.
    for kind in re.findall(r'_archive_storage\("([a-z]+)"\)', text):
        names |= {f"PACS_{kind.upper()}_{suffix}" for suffix in ("S3_BUCKET", "S3_PREFIX", "TIER_DIR")}
    assert {"DATABASE_URL", "PACS_DICOM_FACILITIES", "PACS_LONGTERM_S3_BUCKET"} <= names
    return names, secrets


def test_every_process_kind_has_its_unit() -> None:
    assert {p.name for p in UNITS} == KINDS
    for path in UNITS:
        unit = _unit(path)
        assert unit["Service.User"] == ["pacs"], path.name
        assert unit["Service.WorkingDirectory"] == ["/opt/pacs"], path.name
        assert unit["Service.EnvironmentFile"][0] == "/etc/pacs/pacs.env", path.name
        assert len(unit["Service.ExecStart"]) == 1, path.name
        assert unit["Install.WantedBy"] == ["multi-user.target"], path.name
        if path.name in INSTANCES:
            assert unit["Service.EnvironmentFile"][1] == f"/etc/pacs/{INSTANCES[path.name]}/%i.env"


def test_each_command_runs_an_entry_point_that_exists() -> None:
    venv_bin = Path(sys.executable).parent
    commands = {path.name: _unit(path)["Service.ExecStart"][0].split() for path in UNITS}
    for name, argv in commands.items():
        assert argv[0].startswith("/opt/pacs/.venv/bin/"), name
        assert (venv_bin / Path(argv[0]).name).exists(), f"{name}: {argv[0]} is not installed by requirements.txt"
    assert commands["pacs-web.service"][1] == "pacs.wsgi" and (REPO / "pacs" / "wsgi.py").exists()
    assert commands["pacs-listener@.service"][1:] == ["/opt/pacs/manage.py", "dicom_listener"]
    assert (REPO / "archive" / "management" / "commands" / "dicom_listener.py").exists()
    for name in ("pacs-worker@.service", "pacs-beat.service"):
        assert commands[name][1:3] == ["-A", "pacs"] and (REPO / "pacs" / "celery.py").exists()
    assert commands["pacs-worker@.service"][3] == "worker" and commands["pacs-beat.service"][3] == "beat"


def test_every_variable_is_set_for_the_units_and_read_by_the_settings() -> None:
    read, secrets = _settings_read()
    shared, unit_only = _env_file(DEPLOY / "pacs.env.example")
    instance_files = {kind: sorted((DEPLOY / folder).glob("*.env.example")) for kind, folder in INSTANCES.items()}
    used_by_units: set[str] = set()
    for path in UNITS:
        command = _unit(path)["Service.ExecStart"][0]
        for name in set(re.findall(r"\$\{(\w+)\}", command)):
            used_by_units.add(name)
            files = instance_files.get(path.name, [])
            assert files or name in shared, f"{path.name}: {name} is set nowhere"
            for file in files:
                assert name in _env_file(file)[0] or name in shared, f"{file.name}: {name} missing"
    for file in [DEPLOY / "pacs.env.example", *(f for files in instance_files.values() for f in files)]:
        variables, only = _env_file(file)
        for name, value in variables.items():
            if name in only or name in used_by_units:
                assert name in used_by_units, f"{file.name}: {name} is used by no unit"
            elif name.endswith("_FILE") and name.removesuffix("_FILE") in secrets:
                assert value.startswith("/etc/pacs/secrets/"), f"{file.name}: {name}"
            else:
                assert name in read, f"{file.name}: {name} is not a setting"
                assert name not in secrets or name == "DATABASE_URL", (
                    f"{file.name}: {name} is a secret: use {name}_FILE"
                )
    assert unit_only <= used_by_units


def test_the_worker_examples_cover_every_queue() -> None:
    """The sample layout leaves no kind of work without a worker."""
    from kernel import tasknames

    served: set[str] = set()
    for file in (DEPLOY / "worker").glob("*.env.example"):
        served |= set(_env_file(file)[0]["PACS_WORKER_QUEUES"].split(","))
    queues = {("pacs" if kind == "default" else kind) for kind in tasknames.QUEUES}
    assert served == queues


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_every_unit(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    paths = []
    for path in UNITS:
        text = path.read_text().replace("/opt/pacs/.venv/bin/", f"{venv_bin}/").replace("/opt/pacs", str(REPO))
        # A template is verified as one of its instances.
        target = tmp_path / path.name.replace("@.service", "@example.service")
        target.write_text(text)
        paths.append(str(target))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ignoring" not in proc.stderr, proc.stderr  # a setting systemd could not parse
