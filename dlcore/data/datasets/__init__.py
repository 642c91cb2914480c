"""Built-in datasets that need no download: the scikit-learn digits (``digits``,
``digit_rows``; needs ``pip install dlcore[datasets]``) and seeded synthetic sets
(``ring``, ``adding_problem``)."""

from .digits import digit_rows, digits
from .synthetic import adding_problem, ring

__all__ = ["adding_problem", "digit_rows", "digits", "ring"]
