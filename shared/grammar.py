"""A GBNF grammar of Omost's code form, generated from the contract tables.

With grammar-constrained decoding every plan an LLM writes parses, whatever the model. Both
llama.cpp's server (``grammar``) and vLLM's xgrammar backend (``structured_outputs.grammar``) read
this GBNF dialect. Enumerations come from ``shared.canvas.ENUM_TABLES`` and argument order from
``GLOBAL_ARGUMENTS`` / ``LOCAL_ARGUMENTS``, so the grammar cannot drift from the parser or the models.

Two profiles:

``permissive``
    Only the syntax ``parse_canvas_code`` accepts (keyword arguments in signature order): comments,
    blank lines, any whitespace and line breaks, both quote styles with escapes, any characters in
    strings (curly apostrophes included). Right for a fine-tuned Omost model: it never fights it.
``strict-content``
    Also shapes what goes *into* the strings, because a small model under the permissive grammar
    writes parseable junk (punctuation-only strings, one sentence repeated, tag lists of numbers):
    every string starts with a letter or digit and is two or more words (one space apart) up to a
    bounded count, 1-5 detailed descriptions,
    tags a comma-separated list of words, a bounded number of regions, distances a plain number,
    bounded whitespace and comments. The real Omost fixtures stay in this language once
    ``max_detailed_descriptions`` is raised to 8 (Omost writes 5-8 details; the default of 5 is
    what helps a small model stop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache
from typing import Literal

from shared.canvas import ENUM_TABLES, GLOBAL_ARGUMENTS, LOCAL_ARGUMENTS, MAX_LOCAL_DESCRIPTIONS

Profile = Literal["permissive", "strict-content"]
PROFILES: tuple[Profile, ...] = ("permissive", "strict-content")

_LIST_FIELDS = {"detailed_descriptions"}
_NUMBER_FIELDS = {"distance_to_viewer"}
_TAG_FIELDS = {"tags"}
_SHORT_FIELDS = {"description"}
_PHRASE_FIELDS = {"atmosphere", "style", "quality_meta"}


@dataclass(frozen=True)
class ContentLimits:
    """Bounds of the ``strict-content`` profile. Real Omost output (the fixtures) fits all but the
    detail count: descriptions up to ~60 characters, details ~160, 23-28 tags of 1-5 words."""

    min_regions: int = 1
    """A canvas with no region steers nothing; small models otherwise often stop after the global call."""
    max_regions: int = 6
    min_detailed_descriptions: int = 1
    max_detailed_descriptions: int = 5
    description_words: int = 20
    text_words: int = 40
    phrase_words: int | None = None
    """Words of a region's atmosphere, style and quality_meta (Omost writes 6-14); None: ``text_words``."""
    max_region_details: int | None = None
    """Detailed descriptions of a region; None: ``max_detailed_descriptions``, like the global one."""
    max_tags: int = 32
    words_per_tag: int = 5
    word_chars: int = 24
    comment_chars: int = 160
    """0: no comments (Omost's "# Add a cat." lines are a tenth of a plan's tokens and steer nothing)."""
    gap_lines: int = 3
    indent_chars: int = 12


@dataclass(frozen=True)
class RegionShape:
    """One region of a per-request grammar: its description opens with ``opening`` (a prompt's
    subject, e.g. ``"Red cube"``), and where ``location``/``offset``/``area`` are given they are fixed
    (an edit that rewrites a region in place keeps its place). The model writes everything else."""

    opening: str
    location: str | None = None
    offset: str | None = None
    area: str | None = None
    excluded: tuple[str, ...] = ()
    """Words the rest of the description may not write (the other subjects' spellings, e.g. ``"dog"``,
    ``"Dogs"``): strict profile only. A longer word that only starts with one stays ("dogma"); the
    word followed by punctuation or an apostrophe does not ("dog.", "dog's")."""


_OPENING = re.compile(r"[^\W_]+(?:[ '-][^\W_]+)*")
_EXCLUDABLE = re.compile(r"[A-Za-z]+")
_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _check_opening(opening: str) -> None:
    if not _OPENING.fullmatch(opening):
        raise ValueError(f"a region opening must be words (letters, digits, single spaces, - or '): {opening!r}")


def _literal(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _quotes() -> dict[str, tuple[str, str]]:
    """Rule-name suffix -> (GBNF literal of the quote, the quote escaped for a character class)."""
    return {"sq": (_literal("'"), "'"), "dq": (_literal('"'), '\\"')}


def _enum_rules(rules: dict[str, str]) -> None:
    for name, values in ENUM_TABLES.items():
        rule = "enum-" + name.lower().replace("_", "-")
        rules[rule + "-value"] = " | ".join(_literal(value) for value in values)
        rules[rule] = " | ".join(f"{q} {rule}-value {q}" for q, _ in _quotes().values())


def _arguments(method: str, names: tuple[str, ...], value_rule: dict[str, str]) -> str:
    """``canvas.method(`` keyword arguments in signature order, optional trailing comma ``)``.
    The profile defines the layout rules ``open``, ``sep``, ``eq`` and ``close``."""
    parts = [_literal(f"canvas.{method}("), "open"]
    for index, name in enumerate(names):
        if index:
            parts.append("sep")
        parts += [_literal(name), "eq", value_rule[name]]
    parts.append("close")
    return " ".join(parts)


def _value_rules(names: tuple[str, ...], *, region: bool = False) -> dict[str, str]:
    rules = {}
    for name in names:
        if name in ENUM_TABLES:
            rules[name] = "enum-" + name.lower().replace("_", "-")
        elif name in _LIST_FIELDS:
            rules[name] = "region-string-list" if region else "string-list"
        elif name in _PHRASE_FIELDS:
            rules[name] = "phrase-string"
        elif name in _NUMBER_FIELDS:
            rules[name] = "number"
        elif name in _TAG_FIELDS:
            rules[name] = "tags"
        elif name in _SHORT_FIELDS:
            rules[name] = "short-string"
        else:
            rules[name] = "string"
    return rules


def _structure(
    rules: dict[str, str],
    regions: str,
    shapes: tuple[RegionShape, ...] | None = None,
    global_tags: tuple[str, ...] | None = None,
    region_style: str | None = None,
) -> None:
    global_values = _value_rules(GLOBAL_ARGUMENTS)
    if global_tags:
        # The global tags open with these (a prompt's own words); the profile's tag rule goes on.
        global_values["tags"] = "global-tags"
        opening = _literal(", ".join(global_tags))
        rules["global-tags"] = " | ".join(
            f"{quote} {opening} tags-rest-{suffix} {quote}"
            for suffix, (quote, _) in _quotes().items()
            if not (suffix == "sq" and any("'" in tag for tag in global_tags))
        )
    rules["global"] = _arguments("set_global_description", GLOBAL_ARGUMENTS, global_values) + " line-end"
    _enum_rules(rules)
    if shapes is None:
        rules["code"] = f"gap init gap global ( gap local ){regions} gap"
        local_values = _value_rules(LOCAL_ARGUMENTS, region=True)
        rules["local"] = _arguments("add_local_description", LOCAL_ARGUMENTS, local_values) + " line-end"
        return
    # Exactly these regions, in this order: each subject opens one region and no two share one.
    rules["code"] = "gap init gap global " + "".join(f"gap local-{i} " for i in range(len(shapes))) + "gap"
    if region_style:
        # Every region's style opens with the prompt's own style words ("Oil painting"): each region's
        # sub-prompt then asks for the style, as the whole picture does.
        rules["region-style"] = " | ".join(
            f"{quote} {_literal(region_style)} style-rest-{suffix} {quote}"
            for suffix, (quote, _) in _quotes().items()
            if not (suffix == "sq" and "'" in region_style)
        )
    for i, shape in enumerate(shapes):
        values = _value_rules(LOCAL_ARGUMENTS, region=True)
        values["description"] = f"opening-{i}"
        if region_style:
            values["style"] = "region-style"
        for name in ("location", "offset", "area"):
            fixed = getattr(shape, name)
            if fixed is not None:
                if fixed not in ENUM_TABLES[name]:
                    raise ValueError(f"{fixed!r} is not a valid {name}")
                values[name] = "( " + " | ".join(f"{q} {_literal(fixed)} {q}" for q, _ in _quotes().values()) + " )"
        rules[f"local-{i}"] = _arguments("add_local_description", LOCAL_ARGUMENTS, values) + " line-end"
        variants = []
        for suffix, (quote, _) in _quotes().items():
            if suffix == "sq" and "'" in shape.opening:
                continue  # an apostrophe would end a single-quoted string
            rest = f"opening-rest-{suffix}"
            if shape.excluded and f"{rest}-words" in rules:  # the strict profile's rest: words it can bound
                rest = f"opening-rest-{i}-{suffix}"
                word = f"word-without-{i}-{suffix}"
                rules[rest] = rules[f"opening-rest-{suffix}-words"].replace("WORD", word)
                rules.update(_word_without(word, shape.excluded, suffix, rules[f"word-chars-{suffix}"]))
            variants.append(f"{quote} {_literal(shape.opening)} {rest} {quote}")
        rules[f"opening-{i}"] = " | ".join(variants)


_Trie = dict[str, "_Trie"]


def _word_without(name: str, excluded: tuple[str, ...], suffix: str, max_chars: str) -> dict[str, str]:
    """Rules of ``name``: a word of 1 to ``max_chars`` characters (``char-{suffix}``) that is none of
    ``excluded``, nor one of them followed by punctuation. A trie: each node offers a character that
    leaves the trie (then any characters), or the next one down; at an excluded word only a letter or
    digit may follow (a longer, different word)."""
    limit = int(max_chars)
    trie: _Trie = {}
    ends: set[str] = set()
    for word in excluded:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        ends.add(word)
    rules: dict[str, str] = {}

    def node_rule(rule: str, node: _Trie, prefix: str) -> bool:
        """Define ``rule`` (the non-empty rest after ``prefix``); False where nothing may follow."""
        left = limit - len(prefix) - 1
        if left < 0:
            return False
        leave = "".join(sorted(node))
        if prefix in ends:  # only a longer word: a letter or digit, none going down the trie
            first = "[" + "".join(c for c in _ALPHANUMERIC if c not in leave) + "]"
        else:
            first = f"[^ {_quotes()[suffix][1]}\\\\\\n\\r\\t{leave}]"
        alternatives = [f"{first} char-{suffix}{{0,{left}}}"]
        if not prefix:
            alternatives.append(f'"\\\\" [{_quotes()[suffix][1]}\\\\] char-{suffix}{{0,{left}}}')
        for index, (char, child) in enumerate(sorted(node.items())):
            child_rule = f"{rule}-{index}"
            has_rest = node_rule(child_rule, child, prefix + char)
            ending_ok = prefix + char not in ends
            if has_rest:
                alternatives.append(f"{_literal(char)} {child_rule}{'?' if ending_ok else ''}")
            elif ending_ok:
                alternatives.append(_literal(char))
        rules[rule] = " | ".join(alternatives)
        return True

    node_rule(name, trie, "")
    return rules


def _permissive(
    max_regions: int,
    shapes: tuple[RegionShape, ...] | None,
    global_tags: tuple[str, ...] | None,
    region_style: str | None = None,
) -> dict[str, str]:
    rules: dict[str, str] = {
        "root": "fence-open code fence-close | code",
        "fence-open": '"```" ( "python" | "py" )? [ \\t]* "\\n"',
        "fence-close": '"```" [ \\t\\n]*',
        "init": '"canvas" sp "=" sp "Canvas" sp "(" sp ")" line-end',
        "line-end": 'sp comment? "\\n"',
        "gap": '( sp comment? "\\n" )*',
        "comment": '"#" [^\\n]*',
        "sp": "[ \\t]*",
        # Inside brackets Python allows line breaks and comments anywhere between tokens.
        "ws": '( [ \\t\\n] | comment "\\n" )*',
        "open": "ws",
        "sep": 'ws "," ws',
        "eq": 'ws "=" ws',
        "close": 'ws ","? ws ")"',
        "string-list": '"[" ws ( string ( ws "," ws string )* ( ws "," )? ws )? "]"',
        "number": '( [0-9]+ ( "." [0-9]* )? | "." [0-9]+ ) ( [eE] [+-]? [0-9]+ )?',
        "tags": "string",
        "short-string": "string",
        "phrase-string": "string",
        "region-string-list": "string-list",
        "string": "string-sq | string-dq",
    }
    for suffix, (quote, in_class) in _quotes().items():
        rules[f"string-{suffix}"] = f'{quote} ( [^{in_class}\\\\\\n] | "\\\\" [^\\n] )* {quote}'
        rules[f"opening-rest-{suffix}"] = f'( [^{in_class}\\\\\\n] | "\\\\" [^\\n] )*'
        rules[f"tags-rest-{suffix}"] = f"opening-rest-{suffix}"
        rules[f"style-rest-{suffix}"] = f"opening-rest-{suffix}"
    _structure(rules, f"{{0,{max_regions}}}", shapes, global_tags, region_style)
    return rules


def _strict(
    limits: ContentLimits,
    shapes: tuple[RegionShape, ...] | None,
    global_tags: tuple[str, ...] | None,
    region_style: str | None = None,
) -> dict[str, str]:
    lim = limits
    ws = f'( "\\n" [ ]{{0,{lim.indent_chars}}} | " " )?'
    rules: dict[str, str] = {
        "root": "fence-open code fence-close",
        "fence-open": '"```python\\n"',
        "fence-close": '"```" "\\n"?',
        "init": '"canvas = Canvas()" line-end',
        "line-end": '"\\n"',
        "gap": f'( [ \\t]{{0,8}} {"comment? " if lim.comment_chars else ""}"\\n" ){{0,{lim.gap_lines}}}',
        "comment": f'"#" [^\\n]{{0,{lim.comment_chars}}}',
        # Omost's layout: arguments one per line or space-separated, never a lone comma line.
        "ws": ws,
        "open": "ws",
        "eq": '" "? "=" " "?',
        "close": '","? ws ")"',
        "sep": f'"," ( " " | "\\n" [ ]{{0,{lim.indent_chars}}} )',
        "number": '[1-9] [0-9]{0,2} ( "." [0-9]{1,2} )? | "0." [0-9]? [1-9]',
        "string-list": _strict_list(lim.min_detailed_descriptions, lim.max_detailed_descriptions),
        "region-string-list": _strict_list(
            lim.min_detailed_descriptions, lim.max_region_details or lim.max_detailed_descriptions
        ),
        "string": "string-sq | string-dq",
        "short-string": "short-sq | short-dq",
        "phrase-string": "phrase-sq | phrase-dq",
        "tags": "tags-sq | tags-dq",
    }
    for suffix, (quote, in_class) in _quotes().items():
        # A word: no spaces, no raw quote/backslash/control characters; escaped quotes allowed.
        rules[f"char-{suffix}"] = f'[^ {in_class}\\\\\\n\\r\\t] | "\\\\" [{in_class}\\\\]'
        chars = f"char-{suffix}{{1,{lim.word_chars}}}"
        lengths = {
            f"string-{suffix}": lim.text_words,
            f"short-{suffix}": lim.description_words,
            f"phrase-{suffix}": lim.phrase_words or lim.text_words,
        }
        for rule, words in lengths.items():
            # At least two words, one space between: rules out '', ', ', 'white' and runs of blanks.
            rules[rule] = (
                f'{quote} [A-Za-z0-9] char-{suffix}{{0,{lim.word_chars - 1}}} ( " " {chars} ){{1,{words - 1}}} {quote}'
            )
        # Inside double quotes a tag word may carry a plain apostrophe ("Children's Day").
        apostrophe = "'" if suffix == "dq" else ""
        rules[f"word-{suffix}"] = f"[A-Za-z] [A-Za-z0-9{apostrophe}’-]{{0,{lim.word_chars - 1}}}"
        rules[f"tag-{suffix}"] = f'word-{suffix} ( " " word-{suffix} ){{0,{lim.words_per_tag - 1}}}'
        rules[f"tags-{suffix}"] = f'{quote} tag-{suffix} ( ", " tag-{suffix} ){{0,{lim.max_tags - 1}}} {quote}'
        # After a region's opening: punctuation, further words. No letters glued on: measured with
        # SmolLM2, "Parrot" went on as "Parrothink.com", and a plural ending allowed here turned
        # "Cliff" into "Cliffes" and "Neon signs" into "Neon signss" (the prompt's number is in the opening).
        rules[f"opening-rest-{suffix}"] = f'[.,;:!]? ( " " {chars} ){{0,{lim.description_words - 1}}}'
        # The same with a word rule of its own (a region whose rest may not name other subjects):
        # templates _structure fills in and drops.
        rules[f"opening-rest-{suffix}-words"] = f'[.,;:!]? ( " " WORD ){{0,{lim.description_words - 1}}}'
        rules[f"word-chars-{suffix}"] = str(lim.word_chars)
        rules[f"tags-rest-{suffix}"] = f'( ", " tag-{suffix} ){{0,{max(0, lim.max_tags - len(global_tags or ()))}}}'
        rules[f"style-rest-{suffix}"] = f'[.,;:!]? ( " " {chars} ){{0,{(lim.phrase_words or lim.text_words) - 1}}}'
    _structure(rules, f"{{{lim.min_regions},{lim.max_regions}}}", shapes, global_tags, region_style)
    for suffix in _quotes():
        del rules[f"opening-rest-{suffix}-words"], rules[f"word-chars-{suffix}"]
    return rules


def _strict_list(least: int, most: int) -> str:
    return f'"[" ws string ( sep string ){{{least - 1},{most - 1}}} ","? ws "]"'


@cache
def _render(
    profile: Profile,
    limits: ContentLimits,
    max_regions: int,
    shapes: tuple[RegionShape, ...] | None = None,
    global_tags: tuple[str, ...] | None = None,
    region_style: str | None = None,
) -> str:
    if profile == "permissive":
        rules = _permissive(max_regions, shapes, global_tags, region_style)
    elif profile == "strict-content":
        rules = _strict(limits, shapes, global_tags, region_style)
    else:
        raise ValueError(f"unknown grammar profile {profile!r}; choose one of {', '.join(PROFILES)}")
    header = f"# Omost canvas code, profile {profile!r}; generated by shared.grammar from the contract tables.\n"
    return header + "".join(f"{name} ::= {body}\n" for name, body in rules.items())


def omost_grammar(
    profile: Profile = "permissive",
    *,
    max_regions: int | None = None,
    max_detailed_descriptions: int | None = None,
    limits: ContentLimits | None = None,
    regions: tuple[RegionShape, ...] | None = None,
    global_tags: tuple[str, ...] | None = None,
    region_style: str | None = None,
) -> str:
    """The GBNF grammar text (root rule ``root``) of the Omost code form for ``profile``.

    ``regions`` makes it a per-request grammar: exactly those regions, in order, each description
    opening with its shape's words (a sublanguage of the profile's, so still Omost code).
    ``global_tags`` makes the global description's tags open with these, in order (the prompt's own
    words); the model may add more. ``region_style`` (with ``regions``) makes every region's ``style``
    open with these words (the prompt's own style, e.g. ``"Oil painting"``).

    ``max_regions`` bounds ``add_local_description`` calls (default: the model's limit of 20 for
    ``permissive``, ``limits.max_regions`` for ``strict-content``); ``max_detailed_descriptions``
    and ``limits`` shape content and apply to ``strict-content`` only.
    """
    limits = limits or ContentLimits()
    if max_detailed_descriptions is not None:
        limits = replace(limits, max_detailed_descriptions=max_detailed_descriptions)
    if max_regions is None:
        max_regions = MAX_LOCAL_DESCRIPTIONS if profile == "permissive" else limits.max_regions
    if not 0 <= max_regions <= MAX_LOCAL_DESCRIPTIONS:
        raise ValueError(f"max_regions must be within 0..{MAX_LOCAL_DESCRIPTIONS}")
    region_details = limits.max_region_details or limits.max_detailed_descriptions
    if not 1 <= limits.min_detailed_descriptions <= min(limits.max_detailed_descriptions, region_details):
        raise ValueError("need 1 <= min_detailed_descriptions <= max_detailed_descriptions, max_region_details")
    if limits.phrase_words is not None and limits.phrase_words < 2:
        raise ValueError("phrase_words must be 2 or more (a string is two or more words)")
    limits = replace(limits, max_regions=max_regions)
    if profile == "permissive":
        limits = ContentLimits()  # its content bounds do not apply; keep the cache key independent
    for tag in global_tags or ():
        _check_opening(tag)
    if global_tags and len(global_tags) > limits.max_tags:
        raise ValueError(f"at most {limits.max_tags} global tags")
    tags = tuple(global_tags) if global_tags else None
    if regions is not None:
        if len(regions) > MAX_LOCAL_DESCRIPTIONS:
            raise ValueError(f"at most {MAX_LOCAL_DESCRIPTIONS} regions")
        for shape in regions:
            _check_opening(shape.opening)
            for word in shape.excluded:
                if not _EXCLUDABLE.fullmatch(word):
                    raise ValueError(f"an excluded word must be letters: {word!r}")
        for part in region_style.split(", ") if region_style else ():
            _check_opening(part)  # words, comma-separated ("Pixel art, cinematic")
        return _render(profile, limits, max_regions, tuple(regions), tags, region_style or None)
    return _render(profile, limits, max_regions, None, tags)
