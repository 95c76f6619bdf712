from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_in_the_wheel():
    """A package missing from pyproject's list works in the editable install and breaks in a
    wheel (ocrl.cli and ocrl.perception.loci once were: the `ocrl` command failed)."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(settings["packages"])
    found = set()
    for name, directory in settings["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set()
