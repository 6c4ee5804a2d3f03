"""The cibuildwheel command line and environment of one run: a pure function.

`compose(base_env, run, options)` is all the builder decides about a run; the
process control (builder/process.py) only executes it. The matrix reaches
cibuildwheel through CIBW_* variables, never by editing the project's own
pyproject.toml: the configured command (`[builder] cibuildwheel`) gets
`--platform`, `--output-dir` and the sdist appended.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from proxy.config import BuilderConfig, BuildOptions
from proxy.platforms import Identifier

JOB_LABEL = "pythonbuild.job"


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """How one project is built: what a job carries besides its identifiers."""

    environment: str = ""  # CIBW_ENVIRONMENT syntax
    before_build: str = ""
    test_command: str = ""  # empty: import the wheel's top-level modules

    @classmethod
    def of(cls, options: BuildOptions) -> Recipe:
        return cls(
            environment=options.environment,
            before_build=options.before_build,
            test_command=options.test_command,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class CibwOptions:
    """What this build host says about every run: its command, index, engine and images."""

    command: tuple[str, ...]  # e.g. (sys.executable, "-m", "cibuildwheel")
    proxy_url: str  # the index build dependencies come through
    container_engine: str  # CIBW_CONTAINER_ENGINE, before the job label is added
    images: Mapping[str, str] = field(default_factory=dict)  # platform -> image

    @classmethod
    def of(cls, builder: BuilderConfig) -> CibwOptions:
        return cls(
            command=builder.cibuildwheel,
            proxy_url=str(builder.proxy_url),
            container_engine=builder.container_engine,
            images=builder.images,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupRun:
    """One cibuildwheel run: identifiers of one project version, one OS and one arch."""

    project: str
    sdist: Path
    identifiers: tuple[Identifier, ...]
    recipe: Recipe
    output_dir: Path
    label: str  # unique per run; every container it starts carries it

    def __post_init__(self) -> None:
        groups = {(i.os, i.arch) for i in self.identifiers}
        if len(groups) != 1:
            raise ValueError(f"one run builds one OS and arch, not {sorted(groups)}")

    @property
    def os(self) -> str:
        return self.identifiers[0].os

    @property
    def arch(self) -> str:
        return self.identifiers[0].arch


@dataclass(frozen=True, kw_only=True, slots=True)
class Invocation:
    command: tuple[str, ...]
    env: Mapping[str, str]

    def header(self) -> str:
        """The log's first lines: what ran, with the variables that matter to cibuildwheel."""
        lines = [f"# {shlex.join(self.command)}"]
        lines += [f"# {k}={v}" for k, v in sorted(self.env.items()) if k.startswith("CIBW_")]
        return "\n".join(lines) + "\n"


def default_test_command(project: str) -> str:
    """Import the wheel's top-level modules (top_level.txt, else its RECORD).

    No braces: cibuildwheel expands {project}/{package} placeholders in it.
    """
    code = (
        "import importlib, importlib.metadata as md; "
        f"d = md.distribution('{project}'); "
        "names = (d.read_text('top_level.txt') or '').split() or sorted(set("
        "p.parts[0].split('.')[0] for p in (d.files or ()) "
        "if not p.parts[0].endswith(('.dist-info', '.data', '.libs')) "
        "and (len(p.parts) > 1 or p.suffix in ('.py', '.so', '.pyd')))); "
        "[importlib.import_module(n) for n in names]; print('imported', *names)"
    )
    return f'python -c "{code}"'


def labelled_engine(configured: str, label: str) -> str:
    """The configured engine, with a label on every container so a stop can find them."""
    name, _, rest = configured.partition(";")
    create_args = ""
    match = re.search(r"create_args:\s*(.*)", rest)
    if match:
        create_args = match.group(1).strip()
    return f"{name.strip()}; create_args: --label {JOB_LABEL}={label} {create_args}".rstrip()


def engine_name(configured: str) -> str:
    return configured.split(";", 1)[0].strip()


def _clean(base_env: Mapping[str, str]) -> dict[str, str]:
    # The operator's own CIBW_* settings would change what we build behind the plan's back.
    return {k: v for k, v in base_env.items() if not k.startswith("CIBW_")}


def compose(base_env: Mapping[str, str], run: GroupRun, options: CibwOptions) -> Invocation:
    """The command and environment that build `run`'s identifiers into its output folder."""
    env = _clean(base_env)
    environment = f"PIP_INDEX_URL={shlex.quote(options.proxy_url)} {run.recipe.environment}"
    env.update(
        CIBW_BUILD=" ".join(str(i) for i in run.identifiers),
        CIBW_ARCHS=run.arch,
        CIBW_ENVIRONMENT=environment.strip(),
        CIBW_TEST_COMMAND=run.recipe.test_command or default_test_command(run.project),
        CIBW_BUILD_VERBOSITY="1",
    )
    if run.os == "linux":
        env["CIBW_CONTAINER_ENGINE"] = labelled_engine(options.container_engine, run.label)
    if run.recipe.before_build:
        env["CIBW_BEFORE_BUILD"] = run.recipe.before_build
    for identifier in run.identifiers:
        image = options.images.get(identifier.platform)
        if image:
            family = identifier.platform.split("_", 1)[0].upper()
            env[f"CIBW_{family}_{identifier.arch.upper()}_IMAGE"] = image
    command = (
        *options.command,
        "--platform",
        run.os,
        "--output-dir",
        str(run.output_dir),
        str(run.sdist),
    )
    return Invocation(command=command, env=MappingProxyType(env))
