"""What the backend needs from a Label Studio labeling config: the image and the brush tag.

A project's config (XML) names its tags; a prediction must name the ``BrushLabels`` tag it fills
(``from_name``) and the ``Image`` it belongs to (``to_name``), and the image's URL is the task
data field the ``Image`` tag's ``value`` names (``$image`` -> ``task["data"]["image"]``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

__all__ = ["BrushTarget", "brush_target"]


@dataclass(frozen=True)
class BrushTarget:
    """The tags a brush prediction refers to.

    Attributes:
        from_name: the ``BrushLabels`` tag's name.
        to_name: the ``Image`` tag's name.
        data_key: the task data field holding the image URL.
        labels: the ``BrushLabels`` tag's label values.
    """

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


def brush_target(label_config: str) -> BrushTarget:
    """The first ``BrushLabels`` tag of a config and the ``Image`` tag it points to.

    Raises:
        ValueError: the config is not XML, or has no BrushLabels tag bound to an Image tag.
    """
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as exc:
        raise ValueError(f"label_config: not valid XML ({exc})") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    for el in root.iter():
        if el.tag == "BrushLabels" and el.get("toName") in images:
            value = images[el.get("toName")]
            if not value.startswith("$"):
                raise ValueError(f"label_config: the Image tag {el.get('toName')!r} has no $field value")
            labels = tuple(label.get("value", "") for label in el if label.tag == "Label")
            return BrushTarget(str(el.get("name")), str(el.get("toName")), value[1:], labels)
    raise ValueError("label_config: no <BrushLabels> tag whose toName is an <Image> tag")
