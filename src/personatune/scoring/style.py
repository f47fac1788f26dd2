"""Style features of one response and its closeness to the persona's style target.

Pure regular expressions, no model, so the features are cheap enough to sit inside the reward
function. Every feature, its unit and the
`style_match` formula are documented in docs/persona-evaluation.md ("Scorer arithmetic").

Text units used throughout (the same in scoring/rules.py):

- a **word** is a whitespace-separated token that contains at least one letter or digit
  ("don't", "well-known", "3.5" and "hello," are one word each; "—" and a lone emoji are none);
- a **sentence** is a stretch of text that contains a word and ends at a run of `.`, `!`, `?` or `…`
  (optionally followed by closing quotes/brackets) that is followed by whitespace, an emoji or the end
  of the text, or at a line break. Its terminator is that run; a run containing `?` makes it a question,
  one containing `!` an exclamation ("?!" is both). No abbreviation list: "e.g. this" splits after "e.g.".
- apostrophes and quotes are normalised (’ -> ', “ ” -> ") before phrases and contractions are matched.

>>> from personatune.persona import Style
>>> f = style_features("I love this! Do you?", Style())
>>> f["words"], f["question_rate"], f["exclamation_rate"], f["first_person_rate"]
(5.0, 0.5, 0.5, 0.2)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from personatune.persona import Style

# feature name -> unit and definition. The order is the order of reports; style variance averages
# over all of them (scoring/aggregate.py).
STYLE_FEATURES: dict[str, str] = {
    "words": "words per response (whitespace tokens containing a letter or digit)",
    "words_per_sentence": "words / sentences (0 when the response has no sentence)",
    "question_rate": "share of sentences whose terminator contains '?' (0-1; 0 when no sentence)",
    "exclamation_rate": "share of sentences whose terminator contains '!' (0-1; 0 when no sentence)",
    "first_person_rate": "first-person singular pronouns (I, me, my, mine, myself; I'm counts once) per word (0-1)",
    "formality": "formality score in [0,1] from word length, contractions, informal and formal markers (0.5 for an empty response)",
    "signature_rate": "occurrences of the persona's signature phrases per response (count)",
    "avoid_hits": "occurrences of the persona's avoid phrases per response (count)",
    "emoji_rate": "emoji per 100 words (emoji / max(words, 1) * 100)",
}

# Target formality score of each register; a response within FORMALITY_TOLERANCE of it scores 1.
FORMALITY_TARGET: dict[str, float] = {"casual": 0.25, "neutral": 0.55, "formal": 0.85}
FORMALITY_TOLERANCE = 0.15
# Beyond the tolerance the formality component falls linearly to 0 over this distance.
FORMALITY_FALLOFF = 0.30

# Weights of the style_match components (renormalised over the components that apply).
MATCH_WEIGHTS: dict[str, float] = {
    "length": 0.30,
    "formality": 0.30,
    "emoji": 0.15,
    "signature": 0.10,
    "questions": 0.075,
    "exclamations": 0.075,
}
# Each hard style break (an avoid phrase, an emoji when the persona never uses them) multiplies the
# score by this factor, so one break alone already puts a response below the 0.5 line.
BREAK_FACTOR = 0.45
# "sometimes" emoji: up to this many per 100 words is fine; the score falls to 0 over the next 10.
EMOJI_SOMETIMES_MAX = 5.0

# ---- regular expressions (compiled once) -------------------------------------------------------

# Emoji code points: pictographs, emoticons, transport, supplemental symbols, misc symbols and
# dingbats, plus a few singletons (stars, clocks, arrows used as emoji).
EMOJI_CHARS = (
    "\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f680-\U0001f6ff\U0001f900-\U0001f9ff"
    "\U0001fa70-\U0001faff\u2600-\u26ff\u2700-\u27bf\u2b50\u2b55\u231a\u231b\u23e9-\u23fa"
)
# One emoji = a base pictograph with an optional skin tone / variation selector, chained by ZWJ
# (a family emoji is one emoji), or a pair of regional indicators (a flag).
_EMOJI_RE = re.compile(
    rf"[\U0001F1E6-\U0001F1FF]{{2}}|[{EMOJI_CHARS}][\U0001F3FB-\U0001F3FF\uFE0F]?(?:\u200D[{EMOJI_CHARS}][\U0001F3FB-\U0001F3FF\uFE0F]?)*"
)
_ALNUM_RE = re.compile(r"[^\W_]")
_SENT_END_RE = re.compile(rf"([.!?…]+)[\"')\]»]*(?=\s|$|[{EMOJI_CHARS}])|\n")
_FIRST_PERSON_RE = re.compile(r"\b(?:i|me|my|mine|myself)\b(?!\.\w)", re.IGNORECASE)
_CONTRACTION_RE = re.compile(
    r"\b(?:\w+n't|\w+'(?:re|ve|ll|m|d)|(?:it|that|what|there|here|he|she|who|where|how|let)'s)\b", re.IGNORECASE
)
INFORMAL_WORDS: tuple[str, ...] = (
    "gonna",
    "wanna",
    "gotta",
    "kinda",
    "sorta",
    "lemme",
    "gimme",
    "dunno",
    "yeah",
    "yep",
    "yup",
    "nope",
    "nah",
    "hey",
    "hiya",
    "lol",
    "lmao",
    "omg",
    "btw",
    "tbh",
    "imo",
    "idk",
    "ok",
    "okay",
    "cool",
    "awesome",
    "stuff",
    "guys",
    "dude",
    "buddy",
    "wow",
    "yay",
    "oops",
    "ugh",
    "hmm+",
    "ha(?:ha)+",
    "he(?:he)+",
    "cuz",
    "ya",
    "y'all",
    "totally",
)
FORMAL_WORDS: tuple[str, ...] = (
    "therefore",
    "however",
    "furthermore",
    "moreover",
    "consequently",
    "nevertheless",
    "nonetheless",
    "accordingly",
    "hence",
    "thus",
    "whereas",
    "whereby",
    "herein",
    "hereby",
    "additionally",
    "regarding",
    "pursuant",
    "shall",
    "kindly",
    "sincerely",
    "respectfully",
    "subsequently",
    "notwithstanding",
    "indeed",
    "ensure",
    "facilitate",
    "regards",
)
_INFORMAL_RE = re.compile(r"\b(?:" + "|".join(INFORMAL_WORDS) + r")\b", re.IGNORECASE)
_FORMAL_RE = re.compile(r"\b(?:" + "|".join(FORMAL_WORDS) + r")\b", re.IGNORECASE)
_REPEAT_PUNCT_RE = re.compile(r"[!?]{2,}")
_QUOTE_TABLE = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "“": '"', "”": '"'})


def normalize_quotes(text: str) -> str:
    """Map typographic apostrophes and quotes to ASCII; the length of the text is unchanged."""
    return text.translate(_QUOTE_TABLE)


def count_words(text: str) -> int:
    """Number of words: whitespace tokens that contain at least one letter or digit."""
    return sum(1 for tok in text.split() if _ALNUM_RE.search(tok))


def count_emoji(text: str) -> int:
    """Number of emoji (a ZWJ sequence, a skin-toned emoji or a flag counts once)."""
    return len(_EMOJI_RE.findall(text))


def sentence_terminators(text: str) -> list[str]:
    """The terminator of each sentence of `text` ("" for a sentence ended by a line break or the end).

    Args:
        text: a response.

    Returns:
        One string per sentence, in order, e.g. `["!", "?"]` for "Hi there! Ready?".
    """
    out: list[str] = []
    start = 0
    for m in _SENT_END_RE.finditer(text):
        if _ALNUM_RE.search(text, start, m.start()):
            out.append(m.group(1) or "")
        start = m.end()
    if _ALNUM_RE.search(text, start):
        out.append("")
    return out


@functools.lru_cache(maxsize=256)
def _phrase_re_cached(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    parts: list[str] = []
    # Longest first: alternation takes the first branch that matches, so "cheers mate" wins over "cheers".
    for p in sorted({normalize_quotes(p).strip() for p in phrases if p.strip()}, key=len, reverse=True):
        body = r"\s+".join(re.escape(w) for w in p.split())
        # Word edges only where the phrase itself starts/ends with a word character: "AI" must not match
        # inside "said", but "!!" may follow a word.
        left = r"(?<!\w)" if re.match(r"\w", p[0]) else ""
        right = r"(?!\w)" if re.match(r"\w", p[-1]) else ""
        parts.append(left + body + right)
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def compile_phrases(phrases: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of `phrases` (None when there is none).

    Matching rules: quotes normalised, any whitespace inside a phrase matches any run of whitespace,
    a phrase edge that is a word character must sit at a word edge of the text, non-overlapping
    occurrences, longer phrases first. Compiled patterns are cached.

    Args:
        phrases: the phrases (empty strings are ignored).

    Returns:
        A compiled pattern, or None when `phrases` holds no non-empty phrase.
    """
    return _phrase_re_cached(tuple(phrases))


def count_phrases(pattern: re.Pattern[str] | None, normalized_text: str) -> int:
    """Non-overlapping occurrences of a `compile_phrases` pattern in quote-normalised text."""
    return 0 if pattern is None else sum(1 for _ in pattern.finditer(normalized_text))


def formality_score(text: str, words: int | None = None) -> float:
    """Formality of `text` in [0,1] (0 = very casual, 1 = very formal).

    formality = 0.40 * s_len + 0.20 * s_con + 0.25 * s_inf + 0.15 * s_for, where, per word,
      s_len = clip((L - 3.5) / 2.5, 0, 1), L = letters and digits per word;
      s_con = 1 - min(contractions per word / 0.10, 1);
      s_inf = 1 - min(informal markers per word / 0.05, 1), informal markers = INFORMAL_WORDS occurrences
              + emoji + runs of 2 or more '!'/'?';
      s_for = min(FORMAL_WORDS occurrences per word / 0.03, 1).
    An empty response (no word) scores 0.5: no evidence either way.

    Args:
        text: a response.
        words: its word count if already known.

    Returns:
        The formality score.
    """
    t = normalize_quotes(text)
    n = count_words(t) if words is None else words
    if n == 0:
        return 0.5
    letters = len(_ALNUM_RE.findall(t))
    s_len = min(max((letters / n - 3.5) / 2.5, 0.0), 1.0)
    s_con = 1.0 - min(len(_CONTRACTION_RE.findall(t)) / n / 0.10, 1.0)
    informal = len(_INFORMAL_RE.findall(t)) + count_emoji(t) + len(_REPEAT_PUNCT_RE.findall(t))
    s_inf = 1.0 - min(informal / n / 0.05, 1.0)
    s_for = min(len(_FORMAL_RE.findall(t)) / n / 0.03, 1.0)
    return 0.40 * s_len + 0.20 * s_con + 0.25 * s_inf + 0.15 * s_for


def style_features(text: str, style: Style) -> dict[str, float]:
    """The STYLE_FEATURES of one response (units in STYLE_FEATURES).

    Args:
        text: the response ("" is allowed: every count is 0 and formality is 0.5).
        style: the persona's style (its signature and avoid phrases are counted).

    Returns:
        Feature name -> value, in the order of STYLE_FEATURES.
    """
    t = normalize_quotes(text)
    words = count_words(t)
    terms = sentence_terminators(t)
    n_sent = len(terms)
    emoji = count_emoji(t)
    return {
        "words": float(words),
        "words_per_sentence": words / n_sent if n_sent else 0.0,
        "question_rate": sum("?" in s for s in terms) / n_sent if n_sent else 0.0,
        "exclamation_rate": sum("!" in s for s in terms) / n_sent if n_sent else 0.0,
        "first_person_rate": len(_FIRST_PERSON_RE.findall(t)) / words if words else 0.0,
        "formality": formality_score(t, words),
        "signature_rate": float(count_phrases(compile_phrases(style.signature_phrases), t)),
        "avoid_hits": float(count_phrases(compile_phrases(style.avoid_phrases), t)),
        "emoji_rate": 100.0 * emoji / max(words, 1),
    }


def style_features_batch(texts: Sequence[str], style: Style) -> list[dict[str, float]]:
    """`style_features` of many responses (phrase patterns are compiled once and cached).

    Args:
        texts: the responses.
        style: the persona's style.

    Returns:
        One feature dict per text, in order.
    """
    return [style_features(t, style) for t in texts]


def _frequency_score(rate: float, target: str) -> float:
    """Score of a question/exclamation rate against never/sometimes/often (see style_match)."""
    if target == "never":
        return 1.0 - rate
    if target == "often":
        return 1.0 if rate > 0 else 0.5
    return 1.0 - max(0.0, rate - 0.5)  # sometimes: fine unless most sentences are of this kind


def style_match_components(features: dict[str, float], style: Style) -> dict[str, float]:
    """The components of `style_match`, each in [0,1], for the ones that apply to this persona.

    Args:
        features: output of `style_features`.
        style: the persona's style.

    Returns:
        Component name (keys of MATCH_WEIGHTS) -> score. "signature" only when the persona has
        signature phrases; "questions"/"exclamations" only when the style sets them.
    """
    w = features["words"]
    lo, hi = style.words
    if w < lo:
        length = w / lo
    elif w > hi:
        length = max(0.0, 1.0 - (w - hi) / hi)
    else:
        length = 1.0
    dist = abs(features["formality"] - FORMALITY_TARGET[style.formality])
    formality = min(max(1.0 - max(0.0, dist - FORMALITY_TOLERANCE) / FORMALITY_FALLOFF, 0.0), 1.0)
    e = features["emoji_rate"]
    if style.emoji == "never":
        emoji = 1.0 if e == 0 else 0.0
    elif style.emoji == "often":
        emoji = 1.0 if e > 0 else 0.5
    else:
        emoji = 1.0 if e <= EMOJI_SOMETIMES_MAX else max(0.0, 1.0 - (e - EMOJI_SOMETIMES_MAX) / 10.0)
    out = {"length": length, "formality": formality, "emoji": emoji}
    if style.signature_phrases:
        # Soft: a persona does not say its catch-phrase in every reply, so absence costs half.
        out["signature"] = 1.0 if features["signature_rate"] >= 1 else 0.5
    if style.questions is not None:
        out["questions"] = _frequency_score(features["question_rate"], style.questions)
    if style.exclamations is not None:
        out["exclamations"] = _frequency_score(features["exclamation_rate"], style.exclamations)
    return out


def style_match(features: dict[str, float], style: Style) -> float:
    """Closeness of a response's style to the persona's style target, in [0,1].

    style_match = (sum_i w_i * s_i / sum_i w_i) * BREAK_FACTOR ** breaks, over the components s_i of
    `style_match_components` that apply, with weights MATCH_WEIGHTS; breaks = [avoid_hits > 0] +
    [emoji == "never" and emoji_rate > 0]. A response with no word scores 0.

    Args:
        features: output of `style_features` (for the same `style`).
        style: the persona's style.

    Returns:
        The score; >= 0.5 when the style is respected, < 0.5 when it is clearly broken.
    """
    if features["words"] <= 0:
        return 0.0
    comp = style_match_components(features, style)
    score = sum(MATCH_WEIGHTS[k] * v for k, v in comp.items()) / sum(MATCH_WEIGHTS[k] for k in comp)
    breaks = int(features["avoid_hits"] > 0) + int(style.emoji == "never" and features["emoji_rate"] > 0)
    return float(score * BREAK_FACTOR**breaks)
