"""``nirwatch models``: list, register, promote and roll back models in the registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nirwatch.errors import ConfigError
from nirwatch.models.registry import ModelRegistry, RegistrySettings
from nirwatch.settings import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry directory (default: NIRWATCH_REGISTRY_DIR)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="registered versions with status and metrics")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reg = sub.add_parser("register", help="verify a bundle directory and add it as a candidate")
    reg.add_argument("bundle", type=Path)
    pro = sub.add_parser("promote", help="make VERSION the champion the workers serve")
    pro.add_argument("version")
    sub.add_parser("rollback", help="make the previous champion the champion again")
    # The registry option may also come after the action (nirwatch models list --registry D).
    for p in (ls, reg, pro, sub.choices["rollback"]):
        p.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(RegistrySettings)
    root = args.registry or settings.dir
    if root is None:
        raise ConfigError("no registry: pass --registry DIR or set NIRWATCH_REGISTRY_DIR")
    registry = ModelRegistry(root, hmac_key=settings.key())
    if args.action == "list":
        return _list(registry, as_json=args.json)
    if args.action == "register":
        print(registry.register(args.bundle))
    elif args.action == "promote":
        registry.promote(args.version)
        print(f"champion: {args.version}")
    elif args.action == "rollback":
        print(f"champion: {registry.rollback()}")
    return 0


def _list(registry: ModelRegistry, *, as_json: bool) -> int:
    infos = registry.list()
    if as_json:
        rows = [
            {
                "version": i.version,
                "status": i.status,
                "created_at": i.created_at,
                "checksum": i.checksum,
                "target": i.target,
                "unit": i.unit,
                "cnn": i.has_cnn,
                "metrics": i.metrics,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print(f"no models registered in {registry.root}")
        return 0
    print(f"{'VERSION':34} {'STATUS':9} {'TARGET':14} {'MODELS':8} {'RMSECV':>8} {'RMSEP':>8}")
    for i in infos:
        models = "cnn+pls" if i.has_cnn else "pls"
        print(
            f"{i.version:34} {i.status:9} {i.target + ' [' + i.unit + ']':14} {models:8} "
            f"{_fmt(i.metrics.get('rmsecv'))} {_fmt(i.metrics.get('rmsep'))}"
        )
    return 0


def _fmt(v: object) -> str:
    return f"{v:8.3f}" if isinstance(v, int | float) else f"{'-':>8}"
