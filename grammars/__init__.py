"""Lark grammars of the .mnas language (package data)."""
