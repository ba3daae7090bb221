"""The one way every Python entry point starts: python-fire, with its arguments checked first.

fire alone runs a command before it finds a stray argument (a typo such as ``--epoch=3`` was
reported only after a whole training run, as "Could not consume arg"), maps single-dash letters to
flags (``-h`` became ``--huber_delta``), and shows ``Default: None`` for every setting a profile
controls. :func:`run` closes these gaps and then hands the same arguments to ``fire.Fire``:

- every ``--flag`` is checked against the command's signature before anything runs; an unknown
  flag or a value of the wrong type exits at once (status 2) with one line naming the closest
  valid flag;
- single-dash flags other than ``-h`` are refused (no short aliases);
- ``-h``/``--help`` anywhere shows the help and does nothing else; a command that declares its
  profiles (``command.profiles = {name: settings}``) also shows each profile's effective values;
- relative paths given in path flags resolve against the caller's working directory (the
  wrappers pass it as ``BRAINMRI_CALLER_CWD``), then the process works in the repository, so
  the defaults (``results``, ``runs``, ``.cache``) are the repository's from any folder;
- expected errors (missing data or file, bad input, refused publication...) end with a one-line
  ``error: ...`` and status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Errors whose message is the whole story: shown as one line without a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError,
                                                    IsADirectoryError, PermissionError, ValueError)

#: Flags that hold paths (by name ending, or by name), resolved against the caller's working directory.
PATH_FLAG_SUFFIXES = ("_dir", "_root", "_path", "_file")
PATH_FLAGS = {"first_stage", "checkpoint", "inputs", "out", "readme", "dest"}


class UsageError(Exception):
    """A command line that cannot run (unknown command or flag, wrong value type)."""


def _commands(component) -> dict[str, Callable]:
    return component if isinstance(component, dict) else {}


def _select(component, argv: list[str]) -> tuple[Callable | None, str | None, list[str]]:
    """``(function, command name, remaining argv)``; raises UsageError for an unknown command."""
    commands = _commands(component)
    if not commands:
        return component, None, argv
    positional = [a for a in argv if not a.startswith("-")]
    if not positional:
        return None, None, argv
    name = positional[0]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown command {name!r} (commands: {', '.join(commands)}){hint}")
    rest = list(argv)
    rest.remove(name)
    return commands[name], name, rest


def _hints(fn: Callable) -> dict[str, object]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: no type checks
        return {}


def _base_types(annotation) -> tuple[type, ...]:
    """The concrete types an annotation admits (``int | None`` -> ``(int, NoneType)``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _base_types(a))
    return (annotation,) if isinstance(annotation, type) else ()


def _check_value(flag: str, raw: str, annotation) -> None:
    kinds = _base_types(annotation)
    if not kinds or str in kinds or raw in ("None", "none") and type(None) in kinds:
        return
    if bool in kinds:
        if raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return
        raise UsageError(f"--{flag} takes True or False, not {raw!r}")
    if int in kinds:
        try:
            int(raw)
            return
        except ValueError:
            if float not in kinds:
                raise UsageError(f"--{flag} takes an integer, not {raw!r}") from None
    if float in kinds:
        try:
            float(raw)
            return
        except ValueError:
            raise UsageError(f"--{flag} takes a number, not {raw!r}") from None


def _is_path_flag(name: str) -> bool:
    return name in PATH_FLAGS or name.endswith(PATH_FLAG_SUFFIXES)


def check_arguments(fn: Callable, argv: list[str], caller_cwd: Path | None = None) -> list[str]:
    """Validate ``argv`` against ``fn``'s signature; returns it with path flags made absolute.

    Raises:
        UsageError: unknown flag (with the closest valid one), single-dash flag, wrong value type,
            too many positional arguments.
    """
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if not n.startswith("_")
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    hints = _hints(fn)
    out: list[str] = []
    positional_left = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            continue
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 1 and not _is_number(arg):
            letter = arg.lstrip("-")[:1]
            close = [f"--{n}" for n in params if n.startswith(letter)][:3]
            raise UsageError(f"short flags are not supported ({arg}); use the full name"
                             + (f" ({' or '.join(close)}?)" if close else ""))
        if not arg.startswith("--"):
            if positional_left:
                name = positional_left.pop(0)
                out.append(_absolute(arg, caller_cwd) if _is_path_flag(name) else arg)
                continue
            raise UsageError(f"unexpected argument {arg!r}; settings are given as --name=value")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in params and key.startswith("no") and key[2:] in params:
            out.append(arg)  # fire's --noflag for a boolean
            continue
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise UsageError(f"unknown flag --{key}{hint} (see --help)")
        if key in positional_left:
            positional_left.remove(key)
        if not has_value:
            kinds = _base_types(hints.get(key))
            if bool in kinds or (not kinds and isinstance(params[key].default, bool)):
                out.append(f"--{key}")
                continue
            if i >= len(argv):
                raise UsageError(f"--{key} needs a value")
            value = argv[i]
            i += 1
        _check_value(key, value, hints.get(key))
        if _is_path_flag(key) and value not in ("", "None"):
            value = _absolute(value, caller_cwd)
        out.append(f"--{key}={value}")
    return out


def _is_number(arg: str) -> bool:
    try:
        float(arg)
        return True
    except ValueError:
        return False


def _absolute(value: str, caller_cwd: Path | None) -> str:
    if "," in value:  # a comma-separated list of paths
        return ",".join(_absolute(v, caller_cwd) for v in value.split(","))
    path = Path(value).expanduser()
    if path.is_absolute() or caller_cwd is None:
        return value
    return str((caller_cwd / path).resolve())


_PROFILES: dict[Callable, dict[str, dict]] = {}


def declare_profiles(fn: Callable, profiles: dict[str, dict]) -> None:
    """Register the profiles whose values ``fn``'s unset flags take, for its ``--help``."""
    _PROFILES[fn] = profiles


def profile_table(fn: Callable) -> str:
    """The effective values of every profile-controlled setting, one column per profile."""
    profiles = _PROFILES.get(fn) or {}
    if not profiles:
        return ""
    flags = set(inspect.signature(fn).parameters)
    keys = sorted({k for p in profiles.values() for k in p if k in flags})
    if not keys:
        return ""
    names = list(profiles)
    width = max(len(k) for k in keys) + 4
    cols = [max(len(n), *(len(str(profiles[n].get(k, ""))) for k in keys)) + 2 for n in names]
    lines = ["", "PROFILE DEFAULTS (a flag left unset takes its profile's value)",
             "    " + "--setting".ljust(width) + "".join(n.ljust(c) for n, c in zip(names, cols))]
    for k in keys:
        lines.append("    " + f"--{k}".ljust(width) + "".join(str(profiles[n].get(k, "")).ljust(c)
                                                          for n, c in zip(names, cols)))
    return "\n".join(lines) + "\n"


def run(component, name: str | None = None, argv: list[str] | None = None) -> None:
    """Check the command line, then run ``component`` (a function or ``{command: function}``) with fire.

    Exits with status 2 on a usage error, 1 on an expected error (one line; ``--debug`` for the
    traceback), 0 after help.
    """
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    wants_help = any(a in ("-h", "--help") for a in argv)
    caller = os.environ.get("BRAINMRI_CALLER_CWD")
    caller_cwd = Path(caller) if caller else Path.cwd()
    try:
        fn, command, rest = _select(component, [a for a in argv if a not in ("-h", "--help")])
        if wants_help or fn is None:
            fire_args = ([command] if command else []) + ["--help"]
            try:
                fire.Fire(component, command=fire_args, name=name)
            except SystemExit as done:
                if fn is not None:
                    sys.stdout.write(profile_table(fn))
                raise SystemExit(0 if wants_help else 2) from done
            return
        checked = check_arguments(fn, rest, caller_cwd)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    os.chdir(REPO_ROOT)
    try:
        fire.Fire(component, command=([command] if command else []) + checked, name=name)
    except EXPECTED_ERRORS as err:
        if debug:
            raise
        print(f"error: {err}  (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
