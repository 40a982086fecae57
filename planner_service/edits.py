"""Edits as region patches: which regions an edit prompt changes, removes or adds, found by rules,
and the merge of the model's answer into the previous canvas.

The model then writes only the global description and the regions that change (each opening with
its new subject, in its old place, and naming no other region's subject); every other region is
copied from the previous canvas byte for byte, except that what the edit takes out leaves it too: a
replaced subject is replaced in its text ("Cat watching the dog." becomes "Cat watching the corgi."),
and a region that names a removed subject is removed with it where the subject heads it, else
rewritten in place by the model with the subject's words banned. When the rules find nothing to
patch (no region named, no verb they know), :func:`plan_patch` returns None and the model rewrites the
whole canvas as before.

Limits: English verbs only ("add", "remove", "replace ... with", "make ... a", "turn ... into");
a region is found by its description naming the subject (lemmas), so "the animal" finds no "cat".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from planner_service.subjects import lemma, noun_phrases, split_words, word_forms, words
from shared.canvas import Canvas, LocalDescription
from shared.grammar import RegionShape

REMOVE = split_words("remove delete erase drop rid without")
ADD = split_words("add put place include insert plus")
CHANGE = split_words("make change turn replace swap recolor recolour paint")
MOVE = split_words("move shift")
TARGET_MARKERS = split_words("with into to for instead")
"""Words between the region named and its replacement: "replace the cat with a parrot"."""
FILLER = split_words(
    """a an the it its them they this that these those of in on at to by from some more another please now also
    then just there here be is are should get take away out behind beside next near above below under over
    front back left right top bottom middle center background foreground side up down"""
)
_NUMBERS = split_words("one two three four five six seven eight nine ten eleven twelve")
IN_ITS_PLACE = split_words("there instead")
"""An addition right after a removal that says where: "remove the castle and put a windmill there"."""
_TEXT_FIELDS = ("description", "tags", "atmosphere", "style", "quality_meta")
_CLAUSES = re.compile(r"\s*(?:,|;|\.|\band then\b|\bthen\b|\band\b)\s*", re.IGNORECASE)


@dataclass
class Patch:
    changed: dict[int, RegionShape] = field(default_factory=dict)
    """Previous-canvas index -> the shape of its rewrite."""
    added: list[RegionShape] = field(default_factory=list)
    removed: set[int] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    """Words for what the edit takes out ("remove the cat", "replace the cat with ..."): the model may
    not write them again (the kept regions are copied, not written)."""
    replaced: dict[str, str] = field(default_factory=dict)
    """Lemma of a replaced subject -> its replacement's words ("dog" -> "corgi"): the merge replaces
    them in the text of the regions it copies."""

    @property
    def shapes(self) -> tuple[RegionShape, ...]:
        """The regions the model writes, in order: the changed ones (by index), then the added."""
        return tuple(self.changed[i] for i in sorted(self.changed)) + tuple(self.added)

    def pairs(self, previous: Canvas) -> dict[int, int]:
        """Which region of :meth:`merge`'s canvas is which previous one (new -> previous index):
        kept and changed regions keep their order, removed ones leave a gap, added ones come last."""
        kept = [index for index in range(len(previous.local_descriptions)) if index not in self.removed]
        return dict(enumerate(kept))

    def merge(self, previous: Canvas, answer: Canvas) -> Canvas:
        """The previous canvas with the answer's global description and regions patched in.
        ``answer`` has exactly ``len(self.shapes)`` regions (the per-request grammar says so)."""
        written = list(answer.local_descriptions)
        rewrites = dict(zip(sorted(self.changed), written, strict=False))
        regions: list[LocalDescription] = []
        for index, region in enumerate(previous.local_descriptions):
            if index in self.removed:
                continue
            rewrite = rewrites.get(index)
            regions.append(rewrite if rewrite is not None else _replaced_in(region, self.replaced))
        regions += written[len(self.changed) :]
        return Canvas(global_description=answer.global_description, local_descriptions=regions)


def _replaced_in(region: LocalDescription, replaced: dict[str, str]) -> LocalDescription:
    """``region`` with each replaced subject's spellings replaced (the same object where none is named)."""
    update: dict[str, object] = {}
    for name in ("detailed_descriptions", *_TEXT_FIELDS):
        value = getattr(region, name)
        texts = value if isinstance(value, list) else [value]
        new = [_replace_words(text, replaced) for text in texts]
        if new != texts:
            update[name] = new if isinstance(value, list) else new[0]
    return region.model_copy(update=update) if update else region


def _replace_words(text: str, replaced: dict[str, str]) -> str:
    for old, new in replaced.items():
        forms = sorted(word_forms(old), key=len, reverse=True)
        pattern = re.compile(rf"\b(?:(an?|An?) )?({'|'.join(map(re.escape, forms))})\b")

        def swap(match: re.Match[str], new: str = new, old: str = old) -> str:
            article, found = match[1], match[2]
            written = new
            if found.lower() != old:  # a plural form: the replacement's last word in the plural
                head, _, last = new.rpartition(" ")
                written = f"{head} {word_forms(last)[1]}".strip()
            if found[:1].isupper():
                written = written[:1].upper() + written[1:]
            if article:
                chosen = "an" if written[:1].lower() in "aeiou" else "a"
                written = f"{article[0]}{chosen[1:]} {written}"
            return written

        text = pattern.sub(swap, text)
    return text


def _named(region: LocalDescription) -> set[str]:
    """The lemmas of every word of a region's text."""
    texts = [getattr(region, name) for name in _TEXT_FIELDS] + list(region.detailed_descriptions)
    return {lemma(w) for text in texts for w in words(text)}


def _heads(region: LocalDescription) -> list[str]:
    """The lemmas of the things a region's description names, in order: "A cat and a sleepy dog on a
    sofa." -> cat, dog, sofa (the head of each noun phrase)."""
    return [subject.head for subject in noun_phrases(region.description)[0]]


def _find_region(word: str, canvas: Canvas, taken: set[int]) -> int | None:
    """The region an edit of ``word`` means. Of the regions whose description names it, the one
    whose first-named thing it is ("Dog and cat on the sofa." before "Cat and dog on the sofa."),
    then the one naming the fewest things, then the first; a region that names it only inside a
    phrase ("dog bed") comes last. Where a plan put two subjects in one region, "make the dog a
    corgi" must not rewrite the region that opens with the cat."""
    target = lemma(word)
    candidates = []
    for index, region in enumerate(canvas.local_descriptions):
        if index in taken or target not in {lemma(w) for w in words(region.description)}:
            continue
        heads = _heads(region)
        position = heads.index(target) if target in heads else len(heads)
        candidates.append((position, len(heads), index))
    return min(candidates)[2] if candidates else None


def _opening(phrase: list[str]) -> str:
    text = " ".join(phrase)
    return text[:1].upper() + text[1:]


def _content(clause: str) -> list[str]:
    return [w for w in words(clause) if w.lower() not in FILLER]


def _verb(tokens: list[str]) -> str | None:
    for token in tokens:
        low = token.lower()
        if low in REMOVE:
            return "remove"
        if low in ADD:
            return "add"
        if low in CHANGE:
            return "change"
        if low in MOVE:
            return "move"
    return None


def _split_target(rest: list[str]) -> tuple[list[str], list[str]]:
    """``["cat", "with", "parrot"]`` -> (``["cat"]``, ``["parrot"]``)."""
    for i, token in enumerate(rest):
        if token.lower() in TARGET_MARKERS:
            return rest[:i], [t for t in rest[i + 1 :] if t.lower() not in TARGET_MARKERS]
    return rest, []


def plan_patch(prompt: str, canvas: Canvas, max_regions: int = 8) -> Patch | None:
    """The patch an edit prompt asks for, or None when the rules cannot tell (rewrite everything)."""
    patch = Patch()
    taken: set[int] = set()
    verb: str | None = None
    last_removed: tuple[int, str] | None = None
    for clause in filter(None, _CLAUSES.split(prompt)):
        tokens = _content(clause)
        verb = _verb(tokens) or verb  # "add a lamp and a rug": the rug is added too
        rest = [t for t in tokens if t.lower() not in REMOVE | ADD | CHANGE | MOVE]
        if not rest:
            continue
        if verb == "remove":
            for token in rest:
                index = _find_region(token, canvas, taken)
                if index is not None:
                    patch.removed.add(index)
                    patch.gone.add(token)
                    taken.add(index)
                    last_removed = (index, token)
            continue
        if verb == "add":
            here = {w.lower() for w in words(clause)} & IN_ITS_PLACE
            if here and last_removed is not None:  # "... and put a windmill there": the castle's place
                index, word = last_removed
                old = canvas.local_descriptions[index]
                patch.removed.discard(index)
                patch.changed[index] = RegionShape(_opening(rest), old.location, old.offset, old.area)
                patch.replaced[lemma(word)] = " ".join(rest).lower()
                last_removed = None
                continue
            patch.added.append(RegionShape(_opening(rest)))
            continue
        named, target = _split_target(rest)
        found = [(t, i) for t in named if (i := _find_region(t, canvas, taken)) is not None]
        if not found:
            if verb == "change" or any(t.lower() in _NUMBERS or t.isdigit() for t in rest):
                # "make it five apples" names the region after the number; "make it night" none at all.
                found = [(t, i) for t in rest if (i := _find_region(t, canvas, taken)) is not None]
            if not found:
                if verb is None:
                    return None  # no verb, no region: nothing the rules understand
                continue  # a change to the whole picture: the global description is rewritten
        word, index = found[0]
        old = canvas.local_descriptions[index]
        if verb == "move":  # the same subject somewhere else: the model picks the new place
            patch.changed[index] = RegionShape(_opening([word]))
            taken.add(index)
            continue
        others = [t for t in named if t != word]
        if target:
            opening = target  # "replace the cat with a parrot", "turn the dog into a wolf"
            patch.gone.add(word)
            patch.replaced[lemma(word)] = " ".join(target).lower()
        elif others and verb == "change" and _has_article_before(clause, others[0]):
            opening = others  # "make the dog a corgi"
            patch.replaced[lemma(word)] = " ".join(others).lower()
        else:
            opening = [*others, word]  # "make the cat black" -> "black cat", "five apples"
        patch.changed[index] = RegionShape(_opening(opening), old.location, old.offset, old.area)
        taken.add(index)
    if not (patch.changed or patch.added or patch.removed):
        return None
    _clear_removed(patch, canvas)
    if len(canvas.local_descriptions) - len(patch.removed) + len(patch.added) > max_regions:
        return None
    _one_subject_each(patch, canvas)
    return patch


def _clear_removed(patch: Patch, canvas: Canvas) -> None:
    """The regions the edit keeps that still name a removed subject (a replaced one is replaced by
    the merge): removed where the subject is in the phrase they open with, else rewritten in place by the model, which
    may not write the subject's words (``gone``)."""
    removed = {lemma(w) for w in patch.gone} - set(patch.replaced)
    for index, region in enumerate(canvas.local_descriptions):
        if index in patch.removed or index in patch.changed or not _named(region) & removed:
            continue
        phrases = noun_phrases(region.description)[0]
        if not phrases or {lemma(w) for w in words(phrases[0].phrase)} & removed:  # "Castle tower": part of it
            patch.removed.add(index)
            continue
        opening = " ".join(words(phrases[0].phrase))
        patch.changed[index] = RegionShape(_opening([opening]), region.location, region.offset, region.area)


def _one_subject_each(patch: Patch, canvas: Canvas) -> None:
    """Each region the model writes names no other region's subject after its opening."""
    kept = [r for i, r in enumerate(canvas.local_descriptions) if i not in patch.removed and i not in patch.changed]
    subjects = [heads[0] for heads in map(_heads, kept) if heads]
    subjects += [lemma(words(shape.opening)[-1]) for shape in patch.shapes]
    gone = {lemma(w) for w in patch.gone}

    def exclusive(shape: RegionShape) -> RegionShape:
        own = {lemma(w) for w in words(shape.opening)}
        others = sorted({s for s in subjects if s not in own and s not in gone})
        forms = [f for s in others for f in word_forms(s) if re.fullmatch("[A-Za-z]+", f)]
        return replace(shape, excluded=tuple(dict.fromkeys(forms)))

    patch.changed = {index: exclusive(shape) for index, shape in patch.changed.items()}
    patch.added = [exclusive(shape) for shape in patch.added]


def _has_article_before(clause: str, word: str) -> bool:
    return re.search(rf"\b(?:a|an|the|some)\s+{re.escape(word)}\b", clause, re.IGNORECASE) is not None
