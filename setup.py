"""Package discovery only; all metadata is in pyproject.toml.

The QAPI schema lives at the top level (``schema/``, one source of truth read by
people and by the loader) and is installed as the data package ``blockd.schema``.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["blockd", "blockd.*"]), "blockd.schema"],
    package_dir={"blockd.schema": "schema"},
)
