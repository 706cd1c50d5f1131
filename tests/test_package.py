"""The published package: txswitchyard's sdist and wheel, installed where nothing else is.

The wheel is built from the sdist (so the sdist is complete), installed in
a fresh virtual environment with the newest dependencies and in another
with the lowest ones setup.cfg allows; in each, twistd finds the plugin,
``switchyard check`` passes every example and ``switchyard explain`` says
what the golden files say. Dependencies come from the same package index
(and cache) as the main install.
"""

from __future__ import annotations

import ast
import configparser
import functools
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

from twisted.trial import unittest

import switchyard
from tests.daemon import REPO

DISTRIBUTION = "txswitchyard"
# What setup.cfg's lower bounds name, pinned (Twisted's oldest is run by scripts/test).
LOWEST = ["service-identity==23.1.0", "pyopenssl==24.0.0", "cryptography==42.0.0",
          "prometheus_client==0.17.0", "zope.interface==6.0", "attrs==22.2.0"]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "_trial_temp*",
                                     "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
                                     ".hypothesis", "dropin.cache", "package-build")


def run(*argv: str, cwd: str | None = None, timeout: float = 300) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                         cwd=cwd, stdin=subprocess.DEVNULL,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if out.returncode != 0:
        raise AssertionError(f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def normalized(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    name = re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    return parser


def requirements(section: str, key: str) -> list[str]:
    return [line.strip() for line in setup_cfg()[section][key].splitlines() if line.strip()]


@functools.cache
def built() -> tuple[str, str]:
    """(sdist, wheel), built once per run from a clean copy of the source."""
    base = os.path.abspath(os.path.join("package-build"))
    shutil.rmtree(base, ignore_errors=True)
    source, dist = os.path.join(base, "source"), os.path.join(base, "dist")
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    # sdist first, then the wheel from the unpacked sdist.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source)
    (sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    return sdist, wheel


def fresh_venv(path: str, *pip_args: str) -> str:
    """A virtual environment with only the wheel (and what it declares); its bin folder."""
    run(sys.executable, "-m", "venv", path)
    bin_dir = os.path.join(path, "bin")
    run(os.path.join(bin_dir, "pip"), "install", "-q", "--disable-pip-version-check",
        built()[1], *pip_args, timeout=600)
    return bin_dir


class DistributionTests(unittest.TestCase):
    timeout = 300

    def test_namedTxswitchyardWithALicense(self) -> None:
        sdist, wheel = built()
        version = switchyard.__version__
        self.assertEqual(os.path.basename(sdist), f"{DISTRIBUTION}-{version}.tar.gz")
        self.assertEqual(os.path.basename(wheel), f"{DISTRIBUTION}-{version}-py3-none-any.whl")
        with tarfile.open(sdist) as tar:
            names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        for needed in ("LICENSE", "README.md", "setup.cfg", "pyproject.toml",
                       "twisted/plugins/switchyard_matchers.py", "switchyard/cli.py"):
            self.assertIn(needed, names)
        with zipfile.ZipFile(wheel) as whl:
            files = set(whl.namelist())
            info = f"{DISTRIBUTION}-{version}.dist-info"
            metadata = whl.read(f"{info}/METADATA").decode()
            entry_points = whl.read(f"{info}/entry_points.txt").decode()
        self.assertTrue({"twisted/plugins/switchyard_matchers.py",
                         "twisted/plugins/switchyard_plugin.py",
                         "twisted/plugins/switchyard_targets.py"} <= files)
        self.assertNotIn("twisted/plugins/__init__.py", files)
        self.assertTrue(any(name.endswith("/LICENSE") for name in files if info in name))
        self.assertIn(f"Name: {DISTRIBUTION}\n", metadata)
        # (An SPDX expression; license classifiers are deprecated.)
        self.assertRegex(metadata, r"\nLicense(-Expression)?: MIT\n")
        self.assertIn("switchyard = switchyard.cli:entry_point", entry_points)
        for requirement in requirements("options", "install_requires"):
            self.assertIn(normalized(requirement), normalized_requires(metadata))


def release(version: str) -> tuple[int, ...]:
    """``6.0`` and ``6`` alike: the release numbers without trailing zeros."""
    numbers = [int(part) for part in version.split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def normalized_requires(metadata: str) -> set[str]:
    return {normalized(line.split(":", 1)[1]) for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line}


class InstalledWheelTests(unittest.TestCase):
    """The wheel alone, in environments that do not see this checkout."""

    timeout = 900

    def assertWorks(self, bin_dir: str) -> None:
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        python = os.path.join(bin_dir, "python")
        where = run(python, "-c", "import switchyard; print(switchyard.__file__)", cwd=outside)
        self.assertTrue(where.startswith(os.path.dirname(bin_dir)), where)
        self.assertRegex(run(os.path.join(bin_dir, "twistd"), "--help", cwd=outside),
                         r"switchyard\s+One TCP port")
        self.assertIn(f"switchyard {switchyard.__version__} (Twisted ",
                      run(os.path.join(bin_dir, "switchyard"), "version", cwd=outside))
        examples = sorted(glob.glob(os.path.join(REPO, "examples", "*.toml")))
        self.assertTrue(examples)
        for example in examples:
            out = run(os.path.join(bin_dir, "switchyard"), "check", "--config", example,
                      cwd=outside)
            self.assertIn("config OK", out, example)
        golden = os.path.join(REPO, "tests", "explain_golden")
        out = run(os.path.join(bin_dir, "switchyard"), "explain", "--config",
                  os.path.join(golden, "switchyard.toml"), "--listener", "main",
                  os.path.join(REPO, "tests", "vectors", "explain", "tls_pq_tlslite.bin"),
                  cwd=outside)
        with open(os.path.join(golden, "tls_post_quantum.txt"), encoding="utf-8") as f:
            expected = f.read()
        self.assertEqual(out.split("\n", 1)[1], expected.split("\n", 1)[1])

    def test_newestDependencies(self) -> None:
        self.assertWorks(fresh_venv(os.path.abspath(self.mktemp())))

    def test_lowestDependencies(self) -> None:
        bin_dir = fresh_venv(os.path.abspath(self.mktemp()), *LOWEST)
        frozen = run(os.path.join(bin_dir, "pip"), "freeze")
        for pin in LOWEST:
            name, version = pin.split("==")
            self.assertRegex(frozen, rf"(?im)^{re.escape(name).replace('_', '[-_]')}=="
                                     rf"{re.escape(version)}$")
        self.assertWorks(bin_dir)

    def test_lowestPinsAreTheDeclaredBounds(self) -> None:
        bounds = {normalized(r): r for r in requirements("options", "install_requires")}
        for pin in LOWEST:
            name, version = pin.split("==")
            declared = bounds[normalized(name)]
            self.assertIn(">=", declared)
            self.assertEqual(release(declared.split(">=")[1].split(",")[0]), release(version),
                             declared)
        self.assertEqual(set(bounds) - {normalized(pin) for pin in LOWEST}, {"twisted"})


def imported_modules(folder: str) -> set[str]:
    """The dotted names imported by every module under ``folder``."""
    found: set[str] = set()
    for path in glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return found


def distribution_of(module: str) -> str | None:
    """The installed distribution providing ``module``; None for the standard
    library and this project."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("switchyard", "tests", "__future__"):
        return None
    if module.startswith("twisted.plugins"):
        return None  # a plugin folder shared by every distribution
    # This project ships twisted/plugins files (and a checkout may hold its
    # egg-info, under the old name too): it is not where twisted comes from.
    candidates = sorted({name for name in importlib.metadata.packages_distributions().get(
        top, []) if normalized(name) not in (DISTRIBUTION, "switchyard")})
    if len(candidates) > 1:  # a namespace package such as zope
        path = "/".join(module.split(".")[:2])
        candidates = [name for name in candidates if any(
            str(file).startswith((path + "/", path + ".py"))
            for file in importlib.metadata.files(name) or ())]
    if not candidates:
        raise AssertionError(f"{module} is imported but not installed")
    return normalized(candidates[0])


class DeclaredTests(unittest.TestCase):
    """Every package the code imports is declared, and the tests' in the test extra."""

    def test_everyImportOfTheCodeIsARequirement(self) -> None:
        declared = {normalized(r) for r in requirements("options", "install_requires")}
        used = {distribution_of(m) for m in imported_modules("switchyard")
                | imported_modules("twisted")} - {None}
        self.assertEqual(used - declared, set())

    def test_everyImportOfTheTestsIsInTheTestExtra(self) -> None:
        declared = {normalized(r) for r in requirements("options", "install_requires")
                    + requirements("options.extras_require", "test")}
        used = {distribution_of(m) for m in imported_modules("tests")} - {None}
        self.assertEqual(used - declared, set())
