"""Old public names that still work: renamed environment variables and command-line options.

A name an operator may have in a script, a unit file or a compose file is not dropped when the
vocabulary changes: the old one is still read, and each use logs one warning naming the new
one (``event=deprecated_name old=... new=...``). docs/SETTINGS.md lists every such pair
("Renamed names"; tests/test_settings_doc.py checks it).

- A settings class lists its old variables in ``renamed_env`` (old variable -> field);
  :class:`RenamedEnvSource` reads them below the new names, so the new one wins when both
  are set.
- :func:`add_renamed_option` adds a hidden old option that fills the new one's destination;
  ``nirwatch``'s ``main()`` calls :func:`warn_renamed_options` once logging is configured.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from nirwatch.logs import log_event

log = logging.getLogger(__name__)

#: namespace attribute where :class:`_RenamedOption` records the old options it saw
_SEEN = "renamed_options_used"


def warn_renamed(old: str, new: str) -> None:
    """One warning line: ``old`` still works, ``new`` is its name now."""
    log_event(log, "deprecated_name", level=logging.WARNING, old=old, new=new)


class RenamedEnvSource(PydanticBaseSettingsSource):
    """Values of a settings class's old variable names (``renamed_env``: old -> field).

    Placed after the environment source, so a new name set beside its old one wins.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the old names directly

    def __call__(self) -> dict[str, Any]:
        renamed: dict[str, str] = getattr(self.settings_cls, "renamed_env", {})
        prefix = str(self.config.get("env_prefix", ""))
        out: dict[str, Any] = {}
        for old, field in renamed.items():
            if old in os.environ:
                warn_renamed(old, f"{prefix}{field.upper()}")
                out[field] = os.environ[old]
        return out


def renamed_env_sources(
    settings_cls: type[BaseSettings], sources: Sequence[PydanticBaseSettingsSource]
) -> tuple[PydanticBaseSettingsSource, ...]:
    """``sources`` (init, env, dotenv, secrets) with the old names read right after env."""
    init, env, *rest = sources
    return (init, env, RenamedEnvSource(settings_cls), *rest)


class _RenamedOption(argparse.Action):
    """Stores into the new option's destination and records that the old name was used."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        seen = list(getattr(namespace, _SEEN, None) or [])
        setattr(namespace, _SEEN, [*seen, (option_string, self.new)])


def add_renamed_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str
) -> None:
    """Keep ``old`` working as a hidden alias of the already added option ``new``."""
    target = next(
        (a for a in parser._actions if new in a.option_strings),
        None,
    )
    if target is None:
        raise ValueError(f"add {new} before its old name {old}")
    kwargs: dict[str, Any] = {"dest": target.dest, "help": argparse.SUPPRESS, "new": new}
    if target.nargs == 0:  # a flag (store_true / store_const)
        kwargs.update(nargs=0, const=target.const)
    else:
        kwargs.update(type=target.type, metavar=target.metavar, choices=target.choices)
    parser.add_argument(old, action=_RenamedOption, **kwargs)


def warn_renamed_options(args: argparse.Namespace) -> None:
    """Log one warning per old option name used on this command line."""
    for old, new in getattr(args, _SEEN, None) or []:
        warn_renamed(old, new)


def renamed_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``old -> new`` for every renamed option of ``parser`` (for the settings document)."""
    return {
        old: action.new
        for action in parser._actions
        if isinstance(action, _RenamedOption)
        for old in action.option_strings
    }
