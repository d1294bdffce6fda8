"""The generic code names no plug-in's domain (docs: ARCHITECTURE, "it must not name any
plug-in's domain"): service/, monitors/ and fallbacks/ serve any model, so a credit word there is
a sign that credit logic leaked into the core, or a docstring that misleads the next plug-in.

Words are matched case-insensitively, on word boundaries that also split snake_case and
CamelCase (`credit_risk` and `CreditRisk` both name "credit"). The list holds words of the credit
domain that have no generic meaning in this code base; the credit target's column name, "status",
is left out on purpose: HTTP and the drift endpoint use it in its generic sense.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERIC = ("service", "monitors", "fallbacks")
CREDIT_WORDS = (
    "credit", "creditworthy", "creditworthiness", "loan", "loans", "lender", "lenders", "lending",
    "borrower", "borrowers", "mortgage", "approve", "approves", "approved", "approval", "decline",
    "declines", "declined", "applicant", "applicants", "scorecard", "seniority", "marital",
)
PATTERN = re.compile(
    r"(?<![a-z0-9])(" + "|".join(sorted({w.lower() for w in CREDIT_WORDS}, key=len, reverse=True))
    + r")(?![a-z0-9])"
)


def _words_text(text: str) -> str:
    """CamelCase split into words, then lower case: `CreditRisk` -> `credit risk`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text).lower()


def credit_words(text: str) -> list[tuple[int, str]]:
    """(line number, word) of every credit word in `text`."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        found.extend((number, m.group(1)) for m in PATTERN.finditer(_words_text(line)))
    return found


def generic_files() -> list[Path]:
    files = []
    for folder in GENERIC:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path)
    return files


def test_the_matcher_sees_words_in_every_spelling() -> None:
    assert [w for _, w in credit_words("credit_risk:abc CreditRisk LOAN # Declined.")] == [
        "credit", "credit", "loan", "declined",
    ]
    # Not inside other words: "incredible", "loaned"... are not the domain's words.
    assert credit_words("incredible reloans approvers\nscorecards") == []
    assert credit_words("x\nan applicant") == [(2, "applicant")]


def test_the_generic_folders_exist_and_hold_code() -> None:
    files = generic_files()
    assert {p.relative_to(ROOT).parts[0] for p in files} == set(GENERIC)
    assert len([p for p in files if p.suffix == ".py"]) > 20


@pytest.mark.parametrize("folder", GENERIC)
def test_generic_code_names_no_credit_concept(folder: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {word}"
        for path in generic_files()
        if path.relative_to(ROOT).parts[0] == folder
        for number, word in credit_words(path.read_text(errors="replace"))
    ]
    assert offenders == [], "\n".join(offenders)
