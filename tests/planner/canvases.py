"""A canvas the planner tests edit: a grey cat on the left, a brown dog on the right, on a sofa."""

from __future__ import annotations

from shared.canvas import Canvas

EDITED = Canvas.model_validate(
    {
        "global_description": {
            "description": "A cat and a dog on a sofa.",
            "detailed_descriptions": ["A grey cat and a brown dog rest together on a red sofa."],
            "tags": "cat, dog, sofa, living room",
            "HTML_web_color_name": "beige",
        },
        "local_descriptions": [
            {
                "location": "on the left",
                "offset": "no offset",
                "area": "a medium-sized square area",
                "distance_to_viewer": 3.0,
                "description": "A grey cat.",
                "detailed_descriptions": ["The grey cat is curled up asleep."],
                "tags": "cat, grey, asleep",
                "atmosphere": "Calm and cosy.",
                "style": "Soft photo style.",
                "quality_meta": "High quality photo.",
                "HTML_web_color_name": "gray",
            },
            {
                "location": "on the right",
                "offset": "no offset",
                "area": "a medium-sized square area",
                "distance_to_viewer": 3.0,
                "description": "A brown dog.",
                "detailed_descriptions": ["The brown dog sits and looks at the viewer."],
                "tags": "dog, brown, sitting",
                "atmosphere": "Calm and cosy.",
                "style": "Soft photo style.",
                "quality_meta": "High quality photo.",
                "HTML_web_color_name": "saddlebrown",
            },
        ],
    }
)
