"""The one compiled part of clarion: setup.py exists only to declare it (see pyproject.toml).

``clarion.server._fastloop`` is the fan-out's per-connection loops in C, and the reader of a
direct route's whole request. It is optional: without a C compiler the build goes on without it,
the same loops run in Python and every request is parsed by httptools
(``clarion.server.fastws.COMPILED`` says which run).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "clarion.server._fastloop",
            sources=["src/clarion/server/_fastloop.c", "src/clarion/server/sendring.c"],
            depends=["src/clarion/server/sendring.h"],
            optional=True,
        )
    ]
)
