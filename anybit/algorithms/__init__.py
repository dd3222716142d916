"""Calibration algorithms; each module implements one method and names its paper.

Importing a module registers its algorithms (``anybit.algorithms.available()`` lists them).
"""

from anybit.algorithms import abq, adaquant, adaround, dgq, gptq, rotate, rtn, smooth  # noqa: F401  (register)
from anybit.algorithms.base import Algorithm, BlockContext, available, register, resolve

__all__ = ["Algorithm", "BlockContext", "available", "register", "resolve"]
