"""Import every method module so that each registers itself."""

from . import cps, mean_teacher, prel, semicml, supervised, uamt  # noqa: F401
