"""Builds qchan's one C extension; everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no compiler), qchan runs the same
protocol in pure Python, only slower. (CI requires it: tests/protocol/test_speedups.py.)
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "qchan.protocol._speedups",
            ["qchan/protocol/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
