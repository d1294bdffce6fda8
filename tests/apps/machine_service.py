"""`bentoml serve tests.apps.machine_service:MachineFailureService`: the same guard, another plug-in."""
from service.factory import build_service
from tests.apps.machine_failure import MACHINE_APP

MachineFailureService = build_service(MACHINE_APP)
