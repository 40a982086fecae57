"""The subjects a prompt asks for, found by rules (no model, no download), and a small lemmatiser.

A subject is a noun phrase: a run of words between stop words (articles, prepositions, pronouns,
conjunctions, verbs in -ing) with its attributes ("red sports car", "three apples"). Words after a
negation ("no", "without") are not subjects. Stop words are listed for English, French, German,
Spanish and Italian; in other languages every non-stop word reads as part of a noun phrase.

Limits, measured in ``bench/plan_quality.py`` and tested in ``tests/planner/test_subjects.py``: no
part-of-speech tagging, so a verb not ending in -ing ("a man holds a cup") joins the phrase before it,
and an adjective after its noun ("a sky full of stars") makes its own phrase; the lemmatiser knows
English plural and verb endings plus a table of irregular forms, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


def split_words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*", re.UNICODE)
_CLAUSE = re.compile(r"[,;:.!?()\"]+")

STOP_WORDS = split_words(
    """
    a an the this that these those some any each every its it it's their them they there here his her
    and or but nor so yet as than then while with without of in on at by for from to into onto over under
    above below behind beside besides between among near next up down out off through across around
    against along beyond toward towards inside outside upon within before after during like
    is are was were be been being am has have had do does did can could will would shall should may
    might must very quite rather too also just only really much many more most few little lot lots
    left right top bottom middle center centre front back foreground background side corner far
    i me my we us our you your he him she who whom whose which what where when how why all both
    make made show showing shows draw drawing image picture scene one
    un une des le la les du de d l et ou avec sans sur sous dans en au aux pour par près devant derrière
    ein eine einer eines einem einen der die das den dem des und oder mit ohne auf unter in im am an vor hinter neben
    el los las unos unas y o con sin sobre bajo en del al para por junto
    il lo gli uno e con senza su sotto nel nella sul sulla per
    """
)
NEGATIONS = split_words("no not without never none nor sans ohne kein keine keinen sin senza non")
STYLE_WORDS = split_words(
    """
    style painting photo photograph photography illustration watercolor watercolour oil sketch render
    drawing anime cartoon cinematic pixel art digital realistic photorealistic minimalist vintage retro
    portrait landscape closeup close-up shot view lighting
    """
)
"""Words that say how to draw, not what: they belong to the whole image, not to a region."""
_EMPTY_STYLE_WORDS = frozenset({"style", "view", "shot", "lighting"})

_IRREGULAR_PLURALS = {
    "children": "child", "men": "man", "women": "woman", "people": "person", "mice": "mouse", "geese": "goose",
    "feet": "foot", "teeth": "tooth", "leaves": "leaf", "wolves": "wolf", "knives": "knife", "lives": "life",
    "shelves": "shelf", "loaves": "loaf", "halves": "half", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "oxen": "ox", "cacti": "cactus", "fungi": "fungus", "dice": "die",
}
_PLURAL_OF = {singular: plural for plural, singular in _IRREGULAR_PLURALS.items()}
_IRREGULAR = {
    **_IRREGULAR_PLURALS, "sat": "sit", "ran": "run",
    "flew": "fly", "flying": "fly", "lying": "lie", "swimming": "swim", "running": "run", "sitting": "sit",
    "riding": "ride", "wearing": "wear", "holding": "hold", "standing": "stand", "eaten": "eat", "ate": "eat",
    "worn": "wear", "held": "hold", "stood": "stand", "grew": "grow", "grown": "grow", "knelt": "kneel",
}
_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "deux": 2, "trois": 3, "zwei": 2, "drei": 3, "dos": 2, "tres": 3, "due": 2, "tre": 3,
}
_KEEP_S = ("ss", "us", "is", "ous", "ics")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def lemma(word: str) -> str:
    """An English lemma by rules: plural and verb endings, irregular forms; other words lower-cased."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 3 or not w.isascii():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(_KEEP_S):
        return w[:-1]
    if w.endswith("ing") and len(w) > 5:
        stem = w[:-3]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            return stem[:-1]  # running -> run, sitting -> sit
        return stem
    return w


def content_words(text: str) -> list[str]:
    """The lemmas of the words that carry meaning (no stop words, no numbers), in order, once each."""
    seen: dict[str, None] = {}
    for word in words(text):
        low = word.lower()
        if low in STOP_WORDS or low in NEGATIONS or low.isdigit():
            continue
        seen.setdefault(lemma(word), None)
    return list(seen)


@dataclass(frozen=True)
class Subject:
    phrase: str
    """The words as the prompt has them, e.g. ``"three red apples"``."""
    head: str
    """The lemma of the phrase's last word, e.g. ``"apple"``: what a region about it must mention."""
    count: int = 1


def _phrase_subject(run: list[str]) -> Subject | None:
    # Style words describe the whole picture ("a watercolor painting of a fox": the fox is the subject).
    kept = [w for w in run if w.lower() not in STYLE_WORDS]
    if not kept or kept[-1].lower() in _NUMBER_WORDS or kept[-1].isdigit():
        return None
    count = 1
    for w in kept:
        count = _NUMBER_WORDS.get(w.lower(), int(w) if w.isdigit() else count)
    return Subject(" ".join(kept).replace("’", "'"), lemma(kept[-1]), count)


def _runs(text: str, stops: frozenset[str]) -> Iterator[tuple[list[str], bool, bool]]:
    """Runs of words between stop words, each with whether a negation governs it and whether it is a
    verb: a long -ing word, or a long -ed word after another, ends a run and comes as a run of its own
    (a content word, never a subject)."""
    for clause in _CLAUSE.split(text):
        run: list[str] = []
        negating = False
        for word in [*words(clause), ""]:
            low = word.lower()
            # "-ed" after a noun is its verb too ("Cat curled up": the cat is the subject, not "curled");
            # before one it describes it ("striped cat").
            verb = len(low) > 5 and low not in stops and (low.endswith("ing") or (low.endswith("ed") and bool(run)))
            if word and low not in stops and low not in NEGATIONS and not verb:
                run.append(word)
                continue
            if run:
                yield run, negating, False
            run = []
            if low in NEGATIONS:
                negating = True
            elif low not in stops:  # a verb ends the negation's scope ("no cars, parking")
                negating = False
            if verb:
                yield [word], False, True


def noun_phrases(text: str, extra_stops: frozenset[str] = frozenset()) -> tuple[list[Subject], list[str]]:
    """The subjects of ``text`` in order, and the lemmas of the negated words ("no people" -> person).
    ``extra_stops`` are more words that end a phrase (an edit's verbs)."""
    subjects: list[Subject] = []
    negated: list[str] = []
    for run, negating, verb in _runs(text, STOP_WORDS | extra_stops):
        if negating:
            negated.extend(lemma(w) for w in run)
        elif not verb and (subject := _phrase_subject(run)):
            subjects.append(subject)
    return subjects, negated


def prompt_tags(prompt: str, limit: int = 12, words_per_tag: int = 5) -> list[str]:
    """The prompt's own words as tags, phrase by phrase: "a watercolor painting of a fox flying" ->
    ``["watercolor painting", "fox", "flying"]``. Every content word of the prompt is in one, negated
    words in none (a diffusion model draws what its prompt names, "no people" included)."""
    tags: dict[str, None] = {}
    for run, negating, _ in _runs(prompt, STOP_WORDS):
        if not negating:  # a run longer than a tag may be goes into several tags: no word lost
            for start in range(0, len(run), words_per_tag):
                tags.setdefault(" ".join(run[start : start + words_per_tag]).replace("’", "'"), None)
    return list(tags)[:limit]


def prompt_style(prompt: str) -> str | None:
    """The prompt's own style words, run by run, as one phrase: "an oil painting of a ship, cinematic"
    -> ``"Oil painting, cinematic"``; None when it names no style. Every region's ``style`` opens with
    them (its sub-prompt then asks for the style too); negated ones ("no cartoon") are left out."""
    negated = set(noun_phrases(prompt)[1])
    runs: list[list[str]] = [[]]
    for word in words(prompt):
        low = word.lower()
        if low in STYLE_WORDS and lemma(word) not in negated:
            runs[-1].append(word.lower())
        elif runs[-1]:
            runs.append([])
    # A lone "style" or "view" says nothing of its own ("in the style of ...").
    phrases = dict.fromkeys(" ".join(run) for run in runs if run and not set(run) <= _EMPTY_STYLE_WORDS)
    if not phrases:
        return None
    style = ", ".join(phrases)
    return style[:1].upper() + style[1:]


def word_forms(word: str) -> tuple[str, ...]:
    """The spellings of a noun a model may write: ``"cat"`` -> cat, cats, Cat, Cats; ``"person"`` ->
    person, people, Person, People."""
    base = lemma(word)
    regular = base + ("es" if base.endswith(("s", "x", "z", "ch", "sh")) else "s")
    forms = (base, _PLURAL_OF.get(base, regular))
    return tuple(dict.fromkeys([*forms, *(f[:1].upper() + f[1:] for f in forms)]))


def extract_subjects(prompt: str, limit: int = 8) -> list[Subject]:
    """The distinct subjects of a prompt (by head lemma), first ``limit`` of them."""
    return distinct_subjects(noun_phrases(prompt)[0], limit)


def distinct_subjects(subjects: list[Subject], limit: int = 8) -> list[Subject]:
    """The first subject of each head lemma, first ``limit`` of them (a prompt's phrases, parsed once)."""
    found: dict[str, Subject] = {}
    for subject in subjects:
        found.setdefault(subject.head, subject)
    return list(found.values())[:limit]
