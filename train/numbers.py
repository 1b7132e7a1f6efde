"""Numbers written out in English and French words, 0 to 999, as the synthesizers and the text
stream should both see them ("twenty-five", "soixante-quinze")."""

from __future__ import annotations

from antiphon.errors import InputError

_EN_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
             "fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_FR_UNITS = ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze "
             "seize dix-sept dix-huit dix-neuf").split()
_FR_TENS = "_ _ vingt trente quarante cinquante soixante".split()


def number_words(n: int, language: str) -> str:
    """`n` (0..999) in words: number_words(71, "fr") == "soixante et onze"."""
    if not 0 <= n <= 999:
        raise InputError(f"number_words covers 0..999, got {n}")
    if language == "en":
        return _english(n)
    if language == "fr":
        return _french(n)
    raise InputError(f"unknown language {language!r}: choose en or fr")


def _english(n: int) -> str:
    if n < 20:
        return _EN_UNITS[n]
    if n < 100:
        tens, unit = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_UNITS[unit]}" if unit else "")
    hundreds, rest = divmod(n, 100)
    return f"{_EN_UNITS[hundreds]} hundred" + (f" and {_english(rest)}" if rest else "")


def _french(n: int) -> str:
    if n < 20:
        return _FR_UNITS[n]
    if n < 70:
        tens, unit = divmod(n, 10)
        if unit == 0:
            return _FR_TENS[tens]
        return _FR_TENS[tens] + (" et un" if unit == 1 else f"-{_FR_UNITS[unit]}")
    if n < 80:
        return "soixante et onze" if n == 71 else f"soixante-{_FR_UNITS[n - 60]}"
    if n < 100:
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{_FR_UNITS[n - 80]}"
    hundreds, rest = divmod(n, 100)
    head = "cent" if hundreds == 1 else f"{_FR_UNITS[hundreds]} cent" + ("" if rest else "s")
    return head + (f" {_french(rest)}" if rest else "")
