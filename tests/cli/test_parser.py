"""The command line as a whole: every option explained, a version, a description per command."""
from __future__ import annotations

import argparse

import pytest

from headwater import __version__
from headwater.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command, and every action of a command that has actions (``sae train``, ``audit run``)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {}
    for name, sub in action.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            out.update(_subparsers(sub, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = sub
    return out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"headwater {__version__}"


def test_every_command_has_a_description_and_every_option_help():
    commands = _subparsers(build_parser())
    assert set(commands) == {"demo", "encode", "attribute", "behaviors", "discover", "intervene", "retrain",
                             "evaluate", "experiment", "compare", "steer", "sae train", "audit run", "audit apply",
                             "audit edit", "audit retrain", "audit check"}
    missing = []
    for name, parser in commands.items():
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings)}: no help")
    assert missing == []


def test_one_meaning_per_option_name():
    """A flag means the same in every command: its choices and default agree wherever it appears."""
    seen: dict[str, tuple[str, tuple, object]] = {}
    clashes = []
    for name, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help", "--out", "--samples", "--seed", "--format", "--model", "--data",
                            "--prompts", "--json", "--behavior", "--batch-size"):
                    continue  # a path, a count or a default that differs by command, with the same meaning
                key = (tuple(action.choices or ()), action.default)
                if flag in seen and seen[flag][1:] != key:
                    clashes.append(f"{flag}: {seen[flag][0]} {seen[flag][1:]} vs {name} {key}")
                seen.setdefault(flag, (name, *key))
    assert clashes == []
    # --format is always the tokenisation format; the file format of written pairs has its own name.
    for name, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            if "--format" in action.option_strings:
                assert set(action.choices) == {"auto", "raw", "chat"}, name


def test_the_package_docstring_is_not_the_description():
    import headwater.cli as cli

    assert build_parser().description not in (cli.__doc__ or "")
