"""`python -m loadtest <command> --help` explains every flag of every command."""

from __future__ import annotations

import argparse

from loadtest.__main__ import build_parser


def test_every_flag_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"run", "sweep", "simulate", "tune", "validate"}
    missing = [f"{name} {'/'.join(action.option_strings)}"
               for name, command in sub.choices.items() for action in command._actions
               if action.option_strings and not (action.help or "").strip()]
    assert missing == []
    assert "the hard limit" in sub.choices["simulate"].format_help()
