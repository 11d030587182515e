"""YAML read as the YAML spec says: a key given twice in one mapping is an error, not "the last one wins".

PyYAML's ``safe_load`` keeps the last of duplicate keys silently, so a config holding ``lr`` twice
trains with whichever came second. :func:`safe_load_unique` refuses it, naming the dotted key and
both lines.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the YAML text holds one key twice."""


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing duplicate keys.

    Raises:
        DuplicateKeyError: ``key 'stages.slice.lr' is given twice (lines 4 and 9)``.
        yaml.YAMLError: text that is not YAML.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _check_keys(node, "")
    return yaml.safe_load(text)


def _check_keys(node: yaml.Node, path: str) -> None:
    """Walks the composed node tree, raising at the first mapping key seen twice."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, f"{path}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        dotted = f"{path}.{key}" if path else str(key)
        line = key_node.start_mark.line + 1
        if key is not None and key in seen:
            raise DuplicateKeyError(f"key '{dotted}' is given twice (lines {seen[key]} and {line}); keep one")
        if key is not None:
            seen[key] = line
        _check_keys(value_node, dotted)
