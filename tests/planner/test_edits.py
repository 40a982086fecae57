"""Edits as region patches: which regions an edit names (rules, no model) and the merge."""

from __future__ import annotations

from planner_service.edits import Patch, plan_patch
from shared.canvas import Canvas
from shared.grammar import RegionShape
from tests.planner.test_plans_real import EDITED

CAT, DOG = EDITED.local_descriptions
CAT_SPELLINGS = ("cat", "cats", "Cat", "Cats")


def region(description: str, *details: str, tags: str = "scene", location: str = "in the center"):
    return CAT.model_copy(update={"description": description, "detailed_descriptions": list(details) or
                                  ["Plain."], "tags": tags, "location": location})  # fmt: skip


CASTLE = region("Castle on a hill.", "Grey stone castle walls.", tags="castle, stone", location="on the top")
HILL = region("Green hill under the castle.", "The castles' hill is steep.", tags="hill, castle, grass")
TOWER = region("Castle tower, tall.", location="on the left")
SKY = region("Blue sky.", location="on the right")
CASTLE_SCENE = EDITED.model_copy(update={"local_descriptions": [CASTLE, HILL, TOWER, SKY]})


def test_make_the_dog_a_corgi_rewrites_the_dog_in_its_place() -> None:
    patch = plan_patch("make the dog a corgi", EDITED)
    assert patch is not None
    # In its place, naming no other region's subject (issue 27 §1).
    assert patch.changed == {1: RegionShape("Corgi", DOG.location, DOG.offset, DOG.area, CAT_SPELLINGS)}
    assert not patch.added and not patch.removed
    assert not patch.gone  # a corgi is still a dog: nothing is banned
    assert patch.replaced == {"dog": "corgi"}


def test_an_attribute_change_keeps_the_noun() -> None:
    patch = plan_patch("make the cat black", EDITED)
    assert patch is not None and patch.changed[0].opening == "Black cat"


def test_replace_with_and_turn_into() -> None:
    parrot = plan_patch("replace the cat with a parrot", EDITED)
    wolf = plan_patch("turn the dog into a wolf", EDITED)
    assert parrot is not None and wolf is not None
    assert parrot.changed[0].opening == "Parrot" and parrot.gone == {"cat"}
    assert wolf.changed[1].opening == "Wolf" and wolf.gone == {"dog"}


def test_add_remove_and_a_verb_carried_over_and() -> None:
    patch = plan_patch("remove the cat and add a lamp and a rug", EDITED)
    assert patch is not None
    assert patch.removed == {0} and [s.opening for s in patch.added] == ["Lamp", "Rug"] and not patch.changed
    assert patch.gone == {"cat"}


def test_recount_names_the_region_after_the_number() -> None:
    patch = plan_patch("make it five dogs", EDITED)
    assert patch is not None and patch.changed[1].opening == "Five dogs"


def test_move_leaves_the_place_to_the_model() -> None:
    patch = plan_patch("move the cat to the right", EDITED)
    assert patch is not None and patch.changed == {0: RegionShape("Cat", excluded=("dog", "dogs", "Dog", "Dogs"))}


def test_what_the_rules_cannot_read_is_a_full_rewrite() -> None:
    assert plan_patch("make it night", EDITED) is None
    assert plan_patch("a bigger sofa", EDITED) is None
    assert plan_patch("add a bird", EDITED, max_regions=2) is None  # over the region limit


def test_merge_copies_untouched_regions_and_patches_the_rest() -> None:
    patch = Patch(changed={1: RegionShape("Corgi")}, added=[RegionShape("Lamp")], removed=set())
    corgi = DOG.model_copy(update={"description": "Corgi sitting."})
    lamp = CAT.model_copy(update={"description": "Lamp glowing."})
    glob = EDITED.global_description.model_copy(update={"description": "A cat and a corgi."})
    answer = Canvas(global_description=glob, local_descriptions=[corgi, lamp])
    merged = patch.merge(EDITED, answer)
    assert merged.global_description == glob
    assert merged.local_descriptions == [CAT, corgi, lamp]
    assert merged.local_descriptions[0] is CAT  # untouched: the very same region


def test_merge_of_a_removal_and_a_cut_off_answer() -> None:
    removal = Patch(removed={0})
    assert removal.merge(EDITED, EDITED.model_copy(update={"local_descriptions": []})).local_descriptions == [DOG]
    cut = Patch(changed={0: RegionShape("Black cat")}, added=[RegionShape("Lamp")])
    # The answer stopped after the global description: nothing to patch in, nothing invented.
    merged = cut.merge(EDITED, EDITED.model_copy(update={"local_descriptions": []}))
    assert merged.local_descriptions == [CAT, DOG]


def test_pairs_name_the_previous_region_of_each_kept_or_changed_one() -> None:
    three = EDITED.model_copy(update={"local_descriptions": [CAT, DOG, CAT]})
    patch = Patch(changed={2: RegionShape("Lamp")}, added=[RegionShape("Rug")], removed={0})
    assert patch.pairs(three) == {0: 1, 1: 2}


def test_the_region_an_edit_means_is_the_one_its_subject_heads() -> None:
    """Issue 27 §1: SmolLM2 planned overlapping regions that each named both animals; "make the dog
    a corgi" rewrote "Cat and Dog on Sofa." (the first naming a dog) and lost the cat."""
    both = CAT.model_copy(update={"description": "Cat and Dog on Sofa."})
    dog_first = DOG.model_copy(update={"description": "Dog and Cat on the sofa, resting."})
    canvas = EDITED.model_copy(update={"local_descriptions": [both, dog_first]})
    patch = plan_patch("make the dog a corgi", canvas)
    assert patch is not None and set(patch.changed) == {1}
    # Neither heads it: the region naming the fewest other things is the dog's.
    crowd = CAT.model_copy(update={"description": "A cat, a dog, a lamp and a sofa."})
    alone = DOG.model_copy(update={"description": "A sleepy brown dog."})
    patch = plan_patch("make the dog a corgi", EDITED.model_copy(update={"local_descriptions": [crowd, alone]}))
    assert patch is not None and set(patch.changed) == {1}


def test_a_replaced_subject_is_replaced_in_the_regions_kept() -> None:
    """Issue 25 §4: the regions copied no longer name what the edit replaced."""
    watching = CAT.model_copy(update={"description": "Cat watching the dog.", "tags": "cat, dog, Dogs"})
    canvas = EDITED.model_copy(update={"local_descriptions": [watching, DOG]})
    patch = plan_patch("make the dog a corgi", canvas)
    assert patch is not None and set(patch.changed) == {1}
    corgi = DOG.model_copy(update={"description": "Corgi sitting."})
    merged = patch.merge(canvas, canvas.model_copy(update={"local_descriptions": [corgi]}))
    kept = merged.local_descriptions[0]
    assert kept.description == "Cat watching the corgi." and kept.tags == "cat, corgi, Corgis"
    assert kept.detailed_descriptions == CAT.detailed_descriptions and kept.location == CAT.location
    owl = plan_patch("replace the cat with an owl", EDITED.model_copy(update={"local_descriptions": [CAT, region(
        "Dog beside a cat.", "A cat's tail.")]}))  # fmt: skip
    assert owl is not None and owl.replaced == {"cat": "owl"}
    dog = owl.merge(EDITED, EDITED.model_copy(update={"local_descriptions": [CAT]})).local_descriptions[1]
    assert dog.description == "A brown dog."  # EDITED's dog names no cat: the very same text


def test_remove_and_put_something_there_replaces_in_place() -> None:
    patch = plan_patch("remove the castle and put a windmill there", CASTLE_SCENE)
    assert patch is not None and not patch.removed and not patch.added
    assert patch.changed[0].opening == "Windmill" and patch.changed[0].location == CASTLE.location
    assert patch.gone == {"castle"} and patch.replaced == {"castle": "windmill"}
    windmill = CASTLE.model_copy(update={"description": "Windmill on a hill."})
    merged = patch.merge(CASTLE_SCENE, CASTLE_SCENE.model_copy(update={"local_descriptions": [windmill]}))
    texts = [r.description for r in merged.local_descriptions]
    assert texts == ["Windmill on a hill.", "Green hill under the windmill.", "Windmill tower, tall.", "Blue sky."]
    assert merged.local_descriptions[1].detailed_descriptions == ["The windmills' hill is steep."]
    assert merged.local_descriptions[3] is SKY


def test_a_removed_subject_leaves_every_region() -> None:
    """Issue 25 §4: "remove the castle" kept "Green hill under the castle." byte for byte. Now a region
    the castle heads goes with it, and one that only names it is rewritten in place, castle banned."""
    patch = plan_patch("remove the castle", CASTLE_SCENE)
    assert patch is not None
    assert patch.removed == {0, 2} and patch.gone == {"castle"}
    hill = patch.changed[1]
    assert (hill.opening, hill.location) == ("Green hill", HILL.location)
    assert "castle" not in hill.excluded and "sky" in hill.excluded  # castle: banned outright instead
    rewritten = HILL.model_copy(update={"description": "Green hill, grassy.", "tags": "hill, grass"})
    merged = patch.merge(CASTLE_SCENE, CASTLE_SCENE.model_copy(update={"local_descriptions": [rewritten]}))
    assert merged.local_descriptions == [rewritten, SKY]
