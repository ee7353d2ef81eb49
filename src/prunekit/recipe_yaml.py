"""Read a recipe from YAML, checked completely, with errors that name the file, the line and the key.

    description: 30% of channels by Taylor, then 80% of the weights, gradually
    seed: 0
    stages:
      - type: prune
        method: taylor
        granularity: channel
        sparsity: 0.3
      - type: schedule          # a Pruner driven through fine-tuning
        method: magnitude
        sparsity: 0.8
        schedule: agp
        epochs: 3
        distill: true
      - type: finalize

PyYAML's node tree keeps where each key and value starts, so every problem is reported as
``FILE:LINE: stage N (type), key 'K': what is wrong``; all problems of the file are reported
together, and nothing runs until there are none. The values are built with the safe loader
(plain data only). The stages and their keys are those of ``prunekit.recipe_schema``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import PrunekitError, unknown_name
from prunekit.recipe_schema import RECIPE_KEYS, FieldError, Recipe, Stage, stage_from_mapping


class RecipeError(PrunekitError):
    """A recipe file that cannot be read or does not validate; `problems` lists ``FILE:LINE: ...`` lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{path} has {len(problems)} problems:\n  " + "\n  ".join(problems)
        super().__init__(f"{text}\n(nothing was run; see 'recipes/' for examples of recipes)")


def _read_text(path: Path) -> str:
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise RecipeError(path, [f"recipe '{path}' {where}; pass the path of a YAML recipe file "
                                 "(examples in recipes/)"])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(path, [f"cannot read recipe '{path}': {error}"]) from None


def _compose(path: Path, text: str) -> tuple[yaml.SafeLoader, yaml.Node]:
    """The node tree of `text` (one document), or a RecipeError at the line YAML stopped at."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        loader.dispose()
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        context = f" ({error.context})" if error.context else ""
        raise RecipeError(path, [f"{where}: not valid YAML: {error.problem}{context}"]) from None
    except yaml.YAMLError as error:
        loader.dispose()
        raise RecipeError(path, [f"{path}: not valid YAML: {error}"]) from None
    if root is None:
        loader.dispose()
        raise RecipeError(path, [f"{path} is empty; a recipe is a mapping with a 'stages' list (see recipes/)"])
    return loader, root


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


_BAD = object()  # a value that could not be built (its problem is recorded)


class _Reader:
    """Walks the node tree of one file, building values and collecting every problem with its line."""

    def __init__(self, path: Path, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.problems: list[tuple[int, str]] = []  # (line, text)

    def problem(self, line: int, text: str) -> None:
        self.problems.append((line, f"{self.path}:{line}: {text}"))

    def value(self, node: yaml.Node, where: str = "") -> Any:
        """The plain value of `node` (safe constructors only), or _BAD after recording why not."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error)
            self.problem(_line(node), f"{where}: cannot read the value: {problem} (recipes hold plain values: "
                                      "numbers, text, true/false, lists and mappings)")
            return _BAD

    def mapping(self, node: yaml.Node, what: str, prefix: str = "",
                nodes: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, int]] | None:
        """``({key: value}, {dotted key: line})`` of a mapping node, or None after recording why it
        is not one. Nested mappings are read the same way (their keys' lines kept as
        ``"outer.inner"``); the keys in `nodes` keep their node, to be read by the caller."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(_line(node), f"{what} must be a mapping of 'key: value' lines; got {_kind(node)}")
            return None
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node, f"{what}, a key")
            if key is _BAD:
                continue
            if not isinstance(key, str):
                self.problem(_line(key_node), f"{what}: keys must be names; got {key!r}")
                continue
            dotted = f"{prefix}{key}"
            if dotted in lines:
                self.problem(_line(key_node), f"{what}: key '{dotted}' appears twice (first on line "
                                              f"{lines[dotted]}); keep one")
                continue
            lines[dotted] = _line(key_node)
            if key in nodes:
                values[key] = value_node
            elif isinstance(value_node, yaml.MappingNode):  # e.g. distill: {temperature: 2}
                nested = self.mapping(value_node, what, f"{dotted}.")
                if nested is not None:
                    values[key] = nested[0]
                    lines.update(nested[1])
            elif (value := self.value(value_node, f"{what}, key '{dotted}'")) is not _BAD:
                values[key] = value
        return values, lines

    def stage(self, index: int, node: yaml.Node) -> Stage | None:
        what = f"stage {index + 1}"
        known_problems = len(self.problems)
        read = self.mapping(node, what)
        if read is None or len(self.problems) > known_problems:  # a key or value could not be read
            return None
        values, lines = read
        kind = values.get("type")
        if isinstance(kind, str):
            what = f"stage {index + 1} ({kind})"
        try:
            return stage_from_mapping(values)
        except FieldError as error:
            self.problem(lines.get(error.key, _line(node)), f"{what}, key '{error.key}': {error.message}")
            return None

    def recipe(self, root: yaml.Node) -> Recipe | None:
        read = self.mapping(root, "the recipe", nodes=("stages",))
        if read is None:
            return None
        values, lines = read
        for key in values:
            if key not in RECIPE_KEYS:
                self.problem(lines[key], str(unknown_name("recipe key", key, RECIPE_KEYS)))
        if "stages" not in values:
            self.problem(_line(root), "the recipe has no 'stages': list them, e.g. stages: [{type: prune, "
                                      "method: magnitude, sparsity: 0.9}]")
            return None
        stages_node = values.pop("stages")
        if not isinstance(stages_node, yaml.SequenceNode) or not stages_node.value:
            self.problem(lines["stages"], f"key 'stages' must be a non-empty list of stages ('- type: ...' "
                                          f"items); got {_kind(stages_node)}")
            return None
        stages = [self.stage(index, node) for index, node in enumerate(stages_node.value)]
        if self.problems:
            return None
        top = {key: values[key] for key in ("description", "seed") if key in values}
        try:
            return Recipe(tuple(stages), **top, source=str(self.path))
        except FieldError as error:
            self.problem(lines.get(error.key, _line(root)), f"key '{error.key}': {error.message}")
            return None


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return f"the value {node.value!r}" if node.value else "nothing"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate the recipe at `path`; a ``RecipeError`` lists every problem with its line.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.yaml")
    >>> _ = open(path, "w").write("stages:\\n  - type: prune\\n    sparsity: 0.9\\n  - type: finalize\\n")
    >>> [stage.kind for stage in load_recipe(path).stages]
    ['prune', 'finalize']
    >>> _ = open(path, "w").write("stages:\\n  - type: prune\\n    sparsity: lots\\n")
    >>> load_recipe(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.recipe_yaml.RecipeError: ...r.yaml:3: stage 1 (prune), key 'sparsity': must be a number in [0, 1) ...
    """
    path = Path(path)
    loader, root = _compose(path, _read_text(path))
    try:
        reader = _Reader(path, loader)
        recipe = reader.recipe(root)
    finally:
        loader.dispose()
    if reader.problems or recipe is None:
        raise RecipeError(path, [text for _, text in sorted(reader.problems, key=lambda problem: problem[0])])
    return recipe


__all__ = ["RecipeError", "load_recipe"]
