"""The one YAML loader of every config dlmbench reads: safe, bounded, strict about keys.

Built on :class:`yaml.SafeLoader` (no Python objects, no code). On top of it, while the file is
composed and before anything is constructed:

* the size of the document *as if every alias were expanded* is counted, so an alias bomb
  ("billion laughs") is refused after a few thousand nodes, in milliseconds, in little memory;
* alias uses and nesting depth are bounded, and an alias that refers to its own ancestor
  (a recursive structure) is refused;
* a mapping that repeats a key is an error naming the key and both lines.

Every failure (a syntax error, a limit, non-UTF-8 bytes, an integer too long to parse) becomes
one :class:`~dlmcore.configio.ConfigError` naming the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlmcore.errors import ConfigError, short_repr


@dataclass(frozen=True)
class YamlLimits:
    """Bounds on one YAML document.

    Attributes:
        max_nodes: scalars, sequences and mappings, counted with every alias expanded.
        max_aliases: alias uses (``*name``).
        max_depth: nesting of sequences and mappings.
        max_bytes: size of a file read by :func:`load_yaml_file`.
    """

    max_nodes: int = 100_000
    max_aliases: int = 1_000
    max_depth: int = 100
    max_bytes: int = 16 * 2**20


LIMITS = YamlLimits()
"""The defaults; far above any real config (the largest shipped one has a few hundred nodes)."""


class YamlRefused(yaml.YAMLError):
    """A document refused by a bound or by a duplicate key; ``str()`` is the whole reason."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class BoundedSafeLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that counts composed nodes and refuses duplicate mapping keys.

    Args:
        stream: the YAML text.
        limits: the bounds (:class:`YamlLimits`).
    """

    def __init__(self, stream: str, limits: YamlLimits = LIMITS) -> None:
        super().__init__(stream)
        self.limits = limits
        self._sizes: dict[yaml.Node, int] = {}  # node → its size with aliases expanded
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose one node, counting its expanded size, alias uses and depth."""
        if self.check_event(yaml.AliasEvent):
            return self._compose_alias(parent, index)
        self._depth += 1
        if self._depth > self.limits.max_depth:
            mark = self.peek_event().start_mark
            raise YamlRefused(
                f"nesting is deeper than {self.limits.max_depth} levels (line {mark.line + 1}); "
                "a config never needs that, so the file is refused."
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(node)
        return node

    def _compose_alias(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._aliases += 1
        if self._aliases > self.limits.max_aliases:
            line = self.peek_event().start_mark.line + 1
            raise YamlRefused(
                f"more than {self.limits.max_aliases} alias uses (*name), at line {line}; "
                "write the values out, or split the config."
            )
        node = super().compose_node(parent, index)
        if node not in self._sizes:
            raise YamlRefused(
                f"the alias at line {_line(node)} refers to a node that contains it (a recursive "
                "structure); configs must be trees. Remove the alias."
            )
        return node

    def _count(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[c] for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[k] + self._sizes[v] for k, v in node.value)
        else:
            size = 1
        if size > self.limits.max_nodes:
            raise YamlRefused(
                f"the value starting at line {_line(node)} expands to more than "
                f"{self.limits.max_nodes} nodes (aliases counted expanded); a config never needs "
                "that, so the file is refused (an alias bomb looks like this)."
            )
        self._sizes[node] = size

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The safe loader's mapping, after refusing a repeated key (``<<`` merges may override)."""
        self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if first is not None:
                raise YamlRefused(
                    f"key {short_repr(key)} appears twice in one mapping (lines {first} and "
                    f"{_line(key_node)}); YAML would silently keep the last. Keep one."
                )
            seen[key] = _line(key_node)


def load_yaml_text(text: str, source: str = "<text>", limits: YamlLimits = LIMITS) -> Any:
    """Parse one YAML document safely within ``limits``.

    Args:
        text: the YAML.
        source: what the text is (a file path, "override value"), named in errors.
        limits: the bounds (:class:`YamlLimits`).

    Returns:
        The plain data (dicts, lists, scalars); ``None`` for an empty document.

    Raises:
        ConfigError: a syntax error, a bound exceeded, a duplicate key, an unparseable scalar.
    """
    loader = BoundedSafeLoader(text, limits)
    loader.name = source  # named in the syntax errors' "in ..., line N" marks
    try:
        return loader.get_single_data()
    except YamlRefused as e:
        raise ConfigError([f"'{source}': {e}"], "Refused YAML") from None
    except yaml.YAMLError as e:
        raise ConfigError([f"'{source}' is not valid YAML: {e}"], "Invalid YAML") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of 10^5 digits
        raise ConfigError(
            [f"'{source}' holds a value YAML cannot read: {short_repr(str(e), 200)}"],
            "Invalid YAML",
        ) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, limits: YamlLimits = LIMITS) -> Any:
    """Read a UTF-8 YAML file and parse it with :func:`load_yaml_text`.

    Raises:
        ConfigError: the file is missing, too large, not UTF-8, or not valid YAML.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise ConfigError(
                [f"'{p}' is {size} bytes; a config may have at most {limits.max_bytes}."],
                "Refused YAML",
            )
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(
            [f"cannot read '{p}': {e.strerror or e}."], "Cannot read config"
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"'{p}' is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); save as UTF-8."],
            "Invalid YAML",
        ) from None
    return load_yaml_text(text, str(p), limits)


__all__ = [
    "LIMITS",
    "BoundedSafeLoader",
    "YamlLimits",
    "YamlRefused",
    "load_yaml_file",
    "load_yaml_text",
]
