"""The wheel's layout (the rest of the metadata is in pyproject.toml).

The library, ``models/model.schema.json``, and what it reads from ``Resources/`` at run time (the shipped
model bundles with ``Models/manifest.json``, the panel's ``UI/*.ui``) as ``DiffusionAnomalyLib/_resources``,
where ``DiffusionAnomalyLib.resources`` finds them in an installed wheel (docs/install.md; a test builds the
wheel and lists it: ``Testing/Python/test_packaging.py``).
"""

from setuptools import find_packages, setup

RESOURCES = "DiffusionAnomalyLib._resources"

setup(
    packages=[*find_packages(include=["DiffusionAnomalyLib", "DiffusionAnomalyLib.*"]), RESOURCES],
    package_dir={RESOURCES: "Resources"},
    package_data={"DiffusionAnomalyLib.models": ["model.schema.json"],
                  RESOURCES: ["UI/*.ui", "Models/manifest.json", "Models/*/*"]},
    include_package_data=False,
)
