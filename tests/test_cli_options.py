"""Every command parses the same options, with the same defaults, as recorded in
tests/data/cli_options.json (regenerate it with ``python tests/test_cli_options.py``
only when an option is meant to change)."""

import argparse
import json
import sys
from pathlib import Path

from sacd_fast.cli import build_parser

RECORD = Path(__file__).parent / "data" / "cli_options.json"
SAMPLES = {
    "train": ["train", "--data", "d", "--out", "o"],
    "eval": ["eval", "--checkpoint", "c", "--data", "d", "--out", "o"],
    "predict": ["predict", "--checkpoint", "c", "--out", "o", "a.png", "b"],
    "export": ["export", "--checkpoint", "c", "--out", "o"],
    "demo": ["demo"],
    "profile": ["profile"],
    "synth-data": ["synth-data", "--out", "o"],
}


def describe(parser: argparse.ArgumentParser) -> dict:
    """Per command: each option's flags, default, choices, type, nargs, whether it is required, the options
    it excludes; and the namespace parsed from the command's sample line."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        groups = {id(a): sorted(o.dest for o in g._group_actions if o is not a)
                  for g in p._mutually_exclusive_groups for a in g._group_actions}
        options = {}
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            options[a.dest] = {"flags": list(a.option_strings), "default": a.default,
                               "choices": None if a.choices is None else list(a.choices),
                               "type": getattr(a.type, "__name__", None), "nargs": a.nargs,
                               "required": a.required, "const": a.const, "action": type(a).__name__,
                               "excludes": groups.get(id(a), [])}
        parsed = {k: v for k, v in vars(parser.parse_args(SAMPLES[name])).items() if k != "run"}
        out[name] = {"options": options, "parsed": parsed}
    return out


def test_every_command_parses_the_recorded_options():
    recorded = json.loads(RECORD.read_text())
    now = json.loads(json.dumps(describe(build_parser())))  # tuples as lists, as the record holds them
    assert sorted(now) == sorted(recorded)
    for command in recorded:
        assert now[command] == recorded[command], command


if __name__ == "__main__":
    json.dump(describe(build_parser()), sys.stdout, indent=1, sort_keys=True)
