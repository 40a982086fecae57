"""Per-request grammars (``omost_grammar(..., regions=...)``) through xgrammar's real GBNF matcher:
exactly the regions asked, each opening with its subject, and still Omost code (a sublanguage of the
permissive grammar the fine-tuned models get)."""

from __future__ import annotations

import pytest

from shared.grammar import PROFILES, ContentLimits, RegionShape, omost_grammar
from shared.omost_code import canvas_to_code
from tests.planner.test_plans_real import EDITED

xgrammar = pytest.importorskip("xgrammar")

CAT, DOG = EDITED.local_descriptions


def accepts(grammar: str, text: str) -> bool:
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False).compile_grammar(grammar)
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def code(*descriptions: str, locations: tuple[str, ...] = ("on the left", "on the right")) -> str:
    regions = [
        r.model_copy(update={"description": d, "location": loc})
        for r, d, loc in zip((CAT, DOG, CAT), descriptions, locations, strict=False)
    ]
    return canvas_to_code(EDITED.model_copy(update={"local_descriptions": regions}))


SHAPES = (RegionShape("Grey cat"), RegionShape("Brown dog"))


@pytest.mark.parametrize("profile", PROFILES)
def test_each_subject_opens_its_region_in_order(profile) -> None:
    grammar = omost_grammar(profile, regions=SHAPES)
    assert accepts(grammar, code("Grey cat curled up.", "Brown dog sitting."))
    assert accepts(grammar, code("Grey cat, curled.", "Brown dog."))  # words and punctuation may follow
    # Strict: nothing glued to its last word. Permissive (a fine-tuned model) may write any string on.
    assert accepts(grammar, code("Grey cats.", "Brown dog.")) == (profile == "permissive")
    assert not accepts(grammar, code("Brown dog sitting.", "Grey cat curled up."))  # order
    assert not accepts(grammar, code("A grey cat.", "A brown dog."))  # not opened by the subject
    assert not accepts(grammar, code("Grey cat.", "Grey cat."))  # a duplicate region


@pytest.mark.parametrize("profile", PROFILES)
def test_exactly_as_many_regions_as_subjects(profile) -> None:
    grammar = omost_grammar(profile, regions=SHAPES)
    assert not accepts(grammar, code("Grey cat."))
    extra = ("on the left", "on the right", "in the center")
    assert not accepts(grammar, code("Grey cat.", "Brown dog.", "Grey cat again.", locations=extra))
    none = omost_grammar(profile, regions=())
    assert accepts(none, canvas_to_code(EDITED.model_copy(update={"local_descriptions": []})))


def test_a_fixed_place_is_kept() -> None:
    grammar = omost_grammar("strict-content", regions=(RegionShape("Corgi", "on the right"),))
    one = EDITED.model_copy(update={"local_descriptions": [DOG.model_copy(update={"description": "Corgi."})]})
    assert accepts(grammar, canvas_to_code(one))
    moved = one.model_copy(update={"local_descriptions": [one.local_descriptions[0].model_copy(
        update={"location": "on the left"})]})
    assert not accepts(grammar, canvas_to_code(moved))


def test_what_the_shaped_grammar_accepts_the_permissive_one_does() -> None:
    permissive = omost_grammar("permissive")
    for profile in PROFILES:
        text = code("Grey cat curled up.", "Brown dog sitting.")
        assert accepts(omost_grammar(profile, regions=SHAPES), text) and accepts(permissive, text)


def test_non_english_and_apostrophes() -> None:
    grammar = omost_grammar("strict-content", regions=(RegionShape("Chat"), RegionShape("Children's kite")))
    text = code("Chat gris.", "Children's kite.")
    assert '"Children\'s kite."' in text  # canvas_to_code picks double quotes here
    assert accepts(grammar, text)


@pytest.mark.parametrize("bad", ["", "cat'); import os #", "two  spaces", "new\nline"])
def test_an_opening_that_is_not_words_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="opening"):
        omost_grammar("strict-content", regions=(RegionShape(bad),))


def test_a_fixed_place_must_be_a_valid_value() -> None:
    with pytest.raises(ValueError, match="location"):
        omost_grammar("strict-content", regions=(RegionShape("Cat", location="somewhere"),))


def test_the_opening_word_does_not_run_on_into_junk() -> None:
    grammar = omost_grammar("strict-content", regions=(RegionShape("Parrot"), RegionShape("Brown dog")))
    assert accepts(grammar, code("Parrot.", "Brown dog, sitting."))
    assert not accepts(grammar, code("Parrotes a cat.", "Brown dog."))  # measured with SmolLM2
    assert not accepts(grammar, code("Parrothink.com", "Brown dog."))  # measured with SmolLM2


@pytest.mark.parametrize("profile", PROFILES)
def test_the_global_tags_open_with_the_prompts_words(profile) -> None:
    grammar = omost_grammar(profile, regions=SHAPES, global_tags=("grey cat", "brown dog", "sleeping"))
    tagged = EDITED.global_description.model_copy(update={"tags": "grey cat, brown dog, sleeping, sofa, cosy"})
    text = code("Grey cat.", "Brown dog.").replace(EDITED.global_description.tags, tagged.tags)
    assert tagged.tags in text
    assert accepts(grammar, text)
    assert accepts(omost_grammar("permissive"), text)  # still Omost code
    assert not accepts(grammar, code("Grey cat.", "Brown dog."))  # the tags lack the prompt's words
    exact = text.replace(tagged.tags, "grey cat, brown dog, sleeping")
    assert accepts(grammar, exact)  # the model need not add any


@pytest.mark.parametrize("profile", PROFILES)
def test_every_regions_style_opens_with_the_prompts_style(profile) -> None:
    grammar = omost_grammar(profile, regions=SHAPES, region_style="Oil painting")
    plain = code("Grey cat.", "Brown dog.")
    styled = plain.replace(f"style={CAT.style!r}", "style='Oil painting, soft light.'")
    assert styled.count("Oil painting") == 2  # both regions (the two share one style)
    assert accepts(grammar, styled)
    assert accepts(omost_grammar("permissive"), styled)  # still Omost code
    assert not accepts(grammar, plain)  # a style without the prompt's words
    with pytest.raises(ValueError, match="opening"):
        omost_grammar(profile, regions=SHAPES, region_style="oil'); import os #")


def test_global_tags_are_checked_and_bounded() -> None:
    with pytest.raises(ValueError, match="opening"):
        omost_grammar("strict-content", global_tags=("cat'); import os #",))
    with pytest.raises(ValueError, match="global tags"):
        omost_grammar("strict-content", global_tags=tuple(f"tag{i}" for i in range(40)))
    apostrophe = omost_grammar("strict-content", global_tags=("children's kite",))
    assert "children's kite" in apostrophe


def test_region_details_and_phrases_have_their_own_bounds() -> None:
    limits = ContentLimits(max_detailed_descriptions=2, max_region_details=1, phrase_words=6)
    grammar = omost_grammar("strict-content", limits=limits, regions=(RegionShape("Grey cat"),))
    cat = CAT.model_copy(update={"description": "Grey cat.", "detailed_descriptions": ["A grey cat curled up."]})
    two = ["A grey cat curled up.", "Its fur is soft."]
    base = EDITED.model_copy(update={"local_descriptions": [cat]})
    assert accepts(grammar, canvas_to_code(base))
    global_two = base.global_description.model_copy(update={"detailed_descriptions": two})
    assert accepts(grammar, canvas_to_code(base.model_copy(update={"global_description": global_two})))
    region_two = cat.model_copy(update={"detailed_descriptions": two})
    assert not accepts(grammar, canvas_to_code(base.model_copy(update={"local_descriptions": [region_two]})))
    long_style = cat.model_copy(update={"style": "A very soft and warm photo style with film grain"})
    styled = canvas_to_code(base.model_copy(update={"local_descriptions": [long_style]}))
    assert not accepts(grammar, styled) and accepts(omost_grammar("permissive"), styled)


def test_the_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="phrase_words"):
        omost_grammar("strict-content", limits=ContentLimits(phrase_words=1))
    with pytest.raises(ValueError, match="max_region_details"):
        omost_grammar("strict-content", limits=ContentLimits(min_detailed_descriptions=2, max_region_details=1))


def test_a_grammar_without_comments() -> None:
    bare = omost_grammar("strict-content", limits=ContentLimits(comment_chars=0), regions=SHAPES)
    text = code("Grey cat.", "Brown dog.")
    assert "# Add" in text and not accepts(bare, text)
    uncommented = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert accepts(bare, uncommented) and accepts(omost_grammar("strict-content", regions=SHAPES), uncommented)
