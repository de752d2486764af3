"""The volunteer page's message catalogues (labeler/static/i18n): complete, consistent, current.

No browser needed. ``python tests/browser/test_catalogues.py --write`` regenerates
``sr-Cyrl.json`` from ``sr.json`` (Serbian Latin is the source; Cyrillic is transliterated).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
I18N = ROOT / "labeler" / "static" / "i18n"
VOLUNTEER = ROOT / "labeler" / "static" / "volunteer"
PAGE = ROOT / "labeler" / "web" / "volunteer.html"

# CLDR plural categories for integers, per catalogue.
PLURALS = {"en": {"one", "other"}, "sq": {"one", "other"}, "sr": {"one", "few", "other"},
           "sr-Cyrl": {"one", "few", "other"}}
# Keys built at run time from API values (app.js / task.js).
DYNAMIC = ({f"project.type.{t}" for t in ("find", "compare", "mark")}
           | {f"answer.{a}" for a in ("yes", "no", "maybe", "bad_imagery", "marked")}
           | {f"error.{c}" for c in ("not_found", "project_not_live", "not_leased",
                                     "rate_limited", "csrf_failed", "validation_error")})

_LAT2CYR = {
    "lj": "љ", "nj": "њ", "dž": "џ", "a": "а", "b": "б", "v": "в", "g": "г", "d": "д", "đ": "ђ",
    "e": "е", "ž": "ж", "z": "з", "i": "и", "j": "ј", "k": "к", "l": "л", "m": "м", "n": "н",
    "o": "о", "p": "п", "r": "р", "s": "с", "t": "т", "ć": "ћ", "u": "у", "f": "ф", "h": "х",
    "c": "ц", "č": "ч", "š": "ш",
}
# Left in Latin script: placeholders, key names printed on the keyboard, the product name.
_KEEP = re.compile(r"\{\w+\}|\bEnter\b|\bShift\b|\bcrowdsight\b")


def to_cyrillic(text: str) -> str:
    """Serbian Latin -> Cyrillic (digraphs lj, nj, dž first), keeping placeholders/key names."""
    out: list[str] = []
    pos = 0
    for m in _KEEP.finditer(text):
        out.append(_translit(text[pos:m.start()]))
        out.append(m.group())
        pos = m.end()
    out.append(_translit(text[pos:]))
    return "".join(out)


def _translit(s: str) -> str:
    res: list[str] = []
    i = 0
    while i < len(s):
        two, one = s[i:i + 2], s[i]
        if two.lower() in ("lj", "nj", "dž"):
            cyr = _LAT2CYR[two.lower()]
            res.append(cyr.upper() if two[0].isupper() else cyr)
            i += 2
            continue
        cyr = _LAT2CYR.get(one.lower())
        res.append(one if cyr is None else (cyr.upper() if one.isupper() else cyr))
        i += 1
    return "".join(res)


def cyrillic_catalogue(latin: dict) -> dict:
    return {k: ({f: to_cyrillic(v) for f, v in val.items()} if isinstance(val, dict)
                else to_cyrillic(val)) for k, val in latin.items()}


def load(code: str) -> dict:
    return json.loads((I18N / f"{code}.json").read_text(encoding="utf-8"))


def placeholders(value) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    return {p for t in texts for p in re.findall(r"\{(\w+)\}", t)}


_PREFIXES = ("page", "nav", "lang", "welcome", "projects", "project", "tutorial", "task", "compare",
             "mark", "answer", "feedback", "flag", "keys", "done", "outbox", "error")


def used_keys() -> set[str]:
    keys: set[str] = set()
    html = PAGE.read_text(encoding="utf-8")
    keys |= set(re.findall(r'data-i18n="([\w.]+)"', html))
    keys |= {k for attr in re.findall(r'data-i18n-attr="([^"]+)"', html)
             for k in re.findall(r":([\w.]+)", attr)}
    for js in VOLUNTEER.glob("*.js"):
        src = js.read_text(encoding="utf-8")
        # every string literal shaped like a catalogue key ("task.next", "mark.points", ...)
        keys |= set(re.findall(r'"((?:%s)\.[a-z_.]+)"' % "|".join(_PREFIXES), src))
        keys |= set(re.findall(r'"(?:aria-label|title):([\w.]+)"', src))
    return keys


@pytest.mark.parametrize("code", sorted(PLURALS))
def test_catalogue_has_exactly_the_english_keys(code: str) -> None:
    en, cat = load("en"), load(code)
    assert set(cat) == set(en), (f"{code}.json: missing {sorted(set(en) - set(cat))}, "
                                 f"extra {sorted(set(cat) - set(en))}")


@pytest.mark.parametrize("code", sorted(PLURALS))
def test_placeholders_and_plural_forms(code: str) -> None:
    en, cat = load("en"), load(code)
    for key, value in cat.items():
        assert placeholders(value) == placeholders(en[key]), f"{code}:{key} placeholders differ"
        if isinstance(value, dict):
            assert set(value) == PLURALS[code], f"{code}:{key} plural forms {sorted(value)}"
        else:
            assert isinstance(value, str) and value.strip(), f"{code}:{key} is empty"
            assert not isinstance(en[key], dict), f"{code}:{key} must be a plural object"


def test_every_key_the_page_uses_exists() -> None:
    used = used_keys()
    assert len(used) > 60, "key extraction broke"
    missing = sorted((used | DYNAMIC) - set(load("en")))
    assert not missing, f"keys used by the page but missing from en.json: {missing}"


def test_serbian_cyrillic_is_the_transliteration_of_latin() -> None:
    assert load("sr-Cyrl") == cyrillic_catalogue(load("sr")), (
        "sr-Cyrl.json is stale: run `python tests/browser/test_catalogues.py --write`")


def test_transliteration() -> None:
    assert to_cyrillic("Ljubljana, NJIVA, džep") == "Љубљана, ЊИВА, џеп"
    assert to_cyrillic("Pritisnite Enter: {count} tačaka") == "Притисните Enter: {count} тачака"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    data = cyrillic_catalogue(load("sr"))
    (I18N / "sr-Cyrl.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
    print(f"wrote {I18N / 'sr-Cyrl.json'} ({len(data)} keys)")
