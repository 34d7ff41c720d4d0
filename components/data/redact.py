"""Obvious personal data replaced by placeholders before a served request or answer leaves the pod
(production traces, registry/production_log.py). Pure functions on text.

Kinds (`REDACTION_KINDS`), applied in this order, each match replaced by its placeholder:

- `email` -> `[EMAIL]`: local@domain.tld;
- `rrn` -> `[RRN]`: a Korean resident registration number, YYMMDD-GNNNNNN (the hyphen or a space
  required, so that a bare 13-digit number is left to the card check), with a real month and day and
  G in 1-8 (1-4 citizens, 5-8 foreign residents). The old check digit is not required: numbers
  issued since October 2020 do not follow it;
- `phone` -> `[PHONE]`: Korean numbers: mobile 010/011/016-019, Seoul 02, the regions' 031-064, 070;
  with hyphens, dots, spaces or none, one kind per number (010-1234-5678, 02-123-4567,
  01012345678), or international (+82 10-1234-5678, +82-2-123-4567, +821012345678);
- `card` -> `[CARD]`: 13 to 19 digits, optionally grouped by single spaces or by single hyphens (one
  kind per number), that pass the Luhn check (so an order number of 13 random digits is left alone,
  9 times in 10).

Not caught (by design, to keep false alarms rare): names, addresses, foreign phone formats, numbers
split by other characters. `Redactor(kinds)` applies a chosen subset; `Redactor(())` changes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

REDACTION_KINDS: tuple[str, ...] = ("email", "rrn", "phone", "card")
PLACEHOLDERS = {"email": "[EMAIL]", "rrn": "[RRN]", "card": "[CARD]", "phone": "[PHONE]"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_RRN = re.compile(r"(?<![\d-])(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[- ][1-8]\d{6}(?![\d-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\d+])"
    r"(?:\+82[-. ]?(?:\(0\))?|0)"           # +82 (trunk 0 dropped, sometimes written "(0)"), or the trunk 0
    r"(?:1[016789]|2|[3-6][1-5]|70)"        # mobile, Seoul, regions, VoIP
    r"(?:[-. ]?\d{3,4}[-. ]?\d{4})"         # subscriber number
    r"(?!\d)"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum (card numbers) of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> str | None:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    one_separator = len(set(re.findall(r"[ -]", text))) <= 1
    return PLACEHOLDERS["card"] if one_separator and 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _phone(match: re.Match) -> str | None:
    number = re.sub(r"^\+82[-. ]?(?:\(0\))?", "", match.group(0))
    separators = set(re.findall(r"[-. ]", number))
    # One kind of separator in one number: "010-1234.5678" is not how people write a number.
    return PLACEHOLDERS["phone"] if len(separators) <= 1 else None


_RULES = {
    "email": (_EMAIL, lambda m: PLACEHOLDERS["email"]),
    "rrn": (_RRN, lambda m: PLACEHOLDERS["rrn"]),
    "card": (_CARD, _card),
    "phone": (_PHONE, _phone),
}


def parse_kinds(text: str) -> tuple[str, ...]:
    """`--redact`'s value: "all", "none" (or ""), or a comma-separated subset of REDACTION_KINDS.
    Raises ValueError naming the unknown kinds."""
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if not words or words == ["none"]:
        return ()
    if words == ["all"]:
        return REDACTION_KINDS
    unknown = [w for w in words if w not in REDACTION_KINDS]
    if unknown:
        raise ValueError(f"unknown redaction kind(s) {', '.join(unknown)}: use all, none or a comma-separated "
                         f"list of {', '.join(REDACTION_KINDS)}")
    return tuple(k for k in REDACTION_KINDS if k in words)


@dataclass(frozen=True)
class Redactor:
    """Replaces the personal data of the chosen kinds; `counts` says how many of each it replaced."""

    kinds: tuple[str, ...] = REDACTION_KINDS
    counts: Counter = field(default_factory=Counter, compare=False)

    def text(self, text: str, counts: Counter | None = None) -> str:
        """`text` with each match replaced; adds what it replaced to `counts` (and to self.counts)."""
        for kind in REDACTION_KINDS:
            if kind not in self.kinds:
                continue
            pattern, replace = _RULES[kind]
            found = 0

            def sub(match: re.Match) -> str:
                nonlocal found
                placeholder = replace(match)
                if placeholder is None:
                    return match.group(0)
                found += 1
                return placeholder

            text = pattern.sub(sub, text)
            if found:
                self.counts[kind] += found
                if counts is not None:
                    counts[kind] += found
        return text

    def value(self, value: Any, counts: Counter | None = None) -> Any:
        """Every string inside a JSON-like value (dicts, lists) redacted; the rest unchanged."""
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, dict):
            return {k: self.value(v, counts) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v, counts) for v in value]
        return value


def redact(text: str, kinds: Iterable[str] = REDACTION_KINDS) -> tuple[str, Counter]:
    """(the redacted text, how many of each kind were replaced)."""
    counts: Counter = Counter()
    return Redactor(tuple(kinds)).text(text, counts), counts
