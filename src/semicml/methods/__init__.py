"""Training methods, one small file each, behind :class:`semicml.methods.base.Method`."""

from .base import METHODS, Method, MethodContext, get_method, register

__all__ = ["METHODS", "Method", "MethodContext", "get_method", "register"]
