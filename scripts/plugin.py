"""Resolve a plug-in from its serve target, `module:Service`, as `make serve/build/k8s-sync APP=` take it.

The service module is imported (as `bentoml serve` would) and its `GuardedApp` is the one object
of that type at the module's top level whose name is the service's name: a plug-in module that
ends with `MyService = guard(APP)` always has it. Deployment scripts read the app's name (the
Bento's and the config's name) and `model_name` (the model packed in the Bento) from it.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_APP = "apps.credit.app:CreditRiskService"  # the Makefile's DEFAULT_APP


@dataclass(frozen=True)
class Plugin:
    target: str  # "module:Service", what `bentoml serve` takes
    module: str
    name: str  # the GuardedApp's name: the service's, the Bento's, config/<name>.yaml
    model_name: str  # the model in the store the Bento packs (its `latest` at build time)

    @property
    def source(self) -> str:
        """What of the repository holds the plug-in, as a bentofile `include` entry: its top-level
        package (`apps/`), or its file when the module sits at the root (`spam_app.py`)."""
        top = self.module.split(".")[0]
        return f"{top}/" if (ROOT / top).is_dir() else f"{top}.py"


def resolve(target: str = DEFAULT_APP) -> Plugin:
    """The plug-in served by `bentoml serve <target>`; SystemExit with the fix when it is not one."""
    from service.spec import GuardedApp

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"APP={target!r}: expected module:Service, e.g. {DEFAULT_APP}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(module_name)
    service = getattr(module, attr, None)
    if service is None or not hasattr(service, "name"):
        raise SystemExit(f"APP={target!r}: {module_name} has no BentoML service named {attr}")
    apps = [
        v for v in vars(module).values() if isinstance(v, GuardedApp) and v.name == service.name
    ]
    if len(apps) != 1:
        raise SystemExit(
            f"APP={target!r}: {module_name} must hold the service's GuardedApp (name "
            f"{service.name!r}) at its top level, e.g. `APP = GuardedApp(...)` then "
            f"`{attr} = guard(APP)`; found {len(apps)}"
        )
    (app,) = apps
    return Plugin(target=target, module=module_name, name=app.name, model_name=app.model_name)
