"""Loading strict config: the kernel matrix (kernels.yaml), manifests and expectations.

Every unknown key or bad value is a ConfigError naming the file, the entry and the key,
because silently ignored configuration is a bug users only find in production.
"""

from __future__ import annotations

import re
import stat
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.expect import Expectations
from bpfcompat.matrix.manifest import Manifest
from bpfcompat.vm.spec import SUITE_PATTERN, KernelSpec, Strict

M = TypeVar("M", bound=BaseModel)


class KernelMatrix(Strict):
    guest_suite: Annotated[str, Field(pattern=SUITE_PATTERN)] = "trixie"
    kernels: Annotated[list[KernelSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> KernelMatrix:
        seen: set[str] = set()
        for index, kernel in enumerate(self.kernels):
            if kernel.id in seen:
                raise ValueError(f"kernels[{index}].id: duplicate kernel id {kernel.id!r}")
            seen.add(kernel.id)
        for index, kernel in enumerate(self.kernels):
            if kernel.expect_like is not None and (
                kernel.expect_like not in seen or kernel.expect_like == kernel.id
            ):
                raise ValueError(
                    f"kernels[{index}].expect_like: {kernel.expect_like!r} is not another "
                    "kernel of this matrix"
                )
        return self

    def select(self, ids: list[str] | None) -> list[KernelSpec]:
        """Kernels named by `ids` in the order given, or all of them."""
        if not ids:
            return list(self.kernels)
        by_id = {k.id: k for k in self.kernels}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ConfigError(f"unknown kernel id {unknown[0]!r} (known: {', '.join(by_id)})")
        return [by_id[i] for i in dict.fromkeys(ids)]


# --- loading -------------------------------------------------------------------------------


def _describe(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic location as `kernels[1] (debian-12-6.1).memory_mb`."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                ident = (
                    node.get("id") or node.get("name") or node.get("group")
                    if isinstance(node, dict)
                    else None
                )
                if isinstance(ident, str):
                    label += f" ({ident})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def format_validation_error(source: str, exc: ValidationError, data: Any) -> str:
    """One line for the first problem, the way users scan errors: file, entry, key, why."""
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    # Drop pydantic's union-branch tags such as 'literal['cpus']' or 'int'.
    loc = tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in {"int", "str"})))
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    # Keys and ids come from the file: a newline in one must not break the one-line rule.
    return f"{source}: {_one_line(_describe(loc, data))}: {_one_line(msg)}{tail}"


def _one_line(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b) so it stays on one line."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in a config that is a typo silently
    dropping a setting, so it is an error naming the line of the second one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a merged key is legitimate
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_BYTES = 1 << 20  # a kernels.yaml or manifest; real ones are a few KiB


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, checked before reading (a
    FIFO would block, /dev/zero would never end), or ConfigError naming the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(f"{path}: broken symlink ({what})") from None
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: {file_kind(st.st_mode)}, not a {what} file")
    if st.st_size > limit:
        raise ConfigError(f"{path}: {st.st_size} bytes, over the {limit} byte limit for a {what}")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{path}: over the {limit} byte limit for a {what}")
    return data


def load_yaml(path: Path, what: str = "YAML") -> Any:
    data = read_regular(path, MAX_CONFIG_BYTES, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML composes recursively: [[[[... thousands deep
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None


def _validate(model: type[M], path: Path, data: Any) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        # Relative paths in a config (kernel files, BTF) are relative to the file itself.
        return model.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data)) from None


def load_kernel_matrix(path: Path) -> KernelMatrix:
    return _validate(KernelMatrix, path, load_yaml(path, "kernel matrix"))


def load_expectations(path: Path) -> Expectations:
    return _validate(Expectations, path, load_yaml(path, "expectations"))


def load_manifest(path: Path) -> Manifest:
    data = load_yaml(path, "manifest")
    if data is None:
        return Manifest()
    return _validate(Manifest, path, data)


def default_kernels_file() -> Path:
    """The default matrix shipped inside the package: in a checkout,
    src/bpfcompat/kernels.yaml is a symlink to the repository root's kernels.yaml, and
    a built wheel holds a copy of it, so both find the same file from any directory."""
    return Path(str(resources.files("bpfcompat").joinpath("kernels.yaml")))
