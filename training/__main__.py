"""mlguard's training CLI.

    python -m training guard-model --app spam_app:APP --model spam:latest \\
        --train train.csv --holdout holdout.csv --target label
    python -m training export-labelled --app spam_app:APP --out labelled.parquet

`guard-model`: `--model` is a tag in the BentoML store (adopted: saved again with the guard card,
as a new version) or the path of a pickled fitted model (joblib or pickle; saved with its
framework's BentoML module under the plug-in's model name). Prints the yardstick and the tag to
serve.
`export-labelled`: the labelled predictions of the prediction log (inputs and outcomes), for
retraining: CSV, or Parquet when the file ends in .parquet. The store is the one the plug-in's
config names (`store.url`, else the SQLite file in its state directory); `--store` overrides it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from service.scoring.model import ModelRefused
from service.spec import GuardedApp
from training.yardstick import table


def load_app(spec: str) -> GuardedApp:
    """`module:ATTRIBUTE` -> the GuardedApp it names."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--app must be module:ATTRIBUTE, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))  # the user's module, beside them
    app = getattr(importlib.import_module(module_name), attr)
    if not isinstance(app, GuardedApp):
        raise SystemExit(f"{spec} is a {type(app).__name__}, not a GuardedApp")
    return app


def load_model_arg(value: str) -> Any:
    path = Path(value)
    if not path.is_file():
        return value  # a store tag
    try:
        import joblib

        return joblib.load(path)
    except Exception:  # noqa: BLE001 -- not a joblib file: try plain pickle
        with path.open("rb") as f:
            return pickle.load(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("guard-model", help="save a trained model with what the guard needs")
    g.add_argument("--app", required=True, help="the plug-in, module:ATTRIBUTE")
    g.add_argument("--model", required=True, help="a store tag, or a pickled model file")
    g.add_argument("--train", required=True, help="CSV of the training rows, with the target")
    g.add_argument("--holdout", required=True, help="CSV of held-out rows, with the target")
    g.add_argument("--target", required=True, help="the target column")
    g.add_argument("--name", help="model name in the store (default: the plug-in's model_name)")
    g.add_argument("--threshold", type=float, default=0.5, help="binary decision threshold")
    e = sub.add_parser("export-labelled", help="export labelled predictions for retraining")
    e.add_argument("--app", required=True, help="the plug-in, module:ATTRIBUTE")
    e.add_argument("--out", required=True, type=Path, help="file to write: .csv or .parquet")
    e.add_argument("--store", help="store URL (default: from the plug-in's config)")
    e.add_argument("--days", type=float, help="only predictions made in the last N days")
    e.add_argument("--limit", type=int, help="at most the N most recent labelled predictions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "export-labelled":
        return export_labelled(args)

    from training.guard import guard_model

    app = load_app(args.app)
    try:
        saved = guard_model(
            app, load_model_arg(args.model), args.train, args.holdout, args.target,
            name=args.name, threshold=args.threshold,
        )
    except (ModelRefused, ValueError) as exc:
        print(f"not guarded: {exc}", file=sys.stderr)
        return 2
    from monitors.guard_card import CARD_KEY

    print(table(saved.info.metadata[CARD_KEY]["yardstick"]))
    if saved.info.metadata[CARD_KEY]["yardstick"]["model_beats_rules"]:
        print(f"\nsaved {saved.tag}: serve it with `make serve APP=<module>:<Service>`")
    else:
        print(f"\nsaved {saved.tag}, but it does not beat the rules: the promotion gate will not "
              "serve it (the rules will answer) unless the plug-in's config sets "
              "model.allow_worse_than_rules: true")
    return 0


def export_labelled(args: argparse.Namespace) -> int:
    from service.store import open_store
    from service.store.export import export_labelled as export
    from service.worker import config
    from service.worker.admin_state import state_dir_path
    from service.worker.prediction_log import store_url

    app = load_app(args.app)
    settings = config.load(config.config_path(app.name))
    url = args.store or store_url(state_dir_path(settings.admin.state_dir) / app.name, settings.store)
    since = time.time() - args.days * 86_400.0 if args.days else 0.0
    with open_store(url, app.name) as store:
        count = export(store, args.out, limit=args.limit, since_ts=since)
    print(f"{count} labelled predictions written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
