"""The one compiled part of slotlog: projections/_binary_copy.c, the replay's binary COPY encoder.

`optional=True`: without a C compiler the install goes on without it, and the replay sends
its rows through asyncpg's own encoder (projections/binary_copy.py), slower but the same rows.
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "projections._binary_copy",
            ["projections/_binary_copy.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
