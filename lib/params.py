"""Parameter values as papermill reads them: YAML 1.2 numbers, ``-p NAME VALUE`` pairs, and
"did you mean" hints for a misspelt name.

The one parser of ``-p NAME VALUE`` for ``lib.book`` and ``lib.experiment``. Imports nothing
of the library but :mod:`lib.errors`. Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import yaml

from lib.errors import CompanionError


_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.2 floats: PyYAML (YAML 1.1) wants a dot and a signed exponent, so it reads 1e-3
# and 1E5 as strings. Base-60 floats (1:30.5) and .inf / .nan stay as in YAML 1.1.
_FLOAT = re.compile(r"""^(?:
      [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    | [-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    | [-+]?\.(?:inf|Inf|INF)
    | \.(?:nan|NaN|NAN)
)$""", re.X)


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers (``1e-3`` is a float) and unique keys.

    The one loader for presets and ``-p`` values: see :func:`load_yaml`.
    """

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Any, Any]:
        """A mapping, refusing a key given twice (PyYAML would keep the last silently)."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice",
                        key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: what is wrong[, while ... started at line ...]``, in one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        problem += f", {context} started at line {start.line + 1}, column {start.column + 1}"
    return " ".join(f"{where}{problem}".split())


def load_yaml(text: str, source: str) -> Any:
    """Read YAML with :class:`YamlLoader`; a syntax error is one line naming ``source``.

    Args:
        text: the YAML text.
        source: what the text is, for the message (e.g. ``preset params/tiny.yaml``).

    Raises:
        CompanionError: the text is not valid YAML (with the line and column).
    """
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as err:
        raise CompanionError(
            f"{source} is not valid YAML ({_yaml_problem(err)}): fix it"
        ) from None


def parse_parameters(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """The values of command-line ``-p NAME VALUE`` pairs, each ``VALUE`` read as YAML.

    ``50``, ``1e-3``, ``true``, ``null`` and ``[a, b]`` become numbers, booleans, None and
    lists; anything else is a string.

    Raises:
        CompanionError: a value is not valid YAML, or a name is given twice.
    """
    values: dict[str, Any] = {}
    for name, text in pairs:
        if name in values:
            raise CompanionError(f"parameter {name} is given twice (-p {name} ...): give it "
                                 "once")
        try:
            values[name] = yaml.load(text, Loader=YamlLoader)
        except yaml.YAMLError as err:
            raise CompanionError(
                f"-p {name} {text!r} is not valid YAML ({_yaml_problem(err)}): fix it, or "
                "pass a string in double quotes inside the shell's quotes ('\"...\"')"
            ) from None
    return values


def name_hints(unknown: Iterable[str], known: Collection[str]) -> str:
    """``trian_steps (did you mean train_steps?)``: unknown names with the nearest known."""
    out = []
    for name in unknown:
        near = difflib.get_close_matches(name, list(known), n=1)
        out.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return ", ".join(out)


def reject_unknown(given: Iterable[str], known: Collection[str], message: str) -> None:
    """The one check for parameter names nobody takes: a one-line error, or nothing.

    Args:
        given: the names passed (a preset's keys, ``-p`` overrides, a chapter's params).
        known: the names that are valid here.
        message: the error, with ``{names}`` where the unknown names (and their nearest
            known names, :func:`name_hints`) go.

    Raises:
        CompanionError: some name in ``given`` is not in ``known``.
    """
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise CompanionError(message.replace("{names}", name_hints(unknown, known)))


def add_parameter_option(parser: Any) -> None:
    """The ``-p NAME VALUE`` option (repeatable) of ``lib.book`` and ``lib.experiment``;
    read the pairs with :func:`parse_parameters` (``args.parameter``)."""
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a parameter; VALUE is read as YAML (50, 1e-3, true, [1, 2])",
    )
