"""microgpt-lab shared core: config, data, tokenizers, flat params, checkpoints, sampling.

Everything here is standard-library Python so that the reference trainer (train.py) stays
dependency-free; engines import from here and never duplicate it.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with the user's input (flags, files, checkpoints) that deserves a one-line message.

    The CLI entry points catch it, print ``error: <message>`` and exit with status 2.
    """
