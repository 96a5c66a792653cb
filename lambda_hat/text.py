"""Words and numbers as the terminal shows them (no imports: the CLI's help stays fast)."""


def shown(text: str) -> str:
    """`text` for a terminal: a character that is not printable (an escape sequence's ESC, a
    newline in a file name) as its Python escape, so that what a user named cannot clear the
    screen or split a one-line message."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def plural(n: int, noun: str) -> str:
    """`1 run`, `2 runs`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def significant(x: float, digits: int) -> str:
    """`digits` significant digits, trailing zeros kept: an R-hat of 1.0004 reads 1.000 (not 1,
    which looks like an integer), a SEM ± 0.040 (not ± 0.04)."""
    mantissa, e, exponent = f"{x:#.{digits}g}".partition("e")
    return mantissa.rstrip(".") + e + exponent
