"""Hypothesis strategies for valid canvases, shared by the contract's property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from shared.canvas import Canvas, GlobalDescription, LocalDescription
from shared.contract import AREAS, COLORS, LOCATIONS, OFFSETS

text = st.text(max_size=60)
words = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
    lambda s: bool(s.strip(",. \t\r\n"))
)
details = st.lists(text, max_size=4)
distances = st.one_of(
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=20).map(float),
)

global_descriptions = st.builds(
    GlobalDescription,
    description=words,
    detailed_descriptions=details,
    tags=text,
    HTML_web_color_name=st.sampled_from(sorted(COLORS)),
)

local_descriptions = st.builds(
    LocalDescription,
    location=st.sampled_from(list(LOCATIONS)),
    offset=st.sampled_from(list(OFFSETS)),
    area=st.sampled_from(list(AREAS)),
    distance_to_viewer=distances,
    description=words,
    detailed_descriptions=details,
    tags=text,
    atmosphere=text,
    style=text,
    quality_meta=text,
    HTML_web_color_name=st.sampled_from(sorted(COLORS)),
)

canvases = st.builds(
    Canvas,
    global_description=global_descriptions,
    local_descriptions=st.lists(local_descriptions, max_size=6),
)
