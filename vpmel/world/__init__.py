"""The embedded demo world: an OpenMoji knowledge base and captioned, cluttered scenes,
shaped like WikiDiverse raw data, generated deterministically from a seed."""

from vpmel.world.generate import (
    WorldConfig,
    WorldPlan,
    WorldSummary,
    generate_world,
    plan_world,
    world_digest,
)
from vpmel.world.sheet import world_contact_sheet

__all__ = [
    "WorldConfig",
    "WorldPlan",
    "WorldSummary",
    "generate_world",
    "plan_world",
    "world_contact_sheet",
    "world_digest",
]
