"""The Omost GBNF grammar, checked with a real GBNF matcher (xgrammar's, on the CPU).

The llama.cpp side (the server compiles the grammar and decodes with it) is in
``tests/planner/test_grammar_llamacpp.py``, where the embedded server is running.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from shared.canvas import ENUM_TABLES, GLOBAL_ARGUMENTS, LOCAL_ARGUMENTS, Canvas
from shared.grammar import PROFILES, ContentLimits, omost_grammar
from shared.omost_code import canvas_to_code, parse_canvas_code
from tests.shared.canvas_strategies import canvases

xgrammar = pytest.importorskip("xgrammar")

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "omost_outputs").glob("*.md"))
OMOST_DETAILS = {"max_detailed_descriptions": 8}
"""Real Omost answers carry up to 8 details; the strict profile's default of 5 is for small models."""


class Matcher:
    """A grammar compiled once; ``accepts`` runs a fresh byte-level matcher over a whole string."""

    def __init__(self, grammar: str) -> None:
        compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)
        self.compiled = compiler.compile_grammar(grammar)

    def accepts(self, text: str) -> bool:
        matcher = xgrammar.GrammarMatcher(self.compiled, terminate_without_stop_token=True)
        return matcher.accept_string(text) and matcher.is_terminated()


_cache: dict[tuple, Matcher] = {}


def matcher(profile: str, **options: int) -> Matcher:
    key = (profile, tuple(sorted(options.items())))
    if key not in _cache:
        _cache[key] = Matcher(omost_grammar(profile, **options))  # type: ignore[arg-type]
    return _cache[key]


def fixture_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_real_omost_outputs_are_in_the_permissive_language(path: Path) -> None:
    assert matcher("permissive").accepts(fixture_text(path))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_real_omost_outputs_are_in_the_strict_language_with_omost_detail_counts(path: Path) -> None:
    assert matcher("strict-content", **OMOST_DETAILS).accepts(fixture_text(path))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_strict_default_rejects_the_fixtures_only_for_their_detail_count(path: Path) -> None:
    canvas = parse_canvas_code(fixture_text(path)).canvas
    assert not matcher("strict-content").accepts(fixture_text(path))  # 6-8 details > 5
    glob = canvas.global_description
    trimmed = canvas.model_copy(
        update={
            "global_description": glob.model_copy(update={"detailed_descriptions": glob.detailed_descriptions[:5]}),
            "local_descriptions": [
                r.model_copy(update={"detailed_descriptions": r.detailed_descriptions[:5]})
                for r in canvas.local_descriptions
            ],
        }
    )
    assert matcher("strict-content").accepts(canvas_to_code(trimmed))


def test_bare_code_without_fence_is_permissive_only() -> None:
    code = fixture_text(FIXTURES[0]).removeprefix("```python\n").rstrip().removesuffix("```")
    assert matcher("permissive").accepts(code)
    assert not matcher("strict-content", **OMOST_DETAILS).accepts(code)


MINIMAL = """```python
canvas = Canvas()
canvas.set_global_description(
    description='A cat on a sofa.',
    detailed_descriptions=['A grey cat sleeps on a red sofa.'],
    tags='cat, sofa, sleeping',
    HTML_web_color_name='gray',
)
canvas.add_local_description(
    location='on the left',
    offset='no offset',
    area='a small square area',
    distance_to_viewer=2.0,
    description='A grey cat.',
    detailed_descriptions=['The cat is curled up and asleep.'],
    tags='cat, grey, asleep',
    atmosphere='Calm and cosy.',
    style='Soft and warm.',
    quality_meta='High quality photo.',
    HTML_web_color_name='gray',
)
```"""


@pytest.mark.parametrize("profile", PROFILES)
def test_minimal_canvas_is_accepted(profile: str) -> None:
    assert parse_canvas_code(MINIMAL).canvas
    assert matcher(profile).accepts(MINIMAL)


def _swap(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1)


HOSTILE = {
    "import": _swap("canvas = Canvas()\n", "import os\ncanvas = Canvas()\n"),
    "import_after": _swap(")\n```", ")\nimport os\n```"),
    "os_system_call": _swap("canvas = Canvas()\n", "canvas = Canvas()\nos.system('rm -rf /')\n"),
    "other_method": _swap("canvas = Canvas()\n", "canvas = Canvas()\ncanvas.render()\n"),
    "exec_in_argument": _swap("'A cat on a sofa.'", "exec('import os')"),
    "f_string": _swap("'A cat on a sofa.'", "f'{__import__(\"os\")}'"),
    "concatenation_with_name": _swap("'A cat on a sofa.'", "'A cat' + secret"),
    "arithmetic_distance": _swap("distance_to_viewer=2.0", "distance_to_viewer=9**9**9"),
    "name_as_value": _swap("HTML_web_color_name='gray',\n)\ncanvas.add", "HTML_web_color_name=gray,\n)\ncanvas.add"),
    "unknown_enum": _swap("'on the left'", "'somewhere else'"),
    "unknown_keyword": _swap("    tags='cat, sofa, sleeping',\n", "    tags='cat',\n    evil='x',\n"),
    "lambda": _swap("'A cat on a sofa.'", "(lambda: 1)()"),
    "list_comprehension": _swap("['A grey cat sleeps on a red sofa.']", "[x for x in 'ab']"),
    "second_assignment": _swap("canvas = Canvas()\n", "canvas = Canvas()\ncanvas = open('/etc/passwd')\n"),
    "triple_quoted_break_out": _swap("'A cat on a sofa.'", "'''A cat''' ; import os"),
}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_code_outside_the_whitelist_is_not_in_the_language(profile: str, name: str) -> None:
    assert not matcher(profile).accepts(HOSTILE[name])


STRICT_ONLY_REJECTS = {
    "punctuation_only": _swap("'Calm and cosy.'", "', '"),
    "empty_string": _swap("'Calm and cosy.'", "''"),
    "single_word_style": _swap("'Soft and warm.'", "'white'"),
    "number_tags": _swap("'cat, grey, asleep'", "'1, 2, 3, 4'"),
    "no_details": _swap("['The cat is curled up and asleep.']", "[]"),
    "six_details": _swap("['The cat is curled up and asleep.']", "[" + ", ".join(["'A cat sits here.'"] * 6) + "]"),
    "zero_distance": _swap("distance_to_viewer=2.0", "distance_to_viewer=0"),
    "exponent_distance": _swap("distance_to_viewer=2.0", "distance_to_viewer=2e3"),
    "leading_space": _swap("'A grey cat.'", "' A grey cat.'"),
    "very_long_string": _swap("'Calm and cosy.'", "'" + " ".join(["calm"] * 60) + "'"),
    "lone_comma_line": _swap("    tags='cat, sofa, sleeping',\n", "    tags='cat, sofa, sleeping'\n,\n"),
}


@pytest.mark.parametrize("name", sorted(STRICT_ONLY_REJECTS))
def test_strict_content_rejects_degenerate_content(name: str) -> None:
    text = STRICT_ONLY_REJECTS[name]
    assert not matcher("strict-content").accepts(text)


def test_strict_content_bounds_the_number_of_regions() -> None:
    head, region = MINIMAL.split("canvas.add_local_description(")
    region = "canvas.add_local_description(" + region.removesuffix("```")
    limit = ContentLimits().max_regions
    assert matcher("strict-content").accepts(head + region * limit + "```")
    assert not matcher("strict-content").accepts(head + region * (limit + 1) + "```")
    assert matcher("strict-content", max_regions=2).accepts(head + region * 2 + "```")
    assert not matcher("strict-content", max_regions=2).accepts(head + region * 3 + "```")
    # A global description alone steers nothing: small models must write at least one region.
    assert not matcher("strict-content").accepts(head.rstrip() + "\n```")
    assert matcher("permissive").accepts(head.rstrip() + "\n```")


def test_both_quote_styles_escapes_and_curly_apostrophes() -> None:
    text = _swap("'A cat on a sofa.'", '"The cat\'s sofa, \\"red\\" and it’s old."')
    text = text.replace("'High quality photo.'", "'It\\'s a high quality photo.'")
    text = text.replace("'on the left'", '"on the left"')
    assert parse_canvas_code(text).canvas
    for profile in PROFILES:
        assert matcher(profile).accepts(text), profile


def test_grammar_is_generated_from_the_contract_tables() -> None:
    for profile in PROFILES:
        grammar = omost_grammar(profile)  # type: ignore[arg-type]
        for values in ENUM_TABLES.values():
            for value in values:
                assert f'"{value}"' in grammar
        for name in (*GLOBAL_ARGUMENTS, *LOCAL_ARGUMENTS):
            assert f'"{name}"' in grammar
        # Arguments appear in the signature order.
        local_rule = next(line for line in grammar.splitlines() if line.startswith("local ::="))
        positions = [local_rule.index(f'"{name}"') for name in LOCAL_ARGUMENTS]
        assert positions == sorted(positions)
        assert re.search(r"^root ::=", grammar, re.MULTILINE)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        omost_grammar("loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        omost_grammar("permissive", max_regions=99)
    with pytest.raises(ValueError):
        omost_grammar("strict-content", max_detailed_descriptions=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canvases)
def test_any_canvas_written_as_code_is_in_the_permissive_language(canvas: Canvas) -> None:
    assert matcher("permissive").accepts(canvas_to_code(canvas))
