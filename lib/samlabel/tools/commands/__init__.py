"""The command-line tools: each module here is one ``samlabel-<name>`` entry point (``pyproject.toml``'s
``[project.scripts]``, underscores as dashes) with a ``main(argv)`` that parses its arguments with argparse,
and ``scripts/<name>`` is a bash wrapper that prepares the virtual environment and runs it from the
repository's root. Default paths such as ``results/`` and ``data/`` are relative to the working directory.
"""
