"""Plan quality of the planner as a user meets it: the planner process in its embedded default
(SmolLM2-135M-Instruct in llama.cpp, no settings), asked over HTTP for fresh plans and for edits.

Metrics (automatic, no model):

* **coverage** — the prompt's content words (stop words dropped, lemmatised by
  ``planner_service.subjects.lemma``; negated words left out) found anywhere in the canvas text.
  A non-English prompt's words also count when the canvas has the English word listed for them
  in ``ALIASES`` (the model may translate);
* **subjects in regions** — the hand-listed subjects of each prompt found in some region's text;
* **regions naming several subjects** — regions whose description names two or more of the listed
  subjects ("Cat and dog on sofa."): an edit of one subject then has no region of its own to change;
* **duplicates** — plans with two regions of the same description (case and punctuation folded);
* **regions ≥ asked** — plans with at least as many regions as listed subjects;
* **negation kept** — negated words ("no people") absent from every region;
* **edit faithful** — the edit's target words are in the canvas, the regions it should keep are
  still there (same description), removed words are in no region and not in the global description.
  Each edit runs twice: with the canvas inline, and with the conversation as inline history (what a
  ``conversation_id`` loads from Redis);
* **latency** — seconds per ``POST /v1/plans``, measured by the client.

Run: ``python bench/plan_quality.py [--limit N] [--env OMOST_PLANNER_X=Y ...]`` (a private
redis-server is started). Prints a Markdown table and the misses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner_service.subjects import content_words, lemma, noun_phrases, words
from shared.canvas import Canvas, LocalDescription
from shared.omost_code import canvas_to_code
from tests.planner.conftest import start_planner
from tests.support import RedisServer


@dataclass(frozen=True)
class Fresh:
    category: str
    prompt: str
    subjects: tuple[str, ...]
    """What a reader would expect a region for (lemmas; a/b means either)."""


ALIASES = {
    "chat": "cat", "chien": "dog", "canapé": "sofa/couch", "rote": "red", "rotes": "red", "auto": "car",
    "haus": "house", "faro": "lighthouse", "acantilado": "cliff", "atardecer": "sunset", "gatto": "cat",
    "finestra": "window", "dormiente": "sleep/sleeping/asleep",
}

FRESH = [
    Fresh("everyday", "a cat and a dog on a sofa", ("cat", "dog", "sofa/couch")),
    Fresh("everyday", "an astronaut riding a horse on the moon", ("astronaut", "horse", "moon")),
    Fresh("everyday", "a lighthouse on a cliff at sunset", ("lighthouse", "cliff")),
    Fresh("everyday", "two children flying a kite on a beach", ("child", "kite", "beach")),
    Fresh("numeracy", "three apples on a wooden plate", ("apple", "plate")),
    Fresh("numeracy", "two cats sleeping on a windowsill", ("cat", "windowsill/window")),
    Fresh("numeracy", "five birds sitting on a wire", ("bird", "wire")),
    Fresh("binding", "a red cube to the left of a blue sphere", ("cube", "sphere")),
    Fresh("binding", "a woman in a yellow dress holding a green umbrella", ("woman", "dress", "umbrella")),
    Fresh("binding", "a black dog and a white cat", ("dog", "cat")),
    Fresh("spatial", "a lamp on a desk beside a window", ("lamp", "desk", "window")),
    Fresh("spatial", "a small boat under a stone bridge", ("boat", "bridge")),
    Fresh("spatial", "a tall tree behind a small house", ("tree", "house")),
    Fresh("negation", "a quiet beach with no people", ("beach",)),
    Fresh("negation", "a city street at night without cars", ("street",)),
    Fresh("long", "a crowded medieval market with a blacksmith, a fruit seller, a juggler, a horse cart and a stone "
          "fountain", ("market", "blacksmith", "seller", "juggler", "cart", "fountain")),
    Fresh("long", "a kitchen with a fridge, a stove, a kettle, a cat on the floor and a clock on the wall",
          ("kitchen", "fridge", "stove", "kettle", "cat", "clock")),
    Fresh("style", "a watercolor painting of a fox in the snow", ("fox", "snow")),
    Fresh("style", "an oil painting of a sailing ship in a storm", ("ship", "storm")),
    Fresh("style", "pixel art of a knight and a dragon", ("knight", "dragon")),
    Fresh("style", "a cyberpunk street with neon signs, cinematic", ("street", "sign")),
    Fresh("non-English", "un chat et un chien sur un canapé", ("chat/cat", "chien/dog", "canapé/sofa/couch")),
    Fresh("non-English", "ein rotes Auto vor einem Haus", ("auto/car", "haus/house")),
    Fresh("non-English", "un faro en un acantilado al atardecer", ("faro/lighthouse", "acantilado/cliff")),
]


def _region(description: str, location: str, color: str, tags: str, detail: str) -> LocalDescription:
    return LocalDescription(
        location=location, offset="no offset", area="a medium-sized square area", distance_to_viewer=3.0,
        description=description, detailed_descriptions=[detail], tags=tags, atmosphere="Calm and cosy.",
        style="Soft photo style.", quality_meta="High quality photo.", HTML_web_color_name=color,
    )


SOFA = Canvas.model_validate({
    "global_description": {
        "description": "A cat and a dog on a sofa.",
        "detailed_descriptions": ["A grey cat and a brown dog rest together on a red sofa."],
        "tags": "cat, dog, sofa, living room", "HTML_web_color_name": "beige",
    },
    "local_descriptions": [
        _region("A grey cat.", "on the left", "gray", "cat, grey, asleep", "The grey cat is curled up asleep."),
        _region("A brown dog.", "on the right", "saddlebrown", "dog, brown, sitting", "The brown dog sits."),
    ],
})
TABLE = Canvas.model_validate({
    "global_description": {
        "description": "Two apples and a vase on a table.",
        "detailed_descriptions": ["Two red apples lie beside a blue vase on a wooden table."],
        "tags": "apples, vase, table, still life", "HTML_web_color_name": "wheat",
    },
    "local_descriptions": [
        _region("Two red apples.", "on the left", "red", "apples, red, fruit", "Two shiny red apples."),
        _region("A blue vase.", "on the right", "steelblue", "vase, blue, ceramic", "A tall blue ceramic vase."),
    ],
})
CASTLE = Canvas.model_validate({
    "global_description": {
        "description": "A castle on a green hill under a blue sky.",
        "detailed_descriptions": ["A grey stone castle crowns a green hill under a clear blue sky."],
        "tags": "castle, hill, sky, landscape", "HTML_web_color_name": "skyblue",
    },
    "local_descriptions": [
        _region("A grey stone castle.", "in the center", "gray", "castle, stone, towers", "A castle with two towers."),
        # Names the castle without being about it: an edit that takes the castle out must not keep it here.
        _region("A green hill below the castle.", "on the bottom", "green", "hill, grass, castle",
                "The hill rises to the castle walls."),
        _region("A clear blue sky.", "on the top", "skyblue", "sky, blue, clear", "A cloudless blue sky."),
    ],
})


@dataclass(frozen=True)
class Edit:
    kind: str
    base: Canvas
    base_prompt: str
    prompt: str
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    """Descriptions of the base's regions that must still be there."""


EDITS = [
    Edit("change", SOFA, "a cat and a dog on a sofa", "make the dog a corgi", ("corgi",), (), ("A grey cat.",)),
    Edit("add", SOFA, "a cat and a dog on a sofa", "add a window behind them", ("window",), (),
         ("A grey cat.", "A brown dog.")),
    Edit("remove", SOFA, "a cat and a dog on a sofa", "remove the cat", (), ("cat",), ("A brown dog.",)),
    Edit("replace", SOFA, "a cat and a dog on a sofa", "replace the cat with a parrot", ("parrot",), ("cat",),
         ("A brown dog.",)),
    Edit("change", SOFA, "a cat and a dog on a sofa", "make the cat black", ("black",), (), ("A brown dog.",)),
    Edit("add", SOFA, "a cat and a dog on a sofa", "add a lamp and a rug", ("lamp", "rug"), (),
         ("A grey cat.", "A brown dog.")),
    Edit("recount", TABLE, "two apples and a vase on a table", "make it five apples", ("five",), (),
         ("A blue vase.",)),
    Edit("remove+add", TABLE, "two apples and a vase on a table", "remove the vase and add a candle", ("candle",),
         ("vase",), ("Two red apples.",)),
    Edit("remove+put there", CASTLE, "a castle on a hill under a blue sky",
         "remove the castle and put a windmill there", ("windmill",), ("castle",), ("A clear blue sky.",)),
    Edit("remove (named elsewhere)", CASTLE, "a castle on a hill under a blue sky", "remove the castle", (),
         ("castle",), ("A clear blue sky.",)),
]


def canvas_lemmas(texts: list[str]) -> set[str]:
    return {lemma(w) for text in texts for w in words(text)}


def region_texts(region: LocalDescription) -> list[str]:
    return [region.description, *region.detailed_descriptions, region.tags]


def all_texts(canvas: Canvas) -> list[str]:
    g = canvas.global_description
    out = [g.description, *g.detailed_descriptions, g.tags]
    for r in canvas.local_descriptions:
        out += [*region_texts(r), r.atmosphere, r.style, r.quality_meta]
    return out


def found(word: str, lemmas: set[str]) -> bool:
    options = word.split("/") + ALIASES.get(word, "").split("/")
    return any(o and lemma(o) in lemmas for o in options)


def _fold(text: str) -> str:
    return re.sub(r"[^\w ]+", "", text.casefold()).strip()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    """One per request, for ``--out``: label, seconds, completion tokens, canvas."""

    def add(self, name: str, hit: int, total: int = 1) -> None:
        pair = self.counts.setdefault(name, [0, 0])
        pair[0] += hit
        pair[1] += total

    def share(self, name: str) -> str:
        hit, total = self.counts.get(name, [0, 0])
        return f"{hit}/{total} ({100 * hit / total:.0f} %)" if total else "—"


def post_plan(client: httpx.Client, body: dict[str, Any], tally: Tally, label: str) -> Canvas | None:
    started = time.perf_counter()
    response = client.post("/v1/plans", json=body)
    seconds = time.perf_counter() - started
    tally.latencies.append(seconds)
    ok = response.status_code == 200
    answer = response.json() if ok else None
    tally.records.append({
        "label": label, "seconds": round(seconds, 2), "status": response.status_code,
        "completion_tokens": answer["usage"]["completion_tokens"] if answer else None,
        "canvas": answer["canvas"] if answer else None,
    })
    if answer is None:
        tally.failures.append(f"{label}: HTTP {response.status_code} {response.text[:200]}")
        return None
    return Canvas.model_validate(answer["canvas"])


def score_fresh(case: Fresh, canvas: Canvas, tally: Tally) -> None:
    words_asked = content_words(case.prompt)
    negated = set(noun_phrases(case.prompt)[1])
    asked = [w for w in words_asked if w not in negated]
    lemmas = canvas_lemmas(all_texts(canvas))
    missing = [w for w in asked if not found(w, lemmas)]
    tally.add("coverage", len(asked) - len(missing), len(asked))
    # The same without the global tags, which open with the prompt's own words under subject
    # constraints: what the model itself wrote about them.
    untagged = canvas_lemmas([t for t in all_texts(canvas) if t != canvas.global_description.tags])
    tally.add("coverage outside tags", sum(found(w, untagged) for w in asked), len(asked))
    region_lemmas = canvas_lemmas([t for r in canvas.local_descriptions for t in region_texts(r)])
    lost = [s for s in case.subjects if not found(s, region_lemmas)]
    tally.add("subjects in regions", len(case.subjects) - len(lost), len(case.subjects))
    mixed = [r.description for r in canvas.local_descriptions if subjects_named(case, r.description) >= 2]
    tally.add("regions naming several subjects", len(mixed), len(canvas.local_descriptions))
    descriptions = [_fold(r.description) for r in canvas.local_descriptions]
    duplicate = len(descriptions) != len(set(descriptions))
    tally.add("duplicates", int(duplicate))
    tally.add("regions ≥ asked", int(len(canvas.local_descriptions) >= len(case.subjects)))
    if negated:
        tally.add("negation kept", int(not any(found(w, region_lemmas) for w in negated)))
    if missing or lost or duplicate or mixed:
        tally.misses.append(
            f"- {case.prompt!r}: missing {missing}, not in a region {lost}"
            + (f", duplicates {descriptions}" if duplicate else "")
            + (f", regions naming several subjects {mixed}" if mixed else "")
        )


def subjects_named(case: Fresh, description: str) -> int:
    """How many of the case's listed subjects ``description`` names (a/b counts once)."""
    lemmas = canvas_lemmas([description])
    return sum(found(subject, lemmas) for subject in case.subjects)


def score_edit(case: Edit, canvas: Canvas, tally: Tally, how: str) -> None:
    lemmas = canvas_lemmas(all_texts(canvas))
    region_lemmas = canvas_lemmas([t for r in canvas.local_descriptions for t in region_texts(r)])
    region_lemmas |= canvas_lemmas([canvas.global_description.description])
    missing = [w for w in case.present if not found(w, lemmas)]
    left = [w for w in case.absent if found(w, region_lemmas)]
    descriptions = {r.description for r in canvas.local_descriptions}
    lost = [d for d in case.keep if d not in descriptions]
    ok = not missing and not left and not lost
    tally.add("edit faithful", int(ok))
    tally.add(f"edit faithful ({case.kind})", int(ok))
    if not ok:
        tally.misses.append(
            f"- edit {case.prompt!r} ({how}): target missing {missing}, removed still there {left}, lost {lost}; "
            f"regions now {[r.description for r in canvas.local_descriptions]}"
        )


def spread(items: list, limit: int | None) -> list[tuple[int, Any]]:
    """``limit`` of the items spread evenly over the list (every category gets its turn), with indices."""
    if limit is None or limit >= len(items):
        return list(enumerate(items))
    picks = sorted({round(i * len(items) / limit) for i in range(limit)})
    return [(i, items[i]) for i in picks]


def run(url: str, limit: int | None, seed: int, edit_limit: int | None = None) -> tuple[Tally, Tally]:
    fresh, edits = Tally(), Tally()
    with httpx.Client(base_url=url, timeout=1800) as client:
        for index, case in spread(FRESH, limit):
            canvas = post_plan(client, {"prompt": case.prompt, "seed": seed + index}, fresh, case.prompt)
            if canvas is not None:
                score_fresh(case, canvas, fresh)
        if edit_limit is None and limit is not None:
            edit_limit = max(1, limit // 2)
        for index, case in spread(EDITS, edit_limit):
            history = [
                {"role": "user", "content": case.base_prompt},
                {"role": "assistant", "content": canvas_to_code(case.base)},
            ]
            bodies = {
                "canvas inline": {"canvas": case.base.model_dump(mode="json")},
                "history": {"history": history},
            }
            for how, extra in bodies.items():
                body = {"prompt": case.prompt, "seed": seed + 100 + index, **extra}
                canvas = post_plan(client, body, edits, f"edit {case.prompt!r} ({how})")
                if canvas is not None:
                    score_edit(case, canvas, edits, how)
    return fresh, edits


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="N fresh prompts (and N/2 edits), spread over the set.")
    parser.add_argument("--edits", type=int, default=None, help="N edits spread over the set (default: limit/2).")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--env", nargs="*", default=[], help="Planner settings, e.g. OMOST_PLANNER_MAX_NEW_TOKENS=900")
    parser.add_argument("--out", type=Path, default=None, help="Write every request's canvas and timing here (JSONL).")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    print(f"Load average (1/5/15 min) at the start: {load()}; planner settings: {env or 'embedded defaults'}\n")
    redis_server = RedisServer().start()
    planner = start_planner(redis_server.url, **env)
    try:
        fresh, edits = run(planner.url, args.limit, args.seed, args.edits)
    finally:
        planner.child.stop()
        redis_server.stop()
    if args.out is not None:
        with args.out.open("w") as out:
            for record in fresh.records + edits.records:
                out.write(json.dumps(record) + "\n")
    tokens = [r["completion_tokens"] for r in fresh.records if r["completion_tokens"] is not None]
    rows = [
        ("coverage (content words in the canvas)", fresh.share("coverage")),
        ("coverage outside the global tags", fresh.share("coverage outside tags")),
        ("subjects in regions", fresh.share("subjects in regions")),
        ("regions naming two or more subjects", fresh.share("regions naming several subjects")),
        ("plans with duplicate regions", fresh.share("duplicates")),
        ("plans with regions ≥ subjects asked", fresh.share("regions ≥ asked")),
        ("negation kept", fresh.share("negation kept")),
        ("edits faithful", edits.share("edit faithful")),
        *[(name, edits.share(name)) for name in sorted(edits.counts) if name.startswith("edit faithful (")],
        ("failed requests", str(len(fresh.failures) + len(edits.failures))),
        ("fresh plan completion tokens, median", f"{statistics.median(tokens):.0f}" if tokens else "—"),
    ]
    for name, tally in (("fresh plan", fresh), ("edit", edits)):
        if tally.latencies:
            median = statistics.median(tally.latencies)
            rows.append((f"{name} latency s, median (min–max)", f"{median:.1f} ({min(tally.latencies):.1f}–"
                                                                  f"{max(tally.latencies):.1f})"))
    print("| metric | value |\n|---|---|")
    print("\n".join(f"| {name} | {value} |" for name, value in rows))
    print(f"\nLoad average at the end: {load()}\n\nMisses:")
    print("\n".join(fresh.misses + edits.misses + fresh.failures + edits.failures) or "none")


if __name__ == "__main__":
    main()
